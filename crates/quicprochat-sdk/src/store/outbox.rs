//! The outbox table: sends waiting to be accepted by the server, oldest first.

use rusqlite::{OptionalExtension, params};
use zeroize::Zeroizing;

use super::{LocalStore, to_u64};
use crate::error::Result;
use crate::{ConversationId, DeliveryState, MessageId, SdkError};

/// A send taken from the outbox, unsealed.
#[derive(Debug)]
pub(crate) struct OutboxEntry {
    pub message: MessageId,
    pub conversation: ConversationId,
    /// The encoded `AppMessage`.
    pub payload: Zeroizing<Vec<u8>>,
    pub ttl_secs: u32,
    /// Earlier attempts that failed for a passing reason.
    pub attempts: u32,
}

/// `message, conversation, payload, ttl_secs, attempts` as stored.
type OutboxColumns = (Vec<u8>, Vec<u8>, Vec<u8>, i64, i64);

/// Associated data of a sealed outbox payload.
pub(super) fn aad(id: &MessageId) -> Vec<u8> {
    let mut aad = b"outbox:".to_vec();
    aad.extend_from_slice(&id.0);
    aad
}

impl LocalStore {
    /// The oldest send still waiting (not given up).
    pub fn next_outbox(&self) -> Result<Option<OutboxEntry>> {
        let row: Option<OutboxColumns> = self
            .conn
            .query_row(
                "SELECT message, conversation, payload, ttl_secs, attempts FROM outbox \
                 WHERE failed IS NULL ORDER BY rowid LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((message, conversation, payload, ttl_secs, attempts)) = row else { return Ok(None) };
        let message = MessageId(<[u8; 16]>::try_from(message.as_slice()).map_err(|_| SdkError::Protocol("outbox id"))?);
        let conversation = ConversationId(
            <[u8; 16]>::try_from(conversation.as_slice()).map_err(|_| SdkError::Protocol("outbox conversation"))?,
        );
        Ok(Some(OutboxEntry {
            payload: self.open_sealed(&aad(&message), &payload)?,
            message,
            conversation,
            ttl_secs: u32::try_from(ttl_secs).unwrap_or(0),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        }))
    }

    /// The server accepted it: it leaves the outbox.
    pub fn outbox_sent(&mut self, id: &MessageId) -> Result<()> {
        self.conn.execute("DELETE FROM outbox WHERE message = ?1", [id.0.as_slice()])?;
        Ok(())
    }

    /// An attempt failed for a passing reason; it stays first in line.
    pub fn outbox_attempted(&mut self, id: &MessageId) -> Result<()> {
        self.conn.execute("UPDATE outbox SET attempts = attempts + 1 WHERE message = ?1", [id.0.as_slice()])?;
        Ok(())
    }

    /// It cannot be sent: kept, marked with `reason`, and skipped from now on.
    pub fn outbox_failed(&mut self, id: &MessageId, reason: &str) -> Result<()> {
        self.conn.execute("UPDATE outbox SET failed = ?2 WHERE message = ?1", params![id.0.as_slice(), reason])?;
        Ok(())
    }

    /// How many sends are waiting.
    pub fn outbox_len(&self) -> Result<u64> {
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM outbox WHERE failed IS NULL", [], |r| r.get(0))?;
        Ok(to_u64(n))
    }

    /// Where an outgoing message stands.
    pub(super) fn delivery_state(&self, id: &MessageId) -> Result<DeliveryState> {
        let queued: Option<Option<String>> = self
            .conn
            .query_row("SELECT failed FROM outbox WHERE message = ?1", [id.0.as_slice()], |r| r.get(0))
            .optional()?;
        if let Some(failed) = queued {
            return Ok(match failed {
                Some(reason) => DeliveryState::Failed { reason },
                None => DeliveryState::Queued,
            });
        }
        let proven: bool = self.conn.query_row(
            "SELECT delivery_proof IS NOT NULL FROM messages WHERE id = ?1",
            [id.0.as_slice()],
            |r| r.get(0),
        )?;
        Ok(if proven { DeliveryState::Confirmed } else { DeliveryState::Sent })
    }
}
