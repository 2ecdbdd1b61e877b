//! `quicprochat_core::keystore::open_with_key` on arbitrary bytes with a
//! fixed key, and `open_with_password` with a fixed password: the two ways
//! a keystore or state file is read back from disk.
//!
//! Argon2 parameters come from the password-sealed header and the parser
//! accepts up to 1 GiB and 16 iterations (`keystore::MAX_*`), which would
//! make one iteration take seconds: inputs whose header asks for more than
//! light parameters (`quicprochat_fuzz::kdf_header_too_slow`) skip the
//! password path. Parameters over the caps still go through, since they are
//! refused before Argon2 runs.
//!
//! Properties: no panic; what opens has exactly the length the format
//! implies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_core::keystore::{self, KEY_SEALED_VERSION};
use quicprochat_fuzz::{AAD, KEYSTORE_KEY, PASSWORD, kdf_header_too_slow};

/// Version (1) and nonce (12) before the ciphertext, 16-byte tag after it.
const KEY_SEALED_OVERHEAD: usize = 1 + 12 + 16;
/// Magic, version, three parameters, salt and nonce; then the 16-byte tag.
const PASSWORD_SEALED_OVERHEAD: usize = 4 + 1 + 12 + 16 + 12 + 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(plaintext) = keystore::open_with_key(&KEYSTORE_KEY, AAD, data) {
        assert_eq!(data[0], KEY_SEALED_VERSION);
        assert_eq!(plaintext.len() + KEY_SEALED_OVERHEAD, data.len());
    }
    if !kdf_header_too_slow(data)
        && let Ok(plaintext) = keystore::open_with_password(PASSWORD, data)
    {
        assert_eq!(plaintext.len() + PASSWORD_SEALED_OVERHEAD, data.len());
    }
});
