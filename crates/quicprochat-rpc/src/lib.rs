//! quicprochat RPC over QUIC (ALPN `qpc/2`): framing, streams, dispatch, push and TLS. This
//! crate knows nothing about messaging; the server and SDK build on it.
//!
//! - [`frame`]: the pure codec of request, response and push frames.
//! - [`Status`], [`RpcError`], [`Error`]: outcomes on the wire and failures in this crate.
//! - [`tls`]: TLS 1.3-only configurations, certificates, pinning.
//! - [`Router`] and [`Context`]: typed handlers by method id.
//! - [`middleware`]: layers around every call (metrics, tracing, and the server's own).
//! - [`RpcServer`]: accept loop, one task per connection and per RPC, graceful shutdown.
//! - [`PushSender`] / [`PushStream`]: the server-to-client push stream.
//! - [`RpcClient`]: one connection, concurrent calls.
//!
//! One RPC is one bidirectional stream: the client writes one request frame and finishes its
//! side; the server answers with one response frame and finishes. A request whose declared
//! length exceeds the limit is answered with PAYLOAD_TOO_LARGE before its body is read.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod frame;
pub mod middleware;
pub mod options;
pub mod push;
pub mod router;
pub mod server;
pub mod status;
mod stream;
pub mod tls;

pub use client::{ClientOptions, RpcClient};
pub use error::{Error, RpcError};
pub use frame::{DEFAULT_MAX_PAYLOAD, FrameError};
pub use middleware::{Layer, Next};
pub use options::{ServerOptions, TransportOptions};
pub use push::{PushFrame, PushSender, PushStream};
pub use router::{BoxFuture, Context, Router};
pub use server::{RpcServer, SHUTDOWN_REASON};
pub use status::Status;
pub use tls::{
    ALPN, DevCertificate, ServerCertificate, ServerTrust, client_config, client_config_with, generate_self_signed,
    load_or_generate_dev_certificate, load_pem_or_der_certificate, server_config,
};

/// QUIC application error codes used by this protocol on connections and streams.
pub mod codes {
    use quinn::VarInt;

    /// Connection close code of a normal close (client done, server shutting down).
    pub const CLOSE_NORMAL: u32 = 0;
    /// Stream stop code: the receiver refused the rest of a frame (too large, unknown method,
    /// too slow); the response on the other half says why.
    pub const REQUEST_REFUSED: VarInt = VarInt::from_u32(1);
    /// Stream reset code: the server gave up on a response (handler cut off at shutdown,
    /// write timeout).
    pub const RESPONSE_ABANDONED: VarInt = VarInt::from_u32(2);
    /// Stream reset code: the push stream stalled (the client stopped reading) and was closed.
    pub const PUSH_STALLED: VarInt = VarInt::from_u32(3);
}
