//! Delivery: fan-out into per-device queues, commit sequencing, peek/ack, long-poll, push.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;

use quicprochat_core::CoreError;
use quicprochat_core::ids::delivery_proof_digest;
use quicprochat_core::public_group::{ChannelTracker, Tracked};

use super::random_bytes;
use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::{
    ChannelId, DeviceId, EnqueueBatch, EnqueueOutcome, EnvelopeKind, QueuePage, QueuedEntry, Tracking, WelcomeFor,
};

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 64;
/// Default and largest page of a peek.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Default and largest byte budget of a peek. A page holds at most this many payload bytes,
/// or one entry however large (up to the payload limit), so it fits a response frame; an
/// unbounded budget would also let one request load a whole queue into memory.
const DEFAULT_PAGE_BYTES: u64 = 4 * 1024 * 1024;
/// Most devices welcomed in one batch.
const MAX_WELCOMES: usize = 1000;

/// An envelope to enqueue, as the client described it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Target channel.
    pub channel: ChannelId,
    /// Kind of MLS message.
    pub kind: EnvelopeKind,
    /// Epoch it was produced in.
    pub epoch: u64,
    /// MLS bytes.
    pub payload: Bytes,
    /// Idempotency key (may be empty).
    pub idempotency_key: Vec<u8>,
    /// Seconds to live (0 = until acked).
    pub ttl_secs: u32,
    /// Push-only, never stored.
    pub ephemeral: bool,
    /// GroupInfo of the new epoch, for commits.
    pub group_info: Option<Vec<u8>>,
    /// Welcomes, for `BatchEnqueue`.
    pub welcomes: Vec<WelcomeFor>,
}

/// What the sender gets back.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Server-wide sequence number.
    pub seq: u64,
    /// Envelope id.
    pub envelope_id: [u8; 16],
    /// Acceptance time, Unix ms.
    pub timestamp_ms: u64,
    /// Channel epoch afterwards.
    pub epoch: u64,
    /// Server signature over the delivery-proof digest.
    pub signature: [u8; 64],
}

/// Stores and fans out an envelope (with welcomes, atomically), then pushes to online devices.
pub async fn enqueue(state: &AppState, session: &Session, s: Submission) -> Result<Accepted, ServiceError> {
    let sender = session.device()?;
    let max = state.limits.max_payload;
    let too_big = |len: usize| (len > max).then_some(ServiceError::PayloadTooLarge { len, max });
    if let Some(e) = too_big(s.payload.len()) {
        return Err(e);
    }
    if let Some(e) = s.welcomes.iter().find_map(|w| too_big(w.payload.len())) {
        return Err(e);
    }
    if s.payload.is_empty() {
        return Err(ServiceError::BadRequest("empty payload".into()));
    }
    if s.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ServiceError::BadRequest("idempotency key longer than 64 bytes".into()));
    }
    if s.kind == EnvelopeKind::Welcome {
        return Err(ServiceError::BadRequest("welcomes travel in BatchEnqueue, addressed to their device".into()));
    }
    if !s.welcomes.is_empty() && s.kind != EnvelopeKind::Commit {
        return Err(ServiceError::BadRequest("welcomes must accompany a commit".into()));
    }
    if s.welcomes.iter().map(|w| w.devices.len()).sum::<usize>() > MAX_WELCOMES {
        return Err(ServiceError::BadRequest("too many welcomes in one batch".into()));
    }
    if s.welcomes.iter().any(|w| w.devices.is_empty()) {
        return Err(ServiceError::BadRequest("a welcome names no device".into()));
    }
    let mut welcomed = HashSet::new();
    if !s.welcomes.iter().flat_map(|w| &w.devices).all(|d| welcomed.insert(*d)) {
        return Err(ServiceError::BadRequest("a device is welcomed twice in one batch".into()));
    }
    let now = state.clock.now_ms();
    // A retry of something already accepted gets the original answer before any other check
    // (its commit would otherwise look stale against the state it created). An application
    // message meets no such check: the store looks for the replay in the enqueue's own
    // transaction, which saves a read on the hot path.
    if s.kind != EnvelopeKind::Application
        && let Some(outcome) = state.store.replayed(sender, s.idempotency_key.clone(), now).await?
    {
        return Ok(accepted(state, s.channel, &outcome));
    }

    if s.ephemeral {
        return ephemeral(state, sender, s, now).await;
    }

    let tracking = match s.kind {
        EnvelopeKind::Commit | EnvelopeKind::Proposal => Some(track(state, &s, sender).await?),
        EnvelopeKind::Application => {
            if wire_format(&s.payload) != Some(WIRE_FORMAT_PRIVATE_MESSAGE) {
                return Err(ServiceError::BadRequest("application envelopes carry an MLS PrivateMessage".into()));
            }
            None
        }
        EnvelopeKind::Welcome => None,
    };

    let batch = EnqueueBatch {
        channel: s.channel,
        sender,
        kind: s.kind,
        epoch: s.epoch,
        payload: s.payload,
        welcomes: s.welcomes,
        group_info: s.group_info,
        envelope_id: random_bytes::<16>(),
        idempotency_key: s.idempotency_key,
        expires_ms: (s.ttl_secs > 0).then(|| now + u64::from(s.ttl_secs) * 1000),
        now_ms: now,
        max_queue_depth: state.limits.max_queue_depth,
        tracking,
    };
    let outcome = state.store.enqueue(batch).await?;
    metrics::counter!("qpc_envelopes_enqueued_total").increment(1);
    metrics::counter!("qpc_deliveries_total").increment(outcome.deliveries.len() as u64);
    for (device, entry) in &outcome.deliveries {
        state.hub.deliver(*device, entry);
    }
    Ok(accepted(state, s.channel, &outcome))
}

/// MLS wire format of a `PrivateMessage` (RFC 9420 §6).
const WIRE_FORMAT_PRIVATE_MESSAGE: u16 = 2;

/// The wire format of a serialised `MLSMessage` (version 1), if it is one.
fn wire_format(payload: &[u8]) -> Option<u16> {
    match payload {
        [0x00, 0x01, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Validates a commit or proposal against the channel's public MLS state and works out the
/// membership it yields. The channel's first commit has nothing to be checked against: the
/// GroupInfo it carries (signed by the committer, with the ratchet tree) starts the tracking.
async fn track(state: &AppState, s: &Submission, sender: DeviceId) -> Result<Tracking, ServiceError> {
    let channel = state.store.channel(s.channel).await?.ok_or(ServiceError::NotFound("channel"))?;
    let refused = ServiceError::HandshakeRefused;
    let (tracker, added) = match &channel.tracker {
        None => {
            if s.kind != EnvelopeKind::Commit {
                return Err(ServiceError::BadRequest("a channel's first handshake message is a commit".into()));
            }
            if s.epoch != channel.epoch {
                return Err(ServiceError::StaleEpoch { current: channel.epoch });
            }
            let info = s.group_info.as_deref().ok_or_else(|| {
                ServiceError::BadRequest("a channel's first commit carries the new epoch's GroupInfo".into())
            })?;
            let tracker = ChannelTracker::from_group_info(&s.channel.0, info).map_err(refused)?;
            if tracker.epoch() != channel.epoch + 1 {
                return Err(ServiceError::BadRequest("the GroupInfo is not for the epoch this commit creates".into()));
            }
            let members = tracker.members().map_err(refused)?;
            if !members.iter().any(|m| m.device_id == sender) {
                return Err(ServiceError::Forbidden("the committer is not in the group it describes"));
            }
            let added = members.into_iter().map(|m| m.device_id).filter(|d| *d != sender).collect();
            (tracker, added)
        }
        Some(bytes) => {
            let mut tracker = ChannelTracker::restore(bytes)?;
            let added = match tracker.process(&s.payload) {
                Ok(Tracked::Commit(commit)) => {
                    if s.kind != EnvelopeKind::Commit || commit.epoch_before != s.epoch {
                        return Err(ServiceError::BadRequest(
                            "envelope kind or epoch does not match its MLS content".into(),
                        ));
                    }
                    if commit.committer.device_id != sender {
                        return Err(ServiceError::Forbidden("a commit is sent by the device that made it"));
                    }
                    let info = s.group_info.as_deref().ok_or_else(|| {
                        ServiceError::BadRequest("a commit carries the GroupInfo of the epoch it creates".into())
                    })?;
                    tracker.check_group_info(info).map_err(refused)?;
                    commit.added.into_iter().map(|m| m.device_id).collect()
                }
                Ok(Tracked::Proposal { sender: proposer, epoch }) => {
                    if s.kind != EnvelopeKind::Proposal || epoch != s.epoch {
                        return Err(ServiceError::BadRequest(
                            "envelope kind or epoch does not match its MLS content".into(),
                        ));
                    }
                    if proposer.device_id != sender {
                        return Err(ServiceError::Forbidden("a proposal is sent by the device that made it"));
                    }
                    Vec::new()
                }
                Ok(_) => return Err(ServiceError::BadRequest("unsupported handshake message".into())),
                Err(CoreError::WrongEpoch { .. }) => return Err(ServiceError::StaleEpoch { current: channel.epoch }),
                Err(e) => return Err(refused(e)),
            };
            (tracker, added)
        }
    };
    let added: HashSet<DeviceId> = added.into_iter().collect();
    if let Some(device) = s.welcomes.iter().flat_map(|w| &w.devices).find(|d| !added.contains(d)) {
        tracing::debug!(?device, "welcome for a device the commit does not add");
        return Err(ServiceError::BadRequest("a welcome goes only to a device the commit adds".into()));
    }
    let members = tracker.members().map_err(refused)?.into_iter().map(|m| m.device_id).collect();
    Ok(Tracking { tracker_before: channel.tracker.clone(), tracker: tracker.to_bytes()?, members })
}

/// Typing indicators and the like: pushed to online member devices, never stored.
async fn ephemeral(state: &AppState, sender: DeviceId, s: Submission, now: u64) -> Result<Accepted, ServiceError> {
    if s.kind != EnvelopeKind::Application {
        return Err(ServiceError::BadRequest("only application envelopes can be ephemeral".into()));
    }
    let channel = state.store.channel(s.channel).await?.ok_or(ServiceError::NotFound("channel"))?;
    let members = state.store.members(s.channel).await?;
    if !members.contains(&sender) {
        return Err(ServiceError::Forbidden("not a member of this channel"));
    }
    let envelope_id = random_bytes::<16>();
    let entry = QueuedEntry {
        seq: 0,
        channel: s.channel,
        envelope_id,
        kind: s.kind,
        epoch: s.epoch,
        payload: s.payload,
        created_ms: now,
    };
    let recipients = members.into_iter().filter(|d| *d != sender).collect();
    crate::relay::ephemeral(state, recipients, entry).await;
    let outcome = EnqueueOutcome {
        seq: 0,
        envelope_id,
        timestamp_ms: now,
        epoch: channel.epoch,
        replayed: false,
        deliveries: vec![],
    };
    Ok(accepted(state, s.channel, &outcome))
}

fn accepted(state: &AppState, channel: ChannelId, o: &EnqueueOutcome) -> Accepted {
    let digest = delivery_proof_digest(&o.envelope_id, &channel.0, o.seq, o.timestamp_ms);
    Accepted {
        seq: o.seq,
        envelope_id: o.envelope_id,
        timestamp_ms: o.timestamp_ms,
        epoch: o.epoch,
        signature: state.signing_key.sign(&digest),
    }
}

fn page(limit: u32, max_bytes: u64) -> (u32, u64) {
    let limit = if limit == 0 { DEFAULT_PAGE } else { limit.min(MAX_PAGE) };
    let bytes = if max_bytes == 0 { DEFAULT_PAGE_BYTES } else { max_bytes.min(DEFAULT_PAGE_BYTES) };
    (limit, bytes)
}

/// Reads the session device's queue without deleting.
pub async fn peek(
    state: &AppState,
    session: &Session,
    after_seq: u64,
    limit: u32,
    max_bytes: u64,
) -> Result<QueuePage, ServiceError> {
    let device = session.device()?;
    let (limit, bytes) = page(limit, max_bytes);
    Ok(state.store.peek(device, after_seq, limit, bytes, state.clock.now_ms()).await?)
}

/// Deletes acknowledged entries.
pub async fn ack(state: &AppState, session: &Session, up_to_seq: u64) -> Result<u64, ServiceError> {
    let device = session.device()?;
    Ok(state.store.ack(device, up_to_seq).await?)
}

/// Legacy fetch: peek then ack what was returned.
pub async fn fetch(state: &AppState, session: &Session, limit: u32) -> Result<Vec<QueuedEntry>, ServiceError> {
    let entries = peek(state, session, 0, limit, 0).await?.entries;
    if let Some(last) = entries.last() {
        ack(state, session, last.seq).await?;
    }
    Ok(entries)
}

/// Long-poll: like `peek`, but waits up to `timeout` for an entry. The waiter is registered
/// before the queue is read, so an entry enqueued in between still wakes it.
pub async fn fetch_wait(
    state: &AppState,
    session: &Session,
    after_seq: u64,
    limit: u32,
    timeout: Duration,
) -> Result<QueuePage, ServiceError> {
    let device = session.device()?;
    let deadline = tokio::time::Instant::now() + timeout.min(state.limits.max_wait);
    let notify = state.hub.waiter(device);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let page = peek(state, session, after_seq, limit, 0).await?;
        if !page.entries.is_empty() {
            return Ok(page);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(page);
        }
    }
}

/// Deletes expired envelopes; run periodically by the server's GC task.
pub async fn purge_expired(state: &AppState) -> Result<u64, ServiceError> {
    Ok(state.store.purge_expired(state.clock.now_ms()).await?)
}
