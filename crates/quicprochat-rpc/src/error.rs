//! Errors: [`RpcError`] is what a handler returns and what travels in a non-OK response;
//! [`Error`] is everything that can go wrong in this crate, on either side.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quicprochat_proto::v1;

use crate::frame::FrameError;
use crate::status::Status;

/// An application-level failure: the status and body of a non-OK response frame.
///
/// Handlers return it; the server turns it into a `qpc.v1.Error` payload in one place, and the
/// client turns that payload back into an `RpcError`. The message goes to the peer verbatim, so
/// it must never contain secrets or internal details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The response status; never [`Status::Ok`] in practice.
    pub status: Status,
    /// Human-readable explanation, safe to show to the peer.
    pub message: String,
    /// When to retry, in milliseconds (0 = unknown / not applicable).
    pub retry_after_ms: u64,
    /// Machine-readable extras, e.g. `"current_epoch"` for a commit conflict.
    pub details: BTreeMap<String, String>,
}

impl RpcError {
    /// An error with the given status and message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after_ms: 0, details: BTreeMap::new() }
    }

    /// [`Status::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Status::BadRequest, message)
    }

    /// [`Status::Unauthenticated`].
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(Status::Unauthenticated, message)
    }

    /// [`Status::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Status::Forbidden, message)
    }

    /// [`Status::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Status::NotFound, message)
    }

    /// [`Status::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Status::Conflict, message)
    }

    /// [`Status::RateLimited`], retry after `retry_after_ms`.
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::new(Status::RateLimited, message).with_retry_after_ms(retry_after_ms)
    }

    /// [`Status::PayloadTooLarge`].
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(Status::PayloadTooLarge, message)
    }

    /// [`Status::QueueFull`], retry after `retry_after_ms`.
    pub fn queue_full(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self::new(Status::QueueFull, message).with_retry_after_ms(retry_after_ms)
    }

    /// [`Status::DeadlineExceeded`].
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Status::DeadlineExceeded, message)
    }

    /// [`Status::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Status::Unavailable, message)
    }

    /// [`Status::UnknownMethod`].
    pub fn unknown_method(message: impl Into<String>) -> Self {
        Self::new(Status::UnknownMethod, message)
    }

    /// [`Status::Internal`]. Log the cause on the server; send only a generic message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Status::Internal, message)
    }

    /// Sets `retry_after_ms`.
    pub fn with_retry_after_ms(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// Adds a machine-readable detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }

    /// The `qpc.v1.Error` body of the response frame.
    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: u32::from(self.status.as_u8()),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            details: self.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// Rebuilds the error from a response frame's status byte and `qpc.v1.Error` body. The
    /// frame's status wins over the body's `code`, which is redundant.
    pub fn from_proto(status: Status, e: v1::Error) -> Self {
        Self { status, message: e.message, retry_after_ms: e.retry_after_ms, details: e.details.into_iter().collect() }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)?;
        if self.retry_after_ms > 0 {
            write!(f, " (retry after {} ms)", self.retry_after_ms)?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// Everything that can fail in `quicprochat-rpc`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The UDP endpoint could not be bound.
    #[error("cannot bind a QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// A connection attempt could not be started (bad server name, stopped endpoint, ...).
    #[error("cannot start connecting: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (handshake failure, idle timeout, peer close).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed for a stream-level reason (the peer stopped it).
    #[error("writing to the stream failed: {0}")]
    Write(quinn::WriteError),
    /// Reading from a stream failed for a stream-level reason (the peer reset it).
    #[error("reading from the stream failed: {0}")]
    Read(quinn::ReadError),
    /// The stream had already been finished or reset locally.
    #[error("the stream is already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A frame violated the wire format (too large, truncated, trailing bytes).
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// A payload was not a valid protobuf message of the expected type.
    #[error("undecodable protobuf payload: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The server answered with a non-OK status.
    #[error("RPC failed with {0}")]
    Rpc(#[from] RpcError),
    /// The response carried a status byte this version does not know.
    #[error("response carries unknown status code {0}")]
    UnknownStatus(u8),
    /// The response answered a different request than the one sent on its stream.
    #[error("response answers request {got}, but request {expected} was sent")]
    RequestIdMismatch {
        /// The request id that was sent.
        expected: u32,
        /// The request id in the response.
        got: u32,
    },
    /// An operation did not complete in time.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
    },
    /// rustls refused the TLS configuration or key material.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The rustls configuration cannot be used for QUIC (no TLS 1.3 initial cipher suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    CertificateGeneration(#[from] rcgen::Error),
    /// A PEM file could not be parsed.
    #[error("cannot parse PEM file {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate or key file holds no usable item.
    #[error("{path}: {problem}")]
    InvalidKeyMaterial {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong, e.g. "no certificate found".
        problem: &'static str,
    },
    /// Private key bytes are not DER of a PKCS#8, SEC1 or PKCS#1 key.
    #[error("the private key is not DER of a PKCS#8, SEC1 or PKCS#1 key")]
    UnrecognisedPrivateKey,
    /// Only one of the certificate and key files exists, so neither is used or overwritten.
    #[error("{present} exists but {missing} does not; remove it or restore the pair")]
    IncompleteCertificatePair {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// [`crate::ServerTrust::Roots`] was given no usable certificate.
    #[error("no trust anchors: the root certificate list is empty")]
    NoTrustAnchors,
    /// A configuration value is out of range.
    #[error("invalid option {option}: {problem}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// Why it is invalid.
        problem: &'static str,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// "read", "write", "create directory", ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A socket-level I/O error outside any file.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The connection's push queue is full; the event was dropped.
    #[error("the push queue is full")]
    PushQueueFull,
    /// The connection (or its push stream) is gone; the event was dropped.
    #[error("the push stream is closed")]
    PushClosed,
}

impl Error {
    /// The status of an RPC-level failure, `None` for transport and local failures.
    pub fn rpc_status(&self) -> Option<Status> {
        match self {
            Error::Rpc(e) => Some(e.status),
            _ => None,
        }
    }

    /// The RPC-level failure, if this is one.
    pub fn as_rpc(&self) -> Option<&RpcError> {
        match self {
            Error::Rpc(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the operation may succeed if tried again, possibly on a new connection.
    ///
    /// True for lost or timed-out connections and streams, a full push queue, and the
    /// retryable statuses ([`Status::is_retryable`]). Handshake failures (e.g. a pinned
    /// certificate mismatch), malformed frames and configuration errors are not retryable.
    /// Callers still decide whether the method is safe to repeat.
    pub fn is_retryable(&self) -> bool {
        use quinn::ConnectionError as C;
        match self {
            Error::Connection(e) => match e {
                C::VersionMismatch | C::TransportError(_) => false,
                C::ConnectionClosed(_)
                | C::ApplicationClosed(_)
                | C::Reset
                | C::TimedOut
                | C::LocallyClosed
                | C::CidsExhausted => true,
            },
            Error::Write(e) => matches!(e, quinn::WriteError::Stopped(_)),
            Error::Read(e) => matches!(e, quinn::ReadError::Reset(_)),
            Error::Timeout { .. } | Error::PushQueueFull => true,
            Error::Rpc(e) => e.status.is_retryable(),
            _ => false,
        }
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Error::Connection(c),
            quinn::WriteError::ClosedStream => Error::ClosedStream(quinn::ClosedStream::default()),
            other => Error::Write(other),
        }
    }
}

impl From<quinn::ReadError> for Error {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => Error::Connection(c),
            other => Error::Read(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_round_trips_through_proto() {
        let e = RpcError::rate_limited("slow down", 1500).with_detail("bucket", "enqueue");
        let wire = e.to_proto();
        assert_eq!(wire.code, 6);
        assert_eq!(wire.retry_after_ms, 1500);
        assert_eq!(wire.details.get("bucket").map(String::as_str), Some("enqueue"));
        assert_eq!(RpcError::from_proto(Status::RateLimited, wire), e);
        assert_eq!(e.to_string(), "RATE_LIMITED: slow down (retry after 1500 ms)");
    }

    #[test]
    fn retryability() {
        assert!(Error::Rpc(RpcError::unavailable("draining")).is_retryable());
        assert!(!Error::Rpc(RpcError::bad_request("nope")).is_retryable());
        assert!(Error::Connection(quinn::ConnectionError::TimedOut).is_retryable());
        assert!(!Error::Connection(quinn::ConnectionError::VersionMismatch).is_retryable());
        assert!(!Error::Frame(FrameError::TrailingBytes { extra: 1 }).is_retryable());
        assert_eq!(Error::Rpc(RpcError::conflict("epoch")).rpc_status(), Some(Status::Conflict));
        assert_eq!(Error::PushClosed.rpc_status(), None);
    }
}
