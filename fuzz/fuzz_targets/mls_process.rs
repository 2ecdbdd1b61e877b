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
//! Property: no panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_core::MlsSuite;
use quicprochat_fuzz::{GROUP, MlsFixture, mls_fixture};

thread_local! {
    static FIXTURE: MlsFixture = mls_fixture(MlsSuite::XWing);
}

fuzz_target!(|data: &[u8]| {
    FIXTURE.with(|fixture| {
        let _ = fixture.bob.process(GROUP, data);
        let _ = fixture.carol.join_from_welcome(data);
        if fixture.alice.add_members(GROUP, &[data.to_vec()]).is_ok() {
            fixture.alice.clear_pending_commit(GROUP).expect("clear the commit just built");
        }
    });
});
