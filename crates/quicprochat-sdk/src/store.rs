//! The local store: one SQLite database per account in the state dir. MLS state, messages and
//! the queue cursor change together in one transaction, so a crash loses nothing: what was
//! acked to the server is always already stored here.
//!
//! Secret-bearing columns (the MLS state, message bodies) are sealed with the account's storage
//! key (ChaCha20-Poly1305), which itself lives only in the password-sealed account file.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::error::Result;
use crate::{ConversationId, Message, MessageId};
use quicprochat_core::keystore::{open_with_key, seal_with_key};

/// Migrations, applied in order; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
    id         BLOB PRIMARY KEY,
    kind       INTEGER NOT NULL,
    name       TEXT NOT NULL,
    peer       TEXT,
    created_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_by_peer ON conversations(peer) WHERE peer IS NOT NULL;
CREATE TABLE IF NOT EXISTS messages (
    id           BLOB PRIMARY KEY,
    conversation BLOB NOT NULL REFERENCES conversations(id),
    sender       TEXT NOT NULL,
    body         BLOB NOT NULL,
    sent_at_ms   INTEGER NOT NULL,
    stored_ms    INTEGER NOT NULL,
    outgoing     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, stored_ms);
"#,
    r#"
ALTER TABLE messages ADD COLUMN delivery_proof BLOB;
"#,
    r#"
ALTER TABLE messages ADD COLUMN attachment BLOB;
"#,
];

const MLS_STATE: &str = "mls_state";
const CURSOR: &str = "cursor";

/// A conversation row.
#[derive(Clone, Debug)]
pub(crate) struct ConversationRow {
    pub id: ConversationId,
    pub kind: i64,
    pub name: String,
    pub peer: Option<String>,
}

/// A message to persist.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageRow<'a> {
    pub id: MessageId,
    pub conversation: ConversationId,
    pub sender: &'a str,
    pub text: &'a str,
    pub sent_at_ms: u64,
    pub outgoing: bool,
    /// Encoded `FileBody` (holds the file key): sealed like the text.
    pub attachment: Option<&'a [u8]>,
}

/// Everything one processed envelope changes, written atomically.
#[derive(Debug, Default)]
pub(crate) struct Change<'a> {
    pub mls_state: Option<&'a [u8]>,
    pub conversation: Option<ConversationRow>,
    pub message: Option<MessageRow<'a>>,
    pub cursor: Option<u64>,
}

pub(crate) struct LocalStore {
    conn: Connection,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish_non_exhaustive()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl LocalStore {
    pub fn open(path: &Path, key: Zeroizing<[u8; 32]>) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self { conn, key })
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        Ok(seal_with_key(&mut rand_core::OsRng, &self.key, aad, plaintext)?)
    }

    fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        Ok(open_with_key(&self.key, aad, sealed)?)
    }

    pub fn mls_state(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> =
            self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [MLS_STATE], |r| r.get(0)).optional()?;
        sealed.map(|s| self.open_sealed(MLS_STATE.as_bytes(), &s)).transpose()
    }

    pub fn cursor(&self) -> Result<u64> {
        let v: Option<i64> =
            self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [CURSOR], |r| r.get(0)).optional()?;
        Ok(v.map(to_u64).unwrap_or(0))
    }

    /// Applies one change atomically. Returns false when the message was a duplicate.
    pub fn apply(&mut self, change: Change<'_>) -> Result<bool> {
        let sealed_state = change.mls_state.map(|s| self.seal(MLS_STATE.as_bytes(), s)).transpose()?;
        let sealed_body = change.message.as_ref().map(|m| self.seal(&m.id.0, m.text.as_bytes())).transpose()?;
        let sealed_attachment = match change.message.as_ref().and_then(|m| m.attachment.map(|a| (m.id, a))) {
            Some((id, a)) => Some(self.seal(&attachment_aad(&id), a)?),
            None => None,
        };
        let now = now_ms();
        let tx = self.conn.transaction()?;
        if let Some(state) = sealed_state {
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![MLS_STATE, state])?;
        }
        if let Some(c) = &change.conversation {
            tx.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, name, peer, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![c.id.0.as_slice(), c.kind, c.name, c.peer, to_i64(now)],
            )?;
        }
        let mut fresh = true;
        if let (Some(m), Some(body)) = (&change.message, sealed_body) {
            fresh = tx.execute(
                "INSERT OR IGNORE INTO messages (id, conversation, sender, body, sent_at_ms, stored_ms, outgoing, attachment) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    m.id.0.as_slice(),
                    m.conversation.0.as_slice(),
                    m.sender,
                    body,
                    to_i64(m.sent_at_ms),
                    to_i64(now),
                    m.outgoing,
                    sealed_attachment
                ],
            )? == 1;
        }
        if let Some(cursor) = change.cursor {
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![CURSOR, to_i64(cursor)])?;
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// The encoded `FileBody` of a message, if it shares a file.
    pub fn attachment(&self, id: &MessageId) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT attachment FROM messages WHERE id = ?1", [id.0.as_slice()], |r| r.get(0))
            .optional()?
            .flatten();
        sealed.map(|s| self.open_sealed(&attachment_aad(id), &s)).transpose()
    }

    /// Keeps the server's verified delivery proof with an outgoing message.
    pub fn set_delivery_proof(&mut self, id: &MessageId, proof: &[u8]) -> Result<()> {
        self.conn.execute("UPDATE messages SET delivery_proof = ?2 WHERE id = ?1", params![id.0.as_slice(), proof])?;
        Ok(())
    }

    /// The stored delivery proof of a message, if any.
    pub fn delivery_proof(&self, id: &MessageId) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT delivery_proof FROM messages WHERE id = ?1", [id.0.as_slice()], |r| r.get(0))
            .optional()?
            .flatten())
    }

    pub fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRow>> {
        Ok(self
            .conn
            .query_row("SELECT kind, name, peer FROM conversations WHERE id = ?1", [id.0.as_slice()], |r| {
                Ok(ConversationRow { id: *id, kind: r.get(0)?, name: r.get(1)?, peer: r.get(2)? })
            })
            .optional()?)
    }

    pub fn conversation_by_peer(&self, peer: &str) -> Result<Option<ConversationRow>> {
        let row: Option<(Vec<u8>, i64, String)> = self
            .conn
            .query_row("SELECT id, kind, name FROM conversations WHERE peer = ?1", [peer], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(row.and_then(|(id, kind, name)| {
            let id = <[u8; 16]>::try_from(id.as_slice()).ok()?;
            Some(ConversationRow { id: ConversationId(id), kind, name, peer: Some(peer.to_owned()) })
        }))
    }

    pub fn conversations(&self) -> Result<Vec<ConversationRow>> {
        let mut stmt = self.conn.prepare("SELECT id, kind, name, peer FROM conversations ORDER BY created_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, name, peer) = row?;
            if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                out.push(ConversationRow { id: ConversationId(id), kind, name, peer });
            }
        }
        Ok(out)
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub fn messages(&self, conversation: &ConversationId, limit: u32) -> Result<Vec<Message>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, sender, body, sent_at_ms, stored_ms, outgoing, attachment FROM messages WHERE conversation = ?1 \
             ORDER BY stored_ms DESC, rowid DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![conversation.0.as_slice(), limit], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sender, body, sent, stored, outgoing, attachment) = row?;
            let id =
                MessageId(<[u8; 16]>::try_from(id.as_slice()).map_err(|_| crate::SdkError::Protocol("message id"))?);
            let text = self.open_sealed(&id.0, &body)?;
            let attachment = match attachment {
                Some(sealed) => crate::files::describe(&self.open_sealed(&attachment_aad(&id), &sealed)?),
                None => None,
            };
            out.push(Message {
                id,
                conversation: *conversation,
                sender,
                text: String::from_utf8_lossy(&text).into_owned(),
                sent_at_ms: to_u64(sent),
                stored_at_ms: to_u64(stored),
                outgoing,
                attachment,
            });
        }
        out.reverse();
        Ok(out)
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > MIGRATIONS.len() as i64 {
        return Err(crate::SdkError::Protocol("local database is from a newer version of quicprochat"));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn attachment_aad(id: &MessageId) -> Vec<u8> {
    let mut aad = b"attachment:".to_vec();
    aad.extend_from_slice(&id.0);
    aad
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
