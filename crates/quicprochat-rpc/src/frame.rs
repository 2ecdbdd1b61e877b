//! The qpc/2 frame codec: fixed-size big-endian headers and length-checked payloads.
//!
//! This module is pure: it never touches a socket, so every rule of the wire format is tested
//! here without quinn. The async layers ([`crate::server`], [`crate::client`]) read a header,
//! ask it whether its declared length is acceptable ([`check_payload_len`]) and only then read
//! (and allocate) the body.
//!
//! ```text
//! request  = method_id: u16 | request_id: u32 | payload_len: u32 | payload
//! response = status: u8     | request_id: u32 | payload_len: u32 | payload
//! push     = event_type: u16                  | payload_len: u32 | payload
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// Default largest payload of any frame: 8 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 << 20;
/// Length of a request header: `method_id (2) | request_id (4) | payload_len (4)`.
pub const REQUEST_HEADER_LEN: usize = 10;
/// Length of a response header: `status (1) | request_id (4) | payload_len (4)`.
pub const RESPONSE_HEADER_LEN: usize = 9;
/// Length of a push header: `event_type (2) | payload_len (4)`.
pub const PUSH_HEADER_LEN: usize = 6;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared or actual payload length exceeds the limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The declared (or actual) payload length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The input ended before the frame was complete.
    #[error("truncated {part}: expected {expected} bytes, got {actual}")]
    Truncated {
        /// Which part of the frame was cut short: `"header"` or `"payload"`.
        part: &'static str,
        /// How many bytes that part needs.
        expected: usize,
        /// How many bytes were available.
        actual: usize,
    },
    /// The input holds more bytes than the frame declares.
    #[error("{extra} unexpected bytes after the frame")]
    TrailingBytes {
        /// How many bytes follow the frame.
        extra: usize,
    },
}

/// Checks a declared payload length against `max` and returns it as a `usize`.
///
/// Call this on every header read from the network before allocating the body.
pub fn check_payload_len(len: u32, max: u32) -> Result<usize, FrameError> {
    if len > max {
        return Err(FrameError::PayloadTooLarge { len: u64::from(len), max });
    }
    usize::try_from(len).map_err(|_| FrameError::PayloadTooLarge { len: u64::from(len), max })
}

/// Converts an outgoing payload length to its `u32` wire form, refusing anything above `max`.
pub fn payload_len_for(payload: &[u8], max: u32) -> Result<u32, FrameError> {
    let too_large = || FrameError::PayloadTooLarge { len: u64::try_from(payload.len()).unwrap_or(u64::MAX), max };
    let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
    if len > max {
        return Err(too_large());
    }
    Ok(len)
}

/// Header of a request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Stable method id (see `quicprochat_proto::method`).
    pub method_id: u16,
    /// Chosen by the client, echoed in the response.
    pub request_id: u32,
    /// Length of the protobuf payload that follows.
    pub payload_len: u32,
}

impl RequestHeader {
    /// Encodes the header into its fixed wire form.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..2].copy_from_slice(&self.method_id.to_be_bytes());
        out[2..6].copy_from_slice(&self.request_id.to_be_bytes());
        out[6..10].copy_from_slice(&self.payload_len.to_be_bytes());
        out
    }

    /// Decodes a header from its fixed wire form. Every bit pattern is a valid header; the
    /// length still has to pass [`check_payload_len`].
    pub fn decode(buf: &[u8; REQUEST_HEADER_LEN]) -> Self {
        Self {
            method_id: u16::from_be_bytes([buf[0], buf[1]]),
            request_id: u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
            payload_len: u32::from_be_bytes([buf[6], buf[7], buf[8], buf[9]]),
        }
    }
}

/// Header of a response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseHeader {
    /// Raw status byte (see [`crate::Status`]); kept raw so unknown codes survive decoding.
    pub status: u8,
    /// The request id of the request being answered.
    pub request_id: u32,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

impl ResponseHeader {
    /// Encodes the header into its fixed wire form.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut out = [0u8; RESPONSE_HEADER_LEN];
        out[0] = self.status;
        out[1..5].copy_from_slice(&self.request_id.to_be_bytes());
        out[5..9].copy_from_slice(&self.payload_len.to_be_bytes());
        out
    }

    /// Decodes a header from its fixed wire form.
    pub fn decode(buf: &[u8; RESPONSE_HEADER_LEN]) -> Self {
        Self {
            status: buf[0],
            request_id: u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]),
            payload_len: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]),
        }
    }
}

/// Header of a push frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PushHeader {
    /// Stable event type (see `quicprochat_proto::event`).
    pub event_type: u16,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

impl PushHeader {
    /// Encodes the header into its fixed wire form.
    pub fn encode(&self) -> [u8; PUSH_HEADER_LEN] {
        let mut out = [0u8; PUSH_HEADER_LEN];
        out[0..2].copy_from_slice(&self.event_type.to_be_bytes());
        out[2..6].copy_from_slice(&self.payload_len.to_be_bytes());
        out
    }

    /// Decodes a header from its fixed wire form.
    pub fn decode(buf: &[u8; PUSH_HEADER_LEN]) -> Self {
        Self {
            event_type: u16::from_be_bytes([buf[0], buf[1]]),
            payload_len: u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
        }
    }
}

fn join(header: &[u8], payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header.len() + payload.len());
    out.put_slice(header);
    out.put_slice(payload);
    out.freeze()
}

/// Builds a whole request frame, refusing a payload larger than `max`.
pub fn encode_request(method_id: u16, request_id: u32, payload: &[u8], max: u32) -> Result<Bytes, FrameError> {
    let header = RequestHeader { method_id, request_id, payload_len: payload_len_for(payload, max)? };
    Ok(join(&header.encode(), payload))
}

/// Builds a whole response frame, refusing a payload larger than `max`.
pub fn encode_response(status: u8, request_id: u32, payload: &[u8], max: u32) -> Result<Bytes, FrameError> {
    let header = ResponseHeader { status, request_id, payload_len: payload_len_for(payload, max)? };
    Ok(join(&header.encode(), payload))
}

/// Builds a whole push frame, refusing a payload larger than `max`.
pub fn encode_push(event_type: u16, payload: &[u8], max: u32) -> Result<Bytes, FrameError> {
    let header = PushHeader { event_type, payload_len: payload_len_for(payload, max)? };
    Ok(join(&header.encode(), payload))
}

/// Splits the fixed header of `N` bytes off `buf`.
fn split_header<const N: usize>(buf: &[u8]) -> Result<(&[u8; N], &[u8]), FrameError> {
    buf.split_first_chunk::<N>().ok_or(FrameError::Truncated { part: "header", expected: N, actual: buf.len() })
}

/// Checks that `rest` is exactly the declared payload.
fn exact_payload(rest: &[u8], declared: u32, max: u32) -> Result<&[u8], FrameError> {
    let len = check_payload_len(declared, max)?;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated { part: "payload", expected: len, actual: rest.len() }),
        std::cmp::Ordering::Greater => Err(FrameError::TrailingBytes { extra: rest.len() - len }),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

/// Decodes a complete request frame held in `buf` (exactly one frame, nothing after it).
pub fn decode_request(buf: &[u8], max: u32) -> Result<(RequestHeader, &[u8]), FrameError> {
    let (head, rest) = split_header::<REQUEST_HEADER_LEN>(buf)?;
    let header = RequestHeader::decode(head);
    Ok((header, exact_payload(rest, header.payload_len, max)?))
}

/// Decodes a complete response frame held in `buf` (exactly one frame, nothing after it).
pub fn decode_response(buf: &[u8], max: u32) -> Result<(ResponseHeader, &[u8]), FrameError> {
    let (head, rest) = split_header::<RESPONSE_HEADER_LEN>(buf)?;
    let header = ResponseHeader::decode(head);
    Ok((header, exact_payload(rest, header.payload_len, max)?))
}

/// Decodes a complete push frame held in `buf` (exactly one frame, nothing after it).
pub fn decode_push(buf: &[u8], max: u32) -> Result<(PushHeader, &[u8]), FrameError> {
    let (head, rest) = split_header::<PUSH_HEADER_LEN>(buf)?;
    let header = PushHeader::decode(head);
    Ok((header, exact_payload(rest, header.payload_len, max)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_known_answer() {
        let header = RequestHeader { method_id: 0x0320, request_id: 0x0102_0304, payload_len: 0x0000_0105 };
        let bytes = header.encode();
        assert_eq!(bytes, [0x03, 0x20, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x01, 0x05]);
        assert_eq!(RequestHeader::decode(&bytes), header);
    }

    #[test]
    fn response_header_known_answer() {
        let header = ResponseHeader { status: 11, request_id: 7, payload_len: 0x00AB_CDEF };
        let bytes = header.encode();
        assert_eq!(bytes, [11, 0, 0, 0, 7, 0x00, 0xAB, 0xCD, 0xEF]);
        assert_eq!(ResponseHeader::decode(&bytes), header);
    }

    #[test]
    fn push_header_known_answer() {
        let header = PushHeader { event_type: 1, payload_len: 3 };
        let bytes = header.encode();
        assert_eq!(bytes, [0, 1, 0, 0, 0, 3]);
        assert_eq!(PushHeader::decode(&bytes), header);
    }

    #[test]
    fn whole_frames_round_trip() {
        let payload = b"hello";
        let req = encode_request(800, 42, payload, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(req.len(), REQUEST_HEADER_LEN + payload.len());
        let (h, p) = decode_request(&req, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!((h.method_id, h.request_id, h.payload_len), (800, 42, 5));
        assert_eq!(p, payload);

        let resp = encode_response(0, 42, payload, DEFAULT_MAX_PAYLOAD).unwrap();
        let (h, p) = decode_response(&resp, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!((h.status, h.request_id, h.payload_len), (0, 42, 5));
        assert_eq!(p, payload);

        let push = encode_push(4, payload, DEFAULT_MAX_PAYLOAD).unwrap();
        let (h, p) = decode_push(&push, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!((h.event_type, h.payload_len), (4, 5));
        assert_eq!(p, payload);
    }

    #[test]
    fn empty_payload_round_trips() {
        let req = encode_request(1, 2, &[], 0).unwrap();
        let (h, p) = decode_request(&req, 0).unwrap();
        assert_eq!(h.payload_len, 0);
        assert!(p.is_empty());
    }

    #[test]
    fn every_header_bit_pattern_round_trips() {
        for seed in [0u8, 0x5A, 0xA5, 0xFF] {
            let bytes = [seed; REQUEST_HEADER_LEN];
            assert_eq!(RequestHeader::decode(&bytes).encode(), bytes);
            let bytes = [seed; RESPONSE_HEADER_LEN];
            assert_eq!(ResponseHeader::decode(&bytes).encode(), bytes);
            let bytes = [seed; PUSH_HEADER_LEN];
            assert_eq!(PushHeader::decode(&bytes).encode(), bytes);
        }
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_the_body() {
        let header = RequestHeader { method_id: 1, request_id: 1, payload_len: DEFAULT_MAX_PAYLOAD + 1 };
        // Only the header is present: the length check fires before any body is needed.
        let err = decode_request(&header.encode(), DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert_eq!(
            err,
            FrameError::PayloadTooLarge { len: u64::from(DEFAULT_MAX_PAYLOAD) + 1, max: DEFAULT_MAX_PAYLOAD }
        );
        assert_eq!(
            check_payload_len(u32::MAX, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::PayloadTooLarge { len: u64::from(u32::MAX), max: DEFAULT_MAX_PAYLOAD })
        );
        assert_eq!(check_payload_len(DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD), Ok(8 << 20));
    }

    #[test]
    fn encoding_refuses_oversized_payloads() {
        let err = encode_request(1, 1, &[0u8; 17], 16).unwrap_err();
        assert_eq!(err, FrameError::PayloadTooLarge { len: 17, max: 16 });
        assert!(encode_response(0, 1, &[0u8; 17], 16).is_err());
        assert!(encode_push(0, &[0u8; 17], 16).is_err());
        assert!(encode_push(0, &[0u8; 16], 16).is_ok());
    }

    #[test]
    fn truncated_header_is_reported() {
        let err = decode_request(&[0u8; 9], DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert_eq!(err, FrameError::Truncated { part: "header", expected: REQUEST_HEADER_LEN, actual: 9 });
        assert!(matches!(decode_response(&[], DEFAULT_MAX_PAYLOAD), Err(FrameError::Truncated { part: "header", .. })));
        assert!(matches!(decode_push(&[0; 5], DEFAULT_MAX_PAYLOAD), Err(FrameError::Truncated { part: "header", .. })));
    }

    #[test]
    fn short_body_is_reported() {
        let mut frame = encode_request(1, 1, b"abcdef", DEFAULT_MAX_PAYLOAD).unwrap().to_vec();
        frame.truncate(frame.len() - 2);
        let err = decode_request(&frame, DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert_eq!(err, FrameError::Truncated { part: "payload", expected: 6, actual: 4 });
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut frame = encode_push(1, b"ab", DEFAULT_MAX_PAYLOAD).unwrap().to_vec();
        frame.extend_from_slice(b"xyz");
        let err = decode_push(&frame, DEFAULT_MAX_PAYLOAD).unwrap_err();
        assert_eq!(err, FrameError::TrailingBytes { extra: 3 });
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A cheap deterministic sweep standing in for a fuzz target.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = usize::try_from(state % 24).unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| u8::try_from((state >> (i % 8 * 8)) & 0xFF).unwrap()).collect();
            let _ = decode_request(&bytes, 16);
            let _ = decode_response(&bytes, 16);
            let _ = decode_push(&bytes, 16);
        }
    }
}
