//! Reading frame parts off quinn streams, shared by server, client and push reader.

use bytes::{Bytes, BytesMut};
use quinn::{ReadExactError, RecvStream};

use crate::Error;
use crate::frame::FrameError;

/// Capacity reserved up front for a payload; the rest grows as bytes actually arrive, so a
/// peer that declares a large payload and then stalls costs no more memory than it sent.
const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

/// Reads exactly `len` payload bytes, allocating only as data arrives.
pub(crate) async fn read_payload(recv: &mut RecvStream, len: usize) -> Result<Bytes, ReadExactError> {
    let mut body = BytesMut::new();
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await? {
            Some(chunk) if body.is_empty() && chunk.bytes.len() == len => return Ok(chunk.bytes),
            Some(chunk) => {
                if body.capacity() == 0 {
                    body.reserve(len.min(INITIAL_PAYLOAD_CAPACITY));
                }
                body.extend_from_slice(&chunk.bytes);
            }
            None => return Err(ReadExactError::FinishedEarly(body.len())),
        }
    }
    Ok(body.freeze())
}

/// Turns a failed exact read of `part` (`expected` bytes) into a crate error.
pub(crate) fn read_failure(e: ReadExactError, part: &'static str, expected: usize) -> Error {
    match e {
        ReadExactError::FinishedEarly(actual) => Error::Frame(FrameError::Truncated { part, expected, actual }),
        ReadExactError::ReadError(e) => e.into(),
    }
}
