//! Device registration: binding an Ed25519 identity key to an account and a session.

use quicprochat_core::identity::verify_signature;
use quicprochat_core::ids::{device_binding_challenge, device_id_for_key};

use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::{DeviceId, DeviceRecord};

/// Longest device label.
const MAX_NAME_LEN: usize = 64;

/// Verifies possession of `identity_key` and binds it to the account and to this session.
pub async fn register_device(
    state: &AppState,
    session: &Session,
    identity_key: &[u8],
    signature: &[u8],
    name: &str,
) -> Result<(DeviceId, Session), ServiceError> {
    let key: [u8; 32] =
        identity_key.try_into().map_err(|_| ServiceError::BadRequest("identity_key must be 32 bytes".into()))?;
    if name.len() > MAX_NAME_LEN {
        return Err(ServiceError::BadRequest("device name longer than 64 bytes".into()));
    }
    let challenge = device_binding_challenge(&session.token_hash, &key);
    verify_signature(&key, &challenge, signature)
        .map_err(|_| ServiceError::Forbidden("device signature does not verify"))?;
    let id = device_id_for_key(&key);
    state
        .store
        .upsert_device(DeviceRecord {
            id,
            user_id: session.user_id,
            identity_key: key,
            name: name.to_owned(),
            created_ms: state.clock.now_ms(),
        })
        .await?;
    state.store.set_session_device(session.token_hash, id).await?;
    state.audit(crate::store::AuditKind::DeviceRegistered, Some(session.user_id), Some(id)).await;
    let mut bound = session.clone();
    bound.device_id = Some(id);
    Ok((id, bound))
}

/// The session account's devices.
pub async fn list(state: &AppState, session: &Session) -> Result<Vec<DeviceRecord>, ServiceError> {
    Ok(state.store.devices_of(session.user_id).await?)
}

/// Removes one of the account's devices everywhere and ends its sessions.
pub async fn revoke(state: &AppState, session: &Session, device: DeviceId) -> Result<(), ServiceError> {
    let sessions = state.store.delete_device(session.user_id, device).await?.ok_or(ServiceError::NotFound("device"))?;
    let until_ms = state.clock.now_ms() + crate::services::auth::REVOCATION_SLACK_MS;
    crate::relay::revoke_sessions(state, sessions, until_ms, vec![device]).await;
    tracing::info!(user = ?session.user_id, device = ?device, "device revoked");
    state.audit(crate::store::AuditKind::DeviceRevoked, Some(session.user_id), Some(device)).await;
    Ok(())
}

/// Longest peer-to-peer hint.
const MAX_ENDPOINT_LEN: usize = 4096;
/// Longest hint lifetime.
const MAX_ENDPOINT_TTL_SECS: u32 = 24 * 3600;

/// Publishes the session device's peer-to-peer hints.
pub async fn publish_endpoint(
    state: &AppState,
    session: &Session,
    endpoint: Vec<u8>,
    ttl_secs: u32,
) -> Result<u64, ServiceError> {
    let device = session.device()?;
    if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(ServiceError::BadRequest("endpoint must be 1-4096 bytes".into()));
    }
    if ttl_secs == 0 || ttl_secs > MAX_ENDPOINT_TTL_SECS {
        return Err(ServiceError::BadRequest("ttl_secs must be 1-86400".into()));
    }
    let expires_ms = state.clock.now_ms() + u64::from(ttl_secs) * 1000;
    state.store.set_endpoint(crate::store::EndpointRecord { device_id: device, endpoint, expires_ms }).await?;
    Ok(expires_ms)
}

/// Unexpired hints of a user's devices.
pub async fn resolve_endpoint(
    state: &AppState,
    username: &str,
) -> Result<Vec<crate::store::EndpointRecord>, ServiceError> {
    let username = super::normalize_username(username)?;
    let user = state.store.user_by_name(&username).await?.ok_or(ServiceError::NotFound("user"))?;
    Ok(state.store.endpoints_of(user.id, state.clock.now_ms()).await?)
}
