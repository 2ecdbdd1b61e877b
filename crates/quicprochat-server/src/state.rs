//! The one bundle of dependencies every service receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quicprochat_core::identity::IdentityKeyPair;
use quicprochat_core::opaque::{OpaqueServerSetup, ServerLogin};

use crate::middleware::RateLimits;
use crate::push::PushHub;
use crate::ratelimit::Rate;
use crate::store::{DeviceId, Store, UserId};

/// Wall clock, injectable for tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)))
    }
    /// A clock that reads `now_ms` (Unix ms), for tests that move time by hand.
    pub fn manual(now_ms: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Clock(Arc::new(move || now_ms.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Default largest envelope payload: 4 MiB. A Welcome carries the group's ratchet tree, about
/// 1.5 KB per member with the default X-Wing suite, so this admits groups of about 2 500
/// members (1 MiB stopped a group near 700); the request frame around it (8 MiB by default)
/// still bounds what one request holds.
pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// Limits and lifetimes the services enforce.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How long a session lives.
    pub session_ttl: Duration,
    /// Largest envelope payload accepted.
    pub max_payload: usize,
    /// Most key packages per upload.
    pub max_key_packages_per_upload: usize,
    /// Longest `FetchWait`.
    pub max_wait: Duration,
    /// Minimum duration of `ResolveUser`, against enumeration by timing.
    pub resolve_floor: Duration,
    /// Most envelopes waiting in one device queue.
    pub max_queue_depth: u32,
    /// Enqueues per device.
    pub enqueue_rate: Rate,
    /// `RegisterStart` / `LoginStart` / `Resume` per client IP address.
    pub auth_rate: Rate,
    /// Directory and key lookups per account.
    pub lookup_rate: Rate,
    /// A device whose key package pool falls below this gets `KeyPackagesLow`.
    pub key_package_low_water: u32,
    /// How often expired envelopes are purged.
    pub gc_interval: Duration,
    /// Largest blob.
    pub max_blob_bytes: u64,
    /// How long a blob is kept after its upload started.
    pub blob_retention: Duration,
}

impl Limits {
    /// The request rates of the rate-limit middleware.
    pub fn rates(&self) -> RateLimits {
        RateLimits { enqueue: self.enqueue_rate, auth: self.auth_rate, lookup: self.lookup_rate }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_key_packages_per_upload: 200,
            max_wait: Duration::from_secs(60),
            resolve_floor: Duration::from_millis(5),
            max_queue_depth: 10_000,
            enqueue_rate: RateLimits::default().enqueue,
            auth_rate: RateLimits::default().auth,
            lookup_rate: RateLimits::default().lookup,
            key_package_low_water: 10,
            gc_interval: Duration::from_secs(30),
            max_blob_bytes: 50 * 1000 * 1000,
            blob_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// An OPAQUE login between `LoginStart` and `LoginFinish`.
pub(crate) struct PendingLogin {
    pub state: ServerLogin,
    pub user: Option<(UserId, String)>,
    pub expires_ms: u64,
}

/// Logins waiting for their second message; bounded so a flood cannot grow memory.
#[derive(Default)]
pub(crate) struct PendingLogins {
    map: Mutex<HashMap<[u8; 16], PendingLogin>>,
}

/// Most logins in flight at once.
const MAX_PENDING_LOGINS: usize = 10_000;

impl PendingLogins {
    pub fn insert(&self, id: [u8; 16], login: PendingLogin, now_ms: u64) -> bool {
        let Ok(mut map) = self.map.lock() else { return false };
        if map.len() >= MAX_PENDING_LOGINS {
            map.retain(|_, l| l.expires_ms > now_ms);
            if map.len() >= MAX_PENDING_LOGINS {
                return false;
            }
        }
        map.insert(id, login);
        true
    }
    pub fn take(&self, id: &[u8; 16], now_ms: u64) -> Option<PendingLogin> {
        let mut map = self.map.lock().ok()?;
        map.remove(id).filter(|l| l.expires_ms > now_ms)
    }
}

/// Sessions revoked while connections may still be bound to them (logout on another
/// connection, device revocation, account deletion). Entries expire with their session.
#[derive(Debug, Default)]
pub struct RevokedSessions {
    map: Mutex<HashMap<[u8; 32], u64>>,
}

impl RevokedSessions {
    /// Marks sessions revoked until `until_ms`.
    pub fn revoke_all(&self, hashes: impl IntoIterator<Item = [u8; 32]>, until_ms: u64) {
        if let Ok(mut map) = self.map.lock() {
            for h in hashes {
                map.insert(h, until_ms);
            }
        }
    }
    /// Whether this session was revoked.
    pub fn is_revoked(&self, hash: &[u8; 32]) -> bool {
        self.map.lock().map(|m| m.contains_key(hash)).unwrap_or(true)
    }
    /// Forgets revocations of sessions that have expired anyway.
    pub fn prune(&self, now_ms: u64) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, until| *until > now_ms);
        }
    }
}

/// Everything a service needs: storage, keys, push, clock, limits. Built once in `main`.
pub struct AppState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// OPAQUE server keys, generated once per data dir.
    pub opaque: OpaqueServerSetup,
    /// Signs delivery proofs; public key published by `ServerInfo`.
    pub signing_key: IdentityKeyPair,
    /// Online devices and long-poll waiters.
    pub hub: PushHub,
    /// Wall clock.
    pub clock: Clock,
    /// Limits.
    pub limits: Limits,
    /// Sessions revoked while possibly still bound.
    pub revoked: RevokedSessions,
    /// The bus and rate-limit buckets shared with the other nodes; `None` on a single node.
    pub cluster: Option<Arc<dyn crate::cluster::Cluster>>,
    pub(crate) pending_logins: PendingLogins,
}

impl AppState {
    /// Records an audit event. A failure to record is logged, not returned: the audited
    /// action already happened.
    pub async fn audit(&self, kind: crate::store::AuditKind, user: Option<UserId>, device: Option<DeviceId>) {
        self.record_audit(self.audit_event(kind, user, device)).await;
    }

    /// An audit event of a service, stamped now, for a store write that records it itself.
    pub fn audit_event(
        &self,
        kind: crate::store::AuditKind,
        user: Option<UserId>,
        device: Option<DeviceId>,
    ) -> crate::store::AuditEvent {
        crate::store::AuditEvent { at_ms: self.clock.now_ms(), kind, user, device, method: None, status: None }
    }

    /// Records an audit event of the middleware: `method` answered `status`.
    pub async fn audit_refusal(
        &self,
        kind: crate::store::AuditKind,
        user: Option<UserId>,
        device: Option<DeviceId>,
        method: &'static str,
        status: &'static str,
    ) {
        let at_ms = self.clock.now_ms();
        let event = crate::store::AuditEvent { at_ms, kind, user, device, method: Some(method), status: Some(status) };
        self.record_audit(event).await;
    }

    async fn record_audit(&self, event: crate::store::AuditEvent) {
        if let Err(e) = self.store.record_audit(event).await {
            tracing::error!(error = %e, event = event.kind.as_str(), "could not write the audit log");
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("limits", &self.limits).finish_non_exhaustive()
    }
}
