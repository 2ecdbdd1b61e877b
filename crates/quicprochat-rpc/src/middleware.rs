//! Middleware: layers every call passes through on its way to the handler.
//!
//! A [`Layer`] sees the call's [`Context`] and raw request payload and decides what happens:
//! pass it on with [`Next::run`] (and look at the outcome), or answer itself (a rate limit, a
//! refused session). Layers are added with [`crate::Router::layer`]; the first added is the
//! outermost. Handlers stay plain typed functions: authentication, rate limits, metrics and
//! audit live here, applied once for every method.
//!
//! ```text
//! request → layer 1 → layer 2 → … → decode → handler → encode
//!                                                          ↓
//! response ← layer 1 ← layer 2 ← … ←───────────────────────┘
//! ```
//!
//! [`Metrics`] and [`Trace`] are the layers this crate provides; the server adds its own
//! (session checks, rate limits, audit) with [`from_fn`] or by implementing [`Layer`].

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::error::RpcError;
use crate::router::{BoxFuture, Context, Handler};
use crate::status::Status;

/// What a layer or handler produces: the encoded response payload, or the error for the wire.
pub type CallResult = Result<Bytes, RpcError>;

/// One piece of middleware around every call.
pub trait Layer<S>: Send + Sync + 'static {
    /// Handles one call: usually does something, runs `next`, and looks at the outcome.
    fn call(&self, ctx: Context<S>, request: Bytes, next: Next<S>) -> BoxFuture<CallResult>;
}

/// The rest of the chain after a layer: the following layers, then the method's handler.
pub struct Next<S> {
    layers: Arc<[Arc<dyn Layer<S>>]>,
    position: usize,
    endpoint: Arc<Handler<S>>,
}

impl<S> std::fmt::Debug for Next<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next").field("remaining_layers", &self.layers.len().saturating_sub(self.position)).finish()
    }
}

impl<S: Clone + Send + Sync + 'static> Next<S> {
    pub(crate) fn new(layers: Arc<[Arc<dyn Layer<S>>]>, endpoint: Arc<Handler<S>>) -> Self {
        Self { layers, position: 0, endpoint }
    }

    /// Passes the call on to the next layer, or to the handler after the last one.
    pub fn run(self, ctx: Context<S>, request: Bytes) -> BoxFuture<CallResult> {
        match self.layers.get(self.position).cloned() {
            Some(layer) => {
                let next = Self { layers: self.layers, position: self.position + 1, endpoint: self.endpoint };
                layer.call(ctx, request, next)
            }
            None => (self.endpoint)(ctx, request),
        }
    }
}

/// A layer from an async closure `|ctx, request, next| async move { … next.run(ctx, request).await }`.
pub fn from_fn<S, F, Fut>(f: F) -> FnLayer<F>
where
    F: Fn(Context<S>, Bytes, Next<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    FnLayer(f)
}

/// The layer [`from_fn`] makes.
#[derive(Clone, Debug)]
pub struct FnLayer<F>(F);

impl<S, F, Fut> Layer<S> for FnLayer<F>
where
    S: 'static,
    F: Fn(Context<S>, Bytes, Next<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    fn call(&self, ctx: Context<S>, request: Bytes, next: Next<S>) -> BoxFuture<CallResult> {
        Box::pin((self.0)(ctx, request, next))
    }
}

/// Records `qpc_rpc_requests_total{method, status}` and `qpc_rpc_duration_seconds{method}`
/// for every call. A call cut off by its deadline is counted with status
/// `DEADLINE_EXCEEDED`, so place this layer outermost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics;

impl<S: Clone + Send + Sync + 'static> Layer<S> for Metrics {
    fn call(&self, ctx: Context<S>, request: Bytes, next: Next<S>) -> BoxFuture<CallResult> {
        let method = quicprochat_proto::method_name(ctx.method_id()).unwrap_or("unknown");
        Box::pin(async move {
            let mut record = Recorder { method, started: Instant::now(), status: None };
            let result = next.run(ctx, request).await;
            record.status = Some(result.as_ref().map_or_else(|e| e.status, |_| Status::Ok));
            result
        })
    }
}

/// Records on drop, so a call whose future is dropped (its deadline passed) is counted too.
struct Recorder {
    method: &'static str,
    started: Instant,
    status: Option<Status>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(Status::DeadlineExceeded);
        metrics::counter!("qpc_rpc_requests_total", "method" => self.method, "status" => status.name()).increment(1);
        metrics::histogram!("qpc_rpc_duration_seconds", "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Logs every call at debug level: connection, method, request id, status and duration.
/// Never the payload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trace;

impl<S: Clone + Send + Sync + 'static> Layer<S> for Trace {
    fn call(&self, ctx: Context<S>, request: Bytes, next: Next<S>) -> BoxFuture<CallResult> {
        Box::pin(async move {
            let (connection_id, method_id, request_id) = (ctx.connection_id(), ctx.method_id(), ctx.request_id());
            let started = Instant::now();
            let result = next.run(ctx, request).await;
            let status = result.as_ref().map_or_else(|e| e.status, |_| Status::Ok);
            tracing::debug!(
                connection_id,
                method_id,
                request_id,
                status = status.name(),
                elapsed_ms = started.elapsed().as_millis(),
                "rpc"
            );
            result
        })
    }
}
