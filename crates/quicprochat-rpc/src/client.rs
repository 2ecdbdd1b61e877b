//! The RPC client: one QUIC connection, one bidirectional stream per call.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::v1;
use quinn::{RecvStream, VarInt};

use crate::codes;
use crate::error::{Error, RpcError};
use crate::frame::{self, DEFAULT_MAX_PAYLOAD, FrameError, RESPONSE_HEADER_LEN, RequestHeader, ResponseHeader};
use crate::push::PushStream;
use crate::status::Status;
use crate::stream::{StreamEnd, poll_end, read_failure, read_payload};

/// Settings of an [`RpcClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Largest payload sent or accepted in a response or push frame. Default 8 MiB.
    pub max_payload: u32,
    /// Limit on a whole call, `None` for no limit of the client's own (the server's deadlines
    /// and the connection's idle timeout still apply). Default `None`, so long polls work.
    pub call_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { max_payload: DEFAULT_MAX_PAYLOAD, call_timeout: None }
    }
}

/// A connection to an RPC server. Cheap to clone; clones share the connection, and calls on
/// it run concurrently.
#[derive(Debug, Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // Kept so the endpoint lives as long as the connection.
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    next_request_id: AtomicU32,
    options: ClientOptions,
}

impl RpcClient {
    /// Connects to `addr`, verifying the server as `server_name` with `config` (see
    /// [`crate::client_config`]), with default [`ClientOptions`]. Binds its own UDP endpoint
    /// on the unspecified address of `addr`'s family.
    pub async fn connect(addr: SocketAddr, server_name: &str, config: quinn::ClientConfig) -> Result<Self, Error> {
        Self::connect_with(addr, server_name, config, ClientOptions::default()).await
    }

    /// [`Self::connect`] with explicit options.
    pub async fn connect_with(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|source| Error::Bind { addr: bind, source })?;
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(addr, server_name)?.await?;
        Ok(Self {
            inner: Arc::new(Inner { _endpoint: endpoint, connection, next_request_id: AtomicU32::new(1), options }),
        })
    }

    /// Calls `method_id` with `request` and decodes the response. A non-OK status becomes
    /// [`Error::Rpc`].
    pub async fn call<Req, Resp>(&self, method_id: u16, request: &Req) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let (status, payload) = self.call_raw(method_id, &request.encode_to_vec()).await?;
        if status == Status::Ok {
            return Ok(Resp::decode(payload)?);
        }
        let body = <v1::Error as prost::Message>::decode(payload)?;
        Err(Error::Rpc(RpcError::from_proto(status, body)))
    }

    /// Sends `payload` (an encoded request message) to `method_id` and returns the response's
    /// status and payload undecoded.
    pub async fn call_raw(&self, method_id: u16, payload: &[u8]) -> Result<(Status, Bytes), Error> {
        match self.inner.options.call_timeout {
            Some(after) => tokio::time::timeout(after, self.exchange(method_id, payload))
                .await
                .map_err(|_| Error::Timeout { after })?,
            None => self.exchange(method_id, payload).await,
        }
    }

    async fn exchange(&self, method_id: u16, payload: &[u8]) -> Result<(Status, Bytes), Error> {
        let max = self.inner.options.max_payload;
        let header = RequestHeader {
            method_id,
            request_id: self.inner.next_request_id.fetch_add(1, Ordering::Relaxed),
            payload_len: frame::payload_len_for(payload, max)?,
        };
        let (mut send, mut recv) = self.inner.connection.open_bi().await?;
        let written: Result<(), Error> = async {
            send.write_all(&header.encode()).await?;
            send.write_all(payload).await?;
            send.finish()?;
            Ok(())
        }
        .await;
        match written {
            Ok(()) => {}
            // The server refused the request early (e.g. PAYLOAD_TOO_LARGE) and stopped our
            // side; its response says why.
            Err(Error::Write(quinn::WriteError::Stopped(_))) => {}
            Err(e) => return Err(e),
        }
        read_response(&mut recv, header.request_id, max).await
    }

    /// Waits for the server's push stream and returns its reader. The server opens it on its
    /// first push to this connection, and only once: call this once per connection.
    pub async fn accept_push(&self) -> Result<PushStream, Error> {
        let recv = self.inner.connection.accept_uni().await?;
        Ok(PushStream::new(recv, self.inner.options.max_payload))
    }

    /// The underlying QUIC connection, e.g. for tests writing raw frames.
    pub fn connection(&self) -> &quinn::Connection {
        &self.inner.connection
    }

    /// Closes the connection with application code 0 and `reason`; pending calls fail.
    pub fn close(&self, reason: &str) {
        self.inner.connection.close(VarInt::from_u32(codes::CLOSE_NORMAL), reason.as_bytes());
    }

    /// Resolves when the connection is closed, by either side or by a timeout.
    pub async fn closed(&self) {
        let _reason = self.inner.connection.closed().await;
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.inner.connection.close_reason()
    }

    /// The server's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.connection.remote_address()
    }

    /// The payload limit this client enforces on what it sends and receives.
    pub fn max_payload(&self) -> u32 {
        self.inner.options.max_payload
    }
}

/// Reads the one response frame of a call's stream.
async fn read_response(recv: &mut RecvStream, request_id: u32, max_payload: u32) -> Result<(Status, Bytes), Error> {
    let mut head = [0u8; RESPONSE_HEADER_LEN];
    recv.read_exact(&mut head).await.map_err(|e| read_failure(e, "header", RESPONSE_HEADER_LEN))?;
    let header = ResponseHeader::decode(&head);
    if header.request_id != request_id {
        return Err(Error::RequestIdMismatch { expected: request_id, got: header.request_id });
    }
    let status = Status::from_u8(header.status).ok_or(Error::UnknownStatus(header.status))?;
    let len = match frame::check_payload_len(header.payload_len, max_payload) {
        Ok(len) => len,
        Err(e) => {
            let _ = recv.stop(codes::REQUEST_REFUSED);
            return Err(e.into());
        }
    };
    let payload = read_payload(recv, len).await.map_err(|e| read_failure(e, "payload", len))?;
    match poll_end(recv) {
        StreamEnd::Trailing(extra) => Err(Error::Frame(FrameError::TrailingBytes { extra })),
        // The response is complete: an end that has not arrived yet (or a reset after it) changes
        // nothing about it.
        StreamEnd::Finished | StreamEnd::Open | StreamEnd::Failed => Ok((status, payload)),
    }
}
