//! A real server on 127.0.0.1:0 with a small router, and clients connected to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::method;
use quicprochat_proto::v1;
use quicprochat_rpc::{
    Context, Error, Layer, Next, Router, RpcClient, RpcError, RpcServer, ServerOptions, ServerTrust, client_config,
    generate_self_signed, middleware,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Upper bound for waiting on anything in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// The session type of the test server: the user name.
pub type Session = String;

/// Health: no session needed.
pub const HEALTH: u16 = method::HEALTH;
/// Binds the connection to the session named by the token (`ResumeRequest`).
pub const LOGIN: u16 = method::RESUME;
/// Clears the session (`LogoutRequest`).
pub const LOGOUT: u16 = method::LOGOUT;
/// Authenticated: answers `HealthResponse { status: <session> }`.
pub const WHOAMI: u16 = 9001;
/// Waits until the test opens the gate, then answers like Health.
pub const SLOW: u16 = 9002;
/// Pushes `count` events, then answers.
pub const PUSH: u16 = 9003;
/// Never answers; its route deadline is [`NEVER_DEADLINE`].
pub const NEVER: u16 = 9004;
/// Panics.
pub const PANIC: u16 = 9005;

/// Route deadline of [`NEVER`].
pub const NEVER_DEADLINE: Duration = Duration::from_millis(200);
/// The server's read timeout in these tests.
pub const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// The server's payload limit in these tests (smaller than the client's default).
pub const SERVER_MAX_PAYLOAD: u32 = 1 << 20;
/// Event type of the pushed events.
pub const EVENT: u16 = quicprochat_proto::event::SESSION_EXPIRED;

/// Request of [`PUSH`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    /// How many events to push.
    #[prost(uint32, tag = "1")]
    pub count: u32,
}

/// What the slow route shares with the test.
#[derive(Debug)]
pub struct SlowRoute {
    /// Each slow call takes one permit; the test adds them.
    pub gate: Semaphore,
    /// Told when a slow call has started waiting.
    pub entered: mpsc::Sender<()>,
}

/// A running server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate, pinned by the clients.
    pub cert_der: Vec<u8>,
    /// Cancels `serve`.
    pub shutdown: CancellationToken,
    /// Owns the `serve` task.
    pub task: JoinSet<Result<(), Error>>,
    /// The slow route's gate.
    pub slow: Arc<SlowRoute>,
    /// Receives a message per slow call that started waiting.
    pub entered: mpsc::Receiver<()>,
    /// Receives `(connection_id, session)` per ended connection.
    pub disconnects: mpsc::Receiver<(u64, Option<Session>)>,
    /// What the test layers saw, in order: `outer>METHOD`, `inner>METHOD(authed)`, `inner<STATUS`,
    /// `outer<STATUS`.
    pub layer_log: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The session the test's gate layer refuses with FORBIDDEN before any handler runs.
pub const BANNED: &str = "mallory";

impl TestServer {
    /// Starts a server with the test router.
    pub async fn start() -> TestServer {
        let cert = generate_self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (entered_tx, entered) = mpsc::channel(64);
        let slow = Arc::new(SlowRoute { gate: Semaphore::new(0), entered: entered_tx });
        let (disconnect_tx, disconnects) = mpsc::channel(64);
        let layer_log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let router = router(Arc::clone(&slow), disconnect_tx)
            .layer(log_layer("outer", &layer_log))
            .layer(gate_layer())
            .layer(log_layer("inner", &layer_log));
        let opts = ServerOptions {
            max_payload: SERVER_MAX_PAYLOAD,
            read_timeout: READ_TIMEOUT,
            shutdown_grace: Duration::from_secs(5),
            ..ServerOptions::default()
        };
        let server = RpcServer::bind("127.0.0.1:0".parse().unwrap(), &cert, router, opts).unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let mut task = JoinSet::new();
        task.spawn(server.serve(shutdown.clone()));
        TestServer { addr, cert_der: cert.cert_der.clone(), shutdown, task, slow, entered, disconnects, layer_log }
    }

    /// A client that pins this server's certificate.
    pub async fn client(&self) -> RpcClient {
        let config = client_config(&ServerTrust::Pinned(self.cert_der.clone())).unwrap();
        tokio::time::timeout(WAIT, RpcClient::connect(self.addr, "localhost", config)).await.unwrap().unwrap()
    }

    /// Waits until a slow call has started.
    pub async fn slow_call_entered(&mut self) {
        tokio::time::timeout(WAIT, self.entered.recv()).await.unwrap().unwrap();
    }

    /// Lets `n` slow calls finish.
    pub fn open_gate(&self, n: usize) {
        self.slow.gate.add_permits(n);
    }
}

/// Logs the method on the way in and the status on the way out.
fn log_layer(name: &'static str, log: &Arc<std::sync::Mutex<Vec<String>>>) -> impl Layer<Session> {
    let log = Arc::clone(log);
    middleware::from_fn(move |ctx: Context<Session>, request: Bytes, next: Next<Session>| {
        let log = Arc::clone(&log);
        async move {
            let authed = if ctx.needs_session() { "(authed)" } else { "" };
            log.lock().unwrap().push(format!("{name}>{}{authed}", ctx.method_id()));
            let result = next.run(ctx, request).await;
            let status = result.as_ref().map_or_else(|e| e.status, |_| quicprochat_rpc::Status::Ok);
            log.lock().unwrap().push(format!("{name}<{}", status.name()));
            result
        }
    })
}

/// Refuses every call of the [`BANNED`] session before it reaches the handler.
fn gate_layer() -> impl Layer<Session> {
    middleware::from_fn(|ctx: Context<Session>, request: Bytes, next: Next<Session>| async move {
        if ctx.session().as_deref() == Some(BANNED) {
            return Err(RpcError::forbidden("banned"));
        }
        next.run(ctx, request).await
    })
}

fn health() -> v1::HealthResponse {
    v1::HealthResponse { status: "serving".into(), version: "test".into() }
}

fn router(slow: Arc<SlowRoute>, disconnects: mpsc::Sender<(u64, Option<Session>)>) -> Router<Session> {
    Router::new()
        .route(HEALTH, |_ctx: Context<Session>, _req: v1::HealthRequest| async { Ok(health()) })
        .route(LOGIN, |ctx: Context<Session>, req: v1::ResumeRequest| async move {
            let name = String::from_utf8(req.session_token.to_vec())
                .map_err(|_| RpcError::bad_request("token is not UTF-8"))?;
            if name.is_empty() {
                return Err(RpcError::unauthenticated("empty token"));
            }
            ctx.bind_session(name.clone());
            Ok(v1::ResumeResponse { username: name, ..Default::default() })
        })
        .route(LOGOUT, |ctx: Context<Session>, _req: v1::LogoutRequest| async move {
            ctx.clear_session();
            Ok(v1::LogoutResponse {})
        })
        .route_authed(WHOAMI, |_ctx: Context<Session>, session: Session, _req: v1::HealthRequest| async move {
            Ok(v1::HealthResponse { status: session, version: String::new() })
        })
        .route(SLOW, move |_ctx: Context<Session>, _req: v1::HealthRequest| {
            let slow = Arc::clone(&slow);
            async move {
                let _ = slow.entered.send(()).await;
                let permit = slow.gate.acquire().await.map_err(|_| RpcError::unavailable("gate closed"))?;
                permit.forget();
                Ok(health())
            }
        })
        .route(PUSH, |ctx: Context<Session>, req: PushRequest| async move {
            let push = ctx.push();
            for i in 0..req.count {
                push.try_push(EVENT, &v1::SessionExpired { reason: i.to_string() })
                    .map_err(|e| RpcError::queue_full(e.to_string(), 0))?;
            }
            Ok(PushRequest { count: req.count })
        })
        .route(NEVER, |_ctx: Context<Session>, _req: v1::HealthRequest| async {
            std::future::pending::<Result<v1::HealthResponse, RpcError>>().await
        })
        .with_deadline(NEVER, NEVER_DEADLINE)
        .route(PANIC, |_ctx: Context<Session>, _req: v1::HealthRequest| async {
            let fail = true;
            if fail {
                panic!("handler bug");
            }
            Ok(health())
        })
        .on_disconnect(move |id, session| {
            let _ = disconnects.try_send((id, session));
        })
}
