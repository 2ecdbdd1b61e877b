//! Server-to-client push: one long-lived unidirectional stream per connection carrying push
//! frames back to back.
//!
//! The server side is a bounded queue per connection ([`PushSender`]) drained by one writer
//! task. The stream is opened lazily, when the first frame is written, so a connection that is
//! never pushed to never opens it. Producers never wait: a full queue or a gone connection is
//! reported at once and the event is dropped, so one slow client cannot stall the others. A
//! client that stops reading long enough for one frame to stay unwritten for the server's
//! `write_timeout` loses its push stream.
//!
//! The client side is [`PushStream`], from [`crate::RpcClient::accept_push`].

use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, ReadError, ReadExactError, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::codes;
use crate::frame::{self, PUSH_HEADER_LEN, PushHeader};
use crate::stream::{read_failure, read_payload};

/// Handle to one connection's push queue. Cheap to clone; keep it wherever events for that
/// connection originate.
#[derive(Debug, Clone)]
pub struct PushSender {
    queue: mpsc::Sender<(Bytes, tokio::time::Instant)>,
    connection_id: u64,
    max_payload: u32,
}

impl PushSender {
    /// A sender and the receiving end that [`run_writer`] drains.
    pub(crate) fn channel(connection_id: u64, capacity: usize, max_payload: u32) -> (Self, PushQueue) {
        let (queue, rx) = mpsc::channel(capacity);
        let sender = Self { queue, connection_id, max_payload };
        (sender, rx)
    }

    /// Queues `message` as a push frame of `event_type`. Never waits.
    ///
    /// Fails with [`Error::PushQueueFull`] when the queue is full, [`Error::PushClosed`] when
    /// the connection or its push stream is gone, and [`Error::Frame`] when the encoded
    /// message exceeds the payload limit.
    pub fn try_push<M: prost::Message>(&self, event_type: u16, message: &M) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::PushClosed);
        }
        self.try_push_encoded(event_type, &message.encode_to_vec())
    }

    /// Like [`Self::try_push`] with an already encoded protobuf payload, for fanning one
    /// event out to many connections.
    pub fn try_push_encoded(&self, event_type: u16, payload: &[u8]) -> Result<(), Error> {
        let frame = frame::encode_push(event_type, payload, self.max_payload)?;
        self.queue.try_send((frame, tokio::time::Instant::now())).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                metrics::counter!("qpc_push_dropped_total").increment(1);
                Error::PushQueueFull
            }
            mpsc::error::TrySendError::Closed(_) => Error::PushClosed,
        })
    }

    /// Whether the connection or its push stream is gone; pushes will fail from now on.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// The connection this sender pushes to.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
}

/// Frames waiting for the writer, with the time each was queued (for the push-latency metric).
pub(crate) type PushQueue = mpsc::Receiver<(Bytes, tokio::time::Instant)>;

/// Drains `queue` onto one lazily opened unidirectional stream until `cancel` fires, the
/// queue's senders are all gone, or the stream fails. Dropping the queue on return makes every
/// [`PushSender`] of the connection report [`Error::PushClosed`].
pub(crate) async fn run_writer(
    connection: quinn::Connection,
    mut queue: PushQueue,
    cancel: CancellationToken,
    write_timeout: Duration,
    connection_id: u64,
) {
    let mut stream: Option<SendStream> = None;
    loop {
        let (frame, queued_at) = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        if stream.is_none() {
            let opened = tokio::select! {
                () = cancel.cancelled() => break,
                opened = connection.open_uni() => opened,
            };
            match opened {
                Ok(send) => stream = Some(send),
                Err(e) => {
                    tracing::debug!(connection_id, error = %e, "cannot open push stream");
                    break;
                }
            }
        }
        let Some(send) = stream.as_mut() else { break };
        let written = tokio::select! {
            () = cancel.cancelled() => break,
            written = tokio::time::timeout(write_timeout, send.write_chunk(frame)) => written,
        };
        match written {
            Ok(Ok(())) => {
                metrics::histogram!("qpc_push_latency_seconds").record(queued_at.elapsed().as_secs_f64());
            }
            Ok(Err(e)) => {
                tracing::debug!(connection_id, error = %e, "push stream write failed");
                break;
            }
            Err(_) => {
                tracing::debug!(connection_id, "push stream stalled; closing it");
                let _ = send.reset(codes::PUSH_STALLED);
                break;
            }
        }
    }
    queue.close();
    if let Some(mut send) = stream {
        let _ = send.finish();
    }
}

/// One push event as received by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFrame {
    /// Stable event type (see `quicprochat_proto::event`).
    pub event_type: u16,
    /// The protobuf payload.
    pub payload: Bytes,
}

impl PushFrame {
    /// Decodes the payload as `M`.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, Error> {
        Ok(M::decode(self.payload.clone())?)
    }
}

/// The client's reader of the server's push stream.
#[derive(Debug)]
pub struct PushStream {
    recv: RecvStream,
    max_payload: u32,
}

impl PushStream {
    pub(crate) fn new(recv: RecvStream, max_payload: u32) -> Self {
        Self { recv, max_payload }
    }

    /// The next push frame; `Ok(None)` at a clean end: the server finished the stream or
    /// closed the connection with code 0 (shutting down). A frame whose declared length
    /// exceeds the limit is refused before its payload is read.
    pub async fn next(&mut self) -> Result<Option<PushFrame>, Error> {
        let mut head = [0u8; PUSH_HEADER_LEN];
        match self.recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(ReadExactError::ReadError(ReadError::ConnectionLost(ConnectionError::ApplicationClosed(close))))
                if close.error_code == VarInt::from_u32(codes::CLOSE_NORMAL) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(read_failure(e, "header", PUSH_HEADER_LEN)),
        }
        let header = PushHeader::decode(&head);
        let len = match frame::check_payload_len(header.payload_len, self.max_payload) {
            Ok(len) => len,
            Err(e) => {
                let _ = self.recv.stop(codes::REQUEST_REFUSED);
                return Err(e.into());
            }
        };
        let payload = read_payload(&mut self.recv, len).await.map_err(|e| read_failure(e, "payload", len))?;
        Ok(Some(PushFrame { event_type: header.event_type, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quicprochat_proto::v1;

    #[test]
    fn full_and_closed_queues_are_reported_without_waiting() {
        let (sender, mut rx) = PushSender::channel(7, 2, 1024);
        assert_eq!(sender.connection_id(), 7);
        let msg = v1::SessionExpired { reason: "expired".into() };
        sender.try_push(4, &msg).unwrap();
        sender.try_push(4, &msg).unwrap();
        assert!(matches!(sender.try_push(4, &msg), Err(Error::PushQueueFull)));

        let queued = rx.try_recv().unwrap();
        let (header, payload) = frame::decode_push(&queued.0, 1024).unwrap();
        assert_eq!(header.event_type, 4);
        assert_eq!(<v1::SessionExpired as prost::Message>::decode(payload).unwrap(), msg);

        drop(rx);
        assert!(sender.is_closed());
        assert!(matches!(sender.try_push(4, &msg), Err(Error::PushClosed)));
    }

    #[test]
    fn oversized_events_are_refused() {
        let (sender, _rx) = PushSender::channel(1, 4, 8);
        assert!(matches!(
            sender.try_push_encoded(1, &[0u8; 9]),
            Err(Error::Frame(frame::FrameError::PayloadTooLarge { len: 9, max: 8 }))
        ));
    }
}
