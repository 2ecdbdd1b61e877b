//! User directory lookups, with a timing floor against enumeration.

use std::time::Instant;

use super::normalize_username;
use crate::error::ServiceError;
use crate::state::AppState;
use crate::store::{DeviceRecord, UserRecord};

/// Resolves a username to its account and devices. Takes at least `limits.resolve_floor`
/// whether or not the user exists.
pub async fn resolve(state: &AppState, username: &str) -> Result<(UserRecord, Vec<DeviceRecord>), ServiceError> {
    let started = Instant::now();
    let result = lookup(state, username).await;
    let floor = state.limits.resolve_floor;
    if let Some(rest) = floor.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    result
}

async fn lookup(state: &AppState, username: &str) -> Result<(UserRecord, Vec<DeviceRecord>), ServiceError> {
    let username = normalize_username(username)?;
    let user = state.store.user_by_name(&username).await?.ok_or(ServiceError::NotFound("user"))?;
    let devices = state.store.devices_of(user.id).await?;
    Ok((user, devices))
}

/// Finds the account and device of an identity key. Same timing floor as [`resolve`].
pub async fn resolve_identity(
    state: &AppState,
    identity_key: &[u8],
) -> Result<(UserRecord, DeviceRecord), ServiceError> {
    let started = Instant::now();
    let result = async {
        let key: [u8; 32] =
            identity_key.try_into().map_err(|_| ServiceError::BadRequest("identity_key must be 32 bytes".into()))?;
        let device = state.store.device_by_key(key).await?.ok_or(ServiceError::NotFound("identity"))?;
        let user = state.store.user_by_id(device.user_id).await?.ok_or(ServiceError::NotFound("identity"))?;
        Ok((user, device))
    }
    .await;
    if let Some(rest) = state.limits.resolve_floor.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    result
}
