//! `quicprochat_core::envelope::open` on arbitrary bytes, as the server
//! delivers them, for a recipient whose X-Wing key pair comes from a fixed
//! seed; and `HybridPublicKey::from_bytes`, which parses the keys devices
//! publish.
//!
//! Properties: no panic; whatever opens came from a well-formed header (the
//! length, magic, version and suite checks run before any cryptography);
//! a parsed public key re-encodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_core::envelope::{self, ENVELOPE_MAGIC, ENVELOPE_OVERHEAD, ENVELOPE_VERSION, MAX_ENVELOPE_LEN};
use quicprochat_core::{HybridKeyPair, HybridPublicKey};
use quicprochat_fuzz::{AAD, hybrid_key_pair};

thread_local! {
    static RECIPIENT: HybridKeyPair = hybrid_key_pair();
}

fuzz_target!(|data: &[u8]| {
    RECIPIENT.with(|recipient| {
        if let Ok(plaintext) = envelope::open(recipient, AAD, data) {
            assert!(data.len() <= MAX_ENVELOPE_LEN);
            assert_eq!(data[..4], ENVELOPE_MAGIC);
            assert_eq!(data[4], ENVELOPE_VERSION);
            assert_eq!(plaintext.len() + ENVELOPE_OVERHEAD, data.len());
        }
    });
    if let Ok(key) = HybridPublicKey::from_bytes(data) {
        assert_eq!(key.as_bytes(), data);
    }
});
