//! The RPC server: the accept loop, one task per connection, one task per RPC stream.
//!
//! Task ownership: `serve` owns a `JoinSet` of connection tasks; each connection task owns a
//! `JoinSet` of its RPC tasks and its push writer. Nothing is detached, so when `serve`
//! returns every task it started has ended.
//!
//! Shutdown: when the token given to [`RpcServer::serve`] is cancelled, the endpoint stops
//! accepting connections; connections keep accepting streams but answer new RPCs with
//! UNAVAILABLE, and in-flight RPCs may finish (their responses are delivered) for up to
//! [`ServerOptions::shutdown_grace`]. Then the remaining RPCs are cut off and every connection
//! is closed with application code 0, reason `"server shutting down"`.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use quinn::{ReadExactError, RecvStream, SendStream, VarInt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codes;
use crate::error::{Error, RpcError};
use crate::frame::{self, REQUEST_HEADER_LEN, RequestHeader};
use crate::options::ServerOptions;
use crate::push::{self, PushSender};
use crate::router::{BoxFuture, ConnectionState, Context, Router};
use crate::status::Status;
use crate::stream::{StreamEnd, poll_end, read_payload};
use crate::tls::{self, ServerCertificate};

/// Reason sent with the close frame when the server shuts down.
pub const SHUTDOWN_REASON: &[u8] = b"server shutting down";

/// An RPC server bound to a UDP socket, ready to [`serve`](Self::serve).
pub struct RpcServer<S> {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<S>>,
}

impl<S> std::fmt::Debug for RpcServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("router", &self.shared.router)
            .field("opts", &self.shared.opts)
            .finish_non_exhaustive()
    }
}

struct Shared<S> {
    router: Router<S>,
    opts: ServerOptions,
    next_connection_id: AtomicU64,
}

impl<S: Clone + Send + Sync + 'static> RpcServer<S> {
    /// Binds a QUIC endpoint on `addr` serving `router` with `cert`. Must be called inside a
    /// tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        cert: &ServerCertificate,
        router: Router<S>,
        opts: ServerOptions,
    ) -> Result<Self, Error> {
        opts.validate()?;
        let config = tls::server_config(cert, &opts.transport)?;
        let endpoint = quinn::Endpoint::server(config, addr).map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { endpoint, shared: Arc::new(Shared { router, opts, next_connection_id: AtomicU64::new(1) }) })
    }

    /// The address the endpoint is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Accepts connections until `shutdown` is cancelled; then stops accepting, lets in-flight
    /// RPCs finish (up to `shutdown_grace`), closes connections with application close code 0
    /// ("server shutting down") and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), Error> {
        let opts = &self.shared.opts;
        let draining = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    log_join_error(done, "connection");
                    metrics::gauge!("qpc_connections").set(connections.len() as f64);
                }
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if connections.len() >= opts.max_connections {
                        tracing::warn!(limit = opts.max_connections, "connection limit reached; refusing");
                        incoming.refuse();
                        continue;
                    }
                    let id = self.shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!("qpc_connections").set((connections.len() + 1) as f64);
                    connections.spawn(run_connection(
                        incoming,
                        id,
                        Arc::clone(&self.shared),
                        draining.clone(),
                        abort.clone(),
                    ));
                }
            }
        }

        tracing::info!(connections = connections.len(), "shutting down");
        self.endpoint.set_server_config(None);
        draining.cancel();
        let drained = tokio::time::timeout(opts.shutdown_grace, async {
            while let Some(done) = connections.join_next().await {
                log_join_error(done, "connection");
            }
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(connections = connections.len(), "shutdown grace elapsed; cutting off in-flight RPCs");
            abort.cancel();
            while let Some(done) = connections.join_next().await {
                log_join_error(done, "connection");
            }
        }
        self.endpoint.close(VarInt::from_u32(codes::CLOSE_NORMAL), SHUTDOWN_REASON);
        // Let the close frames go out before the endpoint is dropped.
        let _ = tokio::time::timeout(opts.shutdown_grace, self.endpoint.wait_idle()).await;
        Ok(())
    }
}

fn log_join_error(result: Result<(), JoinError>, what: &'static str) {
    if let Err(e) = result
        && e.is_panic()
    {
        tracing::error!(task = what, "task panicked");
    }
}

/// How a connection's stream loop ended.
enum ConnectionEnd {
    /// The server is shutting down (all in-flight RPCs done, or the grace elapsed).
    Shutdown,
    /// The connection was closed by the peer, timed out or failed.
    Lost(quinn::ConnectionError),
}

async fn run_connection<S: Clone + Send + Sync + 'static>(
    incoming: quinn::Incoming,
    id: u64,
    shared: Arc<Shared<S>>,
    draining: CancellationToken,
    abort: CancellationToken,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.accept() {
        Ok(connecting) => tokio::select! {
            () = draining.cancelled() => return,
            handshake = connecting => match handshake {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!(connection_id = id, error = %e, "handshake failed");
                    return;
                }
            },
        },
        Err(e) => {
            tracing::debug!(connection_id = id, error = %e, "cannot accept connection");
            return;
        }
    };
    tracing::debug!(connection_id = id, "connection established");

    let opts = &shared.opts;
    let (push, push_queue) = PushSender::channel(id, opts.push_queue_len, opts.max_payload);
    let state = Arc::new(ConnectionState::new(id, remote, push));
    let push_cancel = CancellationToken::new();
    let mut writer = JoinSet::new();
    writer.spawn(push::run_writer(connection.clone(), push_queue, push_cancel.clone(), opts.write_timeout, id));

    let request_budget = Arc::new(Semaphore::new(
        usize::try_from(opts.max_request_bytes_in_flight).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS),
    ));
    let mut rpcs = JoinSet::new();
    let mut shutting_down = false;
    let end = loop {
        if shutting_down && rpcs.is_empty() {
            break ConnectionEnd::Shutdown;
        }
        tokio::select! {
            biased;
            () = abort.cancelled() => break ConnectionEnd::Shutdown,
            () = draining.cancelled(), if !shutting_down => shutting_down = true,
            Some(done) = rpcs.join_next(), if !rpcs.is_empty() => log_join_error(done, "rpc"),
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    rpcs.spawn(handle_stream(
                        Arc::clone(&shared),
                        Arc::clone(&state),
                        Arc::clone(&request_budget),
                        Stream { send, recv },
                        shutting_down,
                    ));
                }
                Err(e) => break ConnectionEnd::Lost(e),
            },
        }
    };

    // Whatever is still running has nobody to answer (connection lost) or ran out of grace.
    rpcs.shutdown().await;
    push_cancel.cancel();
    while let Some(done) = writer.join_next().await {
        log_join_error(done, "push writer");
    }
    match end {
        ConnectionEnd::Shutdown => {
            connection.close(VarInt::from_u32(codes::CLOSE_NORMAL), SHUTDOWN_REASON);
        }
        ConnectionEnd::Lost(e) => {
            tracing::debug!(connection_id = id, reason = %e, "connection ended");
        }
    }
    shared.router.disconnected(id, state.take_session());
}

/// A response stream that is reset, not silently finished, if dropped before the response
/// was written completely (handler aborted, write timeout), so the client never mistakes a
/// cut-off response for a short one.
struct ResponseStream {
    send: SendStream,
    finished: bool,
}

impl ResponseStream {
    /// Writes one response frame, finishes the stream and waits (up to `write_timeout`) until
    /// the client has acknowledged it, so that closing the connection right after, as on
    /// shutdown, does not lose it.
    async fn respond(
        &mut self,
        status: Status,
        request_id: u32,
        payload: &[u8],
        max_payload: u32,
        write_timeout: Duration,
    ) {
        let frame = match frame::encode_response(status.as_u8(), request_id, payload, max_payload) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(request_id, error = %e, "response exceeds the payload limit");
                let body = RpcError::internal("the response exceeds the payload limit").to_proto().encode_to_vec();
                match frame::encode_response(Status::Internal.as_u8(), request_id, &body, max_payload) {
                    Ok(frame) => frame,
                    Err(_) => return,
                }
            }
        };
        let deadline = Instant::now() + write_timeout;
        match tokio::time::timeout_at(deadline, self.send.write_chunk(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(request_id, error = %e, "cannot write response");
                return;
            }
            Err(_) => {
                tracing::debug!(request_id, "response write timed out");
                return;
            }
        }
        if self.send.finish().is_err() {
            return;
        }
        self.finished = true;
        let _ = tokio::time::timeout_at(deadline, self.send.stopped()).await;
    }

    async fn respond_error(&mut self, request_id: u32, error: &RpcError, shared: &ServerOptions) {
        let status = if error.status == Status::Ok { Status::Internal } else { error.status };
        let body = error.to_proto().encode_to_vec();
        self.respond(status, request_id, &body, shared.max_payload, shared.write_timeout).await;
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(codes::RESPONSE_ABANDONED);
        }
    }
}

/// Both halves of an RPC stream.
struct Stream {
    send: SendStream,
    recv: RecvStream,
}

/// The request frame of one stream, or why there is none.
enum RequestRead {
    /// A complete frame for a routed method, and its share of the connection's request budget.
    Complete(RequestHeader, Bytes, OwnedSemaphorePermit),
    /// The request is refused with this error; the rest of the stream is not read.
    Refused(u32, RpcError),
    /// The peer reset the stream or the connection is gone: nobody to answer.
    Abandoned,
}

async fn read_request<S: Clone + Send + Sync + 'static>(
    recv: &mut RecvStream,
    router: &Router<S>,
    opts: &ServerOptions,
    budget: Arc<Semaphore>,
    shutting_down: bool,
) -> RequestRead {
    let deadline = Instant::now() + opts.read_timeout;
    let too_slow = || RpcError::deadline_exceeded("the request frame did not arrive within the read timeout");

    let mut head = [0u8; REQUEST_HEADER_LEN];
    match tokio::time::timeout_at(deadline, recv.read_exact(&mut head)).await {
        Ok(Ok(())) => {}
        Ok(Err(ReadExactError::FinishedEarly(n))) => {
            return RequestRead::Refused(
                0,
                RpcError::bad_request(format!("truncated request header: {n} of {REQUEST_HEADER_LEN} bytes")),
            );
        }
        Ok(Err(ReadExactError::ReadError(_))) => return RequestRead::Abandoned,
        Err(_) => return RequestRead::Refused(0, too_slow()),
    }
    let header = RequestHeader::decode(&head);
    let request_id = header.request_id;

    if shutting_down {
        return RequestRead::Refused(request_id, RpcError::unavailable("the server is shutting down"));
    }
    let len = match frame::check_payload_len(header.payload_len, opts.max_payload) {
        Ok(len) => len,
        Err(e) => return RequestRead::Refused(request_id, RpcError::payload_too_large(e.to_string())),
    };
    if !router.has_route(header.method_id) {
        return RequestRead::Refused(
            request_id,
            RpcError::unknown_method(format!("unknown method {}", header.method_id)),
        );
    }
    let share = match tokio::time::timeout_at(deadline, budget.acquire_many_owned(header.payload_len)).await {
        Ok(Ok(share)) => share,
        Ok(Err(_)) | Err(_) => {
            return RequestRead::Refused(
                request_id,
                RpcError::unavailable("too many request bytes in flight on this connection").with_retry_after_ms(1000),
            );
        }
    };
    match tokio::time::timeout_at(deadline, read_payload(recv, len)).await {
        Ok(Ok(body)) => match poll_end(recv) {
            StreamEnd::Finished | StreamEnd::Open => RequestRead::Complete(header, body, share),
            StreamEnd::Trailing(extra) => RequestRead::Refused(
                request_id,
                RpcError::bad_request(format!("{extra} or more bytes after the request frame: one request per stream")),
            ),
            StreamEnd::Failed => RequestRead::Abandoned,
        },
        Ok(Err(ReadExactError::FinishedEarly(n))) => RequestRead::Refused(
            request_id,
            RpcError::bad_request(format!("truncated request payload: {n} of {len} bytes")),
        ),
        Ok(Err(ReadExactError::ReadError(_))) => RequestRead::Abandoned,
        Err(_) => RequestRead::Refused(request_id, too_slow()),
    }
}

async fn handle_stream<S: Clone + Send + Sync + 'static>(
    shared: Arc<Shared<S>>,
    state: Arc<ConnectionState<S>>,
    request_budget: Arc<Semaphore>,
    stream: Stream,
    shutting_down: bool,
) {
    let opts = &shared.opts;
    let Stream { send, mut recv } = stream;
    let mut response = ResponseStream { send, finished: false };
    let read = read_request(&mut recv, &shared.router, opts, request_budget, shutting_down).await;
    // Held until the response is written: the body lives that long.
    let (header, body, _share) = match read {
        RequestRead::Complete(header, body, share) => (header, body, share),
        RequestRead::Refused(request_id, error) => {
            // Tell the client to stop sending whatever remains; the response says why.
            let _ = recv.stop(codes::REQUEST_REFUSED);
            response.respond_error(request_id, &error, opts).await;
            return;
        }
        RequestRead::Abandoned => return,
    };

    let deadline = shared.router.deadline(header.method_id).unwrap_or(opts.request_deadline);
    let needs_session = shared.router.needs_session(header.method_id);
    let ctx = Context::new(state, header.method_id, header.request_id, needs_session);
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| shared.router.call(ctx, body))) {
        Ok(Some(call)) => match tokio::time::timeout(deadline, CatchUnwind(call)).await {
            Ok(Ok(result)) => result,
            Ok(Err(Panicked)) => Err(handler_panicked(header)),
            Err(_) => {
                tracing::warn!(method_id = header.method_id, deadline_ms = deadline.as_millis(), "rpc cut off");
                Err(RpcError::deadline_exceeded(format!("no response within {} ms", deadline.as_millis())))
            }
        },
        // `read_request` only completes for routed methods.
        Ok(None) => Err(RpcError::unknown_method(format!("unknown method {}", header.method_id))),
        Err(_) => Err(handler_panicked(header)),
    };
    match outcome {
        Ok(payload) => {
            response.respond(Status::Ok, header.request_id, &payload, opts.max_payload, opts.write_timeout).await;
        }
        Err(error) => response.respond_error(header.request_id, &error, opts).await,
    }
    // `read_request` saw the request's end unless it had not arrived yet; if it has since, it
    // is read now, so dropping `recv` does not stop a stream the client already finished.
    let _ = poll_end(&mut recv);
}

fn handler_panicked(header: RequestHeader) -> RpcError {
    tracing::error!(method_id = header.method_id, request_id = header.request_id, "handler panicked");
    RpcError::internal("internal error")
}

/// Marker for a handler that panicked.
struct Panicked;

/// Turns a panic while polling the handler into [`Panicked`], so the client gets INTERNAL
/// instead of a reset stream.
struct CatchUnwind(BoxFuture<Result<Bytes, RpcError>>);

impl Future for CatchUnwind {
    type Output = Result<Result<Bytes, RpcError>, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}
