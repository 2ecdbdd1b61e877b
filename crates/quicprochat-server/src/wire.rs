//! Conversions between protobuf messages and domain types, at the edge only.

use bytes::Bytes;
use quicprochat_proto::v1;
use quicprochat_rpc::RpcError;

use crate::store::{ChannelId, ChannelKind, DeviceId, EnvelopeKind, QueuePage, QueuedEntry};

pub(crate) fn channel_id(b: &[u8]) -> Result<ChannelId, RpcError> {
    <[u8; 16]>::try_from(b).map(ChannelId).map_err(|_| RpcError::bad_request("channel_id must be 16 bytes"))
}

pub(crate) fn device_id(b: &[u8]) -> Result<DeviceId, RpcError> {
    <[u8; 16]>::try_from(b).map(DeviceId).map_err(|_| RpcError::bad_request("device_id must be 16 bytes"))
}

pub(crate) fn envelope_kind(v: i32) -> Result<EnvelopeKind, RpcError> {
    match v1::EnvelopeKind::try_from(v) {
        Ok(v1::EnvelopeKind::Application) => Ok(EnvelopeKind::Application),
        Ok(v1::EnvelopeKind::Commit) => Ok(EnvelopeKind::Commit),
        Ok(v1::EnvelopeKind::Welcome) => Ok(EnvelopeKind::Welcome),
        Ok(v1::EnvelopeKind::Proposal) => Ok(EnvelopeKind::Proposal),
        _ => Err(RpcError::bad_request("unknown envelope kind")),
    }
}

pub(crate) fn envelope_kind_to_proto(k: EnvelopeKind) -> v1::EnvelopeKind {
    match k {
        EnvelopeKind::Application => v1::EnvelopeKind::Application,
        EnvelopeKind::Commit => v1::EnvelopeKind::Commit,
        EnvelopeKind::Welcome => v1::EnvelopeKind::Welcome,
        EnvelopeKind::Proposal => v1::EnvelopeKind::Proposal,
    }
}

pub(crate) fn channel_kind(v: i32) -> Result<ChannelKind, RpcError> {
    match v1::ChannelKind::try_from(v) {
        Ok(v1::ChannelKind::Dm) => Ok(ChannelKind::Dm),
        Ok(v1::ChannelKind::Group) => Ok(ChannelKind::Group),
        _ => Err(RpcError::bad_request("channel kind must be DM or GROUP")),
    }
}

pub(crate) fn channel_kind_to_proto(k: ChannelKind) -> v1::ChannelKind {
    match k {
        ChannelKind::Dm => v1::ChannelKind::Dm,
        ChannelKind::Group => v1::ChannelKind::Group,
    }
}

pub(crate) fn page_to_proto(page: &QueuePage) -> v1::PeekResponse {
    v1::PeekResponse { envelopes: page.entries.iter().map(queued_to_proto).collect(), end_of_queue: !page.more }
}

pub(crate) fn queued_to_proto(e: &QueuedEntry) -> v1::QueuedEnvelope {
    v1::QueuedEnvelope {
        seq: e.seq,
        channel_id: Bytes::copy_from_slice(&e.channel.0),
        envelope: Some(v1::Envelope {
            kind: envelope_kind_to_proto(e.kind) as i32,
            epoch: e.epoch,
            payload: e.payload.clone(),
        }),
        envelope_id: Bytes::copy_from_slice(&e.envelope_id),
        created_at_ms: e.created_ms,
    }
}
