//! Errors of the domain services, and their one mapping onto the wire.

use quicprochat_core::CoreError;
use quicprochat_rpc::RpcError;

use crate::store::StoreError;

/// Suggested wait before retrying into a full queue.
const QUEUE_FULL_RETRY_MS: u64 = 5_000;

/// What a domain service can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or violates a documented rule.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No valid session, or wrong credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// Authenticated but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Already exists (e.g. username taken).
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// A commit for an epoch the channel has left.
    #[error("stale commit: channel is at epoch {current}")]
    StaleEpoch {
        /// The channel's current epoch.
        current: u64,
    },
    /// The payload exceeds the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Offending size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A chunk for the wrong offset of an upload.
    #[error("upload has {received} bytes; send the chunk at that offset")]
    OutOfOrder {
        /// Bytes the server holds.
        received: u64,
    },
    /// A dependency of the server (disk, ...) failed; retry later.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// Too many requests; retry after this many milliseconds.
    #[error("rate limited; retry in {retry_after_ms} ms")]
    RateLimited {
        /// When a retry can succeed.
        retry_after_ms: u64,
    },
    /// A recipient queue is full.
    #[error("a recipient queue is full")]
    QueueFull,
    /// An MLS handshake message failed validation against the channel's public group state
    /// (forged, malformed, or not what it claims to be).
    #[error("handshake message refused: {0}")]
    HandshakeRefused(CoreError),
    /// Storage failed.
    #[error(transparent)]
    Store(StoreError),
    /// A cryptographic check failed in a way that is the server's problem.
    #[error("crypto: {0}")]
    Crypto(#[from] CoreError),
}

/// How long a client should wait before retrying a call refused as UNAVAILABLE.
const UNAVAILABLE_RETRY_MS: u64 = 500;

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(what) => ServiceError::AlreadyExists(what),
            StoreError::NotFound(what) => ServiceError::NotFound(what),
            StoreError::NotMember => ServiceError::Forbidden("not a member of this channel"),
            StoreError::StaleEpoch { current, .. } => ServiceError::StaleEpoch { current },
            StoreError::QueueFull => ServiceError::QueueFull,
            StoreError::UnknownDevice => ServiceError::BadRequest("welcome for an unknown device".into()),
            StoreError::BlobOutOfOrder { received } => ServiceError::OutOfOrder { received },
            StoreError::BlobSizeMismatch { .. } => {
                ServiceError::BadRequest("total_size differs from the upload's first chunk".into())
            }
            StoreError::BlobChunkOutOfRange => ServiceError::BadRequest("chunk runs past the blob's total size".into()),
            // Passing trouble of a shared database: the client may simply retry.
            StoreError::Contended { .. } => ServiceError::Unavailable("the database (busy)"),
            StoreError::NotCommitted(err) => {
                tracing::warn!(error = %err, "a group commit failed");
                ServiceError::Unavailable("the database")
            }
            StoreError::ConnectionPool(err) => {
                tracing::warn!(error = %err, "no database connection");
                ServiceError::Unavailable("the database")
            }
            other => ServiceError::Store(other),
        }
    }
}

impl From<ServiceError> for RpcError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BadRequest(m) => RpcError::bad_request(m),
            ServiceError::Unauthenticated(m) => RpcError::unauthenticated(m),
            ServiceError::Forbidden(m) => RpcError::forbidden(m),
            ServiceError::NotFound(what) => RpcError::not_found(format!("{what} not found")),
            ServiceError::AlreadyExists(what) => RpcError::conflict(format!("{what} already exists")),
            ServiceError::StaleEpoch { current } => {
                RpcError::conflict(format!("commit is stale: channel is at epoch {current}"))
                    .with_detail("current_epoch", current.to_string())
            }
            ServiceError::PayloadTooLarge { len, max } => {
                RpcError::payload_too_large(format!("payload of {len} bytes exceeds the limit of {max}"))
            }
            ServiceError::HandshakeRefused(e) => RpcError::bad_request(format!("handshake message refused: {e}")),
            ServiceError::OutOfOrder { received } => {
                RpcError::conflict(format!("upload has {received} bytes; resume at that offset"))
                    .with_detail("received", received.to_string())
            }
            ServiceError::Unavailable(what) => {
                RpcError::unavailable(format!("{what} unavailable")).with_retry_after_ms(UNAVAILABLE_RETRY_MS)
            }
            ServiceError::RateLimited { retry_after_ms } => RpcError::rate_limited("too many requests", retry_after_ms),
            ServiceError::QueueFull => {
                RpcError::queue_full("a recipient has too many undelivered envelopes", QUEUE_FULL_RETRY_MS)
            }
            // Internal details stay in the server log, never on the wire.
            ServiceError::Store(err) => {
                tracing::error!(error = %err, "store failure");
                RpcError::internal("internal error")
            }
            ServiceError::Crypto(err) => {
                tracing::error!(error = %err, "crypto failure");
                RpcError::internal("internal error")
            }
        }
    }
}
