//! `quicprochat_rpc::frame::decode_response` on arbitrary bytes, as a peer
//! sends them, under three payload limits (zero, 64 bytes, the default 8 MiB).
//!
//! Properties: no panic; a decoded frame carries exactly its declared
//! payload and re-encodes to the same bytes; every header bit pattern
//! round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quicprochat_rpc::frame::{self, RESPONSE_HEADER_LEN, ResponseHeader};

const SMALL_MAX: u32 = 64;

fuzz_target!(|data: &[u8]| {
    for max in [0, SMALL_MAX, frame::DEFAULT_MAX_PAYLOAD] {
        if let Ok((header, payload)) = frame::decode_response(data, max) {
            assert!(header.payload_len <= max);
            assert_eq!(usize::try_from(header.payload_len).ok(), Some(payload.len()));
            let encoded = frame::encode_response(header.status, header.request_id, payload, max)
                .expect("a decoded frame re-encodes");
            assert_eq!(&encoded[..], data);
        }
    }
    if let Some(head) = data.first_chunk::<RESPONSE_HEADER_LEN>() {
        assert_eq!(&ResponseHeader::decode(head).encode(), head);
    }
});
