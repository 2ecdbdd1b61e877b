//! Registration, login, resume and logout (OPAQUE; the server never sees a password).

use quicprochat_core::opaque::{self, ServerLogin};
use zeroize::Zeroizing;

use super::{normalize_username, random_bytes};
use crate::error::ServiceError;
use crate::session::Session;
use crate::state::{AppState, PendingLogin};
use crate::store::{AuditKind, SessionRecord, UserId};

/// Revocations of sessions whose expiry is unknown are remembered this long past now (every
/// session lives at most `session_ttl`, which this comfortably exceeds for the default).
pub(crate) const REVOCATION_SLACK_MS: u64 = 31 * 24 * 3600 * 1000;

/// A `LoginStart` waits this long for its `LoginFinish`.
const LOGIN_WINDOW_MS: u64 = 60_000;

/// First registration step: answers the client's OPAQUE registration request.
pub async fn register_start(state: &AppState, username: &str, request: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let username = normalize_username(username)?;
    if state.store.user_by_name(&username).await?.is_some() {
        return Err(ServiceError::AlreadyExists("user"));
    }
    opaque::server_registration_start(&state.opaque, request, username.as_bytes())
        .map_err(|_| ServiceError::BadRequest("malformed OPAQUE registration request".into()))
}

/// Second registration step: stores the OPAQUE record.
pub async fn register_finish(state: &AppState, username: &str, upload: &[u8]) -> Result<UserId, ServiceError> {
    let username = normalize_username(username)?;
    let record = opaque::server_registration_finish(upload)
        .map_err(|_| ServiceError::BadRequest("malformed OPAQUE registration upload".into()))?;
    let user = state.store.create_user(&username, record, state.clock.now_ms()).await?;
    tracing::info!(user = ?user.id, "account registered");
    state.audit(AuditKind::Registered, Some(user.id), None).await;
    Ok(user.id)
}

/// First login step. An unknown username runs the same computation on OPAQUE's dummy record.
pub async fn login_start(
    state: &AppState,
    username: &str,
    request: &[u8],
) -> Result<([u8; 16], Vec<u8>), ServiceError> {
    let username = normalize_username(username)?;
    let user = state.store.user_by_name(&username).await?;
    let record = user.as_ref().map(|u| u.opaque_record.as_slice());
    let (login, response) =
        ServerLogin::start(&mut rand_core::OsRng, &state.opaque, record, request, username.as_bytes())
            .map_err(|_| ServiceError::BadRequest("malformed OPAQUE credential request".into()))?;
    let id = random_bytes::<16>();
    let now = state.clock.now_ms();
    let pending =
        PendingLogin { state: login, user: user.map(|u| (u.id, u.username)), expires_ms: now + LOGIN_WINDOW_MS };
    if !state.pending_logins.insert(id, pending, now) {
        return Err(ServiceError::BadRequest("too many logins in progress; retry shortly".into()));
    }
    Ok((id, response))
}

/// What a successful login yields.
#[derive(Debug)]
pub struct LoginOutcome {
    /// The session to bind to the connection.
    pub session: Session,
    /// The secret token for `Resume`; only its hash is stored.
    pub token: Zeroizing<[u8; 32]>,
}

/// Second login step: verifies the client's proof and creates a session.
pub async fn login_finish(
    state: &AppState,
    login_id: &[u8],
    finalization: &[u8],
) -> Result<LoginOutcome, ServiceError> {
    let id =
        <[u8; 16]>::try_from(login_id).map_err(|_| ServiceError::BadRequest("login_id must be 16 bytes".into()))?;
    let now = state.clock.now_ms();
    let pending =
        state.pending_logins.take(&id, now).ok_or(ServiceError::Unauthenticated("unknown or expired login"))?;
    let verified = pending.state.finish(finalization);
    let known = pending.user.as_ref().map(|(id, _)| *id);
    let (user_id, username) = match (verified, pending.user) {
        (Ok(_session_key), Some(user)) => user,
        _ => {
            state.audit(AuditKind::LoginFailed, known, None).await;
            tracing::info!("login failed");
            metrics::counter!("qpc_logins_total", "outcome" => "failed").increment(1);
            return Err(ServiceError::Unauthenticated("wrong username or password"));
        }
    };
    let token = Zeroizing::new(random_bytes::<32>());
    let token_hash = quicprochat_core::ids::session_token_hash(token.as_slice());
    let expires_ms = now + state.limits.session_ttl.as_millis() as u64;
    // The session and the audit record of the verified proof are written together, without
    // waiting for a sync: a power cut may undo the login whole, and the client logs in again.
    let session = SessionRecord { token_hash, user_id, device_id: None, created_ms: now, expires_ms };
    let event = state.audit_event(AuditKind::LoginSucceeded, Some(user_id), None);
    state.store.record_login(session, event).await?;
    tracing::info!(user = ?user_id, "login");
    metrics::counter!("qpc_logins_total", "outcome" => "ok").increment(1);
    Ok(LoginOutcome { session: Session { token_hash, user_id, username, device_id: None, expires_ms }, token })
}

/// Rebinds an existing, unexpired session.
pub async fn resume(state: &AppState, token: &[u8]) -> Result<Session, ServiceError> {
    if token.len() != 32 {
        return Err(ServiceError::Unauthenticated("invalid session token"));
    }
    let token_hash = quicprochat_core::ids::session_token_hash(token);
    let record =
        state.store.session(token_hash).await?.ok_or(ServiceError::Unauthenticated("invalid session token"))?;
    if record.expires_ms <= state.clock.now_ms() {
        state.store.delete_session(token_hash).await?;
        return Err(ServiceError::Unauthenticated("session expired"));
    }
    let user = state.store.user_by_id(record.user_id).await?.ok_or(ServiceError::Unauthenticated("account deleted"))?;
    Ok(Session {
        token_hash,
        user_id: record.user_id,
        username: user.username,
        device_id: record.device_id,
        expires_ms: record.expires_ms,
    })
}

/// Revokes the session.
pub async fn logout(state: &AppState, session: &Session) -> Result<(), ServiceError> {
    state.store.delete_session(session.token_hash).await?;
    crate::relay::revoke_sessions(state, vec![session.token_hash], session.expires_ms, Vec::new()).await;
    state.audit(AuditKind::LoggedOut, Some(session.user_id), session.device_id).await;
    Ok(())
}

/// Deletes the session's account and everything that belongs to it.
pub async fn delete_account(state: &AppState, session: &Session) -> Result<(), ServiceError> {
    let deleted = state.store.delete_account(session.user_id).await?.ok_or(ServiceError::NotFound("account"))?;
    let until_ms = session.expires_ms.max(state.clock.now_ms()) + REVOCATION_SLACK_MS;
    crate::relay::revoke_sessions(state, deleted.sessions, until_ms, Vec::new()).await;
    tracing::info!(user = ?session.user_id, "account deleted");
    state.audit(AuditKind::AccountDeleted, Some(session.user_id), None).await;
    Ok(())
}
