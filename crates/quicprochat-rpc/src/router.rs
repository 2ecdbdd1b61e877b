//! Dispatch from method ids to typed handlers, and the per-call [`Context`].
//!
//! A handler is a typed `async fn(Context<S>, Request) -> Result<Response, RpcError>`; it never
//! sees frames or streams. Decoding the request (BAD_REQUEST on failure), the session check of
//! [`Router::route_authed`] (UNAUTHENTICATED) and encoding the response happen here, once.
//! Cross-cutting concerns (metrics, rate limits, audit, …) are [`crate::middleware`] layers
//! added with [`Router::layer`].

use std::collections::HashMap;
use std::fmt;
use std::future::{self, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use crate::error::RpcError;
use crate::middleware::{Layer, Next};
use crate::push::PushSender;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A type-erased handler: request payload in, response payload out.
pub(crate) type Handler<S> = Box<dyn Fn(Context<S>, Bytes) -> BoxFuture<Result<Bytes, RpcError>> + Send + Sync>;

type DisconnectHook<S> = Box<dyn Fn(u64, Option<S>) + Send + Sync>;

/// The table of methods a server answers, generic over the server's session type `S`.
pub struct Router<S> {
    routes: HashMap<u16, Route<S>>,
    layers: Vec<Arc<dyn Layer<S>>>,
    /// `layers`, frozen on first dispatch (the chain every call walks).
    chain: std::sync::OnceLock<Arc<[Arc<dyn Layer<S>>]>>,
    deadlines: HashMap<u16, Duration>,
    on_disconnect: Option<DisconnectHook<S>>,
}

struct Route<S> {
    handler: Arc<Handler<S>>,
    needs_session: bool,
}

impl<S: Clone + Send + Sync + 'static> Default for Router<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Router<S> {
    /// An empty router: every method answers UNKNOWN_METHOD.
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            layers: Vec::new(),
            chain: std::sync::OnceLock::new(),
            deadlines: HashMap::new(),
            on_disconnect: None,
        }
    }

    /// Registers the handler of a method callable without a session. Registering a method id
    /// twice replaces the earlier handler (and is a bug, caught by a debug assertion).
    pub fn route<Req, Resp, F, Fut>(self, method_id: u16, handler: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Context<S>, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.insert(
            method_id,
            false,
            Box::new(move |ctx: Context<S>, body: Bytes| match decode::<Req>(method_id, body) {
                Ok(request) => respond(handler(ctx, request)),
                Err(e) => Box::pin(future::ready(Err(e))),
            }),
        )
    }

    /// Registers the handler of a method that needs a session. When the connection is not
    /// bound to one ([`Context::bind_session`]), the caller gets UNAUTHENTICATED and the
    /// handler is not called; otherwise the handler receives the session.
    pub fn route_authed<Req, Resp, F, Fut>(self, method_id: u16, handler: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Context<S>, S, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.insert(
            method_id,
            true,
            Box::new(move |ctx: Context<S>, body: Bytes| {
                let Some(session) = ctx.session() else {
                    return Box::pin(future::ready(Err(RpcError::unauthenticated("this method requires a session"))));
                };
                match decode::<Req>(method_id, body) {
                    Ok(request) => respond(handler(ctx, session, request)),
                    Err(e) => Box::pin(future::ready(Err(e))),
                }
            }),
        )
    }

    /// Adds a middleware layer around every method. The first layer added is the outermost:
    /// it sees the call first and the outcome last. Layers must be added before the router
    /// serves its first call.
    pub fn layer(mut self, layer: impl Layer<S>) -> Self {
        debug_assert!(self.chain.get().is_none(), "layer added after the router started serving");
        self.layers.push(Arc::new(layer));
        self
    }

    /// Gives one method its own deadline instead of
    /// [`crate::ServerOptions::request_deadline`], e.g. a long poll that may wait longer.
    /// May be called before or after the method is routed.
    pub fn with_deadline(mut self, method_id: u16, deadline: Duration) -> Self {
        self.deadlines.insert(method_id, deadline);
        self
    }

    /// Registers a hook called once when a connection ends, with its id and the session it
    /// was bound to at that moment, so the server can drop what it keeps per connection
    /// (e.g. push registrations). It runs on the connection's task: keep it short.
    pub fn on_disconnect<F>(mut self, hook: F) -> Self
    where
        F: Fn(u64, Option<S>) + Send + Sync + 'static,
    {
        self.on_disconnect = Some(Box::new(hook));
        self
    }

    /// Whether a handler is registered for `method_id`.
    pub fn has_route(&self, method_id: u16) -> bool {
        self.routes.contains_key(&method_id)
    }

    /// The registered method ids, in ascending order.
    pub fn method_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.routes.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn insert(mut self, method_id: u16, needs_session: bool, handler: Handler<S>) -> Self {
        let previous = self.routes.insert(method_id, Route { handler: Arc::new(handler), needs_session });
        debug_assert!(previous.is_none(), "method {method_id} routed twice");
        self
    }

    /// Starts the call of a routed method through every layer to its handler; `None` for an
    /// unrouted method.
    pub(crate) fn call(&self, ctx: Context<S>, body: Bytes) -> Option<BoxFuture<Result<Bytes, RpcError>>> {
        let route = self.routes.get(&ctx.method_id())?;
        let chain = self.chain.get_or_init(|| self.layers.iter().cloned().collect());
        Some(Next::new(Arc::clone(chain), Arc::clone(&route.handler)).run(ctx, body))
    }

    /// Whether `method_id` was routed with [`Self::route_authed`].
    pub(crate) fn needs_session(&self, method_id: u16) -> bool {
        self.routes.get(&method_id).is_some_and(|route| route.needs_session)
    }

    pub(crate) fn deadline(&self, method_id: u16) -> Option<Duration> {
        self.deadlines.get(&method_id).copied()
    }

    pub(crate) fn disconnected(&self, connection_id: u64, session: Option<S>) {
        if let Some(hook) = &self.on_disconnect {
            hook(connection_id, session);
        }
    }
}

impl<S> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<u16> = self.routes.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("Router")
            .field("methods", &ids)
            .field("layers", &self.layers.len())
            .field("deadlines", &self.deadlines)
            .field("on_disconnect", &self.on_disconnect.is_some())
            .finish()
    }
}

fn decode<Req: prost::Message + Default>(method_id: u16, body: Bytes) -> Result<Req, RpcError> {
    Req::decode(body).map_err(|e| RpcError::bad_request(format!("malformed request for method {method_id}: {e}")))
}

fn respond<Resp, Fut>(response: Fut) -> BoxFuture<Result<Bytes, RpcError>>
where
    Resp: prost::Message + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    Box::pin(async move { Ok(Bytes::from(response.await?.encode_to_vec())) })
}

/// What one connection shares among its calls.
pub(crate) struct ConnectionState<S> {
    id: u64,
    remote: SocketAddr,
    session: Mutex<Option<S>>,
    push: PushSender,
}

impl<S> ConnectionState<S> {
    pub(crate) fn new(id: u64, remote: SocketAddr, push: PushSender) -> Self {
        Self { id, remote, session: Mutex::new(None), push }
    }

    /// Removes and returns the session, when the connection ends.
    pub(crate) fn take_session(&self) -> Option<S> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What a handler knows about its call and connection. Cheap to clone.
pub struct Context<S> {
    connection: Arc<ConnectionState<S>>,
    method_id: u16,
    request_id: u32,
    needs_session: bool,
}

impl<S> Clone for Context<S> {
    fn clone(&self) -> Self {
        Self {
            connection: Arc::clone(&self.connection),
            method_id: self.method_id,
            request_id: self.request_id,
            needs_session: self.needs_session,
        }
    }
}

impl<S: Clone> Context<S> {
    pub(crate) fn new(
        connection: Arc<ConnectionState<S>>,
        method_id: u16,
        request_id: u32,
        needs_session: bool,
    ) -> Self {
        Self { connection, method_id, request_id, needs_session }
    }

    /// Whether the method was routed with [`Router::route_authed`]: the handler will not run
    /// without a session. Layers use it to apply session checks to exactly those methods.
    pub fn needs_session(&self) -> bool {
        self.needs_session
    }

    fn session_slot(&self) -> std::sync::MutexGuard<'_, Option<S>> {
        self.connection.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session the connection is bound to, if any.
    pub fn session(&self) -> Option<S> {
        self.session_slot().clone()
    }

    /// Binds the connection to `session` (replacing any earlier one); later
    /// [`Router::route_authed`] calls on this connection receive it.
    pub fn bind_session(&self, session: S) {
        *self.session_slot() = Some(session);
    }

    /// Unbinds the connection; later authenticated calls get UNAUTHENTICATED.
    pub fn clear_session(&self) {
        *self.session_slot() = None;
    }

    /// This connection's push handle.
    pub fn push(&self) -> PushSender {
        self.connection.push.clone()
    }

    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote
    }

    /// The connection's id, unique among the connections of one [`crate::RpcServer`].
    pub fn connection_id(&self) -> u64 {
        self.connection.id
    }

    /// The method being called.
    pub fn method_id(&self) -> u16 {
        self.method_id
    }

    /// The request id the client chose for this call.
    pub fn request_id(&self) -> u32 {
        self.request_id
    }
}

impl<S> fmt::Debug for Context<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The session is deliberately not printed: it may hold secrets.
        f.debug_struct("Context")
            .field("connection_id", &self.connection.id)
            .field("method_id", &self.method_id)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}
