//! The server's middleware: session checks, rate limits and the audit of refusals, applied
//! around every method by [`crate::routes::router`] (with the RPC layer's own
//! [`Metrics`](quicprochat_rpc::middleware::Metrics) and
//! [`Trace`](quicprochat_rpc::middleware::Trace)). Handlers and services never repeat these
//! checks.
//!
//! Order, outermost first: metrics → trace → audit → session check → rate limit → handler.
//! The audit layer sits outside the checks so it sees their refusals.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use quicprochat_proto::{event, method, v1};
use quicprochat_rpc::middleware::CallResult;
use quicprochat_rpc::{BoxFuture, Context, Layer, Next, RpcError, Status};

use crate::ratelimit::{Rate, RateLimiter};
use crate::session::Session;
use crate::state::AppState;
use crate::store::{AuditKind, DeviceId, UserId};

type Ctx = Context<Session>;

/// Refuses calls of authenticated methods whose session was revoked (logout elsewhere, device
/// revoked, account deleted) or has expired since the connection was bound. The connection
/// is unbound; an expiry is also announced with a `SessionExpired` push.
#[derive(Debug)]
pub struct SessionCheck {
    state: Arc<AppState>,
}

impl SessionCheck {
    /// The check over `state`'s revocation list and clock.
    pub fn new(state: &Arc<AppState>) -> Self {
        Self { state: Arc::clone(state) }
    }
}

impl Layer<Session> for SessionCheck {
    fn call(&self, ctx: Ctx, request: Bytes, next: Next<Session>) -> BoxFuture<CallResult> {
        let session = if ctx.needs_session() { ctx.session() } else { None };
        let Some(session) = session else { return next.run(ctx, request) };
        if self.state.revoked.is_revoked(&session.token_hash) {
            ctx.clear_session();
            self.state.hub.connection_closed(ctx.connection_id());
            return refuse(RpcError::unauthenticated("session revoked"));
        }
        if session.expires_ms <= self.state.clock.now_ms() {
            ctx.clear_session();
            let _ = ctx.push().try_push(event::SESSION_EXPIRED, &v1::SessionExpired { reason: "expired".into() });
            self.state.hub.connection_closed(ctx.connection_id());
            return refuse(RpcError::unauthenticated("session expired"));
        }
        next.run(ctx, request)
    }
}

/// Request rates the server enforces, per method class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// `Enqueue` / `BatchEnqueue` per sending device.
    pub enqueue: Rate,
    /// `RegisterStart`, `LoginStart` and `Resume` per client IP address: bounds password
    /// guessing, OPAQUE work and username probing from one place.
    pub auth: Rate,
    /// `ResolveUser`, `ResolveIdentity`, `FetchKeyPackages` and `FetchHybridKey(s)` per
    /// account: bounds directory enumeration and key package draining.
    pub lookup: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enqueue: Rate { per_minute: 100, burst: 20 },
            auth: Rate { per_minute: 60, burst: 20 },
            lookup: Rate { per_minute: 300, burst: 60 },
        }
    }
}

/// Token buckets per method class; a call over its rate gets RATE_LIMITED with
/// `retry_after_ms` and never reaches its handler. (A retried `Enqueue` counts like any
/// other call: when limited, the client retries later and then gets the original answer.)
#[derive(Debug)]
pub struct RateLimit {
    state: Arc<AppState>,
    enqueue: RateLimiter<DeviceId>,
    auth: RateLimiter<IpAddr>,
    lookup: RateLimiter<UserId>,
}

impl RateLimit {
    /// Limits at `rates`, timed by `state`'s clock.
    pub fn new(state: &Arc<AppState>, rates: RateLimits) -> Self {
        Self {
            state: Arc::clone(state),
            enqueue: RateLimiter::new(rates.enqueue),
            auth: RateLimiter::new(rates.auth),
            lookup: RateLimiter::new(rates.lookup),
        }
    }

    fn check(&self, ctx: &Ctx) -> Result<(), u64> {
        let now = self.state.clock.now_ms();
        match ctx.method_id() {
            method::ENQUEUE | method::BATCH_ENQUEUE => match ctx.session().and_then(|s| s.device_id) {
                Some(device) => self.enqueue.check(device, now),
                // The service refuses a session without a device.
                None => Ok(()),
            },
            method::REGISTER_START | method::LOGIN_START | method::RESUME => {
                self.auth.check(ctx.remote_addr().ip(), now)
            }
            method::RESOLVE_USER
            | method::RESOLVE_IDENTITY
            | method::FETCH_KEY_PACKAGES
            | method::FETCH_HYBRID_KEY
            | method::FETCH_HYBRID_KEYS => match ctx.session() {
                Some(session) => self.lookup.check(session.user_id, now),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

impl Layer<Session> for RateLimit {
    fn call(&self, ctx: Ctx, request: Bytes, next: Next<Session>) -> BoxFuture<CallResult> {
        match self.check(&ctx) {
            Ok(()) => next.run(ctx, request),
            Err(retry_after_ms) => {
                metrics::counter!(
                    "qpc_rate_limited_total",
                    "method" => quicprochat_proto::method_name(ctx.method_id()).unwrap_or("unknown")
                )
                .increment(1);
                refuse(RpcError::rate_limited("too many requests", retry_after_ms))
            }
        }
    }
}

/// Writes an audit log entry for every call refused for who made it — UNAUTHENTICATED,
/// FORBIDDEN or RATE_LIMITED — with the method, the status and the account when one is
/// bound. What a service does (registration, logins, devices, deletion) it audits itself;
/// this layer records the refusals, including those of the layers inside it.
///
/// Entries are themselves rate limited per client address, so a flood of refused calls
/// cannot turn into a flood of database writes; what is skipped is counted in
/// `qpc_audit_suppressed_total`.
#[derive(Debug)]
pub struct Audit {
    state: Arc<AppState>,
    writes: Arc<RateLimiter<IpAddr>>,
}

impl Audit {
    /// Audits into `state`'s store.
    pub fn new(state: &Arc<AppState>) -> Self {
        Self { state: Arc::clone(state), writes: Arc::new(RateLimiter::new(Rate { per_minute: 60, burst: 20 })) }
    }
}

impl Layer<Session> for Audit {
    fn call(&self, ctx: Ctx, request: Bytes, next: Next<Session>) -> BoxFuture<CallResult> {
        let state = Arc::clone(&self.state);
        let writes = Arc::clone(&self.writes);
        Box::pin(async move {
            let before = ctx.session();
            let (method_id, ip) = (ctx.method_id(), ctx.remote_addr().ip());
            let result = next.run(ctx, request).await;
            // A failed `LoginFinish` is audited by the login service, with the account it targeted.
            if let Err(error) = &result
                && method_id != method::LOGIN_FINISH
                && matches!(error.status, Status::Unauthenticated | Status::Forbidden | Status::RateLimited)
            {
                if writes.check(ip, state.clock.now_ms()).is_ok() {
                    let method = quicprochat_proto::method_name(method_id).unwrap_or("unknown");
                    let (user, device) = before.map_or((None, None), |s| (Some(s.user_id), s.device_id));
                    state.audit_refusal(AuditKind::Refused, user, device, method, error.status.name()).await;
                } else {
                    metrics::counter!("qpc_audit_suppressed_total").increment(1);
                }
            }
            result
        })
    }
}

fn refuse(error: RpcError) -> BoxFuture<CallResult> {
    Box::pin(std::future::ready(Err(error)))
}
