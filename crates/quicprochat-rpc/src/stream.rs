//! Reading frame parts off quinn streams, shared by server, client and push reader.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

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

/// What the peer sent after the frame just read, as far as has arrived.
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// The stream ended right after the frame.
    Finished,
    /// Bytes follow the frame (at least this many): the peer broke the one-frame-per-stream rule.
    Trailing(usize),
    /// Neither the end nor more bytes have arrived yet.
    Open,
    /// The peer reset the stream or the connection is gone.
    Failed,
}

/// Looks, without waiting, at what follows the frame just read from `recv`.
///
/// A frame's sender finishes the stream right after the frame, and the end almost always
/// arrives in the frame's last packet. Reading it lets the stream close quietly: quinn stops a
/// `RecvStream` dropped before its end was read, which sends a STOP_SENDING frame, and, sent
/// on its own, a packet each way for nothing.
pub(crate) fn poll_end(recv: &mut RecvStream) -> StreamEnd {
    let mut next = pin!(recv.read_chunk(usize::MAX, true));
    match next.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(None)) => StreamEnd::Finished,
        Poll::Ready(Ok(Some(chunk))) => StreamEnd::Trailing(chunk.bytes.len()),
        Poll::Ready(Err(_)) => StreamEnd::Failed,
        Poll::Pending => StreamEnd::Open,
    }
}
