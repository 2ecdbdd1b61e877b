//! Channels: the server-side home of one MLS group each.

use quicprochat_core::ids::dm_channel_id;

use super::{normalize_username, random_bytes};
use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::{ChannelId, ChannelKind, NewChannel};

/// What `CreateChannel` returns.
#[derive(Debug, Clone)]
pub struct Created {
    /// Channel id (and MLS group id).
    pub id: ChannelId,
    /// True for exactly one creator.
    pub was_new: bool,
    /// Current epoch.
    pub epoch: u64,
    /// Kind.
    pub kind: ChannelKind,
    /// Whether the caller's device is a member.
    pub is_member: bool,
}

/// Creates a DM with `peer` (deterministic id) or a new group.
pub async fn create(
    state: &AppState,
    session: &Session,
    kind: ChannelKind,
    peer: &str,
) -> Result<Created, ServiceError> {
    let device = session.device()?;
    let id = match kind {
        ChannelKind::Dm => {
            let peer = normalize_username(peer)?;
            let other = state.store.user_by_name(&peer).await?.ok_or(ServiceError::NotFound("user"))?;
            if other.id == session.user_id {
                return Err(ServiceError::BadRequest("cannot open a DM with yourself".into()));
            }
            dm_channel_id(session.user_id.as_bytes(), other.id.as_bytes())
        }
        ChannelKind::Group => ChannelId(random_bytes::<16>()),
    };
    let was_new =
        state.store.create_channel(NewChannel { id, kind, first_member: device, now_ms: state.clock.now_ms() }).await?;
    let channel = state.store.channel(id).await?.ok_or(ServiceError::NotFound("channel"))?;
    let is_member = state.store.members(id).await?.contains(&device);
    Ok(Created { id, was_new, epoch: channel.epoch, kind: channel.kind, is_member })
}
