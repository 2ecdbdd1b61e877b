//! Conversations: creating a DM and sending into it.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use prost::Message as _;
use quicprochat_proto::{method, v1};
use quicprochat_rpc::Status;

use crate::client::{QpcClient, fold_username};
use crate::error::Result;
use zeroize::Zeroizing;

use crate::store::{Change, ConversationRow, Effect, MessageRow, OutboxRow, now_ms};
use crate::sync::{KIND_DM, KIND_GROUP};
use crate::{ClientEvent, ConversationId, Message, MessageId, SdkError};

/// A conversation this device is in. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ConversationHandle {
    client: QpcClient,
    id: ConversationId,
    name: String,
}

/// What sending an application message changes on this device.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LocalEcho<'a> {
    /// A new message in the history.
    Message {
        /// The text the history shows.
        text: &'a str,
        /// The encoded `FileBody`, for a file.
        attachment: Option<&'a [u8]>,
    },
    /// A change to stored messages or to the conversation.
    Effect(Effect<'a>),
    /// Nothing (a typing indicator).
    Nothing,
}

/// A commit built and left pending by `MlsClient`, with the Welcomes for the devices it adds.
pub(crate) struct PendingCommit {
    pub commit: Vec<u8>,
    pub epoch_before: u64,
    pub group_info: Vec<u8>,
    /// The Welcome of a commit that adds devices, and those devices' ids.
    pub welcome: Option<(Bytes, Vec<Bytes>)>,
}

impl From<quicprochat_core::mls::CommitOutcome> for PendingCommit {
    /// Commits that add nobody (removals, updates, committed removal proposals) carry no Welcome.
    fn from(o: quicprochat_core::mls::CommitOutcome) -> Self {
        Self { commit: o.commit, epoch_before: o.epoch_before, group_info: o.group_info, welcome: None }
    }
}

/// The Welcome fields of a `BatchEnqueueRequest`: one shared Welcome when the server takes it
/// (`shared`), else a copy per device, as an older server needs.
fn welcome_fields(
    welcome: Option<(Bytes, Vec<Bytes>)>,
    shared: bool,
) -> (Vec<v1::WelcomeDelivery>, Option<v1::SharedWelcome>) {
    match welcome {
        None => (Vec::new(), None),
        Some((payload, device_ids)) if shared => (Vec::new(), Some(v1::SharedWelcome { payload, device_ids })),
        Some((payload, device_ids)) => (
            device_ids
                .into_iter()
                .map(|device_id| v1::WelcomeDelivery { device_id, payload: payload.clone() })
                .collect(),
            None,
        ),
    }
}

/// How often a commit whose outcome is unknown is resent (with backoff: about 6 s in all).
const HANDSHAKE_SEND_TRIES: u32 = 5;

/// The largest commit-with-Welcomes request sent at once: a request frame as every server takes
/// it (8 MiB), less room for the request's other fields.
const MAX_BATCH_BYTES: usize = quicprochat_rpc::DEFAULT_MAX_PAYLOAD as usize - 64 * 1024;
/// Bytes a device id adds to a request (16, and protobuf's tag and length).
const DEVICE_ID_BYTES: usize = 18;

/// The most devices one commit adds: a server welcomes at most this many in one batch.
const MAX_ADDED_DEVICES: usize = 1000;

/// How often a commit is rebuilt after losing a race.
const MAX_COMMIT_ATTEMPTS: u32 = 5;

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

impl ConversationHandle {
    pub(crate) fn new(client: QpcClient, id: ConversationId, name: String) -> Self {
        Self { client, id, name }
    }

    pub(crate) fn client(&self) -> &QpcClient {
        &self.client
    }

    /// The conversation id.
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// Display name (the peer's username for a DM, unless renamed), as it was when this handle
    /// was made or last renamed through it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn set_name(&mut self, name: String) {
        self.name = name;
    }

    /// Encrypts `text` with MLS, stores it locally and hands it to the server.
    pub async fn send_text(&self, text: &str) -> Result<MessageId> {
        let body = v1::app_message::Body::Text(v1::TextBody { text: text.to_owned() });
        self.send_app(body, LocalEcho::Message { text, attachment: None }).await
    }

    /// Encrypts an application message with MLS, stores it locally (with `stored_text` and the
    /// encoded attachment, if any) and hands it to the server.
    pub(crate) async fn send_body(
        &self,
        body: v1::app_message::Body,
        stored_text: &str,
        attachment: Option<&[u8]>,
    ) -> Result<MessageId> {
        self.send_app(body, LocalEcho::Message { text: stored_text, attachment }).await
    }

    /// Sends an application message. Typing indicators go out at once as ephemeral envelopes
    /// (never stored, lost when offline, which is what they are for). Everything else is
    /// queued in the outbox together with its local `echo`, then handed to the server (see
    /// [`crate::outbox`]): the call returns once the server accepted it, or once it is safely
    /// queued when the server cannot be reached. It fails only when the server refused this
    /// message for good. Stored messages carry the conversation's disappearing timer as their
    /// server TTL (a timer change itself is kept until read, so nobody misses it).
    pub(crate) async fn send_app(&self, body: v1::app_message::Body, echo: LocalEcho<'_>) -> Result<MessageId> {
        let account = self.client.account()?;
        let ephemeral = matches!(body, v1::app_message::Body::Typing(_));
        let timer_change = matches!(body, v1::app_message::Body::Disappearing(_));
        let timer = self.active_row()?.disappearing_secs;
        let ttl_secs = if ephemeral || timer_change { 0 } else { timer.unwrap_or(0) };
        let id = MessageId(random16());
        let sent_at_ms = now_ms();
        let app = v1::AppMessage {
            message_id: Bytes::copy_from_slice(&id.0),
            sent_at_ms,
            expire_after_secs: ttl_secs,
            body: Some(body),
        };
        let plaintext = Zeroizing::new(app.encode_to_vec());
        if ephemeral {
            self.send_ephemeral(id, &plaintext).await?;
            return Ok(id);
        }
        let expires_at_ms = (ttl_secs > 0).then(|| sent_at_ms + u64::from(ttl_secs) * 1000);
        let (row, effect) = match echo {
            LocalEcho::Message { text, attachment } => (
                Some(MessageRow {
                    id,
                    conversation: self.id,
                    sender: &account.username,
                    text,
                    sent_at_ms,
                    outgoing: true,
                    attachment,
                    expires_at_ms,
                    unsupported: None,
                    sender_device: Some(account.device_id.0),
                }),
                None,
            ),
            LocalEcho::Effect(effect) => (None, Some(effect)),
            LocalEcho::Nothing => (None, None),
        };
        self.queue_and_flush(id, &plaintext, ttl_secs, row, effect).await?;
        Ok(id)
    }

    /// Stores the send in the outbox with its local echo (one transaction), flushes the outbox,
    /// and reports this send's fate: delivered or still queued is success.
    async fn queue_and_flush(
        &self,
        id: MessageId,
        plaintext: &[u8],
        ttl_secs: u32,
        row: Option<MessageRow<'_>>,
        effect: Option<Effect<'_>>,
    ) -> Result<()> {
        let account = self.client.account()?;
        let outbox = OutboxRow { message: id, conversation: self.id, payload: plaintext, ttl_secs };
        account.lock()?.store.apply(Change { message: row, effect, outbox: Some(outbox), ..Default::default() })?;
        if row.is_some_and(|r| r.expires_at_ms.is_some()) {
            self.client.inner.expiry_wakeup.notify_one();
        }
        let flushed = self.client.flush_outbox().await?;
        if let Some((_, error)) = flushed.failed.into_iter().find(|(failed, _)| *failed == id) {
            return Err(error);
        }
        if flushed.retry_in.is_some() {
            // Still queued: the background sender keeps trying.
            self.client.inner.outbox_wakeup.notify_one();
        }
        Ok(())
    }

    /// Encrypts and pushes an ephemeral envelope to the members online now.
    async fn send_ephemeral(&self, id: MessageId, plaintext: &[u8]) -> Result<()> {
        let (ciphertext, epoch) = self.client.encrypt_for_sending(self.id, plaintext).await?;
        let _: v1::EnqueueResponse = self
            .client
            .rpc()
            .call(
                method::ENQUEUE,
                &v1::EnqueueRequest {
                    channel_id: Bytes::copy_from_slice(&self.id.0),
                    envelope: Some(v1::Envelope {
                        kind: v1::EnvelopeKind::Application as i32,
                        epoch,
                        payload: ciphertext.into(),
                    }),
                    idempotency_key: Bytes::copy_from_slice(&id.0),
                    ephemeral: true,
                    ..Default::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Test support: sends an `AppMessage` whose body is field `body_field` (a kind this version
    /// does not know) holding `bytes`, as a later version would. Nothing is stored locally.
    #[cfg(feature = "test-util")]
    pub async fn send_unknown_body_for_tests(&self, body_field: u32, bytes: &[u8]) -> Result<MessageId> {
        let id = MessageId(random16());
        let mut plaintext = Zeroizing::new(
            v1::AppMessage { message_id: Bytes::copy_from_slice(&id.0), sent_at_ms: now_ms(), ..Default::default() }
                .encode_to_vec(),
        );
        prost::encoding::bytes::encode(body_field, &Bytes::copy_from_slice(bytes), &mut *plaintext);
        self.queue_and_flush(id, &plaintext, 0, None, None).await?;
        Ok(id)
    }

    /// The conversation's disappearing timer, seconds.
    pub(crate) fn disappearing_secs(&self) -> Result<Option<u32>> {
        let account = self.client.account()?;
        let row = account.lock()?.store.conversation(&self.id)?;
        Ok(row.and_then(|r| r.disappearing_secs))
    }

    /// The stored conversation, refused once this device left it.
    fn active_row(&self) -> Result<ConversationRow> {
        let account = self.client.account()?;
        let row = account.lock()?.store.conversation(&self.id)?;
        match row {
            Some(row) if !row.left => Ok(row),
            Some(_) => Err(SdkError::LeftConversation),
            None => Err(SdkError::Protocol("conversation not stored")),
        }
    }

    /// Incoming messages stored since this user last read the conversation (see
    /// [`ConversationHandle::mark_read`] and [`ConversationHandle::mark_all_read`]; sending a
    /// message reads everything before it).
    pub fn unread(&self) -> Result<u32> {
        let account = self.client.account()?;
        account.lock()?.store.unread(&self.id)
    }

    /// Tells the members the group's shared name, so those who just joined show it too.
    async fn announce_group_name(&self) -> Result<()> {
        let row = self.active_row()?;
        let (Some(name), None) = (row.group_name, row.peer) else { return Ok(()) };
        let body = v1::app_message::Body::GroupName(v1::GroupNameBody { name });
        self.send_app(body, LocalEcho::Nothing).await?;
        Ok(())
    }

    /// Whether the server's verified delivery proof for `message` is stored.
    pub fn is_delivery_confirmed(&self, message: MessageId) -> Result<bool> {
        let account = self.client.account()?;
        Ok(account.lock()?.store.delivery_proof(&message)?.is_some())
    }

    /// The last `limit` messages, oldest first.
    pub fn messages(&self, limit: u32) -> Result<Vec<Message>> {
        self.client.messages(self.id, limit)
    }

    /// Adds every device of `username` to this conversation, and tells the group its name so
    /// the new member shows it too.
    pub async fn invite(&self, username: &str) -> Result<()> {
        self.active_row()?;
        let user = fold_username(username);
        self.client.add_users(self.id, &[user]).await?;
        self.announce_group_name().await
    }

    /// Removes every device of `username` from this conversation with one commit.
    pub async fn remove(&self, username: &str) -> Result<()> {
        self.active_row()?;
        let user = fold_username(username);
        let id = self.id;
        self.client
            .commit_change(id, |mls| {
                let devices: Vec<_> =
                    mls.members(&id.0)?.into_iter().filter(|m| m.username == user).map(|m| m.device_id).collect();
                if devices.is_empty() {
                    return Err(SdkError::NotAMember(user.clone()));
                }
                Ok(mls.remove_members(&id.0, &devices)?.into())
            })
            .await?;
        Ok(())
    }

    /// Leaves the conversation: proposes this device's removal, which the next member to see it
    /// commits. The conversation is no longer listed and nothing more can be sent into it; its
    /// history stays readable. This device stops receiving once that commit is in.
    pub async fn leave(&self) -> Result<()> {
        self.active_row()?;
        let account = self.client.account()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let guard = self.client.inner.sync_lock.lock().await;
            let (proposal, epoch) = {
                let mut local = account.lock()?;
                let proposal = local.mls.leave_group(&self.id.0)?;
                let epoch = local.mls.epoch(&self.id.0)?;
                local.persist(Change { durable: true, ..Default::default() })?;
                (proposal, epoch)
            };
            let sent: std::result::Result<v1::EnqueueResponse, _> = self
                .client
                .send_handshake(
                    method::ENQUEUE,
                    &v1::EnqueueRequest {
                        channel_id: Bytes::copy_from_slice(&self.id.0),
                        envelope: Some(v1::Envelope {
                            kind: v1::EnvelopeKind::Proposal as i32,
                            epoch,
                            payload: proposal.into(),
                        }),
                        idempotency_key: Bytes::copy_from_slice(&random16()),
                        ..Default::default()
                    },
                )
                .await;
            match sent {
                Ok(_) => {
                    account.lock()?.store.mark_left(&self.id)?;
                    return Ok(());
                }
                // This device was behind: catch up and propose again in the current epoch.
                Err(e) if e.rpc_status() == Some(Status::Conflict) && attempt < MAX_COMMIT_ATTEMPTS => {
                    drop(guard);
                    Box::pin(self.client.sync_once_for_retry()).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Rotates this device's keys in the conversation (an MLS self-update commit); returns the
    /// new epoch. Messages of earlier epochs cannot be read with the new keys.
    pub async fn rotate_key(&self) -> Result<u64> {
        self.active_row()?;
        let id = self.id;
        self.client.commit_change(id, |mls| Ok(mls.self_update(&id.0)?.into())).await
    }

    /// The MLS epoch this device is at.
    pub fn epoch(&self) -> Result<u64> {
        let account = self.client.account()?;
        let local = account.lock()?;
        Ok(local.mls.epoch(&self.id.0)?)
    }

    /// Usernames of the current members (one entry per device).
    pub fn members(&self) -> Result<Vec<String>> {
        let account = self.client.account()?;
        let local = account.lock()?;
        Ok(local.mls.members(&self.id.0)?.into_iter().map(|m| m.username).collect())
    }
}

impl QpcClient {
    /// Opens the DM with `username`, creating the channel and the MLS group if this device is
    /// the first to ask. If the peer created it first, its Welcome must arrive before sending.
    pub async fn dm(&self, username: &str) -> Result<ConversationHandle> {
        let peer = fold_username(username);
        let account = self.account()?;
        if peer == account.username {
            return Err(SdkError::Protocol("cannot open a DM with yourself"));
        }
        if let Some(row) = account.lock()?.store.conversation_by_peer(&peer)? {
            return Ok(ConversationHandle::new(self.clone(), row.id, row.name));
        }
        // A Welcome from the peer may be waiting.
        self.sync().await?;
        if let Some(row) = account.lock()?.store.conversation_by_peer(&peer)? {
            return Ok(ConversationHandle::new(self.clone(), row.id, row.name));
        }
        let created: v1::CreateChannelResponse = self
            .rpc()
            .call(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest { kind: v1::ChannelKind::Dm as i32, peer: peer.clone() },
            )
            .await
            .map_err(|e| match e.rpc_status() {
                Some(Status::NotFound) => SdkError::UnknownUser(peer.clone()),
                _ => SdkError::from(e),
            })?;
        let id = ConversationId(
            <[u8; 16]>::try_from(created.channel_id.as_ref()).map_err(|_| SdkError::Protocol("channel id"))?,
        );
        // Either we created the channel, or we created it earlier and lost our progress
        // before anyone committed; otherwise the peer owns the first commit.
        let ours = created.was_new || (created.is_member && created.epoch == 0);
        if !ours {
            return Err(SdkError::AwaitingInvitation(peer));
        }
        self.start_dm(id, &peer).await
    }

    async fn start_dm(&self, id: ConversationId, peer: &str) -> Result<ConversationHandle> {
        let account = self.account()?;
        {
            let mut local = account.lock()?;
            if !local.mls.has_group(&id.0)? {
                local.mls.create_group(&id.0)?;
                local.persist(Change::default())?;
            }
        }
        self.add_users(id, &[peer.to_owned()]).await?;
        let row = ConversationRow::new(id, KIND_DM, peer.to_owned(), Some(peer.to_owned()));
        self.save_conversation(row)?;
        let _ = self.inner.events.send(ClientEvent::ConversationCreated { conversation: id, name: peer.to_owned() });
        Ok(ConversationHandle::new(self.clone(), id, peer.to_owned()))
    }

    /// Creates a group conversation named `name` with the given members, in one MLS commit, and
    /// tells them its name (each device may still rename it for itself).
    pub async fn create_group(&self, name: &str, members: &[&str]) -> Result<ConversationHandle> {
        let name = crate::app_message::check_group_name(name)?;
        let name = name.as_str();
        let account = self.account()?;
        let mut users: Vec<String> =
            members.iter().map(|m| fold_username(m)).filter(|m| *m != account.username).collect();
        users.sort();
        users.dedup();
        let created: v1::CreateChannelResponse = self
            .rpc()
            .call(
                method::CREATE_CHANNEL,
                &v1::CreateChannelRequest { kind: v1::ChannelKind::Group as i32, peer: String::new() },
            )
            .await?;
        let id = ConversationId(
            <[u8; 16]>::try_from(created.channel_id.as_ref()).map_err(|_| SdkError::Protocol("channel id"))?,
        );
        {
            let mut local = account.lock()?;
            local.mls.create_group(&id.0)?;
            local.persist(Change {
                conversation: Some(ConversationRow {
                    group_name: Some(name.to_owned()),
                    ..ConversationRow::new(id, KIND_GROUP, name.to_owned(), None)
                }),
                ..Default::default()
            })?;
        }
        let _ = self.inner.events.send(ClientEvent::ConversationCreated { conversation: id, name: name.to_owned() });
        let handle = ConversationHandle::new(self.clone(), id, name.to_owned());
        if !users.is_empty() {
            self.add_users(id, &users).await?;
            handle.announce_group_name().await?;
        }
        Ok(handle)
    }

    fn save_conversation(&self, row: ConversationRow) -> Result<()> {
        let account = self.account()?;
        let mut local = account.lock()?;
        local.store.apply(Change { conversation: Some(row), ..Default::default() })?;
        Ok(())
    }

    /// Sends the commit `build` makes (it must leave it pending), merging it once the server
    /// accepted it. A commit that loses a race is dropped, the winner is applied, and `build`
    /// runs again on the new epoch.
    pub(crate) async fn commit_change<F>(&self, id: ConversationId, build: F) -> Result<u64>
    where
        F: Fn(&quicprochat_core::mls::MlsClient) -> Result<PendingCommit>,
    {
        let account = self.account()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // No inbound processing while this device's own commit is in flight: a commit of the
            // next epoch arriving before ours is merged would otherwise be skipped as stale.
            let guard = self.inner.sync_lock.lock().await;
            let (outcome, before) = {
                let mut local = account.lock()?;
                let before = local.mls.members(&id.0)?;
                let outcome = build(&local.mls)?;
                // Group changes are rare and must not be undone by a power cut: durable.
                local.persist(Change { durable: true, ..Default::default() })?;
                (outcome, before)
            };
            let (welcomes, shared_welcome) =
                welcome_fields(outcome.welcome, account.shared_welcomes.load(Ordering::Relaxed));
            let request = v1::BatchEnqueueRequest {
                channel_id: Bytes::copy_from_slice(&id.0),
                commit: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Commit as i32,
                    epoch: outcome.epoch_before,
                    payload: outcome.commit.into(),
                }),
                welcomes,
                shared_welcome,
                idempotency_key: Bytes::copy_from_slice(&random16()),
                group_info: outcome.group_info.into(),
            };
            let sent: std::result::Result<v1::BatchEnqueueResponse, _> =
                self.send_handshake(method::BATCH_ENQUEUE, &request).await;
            let failed = {
                let mut local = account.lock()?;
                let failed = match sent {
                    Ok(_) => {
                        local.mls.merge_pending_commit(&id.0)?;
                        None
                    }
                    Err(e) => {
                        local.mls.clear_pending_commit(&id.0)?;
                        Some(e)
                    }
                };
                local.persist(Change { durable: true, ..Default::default() })?;
                failed
            };
            match failed {
                None => return self.announce_commit(id, &before),
                Some(e) if e.rpc_status() == Some(Status::Conflict) && attempt < MAX_COMMIT_ATTEMPTS => {
                    drop(guard);
                    Box::pin(self.sync_once_for_retry()).await?;
                }
                Some(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a commit or proposal request, resending the same request (same idempotency key)
    /// while the outcome is unknown — the connection dropped, the server was draining — so an
    /// accepted commit is never mistaken for a lost one.
    pub(crate) async fn send_handshake<Req, Resp>(
        &self,
        method_id: u16,
        request: &Req,
    ) -> std::result::Result<Resp, quicprochat_rpc::Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut delay = std::time::Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.rpc().call(method_id, request).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    let unknown = matches!(
                        e.rpc_status(),
                        None | Some(Status::Unavailable | Status::DeadlineExceeded | Status::Internal)
                    );
                    if !unknown || tries >= HANDSHAKE_SEND_TRIES {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, tries, "handshake outcome unknown; resending");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Tells subscribers what this device's own merged commit changed (others learn it from
    /// the commit itself); returns the new epoch.
    fn announce_commit(&self, id: ConversationId, before: &[quicprochat_core::mls::MemberInfo]) -> Result<u64> {
        let account = self.account()?;
        let (epoch, after) = {
            let local = account.lock()?;
            (local.mls.epoch(&id.0)?, local.mls.members(&id.0)?)
        };
        let has = |list: &[quicprochat_core::mls::MemberInfo], d| list.iter().any(|m| m.device_id == d);
        for m in after.iter().filter(|m| !has(before, m.device_id)) {
            let _ =
                self.inner.events.send(ClientEvent::MemberJoined { conversation: id, username: m.username.clone() });
        }
        for m in before.iter().filter(|m| !has(&after, m.device_id)) {
            let _ = self.inner.events.send(ClientEvent::MemberLeft { conversation: id, username: m.username.clone() });
        }
        let _ = self.inner.events.send(ClientEvent::EpochChanged { conversation: id, epoch });
        Ok(epoch)
    }

    /// Adds every device of `users` to group `id` in one commit with its Welcomes (several when they
    /// would not fit in one request, see `add_key_packages`). A commit that
    /// loses a race (CONFLICT) is dropped, the winner's commit is fetched and applied, and the
    /// add is built again on the new epoch with the same key packages.
    pub(crate) async fn add_users(&self, id: ConversationId, users: &[String]) -> Result<u64> {
        let mut claimed = Vec::new();
        for user in users {
            let kps: v1::FetchKeyPackagesResponse = self
                .rpc()
                .call(method::FETCH_KEY_PACKAGES, &v1::FetchKeyPackagesRequest { username: user.clone() })
                .await
                .map_err(|e| match e.rpc_status() {
                    Some(Status::NotFound) => SdkError::UnknownUser(user.clone()),
                    _ => SdkError::from(e),
                })?;
            if kps.key_packages.is_empty() {
                return Err(SdkError::NoKeyPackages(user.clone()));
            }
            claimed.extend(kps.key_packages);
        }
        self.add_key_packages(id, &claimed).await
    }

    /// Adds the devices of `claimed` in one commit, or in several when they are more than a
    /// server welcomes at once, or the request would not fit a frame, or the commit or the
    /// Welcome would pass the server's payload limit (the Welcome carries the ratchet tree, and
    /// an older server takes a copy of it per device): the devices are then split in halves,
    /// each added by its own commit.
    async fn add_key_packages(&self, id: ConversationId, claimed: &[v1::DeviceKeyPackage]) -> Result<u64> {
        if claimed.len() <= MAX_ADDED_DEVICES {
            let account = self.account()?;
            let copies = if account.shared_welcomes.load(Ordering::Relaxed) { 1 } else { claimed.len() };
            let max_payload = account.max_payload.load(Ordering::Relaxed);
            let packages: Vec<Vec<u8>> = claimed.iter().map(|k| k.key_package.to_vec()).collect();
            let too_large = std::cell::Cell::new(false);
            let added = self
                .commit_change(id, |mls| {
                    let outcome = mls.add_members(&id.0, &packages)?;
                    let batch = outcome.commit.len()
                        + outcome.group_info.len()
                        + (outcome.welcome.len() + DEVICE_ID_BYTES) * copies
                        + DEVICE_ID_BYTES * claimed.len();
                    // The server holds the commit and each Welcome to its payload limit (the
                    // GroupInfo only to the frame's).
                    let largest = outcome.commit.len().max(outcome.welcome.len());
                    if (batch > MAX_BATCH_BYTES || largest > max_payload) && claimed.len() > 1 {
                        mls.clear_pending_commit(&id.0)?;
                        too_large.set(true);
                        return Err(SdkError::Protocol("a commit's Welcomes do not fit in one request"));
                    }
                    Ok(PendingCommit {
                        commit: outcome.commit,
                        epoch_before: outcome.epoch_before,
                        group_info: outcome.group_info,
                        // The added devices get the Welcome; nobody else does.
                        welcome: Some((
                            Bytes::from(outcome.welcome),
                            claimed.iter().map(|k| k.device_id.clone()).collect(),
                        )),
                    })
                })
                .await;
            if !too_large.get() {
                return added;
            }
        }
        let (first, second) = claimed.split_at(claimed.len() / 2);
        Box::pin(self.add_key_packages(id, first)).await?;
        Box::pin(self.add_key_packages(id, second)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_welcome_is_shared_with_a_server_that_takes_it_and_copied_for_an_older_one() {
        let devices = vec![Bytes::from_static(&[1; 16]), Bytes::from_static(&[2; 16])];
        let welcome = Some((Bytes::from_static(b"welcome"), devices.clone()));

        let (copies, shared) = welcome_fields(welcome.clone(), true);
        assert!(copies.is_empty());
        assert_eq!(shared, Some(v1::SharedWelcome { payload: Bytes::from_static(b"welcome"), device_ids: devices }));

        let (copies, shared) = welcome_fields(welcome, false);
        assert_eq!(shared, None);
        assert_eq!(
            copies.iter().map(|w| (w.device_id[0], &w.payload[..])).collect::<Vec<_>>(),
            vec![(1, &b"welcome"[..]), (2, &b"welcome"[..])]
        );
        assert_eq!(welcome_fields(None, true), (Vec::new(), None));
    }
}
