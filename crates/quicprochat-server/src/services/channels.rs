//! Channels: the server-side home of one MLS group each.

use quicprochat_core::ids::dm_channel_id;

use super::{normalize_username, random_bytes};
use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::{ChannelId, ChannelKind, ChannelRecord, DeviceId, NewChannel};

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

/// Longest channel retention.
const MAX_RETENTION_SECS: u32 = 365 * 24 * 3600;

/// A channel with its members, for a member.
#[derive(Debug, Clone)]
pub struct ChannelView {
    /// The channel.
    pub channel: ChannelRecord,
    /// Member devices.
    pub members: Vec<DeviceId>,
}

async fn as_member(state: &AppState, session: &Session, id: ChannelId) -> Result<ChannelView, ServiceError> {
    let device = session.device()?;
    let channel = state.store.channel(id).await?.ok_or(ServiceError::NotFound("channel"))?;
    let members = state.store.members(id).await?;
    if !members.contains(&device) {
        return Err(ServiceError::Forbidden("not a member of this channel"));
    }
    Ok(ChannelView { channel, members })
}

/// One channel, for a member.
pub async fn get(state: &AppState, session: &Session, id: ChannelId) -> Result<ChannelView, ServiceError> {
    as_member(state, session, id).await
}

/// Channels of the session's device.
pub async fn list(state: &AppState, session: &Session) -> Result<Vec<ChannelView>, ServiceError> {
    let device = session.device()?;
    let mut out = Vec::new();
    for channel in state.store.channels_of(device).await? {
        let members = state.store.members(channel.id).await?;
        out.push(ChannelView { channel, members });
    }
    Ok(out)
}

/// Sets the channel's default envelope TTL.
pub async fn set_retention(state: &AppState, session: &Session, id: ChannelId, secs: u32) -> Result<(), ServiceError> {
    if secs > MAX_RETENTION_SECS {
        return Err(ServiceError::BadRequest("retention longer than 365 days".into()));
    }
    as_member(state, session, id).await?;
    Ok(state.store.set_retention(id, secs).await?)
}

/// The latest GroupInfo, for rejoining by external commit.
pub async fn group_info(state: &AppState, session: &Session, id: ChannelId) -> Result<(Vec<u8>, u64), ServiceError> {
    let view = as_member(state, session, id).await?;
    let info = view.channel.group_info.ok_or(ServiceError::NotFound("group info"))?;
    Ok((info, view.channel.epoch))
}
