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
    let mut bound = session.clone();
    bound.device_id = Some(id);
    Ok((id, bound))
}
