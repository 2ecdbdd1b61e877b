//! MLS key packages: single-use pools with a last-resort package per device.

use super::normalize_username;
use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::{ClaimedKeyPackage, UserId};

/// Largest single key package accepted.
const MAX_KEY_PACKAGE_LEN: usize = 64 * 1024;

/// Adds key packages to the session device's pool; returns the pool size.
pub async fn upload(
    state: &AppState,
    session: &Session,
    packages: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
) -> Result<u32, ServiceError> {
    let device = session.device()?;
    if packages.len() > state.limits.max_key_packages_per_upload {
        return Err(ServiceError::BadRequest(format!(
            "at most {} key packages per upload",
            state.limits.max_key_packages_per_upload
        )));
    }
    if packages.iter().chain(last_resort.iter()).any(|kp| kp.is_empty() || kp.len() > MAX_KEY_PACKAGE_LEN) {
        return Err(ServiceError::BadRequest("key package empty or larger than 64 KiB".into()));
    }
    Ok(state.store.add_key_packages(device, packages, last_resort).await?)
}

/// Claims one key package per device of `username`.
pub async fn fetch(state: &AppState, username: &str) -> Result<(UserId, Vec<ClaimedKeyPackage>), ServiceError> {
    let username = normalize_username(username)?;
    let user = state.store.user_by_name(&username).await?.ok_or(ServiceError::NotFound("user"))?;
    let packages = state.store.claim_key_packages(user.id).await?;
    for p in packages.iter().filter(|p| p.remaining < state.limits.key_package_low_water) {
        crate::relay::key_packages_low(state, p.device_id, p.remaining).await;
    }
    Ok((user.id, packages))
}

/// Size of an X-Wing public key.
pub const HYBRID_PUBLIC_KEY_LEN: usize = 1216;

/// The session device's pool size and last-resort presence.
pub async fn status(state: &AppState, session: &Session) -> Result<(u32, bool), ServiceError> {
    Ok(state.store.key_package_status(session.device()?).await?)
}

/// Sets the session device's hybrid (X-Wing) public key.
pub async fn upload_hybrid(state: &AppState, session: &Session, public_key: Vec<u8>) -> Result<(), ServiceError> {
    let device = session.device()?;
    if public_key.len() != HYBRID_PUBLIC_KEY_LEN {
        return Err(ServiceError::BadRequest(format!("an X-Wing public key is {HYBRID_PUBLIC_KEY_LEN} bytes")));
    }
    Ok(state.store.set_hybrid_key(device, public_key).await?)
}

/// One device's hybrid key.
pub async fn fetch_hybrid(state: &AppState, device: crate::store::DeviceId) -> Result<Vec<u8>, ServiceError> {
    state.store.hybrid_key(device).await?.ok_or(ServiceError::NotFound("hybrid key"))
}

/// Hybrid keys of a user's devices.
pub async fn fetch_hybrid_keys(
    state: &AppState,
    username: &str,
) -> Result<Vec<(crate::store::DeviceId, Vec<u8>)>, ServiceError> {
    let username = normalize_username(username)?;
    let user = state.store.user_by_name(&username).await?.ok_or(ServiceError::NotFound("user"))?;
    Ok(state.store.hybrid_keys_of(user.id).await?)
}
