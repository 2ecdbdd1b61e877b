//! The principal a connection is bound to after `LoginFinish` or `Resume`.

use crate::store::{DeviceId, UserId};

/// A connection's session, as the RPC layer carries it.
#[derive(Clone)]
pub struct Session {
    /// SHA-256 of the session token (the token itself is never kept).
    pub token_hash: [u8; 32],
    /// The account.
    pub user_id: UserId,
    /// Case-folded username.
    pub username: String,
    /// Device bound by `RegisterDevice`.
    pub device_id: Option<DeviceId>,
    /// Expiry, Unix ms.
    pub expires_ms: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The bound device, or an error telling the client to register one first.
    pub fn device(&self) -> Result<DeviceId, crate::error::ServiceError> {
        self.device_id
            .ok_or(crate::error::ServiceError::Forbidden("no device bound to this session: call RegisterDevice"))
    }
}
