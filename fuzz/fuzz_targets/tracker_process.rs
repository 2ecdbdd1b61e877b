//! The server's per-channel MLS tracker on arbitrary bytes from clients:
//! `ChannelTracker::process` (handshake messages), on a tracker of a fixed
//! two-member group, and `ChannelTracker::from_group_info` (the GroupInfo a
//! channel's creator uploads). `ChannelTracker::restore` has its own target,
//! `tracker_restore`.
//!
//! The tracked group cannot change between inputs without a valid member
//! signature, which a fuzzer cannot make; an input that did change it would
//! show up as a crash only if the new state broke an invariant.
//!
//! Properties: no panic; a tracker started from a GroupInfo is for the
//! group asked for and reports its members.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use quicprochat_core::{ChannelTracker, MlsSuite};
use quicprochat_fuzz::{GROUP, mls_fixture};

thread_local! {
    static TRACKER: RefCell<ChannelTracker> = RefCell::new({
        let fixture = mls_fixture(MlsSuite::XWing);
        let mut tracker = ChannelTracker::from_group_info(GROUP, &fixture.group_info_epoch0).expect("fixture GroupInfo");
        tracker.process(&fixture.add_bob_commit).expect("fixture commit");
        tracker
    });
}

fuzz_target!(|data: &[u8]| {
    TRACKER.with(|tracker| {
        let _ = tracker.borrow_mut().process(data);
    });

    if let Ok(tracker) = ChannelTracker::from_group_info(GROUP, data) {
        assert_eq!(tracker.group_id(), GROUP);
        let _ = tracker.members().expect("from_group_info checked every member");
    }
});
