//! Self-healing groups: a device whose group state is lost, corrupt or behind rejoins the
//! conversation on its own, by MLS external commit from the GroupInfo the server keeps for the
//! channel (SPEC §4.3), without help from another member. What it could not read in between is
//! reported ([`ClientEvent::MessagesLost`]), never silently dropped.

use bytes::Bytes;
use quicprochat_proto::{method, v1};

use crate::client::QpcClient;
use crate::error::Result;
use crate::store::Change;
use crate::sync::conversation_row;
use crate::{ClientEvent, ConversationId, SdkError};

/// Rejoin attempts when the group keeps moving under us (each CONFLICT means a newer GroupInfo).
const MAX_REJOIN_ATTEMPTS: usize = 5;

impl QpcClient {
    /// Reports `count` unreadable messages of `conversation` and rejoins it. A failure is
    /// logged: the next unreadable message tries again.
    pub(crate) async fn heal(&self, conversation: ConversationId, count: u32) {
        let _ = self.inner.events.send(ClientEvent::MessagesLost { conversation, count });
        if let Err(e) = self.rejoin(conversation).await {
            tracing::warn!(error = %e, "rejoining a conversation by external commit failed");
        }
    }

    /// Rejoins `conversation` by external commit: fetches the channel's latest GroupInfo,
    /// replaces this device's state of the group with a fresh leaf, and has the server accept
    /// the commit (retrying with the newer GroupInfo while the group moves on). Returns the new
    /// epoch. Messages sent before the rejoin stay unreadable; everything after it is read.
    pub async fn rejoin(&self, conversation: ConversationId) -> Result<u64> {
        let _guard = self.inner.sync_lock.lock().await;
        let account = self.account()?;
        let channel_id = Bytes::copy_from_slice(&conversation.0);
        for _ in 0..MAX_REJOIN_ATTEMPTS {
            let info: v1::GetGroupInfoResponse = self
                .rpc()
                .call(method::GET_GROUP_INFO, &v1::GetGroupInfoRequest { channel_id: channel_id.clone() })
                .await?;
            let join = account.lock()?.mls.join_by_external_commit(&info.group_info)?;
            let mut idempotency_key = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut idempotency_key);
            let request = v1::EnqueueRequest {
                channel_id: channel_id.clone(),
                envelope: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Commit as i32,
                    epoch: join.epoch_before,
                    payload: join.commit.into(),
                }),
                idempotency_key: Bytes::copy_from_slice(&idempotency_key),
                group_info: join.group_info.into(),
                ..Default::default()
            };
            match self.rpc().call::<_, v1::EnqueueResponse>(method::ENQUEUE, &request).await {
                Ok(_) => {
                    let mut local = account.lock()?;
                    // The conversation row survives state loss; recreate it if it did not.
                    let row = match local.store.conversation(&conversation)? {
                        Some(_) => None,
                        None => Some(conversation_row(conversation, &account.username, &join.joined.members)),
                    };
                    local.persist(Change { conversation: row, durable: true, ..Default::default() })?;
                    drop(local);
                    let epoch = join.joined.epoch;
                    let _ = self.inner.events.send(ClientEvent::EpochChanged { conversation, epoch });
                    tracing::info!(epoch, "rejoined a conversation by external commit");
                    return Ok(epoch);
                }
                // The group moved on while we built the commit: start again from its new state.
                Err(e) if e.rpc_status() == Some(quicprochat_rpc::Status::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SdkError::RejoinRaced)
    }

    /// Test support: forgets this device's MLS state of `conversation`, as a lost or corrupt
    /// state file would (the conversation and its history stay).
    #[cfg(feature = "test-util")]
    pub fn forget_group_state_for_tests(&self, conversation: ConversationId) -> Result<()> {
        let account = self.account()?;
        let mut local = account.lock()?;
        local.mls.delete_group(&conversation.0)?;
        local.persist(Change::default())?;
        Ok(())
    }
}
