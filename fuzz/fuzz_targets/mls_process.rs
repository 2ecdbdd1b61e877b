//! A member's MLS entry points for bytes from the network, on a fixed
//! two-member group (alice created it and added bob; carol is outside with
//! one key package):
//! - `MlsClient::process` (bob receives an `MLSMessage` of the group:
//!   commit, proposal or application message);
//! - `MlsClient::join_from_welcome` (carol receives a Welcome);
//! - key package deserialisation and validation, through
//!   `MlsClient::add_members` (alice adds whoever the key package names;
//!   a valid one, from the seeds, is built into a commit and dropped again
//!   with `clear_pending_commit`).
//!
//! The group cannot change between inputs without a valid member signature
//! and membership tag, which a fuzzer cannot make.
//!
//! Each of the three loads the whole group from storage before it parses
//! anything, so an input goes only to the entry point its `MLSMessage`
//! wire format (bytes 2..4) names; inputs with any other or no wire format
//! go to all three, which keeps the "unexpected message" paths covered.
//!
//! Property: no panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_core::MlsSuite;
use quicprochat_fuzz::{GROUP, MlsFixture, mls_fixture};

thread_local! {
    static FIXTURE: MlsFixture = mls_fixture(MlsSuite::XWing);
}

/// MLS wire formats (RFC 9420 §6).
const PUBLIC_MESSAGE: u16 = 1;
const PRIVATE_MESSAGE: u16 = 2;
const WELCOME: u16 = 3;
const KEY_PACKAGE: u16 = 5;

fuzz_target!(|data: &[u8]| {
    let wire_format = data.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let known = matches!(wire_format, Some(PUBLIC_MESSAGE | PRIVATE_MESSAGE | WELCOME | KEY_PACKAGE));
    FIXTURE.with(|fixture| {
        if !known || matches!(wire_format, Some(PUBLIC_MESSAGE | PRIVATE_MESSAGE)) {
            let _ = fixture.bob.process(GROUP, data);
        }
        if !known || wire_format == Some(WELCOME) {
            let _ = fixture.carol.join_from_welcome(data);
        }
        if (!known || wire_format == Some(KEY_PACKAGE)) && fixture.alice.add_members(GROUP, &[data.to_vec()]).is_ok() {
            fixture.alice.clear_pending_commit(GROUP).expect("clear the commit just built");
        }
    });
});
