//! `quicprochat_rpc::frame::decode_push` on arbitrary bytes, as a peer
//! sends them, under three payload limits (zero, 64 bytes, the default 8 MiB).
//!
//! Properties: no panic; a decoded frame carries exactly its declared
//! payload and re-encodes to the same bytes; every header bit pattern
//! round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_rpc::frame::{self, PUSH_HEADER_LEN, PushHeader};

const SMALL_MAX: u32 = 64;

fuzz_target!(|data: &[u8]| {
    for max in [0, SMALL_MAX, frame::DEFAULT_MAX_PAYLOAD] {
        if let Ok((header, payload)) = frame::decode_push(data, max) {
            assert!(header.payload_len <= max);
            assert_eq!(usize::try_from(header.payload_len).ok(), Some(payload.len()));
            let encoded = frame::encode_push(header.event_type, payload, max).expect("a decoded frame re-encodes");
            assert_eq!(&encoded[..], data);
        }
    }
    if let Some(head) = data.first_chunk::<PUSH_HEADER_LEN>() {
        assert_eq!(&PushHeader::decode(head).encode(), head);
    }
});
