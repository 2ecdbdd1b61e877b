//! The server's middleware: session checks, rate limits and the audit of refusals, applied
//! around every method by [`crate::routes::router`] (with the RPC layer's own
//! [`Metrics`](quicprochat_rpc::middleware::Metrics) and
//! [`Trace`](quicprochat_rpc::middleware::Trace)). Handlers and services never repeat these
//! checks.
//!
//! Order, outermost first: metrics → trace → audit → session check → rate limit → handler.
//! The audit layer sits outside the checks so it sees their refusals.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
/// revoked, account deleted — on this node or, announced on the cluster bus, on another) or has
/// expired since the connection was bound. The connection is unbound; an expiry is also
/// announced with a `SessionExpired` push.
///
/// On a cluster, a bound session is also re-read from the store once every
/// [`SESSION_RECHECK_MS`] (not on every call): a revocation whose announcement was lost (the
/// node's bus connection was down) still ends the session within that time.
#[derive(Debug)]
pub struct SessionCheck {
    state: Arc<AppState>,
    /// When each bound session was last found in the store (cluster only).
    verified: Arc<Mutex<HashMap<[u8; 32], u64>>>,
}

/// On a cluster, how often a bound session is re-read from the store.
pub const SESSION_RECHECK_MS: u64 = 30_000;

/// Most sessions whose last check is remembered; beyond, the oldest are forgotten (and counted
/// from their next call).
const MAX_VERIFIED_SESSIONS: usize = 100_000;

impl SessionCheck {
    /// The check over `state`'s revocation list and clock.
    pub fn new(state: &Arc<AppState>) -> Self {
        Self { state: Arc::clone(state), verified: Arc::default() }
    }

    /// Whether `hash` is due for a re-read. A session seen for the first time was just read by
    /// `LoginFinish` or `Resume` (or checked by another call): its period starts now.
    fn recheck_due(&self, hash: &[u8; 32], now_ms: u64) -> bool {
        let Ok(mut verified) = self.verified.lock() else { return false };
        if let Some(&at) = verified.get(hash) {
            return now_ms.saturating_sub(at) >= SESSION_RECHECK_MS;
        }
        if verified.len() >= MAX_VERIFIED_SESSIONS {
            verified.retain(|_, at| now_ms.saturating_sub(*at) < SESSION_RECHECK_MS);
        }
        if verified.len() < MAX_VERIFIED_SESSIONS {
            verified.insert(*hash, now_ms);
        }
        false
    }
}

impl Layer<Session> for SessionCheck {
    fn call(&self, ctx: Ctx, request: Bytes, next: Next<Session>) -> BoxFuture<CallResult> {
        let session = if ctx.needs_session() { ctx.session() } else { None };
        let Some(session) = session else { return next.run(ctx, request) };
        if self.state.revoked.is_revoked(&session.token_hash) {
            return refuse(unbind_revoked(&self.state, &ctx));
        }
        let now = self.state.clock.now_ms();
        if session.expires_ms <= now {
            ctx.clear_session();
            let _ = ctx.push().try_push(event::SESSION_EXPIRED, &v1::SessionExpired { reason: "expired".into() });
            self.state.hub.connection_closed(ctx.connection_id());
            return refuse(RpcError::unauthenticated("session expired"));
        }
        if self.state.cluster.is_none() || !self.recheck_due(&session.token_hash, now) {
            return next.run(ctx, request);
        }
        let (state, verified) = (Arc::clone(&self.state), Arc::clone(&self.verified));
        Box::pin(async move {
            match state.store.session(session.token_hash).await {
                Ok(Some(_)) => {
                    if let Ok(mut verified) = verified.lock() {
                        verified.insert(session.token_hash, now);
                    }
                }
                Ok(None) => {
                    metrics::counter!("qpc_sessions_revoked_by_recheck_total").increment(1);
                    state.revoked.revoke_all([session.token_hash], session.expires_ms);
                    if let Ok(mut verified) = verified.lock() {
                        verified.remove(&session.token_hash);
                    }
                    return Err(unbind_revoked(&state, &ctx));
                }
                // The database is away: the handler will say so; the check runs again next call.
                Err(e) => tracing::debug!(error = %e, "re-reading a bound session failed"),
            }
            next.run(ctx, request).await
        })
    }
}

/// Unbinds a connection whose session was revoked; the error to answer with.
fn unbind_revoked(state: &AppState, ctx: &Ctx) -> RpcError {
    ctx.clear_session();
    state.hub.connection_closed(ctx.connection_id());
    RpcError::unauthenticated("session revoked")
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
///
/// On a single node the buckets are in memory. On a cluster they are shared by every node
/// ([`crate::cluster::Cluster::take_token`]: one atomic statement on the database per limited
/// call), so N nodes together allow the configured rate, not N times it; if the database does
/// not answer, this node's own buckets decide meanwhile.
#[derive(Debug)]
pub struct RateLimit {
    state: Arc<AppState>,
    rates: RateLimits,
    local: Arc<LocalBuckets>,
}

#[derive(Debug)]
struct LocalBuckets {
    enqueue: RateLimiter<DeviceId>,
    auth: RateLimiter<IpAddr>,
    lookup: RateLimiter<UserId>,
}

/// The bucket a call draws from.
#[derive(Clone, Copy, Debug)]
enum Bucket {
    Enqueue(DeviceId),
    Auth(IpAddr),
    Lookup(UserId),
}

impl Bucket {
    /// The shared bucket's class and key.
    fn shared_key(self) -> (&'static str, Vec<u8>) {
        match self {
            Bucket::Enqueue(device) => (BUCKET_ENQUEUE, device.0.to_vec()),
            Bucket::Auth(IpAddr::V4(ip)) => (BUCKET_AUTH, ip.octets().to_vec()),
            Bucket::Auth(IpAddr::V6(ip)) => (BUCKET_AUTH, ip.octets().to_vec()),
            Bucket::Lookup(user) => (BUCKET_LOOKUP, user.0.to_vec()),
        }
    }
}

/// Class names of the shared buckets.
const BUCKET_ENQUEUE: &str = "enqueue";
const BUCKET_AUTH: &str = "auth";
const BUCKET_LOOKUP: &str = "lookup";

impl LocalBuckets {
    fn check(&self, bucket: Bucket, now_ms: u64) -> Result<(), u64> {
        match bucket {
            Bucket::Enqueue(device) => self.enqueue.check(device, now_ms),
            Bucket::Auth(ip) => self.auth.check(ip, now_ms),
            Bucket::Lookup(user) => self.lookup.check(user, now_ms),
        }
    }
}

impl RateLimits {
    fn of(&self, bucket: Bucket) -> Rate {
        match bucket {
            Bucket::Enqueue(_) => self.enqueue,
            Bucket::Auth(_) => self.auth,
            Bucket::Lookup(_) => self.lookup,
        }
    }

    /// Each shared bucket class with its rate, for purging idle buckets.
    pub fn classes(&self) -> [(&'static str, Rate); 3] {
        [(BUCKET_ENQUEUE, self.enqueue), (BUCKET_AUTH, self.auth), (BUCKET_LOOKUP, self.lookup)]
    }
}

impl RateLimit {
    /// Limits at `rates`, timed by `state`'s clock.
    pub fn new(state: &Arc<AppState>, rates: RateLimits) -> Self {
        let local = LocalBuckets {
            enqueue: RateLimiter::new(rates.enqueue),
            auth: RateLimiter::new(rates.auth),
            lookup: RateLimiter::new(rates.lookup),
        };
        Self { state: Arc::clone(state), rates, local: Arc::new(local) }
    }

    fn bucket(ctx: &Ctx) -> Option<Bucket> {
        match ctx.method_id() {
            // The service refuses a session without a device.
            method::ENQUEUE | method::BATCH_ENQUEUE => ctx.session().and_then(|s| s.device_id).map(Bucket::Enqueue),
            method::REGISTER_START | method::LOGIN_START | method::RESUME => Some(Bucket::Auth(ctx.remote_addr().ip())),
            method::RESOLVE_USER
            | method::RESOLVE_IDENTITY
            | method::FETCH_KEY_PACKAGES
            | method::FETCH_HYBRID_KEY
            | method::FETCH_HYBRID_KEYS => ctx.session().map(|s| Bucket::Lookup(s.user_id)),
            _ => None,
        }
    }
}

impl Layer<Session> for RateLimit {
    fn call(&self, ctx: Ctx, request: Bytes, next: Next<Session>) -> BoxFuture<CallResult> {
        let Some(bucket) = Self::bucket(&ctx) else { return next.run(ctx, request) };
        let now = self.state.clock.now_ms();
        let Some(cluster) = self.state.cluster.clone() else {
            return match self.local.check(bucket, now) {
                Ok(()) => next.run(ctx, request),
                Err(retry_after_ms) => refuse(limited(&ctx, retry_after_ms)),
            };
        };
        let (rate, local) = (self.rates.of(bucket), Arc::clone(&self.local));
        Box::pin(async move {
            let (class, key) = bucket.shared_key();
            let verdict = match cluster.take_token(class, &key, rate, now).await {
                Ok(verdict) => verdict,
                Err(e) => {
                    tracing::debug!(error = %e, "shared rate-limit bucket unavailable; using this node's");
                    local.check(bucket, now)
                }
            };
            match verdict {
                Ok(()) => next.run(ctx, request).await,
                Err(retry_after_ms) => Err(limited(&ctx, retry_after_ms)),
            }
        })
    }
}

fn limited(ctx: &Ctx, retry_after_ms: u64) -> RpcError {
    metrics::counter!(
        "qpc_rate_limited_total",
        "method" => quicprochat_proto::method_name(ctx.method_id()).unwrap_or("unknown")
    )
    .increment(1);
    RpcError::rate_limited("too many requests", retry_after_ms)
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
