//! Inbound processing: read the device queue in order, apply each envelope to MLS and the local
//! store in one transaction, then acknowledge it to the server.

use quicprochat_core::mls::{MemberInfo, Processed};
use quicprochat_proto::{method, v1};
use quicprochat_rpc::Status;

use crate::client::{Account, QpcClient};
use crate::error::Result;
use crate::inbound::Inbound;
use crate::store::{Change, ConversationRow};
use crate::{ClientEvent, ConversationId, SdkError};

/// Mean time a pushed envelope waits to be acknowledged in the background: envelopes applied
/// meanwhile share the `Ack`. An unacknowledged envelope is at worst delivered again, and
/// dropped by the cursor. An `Ack` is a write on the server and every member of a group sends
/// them: in a busy group this interval sets how many of the server's writes are acknowledgements.
pub const ACK_COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the background acker waits before its next `Ack`: [`ACK_COALESCE`], give or take
/// half of it, at random. Every member of a group receives a message at the same moment; a
/// fixed wait would have them all acknowledge at the same moment too, a burst of writes that
/// the next message waits behind.
pub fn ack_delay() -> std::time::Duration {
    let half = ACK_COALESCE / 2;
    let spread = u64::try_from(ACK_COALESCE.as_micros()).unwrap_or(u64::MAX).max(1);
    half + std::time::Duration::from_micros(rand_core::RngCore::next_u64(&mut rand_core::OsRng) % spread)
}

/// Envelopes per page.
const PAGE: u32 = 100;
/// Rounds of "sync, then commit received proposals" in one `sync` call.
const MAX_PROPOSAL_ROUNDS: usize = 4;

/// Conversation kinds as stored locally.
pub(crate) const KIND_DM: i64 = 1;
pub(crate) const KIND_GROUP: i64 = 2;

impl QpcClient {
    /// Fetches and applies everything waiting in this device's queue; returns how many
    /// envelopes were processed. Runs automatically on every push notification. Proposals
    /// received (a member leaving) are committed here; when several members race to commit
    /// them, the server takes one commit and the others catch up.
    pub async fn sync(&self) -> Result<usize> {
        let mut processed = 0;
        for _ in 0..MAX_PROPOSAL_ROUNDS {
            let Pass { processed: n, proposed, lost } = self.sync_once().await?;
            processed += n;
            for (conversation, count) in lost {
                self.heal(conversation, count).await;
            }
            if proposed.is_empty() {
                break;
            }
            for group in proposed {
                match self.commit_change(group, |mls| Ok(mls.commit_pending_proposals(&group.0)?.into())).await {
                    Ok(_) => {}
                    // Someone else committed first: the next round applies their commit.
                    Err(SdkError::Server { status: "CONFLICT", .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "committing pending proposals failed"),
                }
            }
        }
        Ok(processed)
    }

    /// Catches up before rebuilding a commit that lost a race (proposals are left for the
    /// caller's next `sync`).
    pub(crate) async fn sync_once_for_retry(&self) -> Result<()> {
        self.sync_once().await.map(|_| ())
    }

    /// One pass over the queue.
    async fn sync_once(&self) -> Result<Pass> {
        let _guard = self.inner.sync_lock.lock().await;
        let account = self.account()?;
        let mut processed = 0;
        let mut proposed = Vec::new();
        let mut lost: Vec<(ConversationId, u32)> = Vec::new();
        loop {
            let cursor = account.lock()?.store.cursor()?;
            let page: v1::PeekResponse = self
                .rpc()
                .call(method::PEEK, &v1::PeekRequest { after_seq: cursor, limit: PAGE, max_bytes: 0 })
                .await?;
            #[cfg(feature = "test-util")]
            self.inner.pages_read.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Some(last) = page.envelopes.last().map(|e| e.seq) else { break };
            for queued in &page.envelopes {
                // A Welcome does not say whether it is for a DM or a group; the channel does.
                let kind = match queued.envelope.as_ref().map(|e| e.kind) {
                    Some(k) if k == v1::EnvelopeKind::Welcome as i32 => self.channel_kind(&queued.channel_id).await?,
                    _ => None,
                };
                let Applied { events, proposal_in, lost_in } = self.apply(account, queued, kind)?;
                processed += 1;
                if let Some(group) = proposal_in
                    && !proposed.contains(&group)
                {
                    proposed.push(group);
                }
                if let Some(group) = lost_in {
                    match lost.iter_mut().find(|(g, _)| *g == group) {
                        Some((_, count)) => *count += 1,
                        None => lost.push((group, 1)),
                    }
                }
                self.emit_applied(events);
            }
            // Stored (and on disk: one fsync per page) first, acknowledged second: a crash or a
            // power cut in between only re-reads, never loses.
            account.lock()?.store.make_durable()?;
            let _: v1::AckResponse = self.rpc().call(method::ACK, &v1::AckRequest { up_to_seq: last }).await?;
            // The end of the queue as the server read it: what arrived since comes with its
            // own push. Asking again until a page is empty would keep a busy receiver reading
            // pages (one round trip more each), and holding the lock its pushes wait for. (A
            // server that does not say reads on until an empty page.)
            if page.end_of_queue {
                break;
            }
        }
        Ok(Pass { processed, proposed, lost })
    }

    /// Acknowledges, on `rpc`, every entry up to the cursor: what an earlier run or connection
    /// applied but had not acknowledged yet (the background acker waits [`ack_delay`], and a
    /// close or a lost connection ends its wait). `Peek` reads only after the cursor, so nothing
    /// else would ever delete those entries. Under the sync lock, so the cursor is durable.
    pub(crate) async fn ack_applied(&self, rpc: &quicprochat_rpc::RpcClient) -> Result<()> {
        let _guard = self.inner.sync_lock.lock().await;
        let cursor = self.account()?.lock()?.store.cursor()?;
        if cursor > 0 {
            let _: v1::AckResponse = rpc.call(method::ACK, &v1::AckRequest { up_to_seq: cursor }).await?;
        }
        Ok(())
    }

    /// Applies an application message pushed with its envelope inline, without reading the
    /// queue: when it is the next one after the cursor, it is applied, made durable and
    /// acknowledged in the background (see [`QpcClient::spawn_acker`]). One at or before the
    /// cursor was already read from the queue, and is dropped. Anything else — a gap before
    /// it, a handshake message, a Welcome — goes through [`QpcClient::sync`].
    pub(crate) async fn receive_pushed(&self, queued: &v1::QueuedEnvelope) -> Result<()> {
        let is_application = queued.envelope.as_ref().is_some_and(|e| e.kind == v1::EnvelopeKind::Application as i32);
        {
            let guard = self.inner.sync_lock.lock().await;
            let account = self.account()?;
            let cursor = account.lock()?.store.cursor()?;
            if queued.seq <= cursor {
                return Ok(());
            }
            if is_application && cursor.checked_add(1) == Some(queued.seq) {
                let Applied { events, lost_in, .. } = self.apply(account, queued, None)?;
                account.lock()?.store.make_durable()?;
                self.inner.ack.send_if_modified(|up_to| {
                    let newer = queued.seq > *up_to;
                    *up_to = (*up_to).max(queued.seq);
                    newer
                });
                drop(guard);
                self.emit_applied(events);
                if let Some(conversation) = lost_in {
                    self.heal(conversation, 1).await;
                }
                return Ok(());
            }
        }
        self.sync().await.map(drop)
    }

    /// Tells subscribers what applying envelopes did.
    fn emit_applied(&self, events: Vec<ClientEvent>) {
        for event in events {
            if matches!(&event, ClientEvent::MessageReceived { message, .. } if message.expires_at_ms.is_some()) {
                self.inner.expiry_wakeup.notify_one();
            }
            self.emit_inbound(event);
        }
    }

    /// Starts the task that acknowledges envelopes applied from pushes, so receiving never
    /// waits for the server's answer: after a change it waits [`ack_delay`], then sends `Ack`
    /// for the highest sequence applied (the pushes applied meanwhile share it). A failed `Ack`
    /// is left to the next one, or to the next [`QpcClient::sync`]; the server re-sends only
    /// what this device already stored, and the cursor skips it.
    pub(crate) fn spawn_acker(&self) -> Result<()> {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let mut pending = self.inner.ack.subscribe();
        let mut tasks = self.inner.tasks.lock().map_err(|_| SdkError::Poisoned)?;
        tasks.spawn(async move {
            while pending.changed().await.is_ok() {
                // What arrives meanwhile shares this Ack: a busy group costs the server about
                // one Ack a second per member, not one per message.
                tokio::time::sleep(ack_delay()).await;
                let up_to_seq = *pending.borrow_and_update();
                let Some(inner) = weak.upgrade() else { return };
                let rpc = QpcClient { inner }.rpc();
                if let Err(e) = rpc.call::<_, v1::AckResponse>(method::ACK, &v1::AckRequest { up_to_seq }).await {
                    tracing::debug!(error = %e, "acknowledging pushed envelopes failed; the next sync does it");
                }
            }
        });
        Ok(())
    }

    /// The kind of a channel, as the server records it: `None` when the server does not know it
    /// or this device is not a member (the Welcome is then skipped as invalid). A failed call is
    /// an error, so the pass stops and the Welcome is read again later: a group is never taken
    /// for a DM because the network hiccupped.
    async fn channel_kind(&self, channel_id: &bytes::Bytes) -> Result<Option<v1::ChannelKind>> {
        let got: std::result::Result<v1::GetChannelResponse, _> =
            self.rpc().call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel_id.clone() }).await;
        match got {
            Ok(got) => Ok(got.channel.and_then(|c| v1::ChannelKind::try_from(c.kind).ok())),
            Err(e) if matches!(e.rpc_status(), Some(Status::NotFound | Status::Forbidden)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn apply(
        &self,
        account: &Account,
        queued: &v1::QueuedEnvelope,
        channel_kind: Option<v1::ChannelKind>,
    ) -> Result<Applied> {
        let mut applied = Applied::default();
        applied.events = self.apply_inner(account, queued, channel_kind, &mut applied)?;
        Ok(applied)
    }

    fn apply_inner(
        &self,
        account: &Account,
        queued: &v1::QueuedEnvelope,
        channel_kind: Option<v1::ChannelKind>,
        applied: &mut Applied,
    ) -> Result<Vec<ClientEvent>> {
        let mut local = account.lock()?;
        let seq = queued.seq;
        let skip = |local: &mut crate::client::Local, why: &str| -> Result<Vec<ClientEvent>> {
            tracing::warn!(seq, reason = why, "skipping envelope");
            local.store.apply(Change { cursor: Some(seq), ..Default::default() })?;
            Ok(Vec::new())
        };
        let Some(envelope) = &queued.envelope else { return skip(&mut local, "no envelope") };
        let Ok(group) = <[u8; 16]>::try_from(queued.channel_id.as_ref()) else {
            return skip(&mut local, "malformed channel id");
        };
        let conversation = ConversationId(group);
        let kind = v1::EnvelopeKind::try_from(envelope.kind).unwrap_or(v1::EnvelopeKind::Unspecified);
        match kind {
            v1::EnvelopeKind::Welcome => {
                if local.mls.has_group(&group)? {
                    return skip(&mut local, "welcome for a group this device is already in");
                }
                let joined = match local.mls.join_from_welcome(&envelope.payload) {
                    Ok(j) => j,
                    Err(e) => return skip(&mut local, &e.to_string()),
                };
                if joined.group_id.as_slice() != group.as_slice() {
                    return skip(&mut local, "welcome group id does not match its channel");
                }
                let mut row = conversation_row(conversation, &account.username, &joined.members);
                if channel_kind == Some(v1::ChannelKind::Group) {
                    row.kind = KIND_GROUP;
                    row.peer = None;
                }
                let name = row.name.clone();
                local.persist(Change { conversation: Some(row), cursor: Some(seq), ..Default::default() })?;
                Ok(vec![ClientEvent::ConversationCreated { conversation, name }])
            }
            v1::EnvelopeKind::Commit | v1::EnvelopeKind::Proposal | v1::EnvelopeKind::Application => {
                if !local.mls.has_group(&group)? {
                    // A conversation this device was in, whose group state is gone: rejoin.
                    if local.store.conversation(&conversation)?.is_some_and(|c| !c.left) {
                        applied.lost_in = Some(conversation);
                        return skip(&mut local, "message for a conversation whose group state is lost");
                    }
                    return skip(&mut local, "message for a group this device is not in");
                }
                let processed = match local.mls.process(&group, &envelope.payload) {
                    Ok(p) => p,
                    // From an epoch this device never reached (commits it missed): rejoin.
                    Err(quicprochat_core::CoreError::WrongEpoch { message_epoch, group_epoch })
                        if message_epoch > group_epoch
                            && local.store.conversation(&conversation)?.is_some_and(|c| !c.left) =>
                    {
                        applied.lost_in = Some(conversation);
                        return skip(&mut local, "message from an epoch this device missed");
                    }
                    Err(e) => return skip(&mut local, &e.to_string()),
                };
                match processed {
                    Processed::Application { sender, plaintext, .. } => {
                        let state = local.mls.state_changes()?;
                        let events = crate::inbound::apply_application(
                            &mut local.store,
                            Inbound {
                                conversation,
                                sender: &sender.username,
                                plaintext: &plaintext,
                                sender_device: sender.device_id.0,
                            },
                            &state,
                            seq,
                            crate::store::now_ms(),
                        )?;
                        local.mls.mark_persisted(&state)?;
                        Ok(events)
                    }
                    Processed::Commit { epoch, added, removed, .. } => {
                        let me_removed = removed.iter().any(|m| m.device_id == account.device_id);
                        if me_removed {
                            // This device is out of the group: its keys for it are useless now,
                            // and the conversation is no longer listed (its history stays).
                            local.store.mark_left(&conversation)?;
                            local.mls.delete_group(&group)?;
                        }
                        local.persist(Change { cursor: Some(seq), ..Default::default() })?;
                        let mut events: Vec<ClientEvent> = added
                            .into_iter()
                            .map(|m| ClientEvent::MemberJoined { conversation, username: m.username })
                            .collect();
                        events.extend(
                            removed.into_iter().map(|m| ClientEvent::MemberLeft { conversation, username: m.username }),
                        );
                        events.push(ClientEvent::EpochChanged { conversation, epoch });
                        Ok(events)
                    }
                    Processed::Proposal { .. } => {
                        local.persist(Change { cursor: Some(seq), ..Default::default() })?;
                        applied.proposal_in = Some(conversation);
                        Ok(Vec::new())
                    }
                    #[allow(unreachable_patterns)]
                    _ => skip(&mut local, "unsupported MLS message"),
                }
            }
            v1::EnvelopeKind::Unspecified => skip(&mut local, "envelope of unknown kind"),
        }
    }
}

/// What one pass over the queue did.
struct Pass {
    /// Envelopes applied (or skipped) and acknowledged.
    processed: usize,
    /// Groups that received proposals, to commit.
    proposed: Vec<ConversationId>,
    /// Conversations whose messages could not be read because this device's group state is
    /// lost or behind, with how many were skipped.
    lost: Vec<(ConversationId, u32)>,
}

/// What applying one envelope did.
#[derive(Default)]
struct Applied {
    events: Vec<ClientEvent>,
    proposal_in: Option<ConversationId>,
    lost_in: Option<ConversationId>,
}

/// Names a conversation after its other members.
pub(crate) fn conversation_row(id: ConversationId, me: &str, members: &[MemberInfo]) -> ConversationRow {
    let mut others: Vec<&str> = members.iter().map(|m| m.username.as_str()).filter(|u| *u != me).collect();
    others.sort_unstable();
    others.dedup();
    if others.len() == 1 {
        let peer = others[0].to_owned();
        ConversationRow::new(id, KIND_DM, peer.clone(), Some(peer))
    } else {
        ConversationRow::new(id, KIND_GROUP, others.join(", "), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_delays_spread_around_the_coalescing_interval() {
        let delays: Vec<_> = (0..200).map(|_| ack_delay()).collect();
        let (low, high) = (ACK_COALESCE / 2, ACK_COALESCE * 3 / 2);
        assert!(delays.iter().all(|d| (low..high).contains(d)), "{low:?}..{high:?}");
        // Spread, not one value: 200 draws all in one tenth of the range would be chance
        // below 1e-190.
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*max - *min > ACK_COALESCE / 10, "{min:?}..{max:?}");
    }
}
