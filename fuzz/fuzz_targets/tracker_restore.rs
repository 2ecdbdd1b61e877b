//! `ChannelTracker::restore` on arbitrary bytes: the snapshot the server
//! keeps in its store and reads back before every handshake message of the
//! channel.
//!
//! Past finding: openmls's `MemoryStorage` unwrapped the JSON decoding of
//! the values it reads, so a corrupted value panicked inside
//! `PublicGroup::load`; the tracker now keeps its group in its own storage
//! whose reads fail with `TrackerStorageError::Corrupt`.
//!
//! Properties: no panic; a restored tracker answers its getters and
//! `to_bytes` is a fixed point of `restore` (restore ∘ to_bytes reproduces
//! the same bytes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_core::ChannelTracker;

fuzz_target!(|data: &[u8]| {
    if let Ok(tracker) = ChannelTracker::restore(data) {
        let _ = (tracker.group_id(), tracker.epoch(), tracker.suite(), tracker.members());
        if let Ok(bytes) = tracker.to_bytes() {
            let again = ChannelTracker::restore(&bytes).expect("a snapshot restores");
            assert_eq!(again.to_bytes().expect("to_bytes"), bytes);
        }
    }
});
