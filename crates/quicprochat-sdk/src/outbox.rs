//! The durable outbox (SPEC §6 "Offline"): every send is first stored — its local echo and
//! the encoded `AppMessage` in one transaction — and then handed to the server, oldest first,
//! by [`QpcClient::flush_outbox`]. A send that cannot go out now (offline, server busy, rate
//! limited) stays queued and is retried by a background sender with backoff, on reconnect and
//! after a restart, always with its message id as the idempotency key: the server stores it
//! once however often it is retried, and receivers deduplicate by the same id.
//!
//! The payload is encrypted when it is handed to the server, not when it is queued, so a send
//! that waited across a commit goes out in the group's current epoch.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_core::CoreError;
use quicprochat_proto::{method, v1};

use crate::client::{Inner, QpcClient};
use crate::error::Result;
use crate::store::{Change, OutboxEntry};
use crate::{ClientEvent, ConversationId, MessageId, SdkError};

/// First pause after a send failed for a passing reason; doubled per failure.
const MIN_RETRY: Duration = Duration::from_millis(500);
/// Longest pause between retries.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What became of one outbox entry.
enum Attempt {
    /// Accepted by the server.
    Sent,
    /// Not now: try again after the pause (the whole outbox waits, to keep the order).
    Later(Duration),
    /// Never: given up with this error.
    GaveUp(SdkError),
}

/// What a flush did.
#[derive(Debug, Default)]
pub(crate) struct Flushed {
    /// Sends given up during this flush, with why.
    pub failed: Vec<(MessageId, SdkError)>,
    /// The outbox is not empty: retry after this pause.
    pub retry_in: Option<Duration>,
}

impl QpcClient {
    /// Test support: the next send the server accepts stays in the outbox and this client
    /// stops sending, as if the process died right after the server answered. A new client on
    /// the same state dir then sends it again, with the same idempotency key.
    #[cfg(feature = "test-util")]
    pub fn crash_after_next_enqueue_for_tests(&self) {
        self.inner.crash_after_enqueue.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test support: from now on this client ignores its push stream, as if the server dropped
    /// every notification; only the long-poll fallback brings messages in.
    #[cfg(feature = "test-util")]
    pub fn ignore_push_for_tests(&self) {
        self.inner.ignore_push.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test support: how many pages [`QpcClient::sync`] has read from the queue so far.
    #[cfg(feature = "test-util")]
    pub fn pages_read_for_tests(&self) -> u64 {
        self.inner.pages_read.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many sends wait in the outbox (offline, or being retried).
    pub fn pending_sends(&self) -> Result<u64> {
        self.account()?.lock()?.store.outbox_len()
    }

    /// Hands queued sends to the server, oldest first, until the outbox is empty or one has to
    /// wait. One flush at a time, so the order of sends is kept.
    pub(crate) async fn flush_outbox(&self) -> Result<Flushed> {
        let _order = self.inner.send_lock.lock().await;
        let mut flushed = Flushed::default();
        loop {
            let Some(entry) = self.account()?.lock()?.store.next_outbox()? else { return Ok(flushed) };
            match self.attempt(&entry).await {
                Attempt::Sent => self.account()?.lock()?.store.outbox_sent(&entry.message)?,
                Attempt::Later(pause) => {
                    self.account()?.lock()?.store.outbox_attempted(&entry.message)?;
                    flushed.retry_in = Some(pause);
                    return Ok(flushed);
                }
                Attempt::GaveUp(error) => {
                    tracing::warn!(error = %error, "a queued send was refused for good");
                    self.account()?.lock()?.store.outbox_failed(&entry.message, &error.to_string())?;
                    let _ = self.inner.events.send(ClientEvent::SendFailed {
                        conversation: entry.conversation,
                        message: entry.message,
                        reason: error.to_string(),
                    });
                    flushed.failed.push((entry.message, error));
                }
            }
        }
    }

    async fn attempt(&self, entry: &OutboxEntry) -> Attempt {
        let accepted = match self.enqueue_entry(entry).await {
            Ok(accepted) => accepted,
            Err(error) => return disposition(error, entry.attempts),
        };
        #[cfg(feature = "test-util")]
        if self.inner.crash_after_enqueue.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Attempt::Later(MAX_RETRY);
        }
        match self.keep_delivery_proof(entry.conversation, entry.message, accepted.proof) {
            Ok(()) => Attempt::Sent,
            // Accepted, so not to be sent again; the bad proof is the server's fault.
            Err(SdkError::InvalidDeliveryProof) => {
                tracing::warn!("the server accepted a message with a delivery proof that does not verify");
                Attempt::Sent
            }
            Err(error) => Attempt::GaveUp(error),
        }
    }

    /// Encrypts the entry in the conversation's current epoch (saving the advanced ratchet)
    /// and enqueues it with its message id as the idempotency key.
    async fn enqueue_entry(&self, entry: &OutboxEntry) -> Result<v1::EnqueueResponse> {
        let (ciphertext, epoch) = self.encrypt_for_sending(entry.conversation, &entry.payload).await?;
        let request = v1::EnqueueRequest {
            channel_id: Bytes::copy_from_slice(&entry.conversation.0),
            envelope: Some(v1::Envelope {
                kind: v1::EnvelopeKind::Application as i32,
                epoch,
                payload: ciphertext.into(),
            }),
            idempotency_key: Bytes::copy_from_slice(&entry.message.0),
            ttl_secs: entry.ttl_secs,
            ..Default::default()
        };
        Ok(self.rpc().call(method::ENQUEUE, &request).await?)
    }

    /// [`Self::encrypt_for`], first taking part in a pending commit when the group has
    /// proposals waiting (a member leaving blocks application messages until it lands).
    pub(crate) async fn encrypt_for_sending(
        &self,
        conversation: ConversationId,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, u64)> {
        match self.encrypt_for(conversation, plaintext) {
            Err(SdkError::Crypto(CoreError::PendingProposals)) => {
                self.sync().await?;
                self.encrypt_for(conversation, plaintext)
            }
            other => other,
        }
    }

    /// Encrypts `plaintext` for `conversation` with MLS and saves the advanced ratchet.
    pub(crate) fn encrypt_for(&self, conversation: ConversationId, plaintext: &[u8]) -> Result<(Vec<u8>, u64)> {
        let account = self.account()?;
        let mut local = account.lock()?;
        let ciphertext = local.mls.encrypt(&conversation.0, plaintext)?;
        let epoch = local.mls.epoch(&conversation.0)?;
        // On disk before the ciphertext leaves: a ratchet step lost to a power cut would
        // encrypt the next message with the same key and nonce.
        local.persist(Change { durable: true, ..Default::default() })?;
        Ok((ciphertext, epoch))
    }

    /// Verifies the server's signed receipt; for a message in the history, keeps it and tells
    /// subscribers.
    fn keep_delivery_proof(
        &self,
        conversation: ConversationId,
        id: MessageId,
        proof: Option<v1::DeliveryProof>,
    ) -> Result<()> {
        let account = self.account()?;
        let proof = proof.ok_or(SdkError::InvalidDeliveryProof)?;
        let digest = quicprochat_core::ids::delivery_proof_digest(
            &proof.envelope_id,
            &proof.channel_id,
            proof.seq,
            proof.timestamp_ms,
        );
        let genuine = proof.channel_id.as_ref() == conversation.0.as_slice()
            && quicprochat_core::identity::verify_signature(&account.server_signing_key, &digest, &proof.signature)
                .is_ok();
        if !genuine {
            return Err(SdkError::InvalidDeliveryProof);
        }
        let mut local = account.lock()?;
        if local.store.message(&id)?.is_none() {
            // A reaction, receipt, edit or delete: nothing in the history to attach it to.
            return Ok(());
        }
        local.store.set_delivery_proof(&id, &prost::Message::encode_to_vec(&proof))?;
        drop(local);
        let _ = self.inner.events.send(ClientEvent::DeliveryConfirmed { conversation, message: id, seq: proof.seq });
        Ok(())
    }

    /// Starts the background sender: it flushes the outbox when woken (a send was queued, the
    /// connection came back) and retries with backoff while sends wait. It holds only a weak
    /// reference, so dropping the client ends it.
    pub(crate) fn spawn_outbox_sender(&self) -> Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wakeup = Arc::clone(&self.inner.outbox_wakeup);
        let mut tasks = self.inner.tasks.lock().map_err(|_| SdkError::Poisoned)?;
        tasks.spawn(async move {
            loop {
                let retry_in = {
                    let Some(inner) = weak.upgrade() else { return };
                    match (QpcClient { inner }).flush_outbox().await {
                        Ok(flushed) => flushed.retry_in,
                        Err(e) => {
                            tracing::warn!(error = %e, "flushing the outbox failed");
                            Some(MAX_RETRY)
                        }
                    }
                };
                match retry_in {
                    Some(pause) => {
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = wakeup.notified() => {}
                        }
                    }
                    None => wakeup.notified().await,
                }
            }
        });
        Ok(())
    }
}

/// Whether a failed attempt is retried (and after what pause) or given up.
fn disposition(error: SdkError, attempts: u32) -> Attempt {
    let backoff = MIN_RETRY.saturating_mul(2u32.saturating_pow(attempts.min(16))).min(MAX_RETRY);
    match &error {
        // Offline or the connection broke mid-call: the reconnect wakes the sender.
        SdkError::Transport(_) | SdkError::Timeout => Attempt::Later(backoff),
        SdkError::Server { status, retry_after_ms, .. } => match *status {
            "RATE_LIMITED" | "QUEUE_FULL" => {
                Attempt::Later(Duration::from_millis(*retry_after_ms).clamp(MIN_RETRY, MAX_RETRY))
            }
            // Passing trouble on the server, or a session that a reconnect will resume.
            "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "INTERNAL" | "UNAUTHENTICATED" => Attempt::Later(backoff),
            _ => Attempt::GaveUp(error),
        },
        // Local trouble (the store, a poisoned lock): not the message's fault.
        SdkError::LocalStore(_) | SdkError::Io { .. } | SdkError::Poisoned => Attempt::Later(MAX_RETRY),
        _ => Attempt::GaveUp(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: &'static str, retry_after_ms: u64) -> SdkError {
        SdkError::Server { status, message: String::new(), retry_after_ms }
    }

    #[test]
    fn passing_failures_are_retried_with_backoff_and_the_rest_given_up() {
        let pause = |error, attempts| match disposition(error, attempts) {
            Attempt::Later(pause) => Some(pause),
            _ => None,
        };
        assert_eq!(pause(SdkError::Timeout, 0), Some(MIN_RETRY));
        assert_eq!(pause(SdkError::Timeout, 3), Some(MIN_RETRY * 8));
        assert_eq!(pause(SdkError::Timeout, 1000), Some(MAX_RETRY));
        assert_eq!(pause(server("RATE_LIMITED", 2_000), 0), Some(Duration::from_secs(2)));
        assert_eq!(pause(server("QUEUE_FULL", 0), 5), Some(MIN_RETRY));
        assert_eq!(pause(server("UNAVAILABLE", 0), 1), Some(MIN_RETRY * 2));
        for refused in ["FORBIDDEN", "NOT_FOUND", "BAD_REQUEST", "PAYLOAD_TOO_LARGE"] {
            assert!(matches!(disposition(server(refused, 0), 0), Attempt::GaveUp(_)), "{refused}");
        }
        assert!(matches!(disposition(SdkError::Crypto(CoreError::WrongGroup), 0), Attempt::GaveUp(_)));
    }
}
