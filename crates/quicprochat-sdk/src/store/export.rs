//! The whole history in the order this device stored it, a page at a time, for transcript
//! export: a long history is never loaded at once.

use rusqlite::params;

use super::LocalStore;
use crate::error::Result;
use crate::{ConversationId, Message, MessageId, SdkError};

/// A position in the order messages were stored (their row id): a page starts after one and
/// ends at one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StoredPosition(i64);

impl LocalStore {
    /// The position of the last message stored so far (the start, when there is none). An
    /// export reads up to here, so messages arriving while it runs are left for the next one.
    pub fn last_stored_position(&self) -> Result<StoredPosition> {
        let last: Option<i64> = self.conn.query_row("SELECT MAX(rowid) FROM messages", [], |r| r.get(0))?;
        Ok(StoredPosition(last.unwrap_or(0)))
    }

    /// Up to `limit` messages stored after `after` and no later than `end`, of one conversation
    /// or of all, oldest first, each with its position. An empty page means the end.
    pub fn stored_messages_page(
        &self,
        conversation: Option<&ConversationId>,
        after: StoredPosition,
        end: StoredPosition,
        limit: u32,
    ) -> Result<Vec<(StoredPosition, Message)>> {
        let ids: Vec<(i64, Vec<u8>)> = match conversation {
            Some(c) => {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT rowid, id FROM messages WHERE conversation = ?1 AND rowid > ?2 AND rowid <= ?3 \
                     ORDER BY rowid LIMIT ?4",
                )?;
                let rows =
                    stmt.query_map(params![c.0.as_slice(), after.0, end.0, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            }
            None => {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT rowid, id FROM messages WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid LIMIT ?3",
                )?;
                let rows = stmt.query_map(params![after.0, end.0, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            }
        };
        let mut page = Vec::with_capacity(ids.len());
        for (position, id) in ids {
            let id = MessageId(<[u8; 16]>::try_from(id.as_slice()).map_err(|_| SdkError::Protocol("message id"))?);
            if let Some(message) = self.message(&id)? {
                page.push((StoredPosition(position), message));
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;
    use crate::store::{Change, MessageRow};

    const DM: ConversationId = ConversationId([1; 16]);
    const TEAM: ConversationId = ConversationId([2; 16]);

    fn store(dir: &tempfile::TempDir) -> LocalStore {
        let mut store = LocalStore::open(&dir.path().join("state.db"), Zeroizing::new([7u8; 32])).unwrap();
        for id in [DM, TEAM] {
            store
                .conn
                .execute(
                    "INSERT INTO conversations (id, kind, name, created_ms) VALUES (?1, 1, 'c', 0)",
                    [id.0.as_slice()],
                )
                .unwrap();
        }
        // Stored in this order, into two conversations.
        for (n, conversation) in [(1, DM), (2, TEAM), (3, DM), (4, DM), (5, TEAM)] {
            let text = format!("m{n}");
            let message = MessageRow {
                id: MessageId([n; 16]),
                conversation,
                sender: "bob",
                text: &text,
                sent_at_ms: 100 - u64::from(n),
                outgoing: false,
                attachment: None,
                expires_at_ms: None,
                unsupported: None,
                sender_device: None,
            };
            store.apply(Change { message: Some(message), ..Default::default() }).unwrap();
        }
        store
    }

    /// Every page of `limit` up to `end`, concatenated.
    fn all(store: &LocalStore, conversation: Option<&ConversationId>, end: StoredPosition, limit: u32) -> Vec<String> {
        let mut after = StoredPosition::default();
        let mut out = Vec::new();
        loop {
            let page = store.stored_messages_page(conversation, after, end, limit).unwrap();
            let Some((last, _)) = page.last() else { return out };
            assert!(page.len() <= limit as usize);
            after = *last;
            out.extend(page.into_iter().map(|(_, m)| m.text));
        }
    }

    #[test]
    fn pages_follow_the_storage_order_of_one_conversation_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir);
        let end = store.last_stored_position().unwrap();
        // Storage order, not the senders' clocks (which run backwards here).
        assert_eq!(all(&store, None, end, 2), ["m1", "m2", "m3", "m4", "m5"]);
        assert_eq!(all(&store, Some(&DM), end, 1), ["m1", "m3", "m4"]);
        assert_eq!(all(&store, Some(&TEAM), end, 100), ["m2", "m5"]);

        // A message stored after the end is left for the next export.
        let late = MessageRow {
            id: MessageId([9; 16]),
            conversation: DM,
            sender: "bob",
            text: "late",
            sent_at_ms: 1,
            outgoing: false,
            attachment: None,
            expires_at_ms: None,
            unsupported: None,
            sender_device: None,
        };
        store.apply(Change { message: Some(late), ..Default::default() }).unwrap();
        assert_eq!(all(&store, Some(&DM), end, 2), ["m1", "m3", "m4"]);
        let later = store.last_stored_position().unwrap();
        assert!(later > end);
        assert_eq!(all(&store, Some(&DM), later, 2), ["m1", "m3", "m4", "late"]);

        let empty = tempfile::tempdir().unwrap();
        let empty = LocalStore::open(&empty.path().join("state.db"), Zeroizing::new([7u8; 32])).unwrap();
        assert_eq!(empty.last_stored_position().unwrap(), StoredPosition::default());
        assert!(all(&empty, None, StoredPosition::default(), 10).is_empty());
    }
}
