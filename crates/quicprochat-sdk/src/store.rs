//! The local store: one SQLite database per account in the state dir. MLS state, messages and
//! the queue cursor change together in one transaction, so a crash loses nothing: what was
//! acked to the server is always already stored here.
//!
//! Builds with the `sqlcipher` feature encrypt the whole file (see `at_rest`). Every build also
//! seals the secret-bearing columns (the MLS state, message bodies) with the account's storage
//! key (ChaCha20-Poly1305), which itself lives only in the password-sealed account file.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::error::Result;
use crate::{ConversationId, DeliveryState, Message, MessageId, MessageKind, Reaction, SdkError};
use quicprochat_core::keystore::{open_with_key, seal_with_key};
use quicprochat_core::mls::{ChunkWrite, STATE_CHUNK_LEN, StateChanges, entry_chunks};

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
    // 4: rich messaging. Timestamps are this device's clock, Unix ms.
    r#"
ALTER TABLE conversations ADD COLUMN disappearing_secs INTEGER;
ALTER TABLE messages ADD COLUMN edited_ms INTEGER;
ALTER TABLE messages ADD COLUMN deleted_ms INTEGER;
ALTER TABLE messages ADD COLUMN expires_ms INTEGER;
ALTER TABLE messages ADD COLUMN unsupported INTEGER;
ALTER TABLE messages ADD COLUMN raw BLOB;
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages(expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS reactions (
    message BLOB NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user    TEXT NOT NULL,
    emoji   BLOB NOT NULL,
    at_ms   INTEGER NOT NULL,
    PRIMARY KEY (message, user)
);
CREATE TABLE IF NOT EXISTS receipts (
    message BLOB NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    reader  TEXT NOT NULL,
    read_ms INTEGER NOT NULL,
    PRIMARY KEY (message, reader)
);
"#,
    // 5: the outbox. Sends are stored here with their local echo, then encrypted and handed to
    // the server in rowid order; `failed` says why one was given up.
    r#"
CREATE TABLE IF NOT EXISTS outbox (
    message      BLOB PRIMARY KEY,
    conversation BLOB NOT NULL,
    payload      BLOB NOT NULL,
    ttl_secs     INTEGER NOT NULL,
    queued_ms    INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    failed       TEXT
);
"#,
    // 6: a group's shared name (its creator's choice, told to invitees) apart from this device's
    // own rename; when this device left; how far its user has read (unread counts).
    r#"
ALTER TABLE conversations ADD COLUMN group_name TEXT;
ALTER TABLE conversations ADD COLUMN local_name TEXT;
ALTER TABLE conversations ADD COLUMN left_ms INTEGER;
ALTER TABLE conversations ADD COLUMN read_rowid INTEGER NOT NULL DEFAULT 0;
"#,
    // 7: MLS state entry by entry (openmls storage keys), each value sealed; written with what
    // else the operation changed, replacing the whole-state snapshot in `meta`.
    r#"
CREATE TABLE IF NOT EXISTS mls_entries (
    key   BLOB PRIMARY KEY,
    value BLOB NOT NULL
);
"#,
    // 8: which device sent a message (as MLS authenticated it), for transcript exports.
    r#"
ALTER TABLE messages ADD COLUMN sender_device BLOB;
"#,
    // 9: MLS state entries in chunks (see `quicprochat_core::mls::StateChanges`), so a change
    // at the end of a large entry writes its last chunk only. A whole value written before is
    // chunk 0; `LocalStore::open` splits the ones longer than a chunk.
    r#"
CREATE TABLE IF NOT EXISTS mls_chunks (
    key   BLOB NOT NULL,
    chunk INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (key, chunk)
);
INSERT INTO mls_chunks (key, chunk, value) SELECT key, 0, value FROM mls_entries;
DROP TABLE mls_entries;
"#,
];

const MLS_STATE: &str = "mls_state";
const CURSOR: &str = "cursor";
/// Written by [`LocalStore::make_durable`]: a change to commit with an fsync.
const DURABLE_MARK: &str = "durable_at_ms";

/// Switches a connection to fsync-on-commit for one transaction, and back.
struct Durable<'c> {
    conn: Option<&'c Connection>,
}

impl<'c> Durable<'c> {
    fn begin(conn: &'c Connection, durable: bool) -> Result<Self> {
        if !durable {
            return Ok(Self { conn: None });
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(Self { conn: Some(conn) })
    }

    /// Back to NORMAL, reporting a failure to switch.
    fn end(mut self) -> Result<()> {
        self.reset()
    }

    fn reset(&mut self) -> Result<()> {
        match self.conn.take() {
            Some(conn) => Ok(conn.pragma_update(None, "synchronous", "NORMAL")?),
            None => Ok(()),
        }
    }
}

impl Drop for Durable<'_> {
    /// Back to NORMAL also when the transaction failed.
    fn drop(&mut self) {
        let _ = self.reset();
    }
}

/// A conversation row.
#[derive(Clone, Debug)]
pub(crate) struct ConversationRow {
    pub id: ConversationId,
    pub kind: i64,
    /// When read: the display name (this device's rename, else the group's shared name, else
    /// the name made when it was stored). When inserted: that last one.
    pub name: String,
    pub peer: Option<String>,
    /// The disappearing timer, seconds (written only by [`Effect::Disappearing`]).
    pub disappearing_secs: Option<u32>,
    /// The group's shared name, when known (its creator's choice).
    pub group_name: Option<String>,
    /// This device left the conversation or was removed from it.
    pub left: bool,
}

impl ConversationRow {
    /// A row for a conversation this device is in, without a timer or a shared name.
    pub fn new(id: ConversationId, kind: i64, name: String, peer: Option<String>) -> Self {
        Self { id, kind, name, peer, disappearing_secs: None, group_name: None, left: false }
    }
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
    /// When this device deletes it (disappearing messages).
    pub expires_at_ms: Option<u64>,
    /// Set for a message this version cannot interpret.
    pub unsupported: Option<Unsupported<'a>>,
    /// The sending device, as MLS authenticated it.
    pub sender_device: Option<[u8; 16]>,
}

/// A message kept although this version cannot interpret it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsupported<'a> {
    /// The unknown body's field number, if one was found.
    pub body_field: Option<u32>,
    /// The whole decrypted payload, sealed, so a later version can still read it.
    pub raw: &'a [u8],
}

/// What a reaction, receipt, edit, delete or timer change does to stored state. The caller has
/// checked that it is allowed (the target exists in the conversation, the editor is its sender).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Effect<'a> {
    /// Sets (`Some`) or withdraws (`None`) `user`'s reaction to `message`.
    React { message: MessageId, user: &'a str, emoji: Option<&'a str> },
    /// `reader` read these messages.
    Read { messages: &'a [MessageId], reader: &'a str },
    /// Replaces the text of `message`.
    Edit { message: MessageId, text: &'a str },
    /// Erases `message`'s body, attachment and reactions, keeping a tombstone.
    Delete { message: MessageId },
    /// Sets the conversation's disappearing timer.
    Disappearing { conversation: ConversationId, secs: Option<u32> },
    /// Sets a group's shared name.
    GroupName { conversation: ConversationId, name: &'a str },
}

/// What an effect needs to know about the message it targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub conversation: ConversationId,
    pub sender: String,
    pub deleted: bool,
}

/// Everything one processed envelope changes, written atomically.
#[derive(Debug, Default)]
pub(crate) struct Change<'a> {
    /// MLS storage entries changed by the operation (see [`crate::client::Local::persist`]).
    pub mls: Option<&'a StateChanges>,
    pub conversation: Option<ConversationRow>,
    pub message: Option<MessageRow<'a>>,
    pub effect: Option<Effect<'a>>,
    pub cursor: Option<u64>,
    /// A send to queue (with its local echo in `message` or `effect`).
    pub outbox: Option<OutboxRow<'a>>,
    /// On disk before `apply` returns, even across a power loss: for a ratchet or group
    /// change whose message is about to leave this device. Other changes survive a crash of
    /// the process at once, and a power loss from the next durable change on (see
    /// [`LocalStore::make_durable`]).
    pub durable: bool,
}

/// A send waiting in the outbox: the encoded `AppMessage`, encrypted only when it is handed to
/// the server (so it is always sent in the group's current epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxRow<'a> {
    pub message: MessageId,
    pub conversation: ConversationId,
    pub payload: &'a [u8],
    pub ttl_secs: u32,
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
        let conn = at_rest::open(path, &key)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with NORMAL: a commit survives a crash of the process at once; an fsync (see
        // `durable`) makes it and everything before it survive a power loss too.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let store = Self { conn, key };
        store.split_whole_mls_entries()?;
        Ok(store)
    }

    /// Splits MLS entries written whole (before migration 9) into the chunks
    /// [`quicprochat_core::mls::MlsClient::restore_entries`] assumes, in one transaction. Only
    /// an entry with no chunk 1 and a chunk 0 longer than a chunk can be one.
    fn split_whole_mls_entries(&self) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT key, value FROM mls_chunks AS c WHERE chunk = 0 AND length(value) > ?1 \
             AND NOT EXISTS (SELECT 1 FROM mls_chunks AS d WHERE d.key = c.key AND d.chunk = 1)",
        )?;
        let rows = stmt.query_map([STATE_CHUNK_LEN], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut whole = Vec::new();
        for row in rows {
            let (key, sealed) = row?;
            let value = self.open_sealed(&mls_chunk_aad(&key, 0, true), &sealed)?;
            if value.len() > STATE_CHUNK_LEN {
                whole.push((key, value));
            }
        }
        drop(stmt);
        if whole.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare("INSERT OR REPLACE INTO mls_chunks (key, chunk, value) VALUES (?1, ?2, ?3)")?;
            for (key, value) in &whole {
                for chunk in entry_chunks(key, value) {
                    insert.execute(params![chunk.key, chunk.index, self.seal_chunk(chunk)?])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        Ok(seal_with_key(&mut rand_core::OsRng, &self.key, aad, plaintext)?)
    }

    /// Seals an MLS state chunk to its place (see [`mls_chunk_aad`]).
    fn seal_chunk(&self, chunk: ChunkWrite<'_>) -> Result<Vec<u8>> {
        self.seal(&mls_chunk_aad(chunk.key, chunk.index, chunk.last), chunk.bytes)
    }

    fn open_sealed(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        Ok(open_with_key(&self.key, aad, sealed)?)
    }

    pub fn mls_state(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> =
            self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [MLS_STATE], |r| r.get(0)).optional()?;
        sealed.map(|s| self.open_sealed(MLS_STATE.as_bytes(), &s)).transpose()
    }

    /// The MLS storage entries, unsealed and put back together from their chunks. A chunk that
    /// is missing or of the wrong length is [`SdkError::LocalStoreDamaged`]; one sealed for
    /// another place (another entry or index, or a last chunk that is not last) does not open
    /// ([`SdkError::Crypto`]). Chunks are sealed one by one, so someone able to write the
    /// database could combine chunks of older versions of one entry, as they could put back an
    /// older version of a whole entry before chunks existed; the database's own encryption
    /// (the `sqlcipher` feature) is what stops both.
    pub fn mls_entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut stmt = self.conn.prepare("SELECT key, chunk, value FROM mls_chunks ORDER BY key, chunk")?;
        let mut rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?)))?
            .peekable();
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut value = Zeroizing::new(Vec::new());
        let mut expected: u32 = 0;
        while let Some(row) = rows.next() {
            let (key, index, sealed) = row?;
            if u32::try_from(index).ok() != Some(expected) {
                return Err(SdkError::LocalStoreDamaged("an MLS state chunk is missing"));
            }
            let last = match rows.peek() {
                Some(Ok((next, _, _))) => *next != key,
                Some(Err(_)) | None => true,
            };
            let chunk = self.open_sealed(&mls_chunk_aad(&key, expected, last), &sealed)?;
            // The chunks `StateChanges` writes, which `MlsClient::restore_entries` assumes: all
            // full but the last (entries written whole before were split when the store opened).
            if chunk.len() > STATE_CHUNK_LEN || (!last && chunk.len() != STATE_CHUNK_LEN) {
                return Err(SdkError::LocalStoreDamaged("an MLS state chunk has the wrong length"));
            }
            value.extend_from_slice(&chunk);
            if last {
                out.push((key, value.to_vec()));
                value.clear();
                expected = 0;
            } else {
                expected += 1;
            }
        }
        Ok(out)
    }

    pub fn cursor(&self) -> Result<u64> {
        let v: Option<i64> =
            self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [CURSOR], |r| r.get(0)).optional()?;
        Ok(v.map(to_u64).unwrap_or(0))
    }

    /// Applies one change atomically. Returns false when the message was a duplicate.
    pub fn apply(&mut self, change: Change<'_>) -> Result<bool> {
        let sealed_chunks = match change.mls {
            Some(changes) => {
                Some(changes.writes().map(|w| Ok((w.key, w.index, self.seal_chunk(w)?))).collect::<Result<Vec<_>>>()?)
            }
            None => None,
        };
        let sealed_body = change.message.as_ref().map(|m| self.seal(&m.id.0, m.text.as_bytes())).transpose()?;
        let sealed_attachment = match change.message.as_ref().and_then(|m| m.attachment.map(|a| (m.id, a))) {
            Some((id, a)) => Some(self.seal(&attachment_aad(&id), a)?),
            None => None,
        };
        let sealed_raw = match change.message.as_ref().and_then(|m| m.unsupported.map(|u| (m.id, u.raw))) {
            Some((id, raw)) => Some(self.seal(&raw_aad(&id), raw)?),
            None => None,
        };
        let sealed_effect = change.effect.map(|e| self.seal_effect(e)).transpose()?;
        let sealed_outbox = change.outbox.map(|o| self.seal(&outbox::aad(&o.message), o.payload)).transpose()?;
        let now = now_ms();
        let durable = Durable::begin(&self.conn, change.durable)?;
        // `unchecked_transaction` borrows the connection shared, beside `durable`; nothing else
        // uses it meanwhile (`&mut self`).
        let tx = self.conn.unchecked_transaction()?;
        if let (Some(changes), Some(sealed)) = (change.mls, sealed_chunks) {
            let mut upsert =
                tx.prepare_cached("INSERT OR REPLACE INTO mls_chunks (key, chunk, value) VALUES (?1, ?2, ?3)")?;
            for (key, index, value) in sealed {
                upsert.execute(params![key, index, value])?;
            }
            let mut truncate = tx.prepare_cached("DELETE FROM mls_chunks WHERE key = ?1 AND chunk >= ?2")?;
            for (key, count) in changes.truncations() {
                truncate.execute(params![key, count])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM mls_chunks WHERE key = ?1")?;
            for key in changes.deletes() {
                delete.execute([key])?;
            }
            // A snapshot of an earlier version is superseded once its entries are written.
            tx.execute("DELETE FROM meta WHERE key = ?1", [MLS_STATE])?;
        }
        if let Some(c) = &change.conversation {
            tx.execute(
                // Joining again (a new Welcome after leaving) lists it again.
                "INSERT OR IGNORE INTO conversations (id, kind, name, peer, created_ms, group_name) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO UPDATE SET left_ms = NULL",
                params![c.id.0.as_slice(), c.kind, c.name, c.peer, to_i64(now), c.group_name],
            )?;
        }
        let mut fresh = true;
        if let (Some(m), Some(body)) = (&change.message, sealed_body) {
            fresh = tx.execute(
                "INSERT OR IGNORE INTO messages (id, conversation, sender, body, sent_at_ms, stored_ms, outgoing, \
                 attachment, expires_ms, unsupported, raw, sender_device) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    m.id.0.as_slice(),
                    m.conversation.0.as_slice(),
                    m.sender,
                    body,
                    to_i64(m.sent_at_ms),
                    to_i64(now),
                    m.outgoing,
                    sealed_attachment,
                    m.expires_at_ms.map(to_i64),
                    m.unsupported.map(|u| u.body_field.unwrap_or(0)),
                    sealed_raw,
                    m.sender_device.as_ref().map(|d| d.as_slice()),
                ],
            )? == 1;
            if fresh && m.outgoing {
                // Writing into a conversation reads what came before.
                tx.execute(
                    "UPDATE conversations SET read_rowid = last_insert_rowid() WHERE id = ?1",
                    [m.conversation.0.as_slice()],
                )?;
            }
        }
        if let (Some(effect), Some(sealed)) = (change.effect, sealed_effect) {
            write_effect(&tx, effect, sealed, now)?;
        }
        if let (Some(o), Some(sealed)) = (change.outbox, sealed_outbox) {
            tx.execute(
                "INSERT INTO outbox (message, conversation, payload, ttl_secs, queued_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![o.message.0.as_slice(), o.conversation.0.as_slice(), sealed, o.ttl_secs, to_i64(now)],
            )?;
        }
        if let Some(cursor) = change.cursor {
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![CURSOR, to_i64(cursor)])?;
        }
        tx.commit()?;
        durable.end()?;
        Ok(fresh)
    }

    /// Makes every change applied so far survive a power loss (one fsync of the log): called
    /// before acknowledging envelopes to the server, which then deletes them.
    pub fn make_durable(&mut self) -> Result<()> {
        let durable = Durable::begin(&self.conn, true)?;
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![DURABLE_MARK, to_i64(now_ms())],
        )?;
        durable.end()
    }

    /// Seals what an effect writes (the reaction or the new text); empty for the others.
    fn seal_effect(&self, effect: Effect<'_>) -> Result<Vec<u8>> {
        match effect {
            Effect::React { message, user, emoji: Some(emoji) } => {
                self.seal(&reaction_aad(&message, user), emoji.as_bytes())
            }
            Effect::Edit { message, text } => self.seal(&message.0, text.as_bytes()),
            Effect::Delete { message } => self.seal(&message.0, b""),
            _ => Ok(Vec::new()),
        }
    }

    /// The conversation, sender and state of a stored message.
    pub fn target(&self, id: &MessageId) -> Result<Option<Target>> {
        let row: Option<(Vec<u8>, String, Option<i64>)> = self
            .conn
            .query_row("SELECT conversation, sender, deleted_ms FROM messages WHERE id = ?1", [id.0.as_slice()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(row.and_then(|(conversation, sender, deleted)| {
            let conversation = ConversationId(<[u8; 16]>::try_from(conversation.as_slice()).ok()?);
            Some(Target { conversation, sender, deleted: deleted.is_some() })
        }))
    }

    /// Renames a conversation on this device.
    pub fn rename_conversation(&mut self, id: &ConversationId, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("UPDATE conversations SET local_name = ?2 WHERE id = ?1", params![id.0.as_slice(), name])?
            == 1)
    }

    /// Marks a conversation as left by this device (by leaving, or by being removed).
    pub fn mark_left(&mut self, id: &ConversationId) -> Result<()> {
        self.conn.execute(
            "UPDATE conversations SET left_ms = ?2 WHERE id = ?1 AND left_ms IS NULL",
            params![id.0.as_slice(), to_i64(now_ms())],
        )?;
        Ok(())
    }

    /// Incoming messages of a conversation stored after the read marker (deleted ones aside).
    pub fn unread(&self, id: &ConversationId) -> Result<u32> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation \
             WHERE m.conversation = ?1 AND m.outgoing = 0 AND m.deleted_ms IS NULL AND m.rowid > c.read_rowid",
            [id.0.as_slice()],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Moves a conversation's read marker up to `through` (a message of it), or to its latest
    /// message; returns the incoming messages that were unread before and are read now, oldest
    /// first (at most `limit`, the newest ones).
    pub fn mark_read_through(
        &mut self,
        id: &ConversationId,
        through: Option<&MessageId>,
        limit: u32,
    ) -> Result<Vec<MessageId>> {
        let tx = self.conn.transaction()?;
        let marker: i64 = match tx
            .query_row("SELECT read_rowid FROM conversations WHERE id = ?1", [id.0.as_slice()], |r| r.get(0))
            .optional()?
        {
            Some(m) => m,
            None => return Ok(Vec::new()),
        };
        let upto: Option<i64> = match through {
            Some(m) => tx
                .query_row(
                    "SELECT rowid FROM messages WHERE id = ?1 AND conversation = ?2",
                    params![m.0.as_slice(), id.0.as_slice()],
                    |r| r.get(0),
                )
                .optional()?,
            None => {
                tx.query_row("SELECT MAX(rowid) FROM messages WHERE conversation = ?1", [id.0.as_slice()], |r| {
                    r.get(0)
                })?
            }
        };
        let Some(upto) = upto.filter(|u| *u > marker) else { return Ok(Vec::new()) };
        let mut read = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM messages WHERE conversation = ?1 AND outgoing = 0 AND deleted_ms IS NULL \
                 AND rowid > ?2 AND rowid <= ?3 ORDER BY rowid DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![id.0.as_slice(), marker, upto, limit], |r| r.get::<_, Vec<u8>>(0))?;
            for row in rows {
                if let Ok(m) = <[u8; 16]>::try_from(row?.as_slice()) {
                    read.push(MessageId(m));
                }
            }
        }
        read.reverse();
        tx.execute("UPDATE conversations SET read_rowid = ?2 WHERE id = ?1", params![id.0.as_slice(), upto])?;
        tx.commit()?;
        Ok(read)
    }

    /// Deletes every message whose disappearing timer ran out by `now_ms` (with its reactions
    /// and receipts); returns which.
    pub fn purge_expired(&mut self, now_ms: u64) -> Result<Vec<(ConversationId, MessageId)>> {
        let tx = self.conn.transaction()?;
        let mut gone = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM messages WHERE expires_ms IS NOT NULL AND expires_ms <= ?1 RETURNING conversation, id",
            )?;
            let rows = stmt.query_map([to_i64(now_ms)], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            for row in rows {
                let (conversation, id) = row?;
                if let (Ok(c), Ok(m)) =
                    (<[u8; 16]>::try_from(conversation.as_slice()), <[u8; 16]>::try_from(id.as_slice()))
                {
                    gone.push((ConversationId(c), MessageId(m)));
                }
            }
        }
        tx.commit()?;
        Ok(gone)
    }

    /// When the next stored message disappears, Unix ms.
    pub fn next_expiry(&self) -> Result<Option<u64>> {
        let next: Option<i64> =
            self.conn
                .query_row("SELECT MIN(expires_ms) FROM messages WHERE expires_ms IS NOT NULL", [], |r| r.get(0))?;
        Ok(next.map(to_u64))
    }

    /// The sealed raw payload kept with an unsupported message.
    #[cfg(test)]
    pub fn raw_payload(&self, id: &MessageId) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT raw FROM messages WHERE id = ?1", [id.0.as_slice()], |r| r.get(0))
            .optional()?
            .flatten();
        sealed.map(|s| self.open_sealed(&raw_aad(id), &s)).transpose()
    }

    /// The device that sent a stored message, when known (not for messages stored before
    /// version 8 of the local database).
    pub fn sender_device(&self, id: &MessageId) -> Result<Option<[u8; 16]>> {
        let device: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT sender_device FROM messages WHERE id = ?1", [id.0.as_slice()], |r| r.get(0))
            .optional()?
            .flatten();
        Ok(device.and_then(|d| <[u8; 16]>::try_from(d.as_slice()).ok()))
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

    /// A conversation, also one this device left.
    pub fn conversation(&self, id: &ConversationId) -> Result<Option<ConversationRow>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"),
                [id.0.as_slice()],
                read_conversation,
            )
            .optional()?;
        Ok(row.flatten())
    }

    /// The DM with `peer`, unless this device left it.
    pub fn conversation_by_peer(&self, peer: &str) -> Result<Option<ConversationRow>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE peer = ?1 AND left_ms IS NULL"),
                [peer],
                read_conversation,
            )
            .optional()?;
        Ok(row.flatten())
    }

    /// The conversations this device is in (not those it left), oldest first.
    pub fn conversations(&self) -> Result<Vec<ConversationRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE left_ms IS NULL ORDER BY created_ms, rowid"
        ))?;
        let rows = stmt.query_map([], read_conversation)?;
        let mut out = Vec::new();
        for row in rows {
            out.extend(row?);
        }
        Ok(out)
    }

    /// The last `limit` messages of a conversation, oldest first.
    pub fn messages(&self, conversation: &ConversationId, limit: u32) -> Result<Vec<Message>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation = ?1 ORDER BY stored_ms DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![conversation.0.as_slice(), limit], StoredMessage::read)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(self.open_message(row?)?);
        }
        out.reverse();
        Ok(out)
    }

    /// One stored message.
    pub fn message(&self, id: &MessageId) -> Result<Option<Message>> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"),
                [id.0.as_slice()],
                StoredMessage::read,
            )
            .optional()?;
        row.map(|r| self.open_message(r)).transpose()
    }

    /// Unseals a row and gathers its reactions and receipts.
    fn open_message(&self, row: StoredMessage) -> Result<Message> {
        let id = MessageId(<[u8; 16]>::try_from(row.id.as_slice()).map_err(|_| SdkError::Protocol("message id"))?);
        let conversation = ConversationId(
            <[u8; 16]>::try_from(row.conversation.as_slice()).map_err(|_| SdkError::Protocol("conversation id"))?,
        );
        let text = self.open_sealed(&id.0, &row.body)?;
        let attachment = match row.attachment {
            Some(sealed) => crate::files::describe(&self.open_sealed(&attachment_aad(&id), &sealed)?),
            None => None,
        };
        let kind = match (row.unsupported, &attachment) {
            (Some(field), _) => MessageKind::Unsupported { body_field: u32::try_from(field).ok().filter(|f| *f > 0) },
            (None, Some(_)) => MessageKind::File,
            (None, None) => MessageKind::Text,
        };
        let mut reactions = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT user, emoji FROM reactions WHERE message = ?1 ORDER BY at_ms, user")?;
            let rows = stmt.query_map([id.0.as_slice()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            for r in rows {
                let (user, sealed) = r?;
                let emoji = self.open_sealed(&reaction_aad(&id, &user), &sealed)?;
                reactions.push(Reaction { user, emoji: String::from_utf8_lossy(&emoji).into_owned() });
            }
        }
        let mut read_by = Vec::new();
        {
            let mut stmt =
                self.conn.prepare_cached("SELECT reader FROM receipts WHERE message = ?1 ORDER BY read_ms, reader")?;
            for r in stmt.query_map([id.0.as_slice()], |r| r.get::<_, String>(0))? {
                read_by.push(r?);
            }
        }
        let delivery = if row.outgoing { self.delivery_state(&id)? } else { DeliveryState::Received };
        Ok(Message {
            id,
            conversation,
            sender: row.sender,
            text: String::from_utf8_lossy(&text).into_owned(),
            sent_at_ms: to_u64(row.sent_at_ms),
            stored_at_ms: to_u64(row.stored_ms),
            outgoing: row.outgoing,
            attachment,
            kind,
            edited_at_ms: row.edited_ms.map(to_u64),
            deleted_at_ms: row.deleted_ms.map(to_u64),
            reactions,
            read_by,
            expires_at_ms: row.expires_ms.map(to_u64),
            delivery,
        })
    }
}

/// The columns [`read_conversation`] expects, in order.
const CONVERSATION_COLUMNS: &str =
    "id, kind, COALESCE(local_name, group_name, name), peer, disappearing_secs, group_name, left_ms";

/// A conversation row (`None` for a malformed id).
fn read_conversation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ConversationRow>> {
    let id: Vec<u8> = r.get(0)?;
    let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) else { return Ok(None) };
    Ok(Some(ConversationRow {
        id: ConversationId(id),
        kind: r.get(1)?,
        name: r.get(2)?,
        peer: r.get(3)?,
        disappearing_secs: r.get(4)?,
        group_name: r.get(5)?,
        left: r.get::<_, Option<i64>>(6)?.is_some(),
    }))
}

/// The columns [`StoredMessage::read`] expects, in order.
const MESSAGE_COLUMNS: &str = "id, conversation, sender, body, sent_at_ms, stored_ms, outgoing, attachment, edited_ms, \
     deleted_ms, expires_ms, unsupported";

/// A message row as stored (still sealed).
struct StoredMessage {
    id: Vec<u8>,
    conversation: Vec<u8>,
    sender: String,
    body: Vec<u8>,
    sent_at_ms: i64,
    stored_ms: i64,
    outgoing: bool,
    attachment: Option<Vec<u8>>,
    edited_ms: Option<i64>,
    deleted_ms: Option<i64>,
    expires_ms: Option<i64>,
    unsupported: Option<i64>,
}

impl StoredMessage {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            conversation: r.get(1)?,
            sender: r.get(2)?,
            body: r.get(3)?,
            sent_at_ms: r.get(4)?,
            stored_ms: r.get(5)?,
            outgoing: r.get(6)?,
            attachment: r.get(7)?,
            edited_ms: r.get(8)?,
            deleted_ms: r.get(9)?,
            expires_ms: r.get(10)?,
            unsupported: r.get(11)?,
        })
    }
}

/// Writes an effect inside the caller's transaction; `sealed` is what [`LocalStore::seal_effect`]
/// made of it.
fn write_effect(tx: &rusqlite::Transaction<'_>, effect: Effect<'_>, sealed: Vec<u8>, now: u64) -> Result<()> {
    match effect {
        Effect::React { message, user, emoji: Some(_) } => {
            tx.execute(
                "INSERT OR REPLACE INTO reactions (message, user, emoji, at_ms) \
                 SELECT id, ?2, ?3, ?4 FROM messages WHERE id = ?1",
                params![message.0.as_slice(), user, sealed, to_i64(now)],
            )?;
        }
        Effect::React { message, user, emoji: None } => {
            tx.execute("DELETE FROM reactions WHERE message = ?1 AND user = ?2", params![message.0.as_slice(), user])?;
        }
        Effect::Read { messages, reader } => {
            for message in messages {
                tx.execute(
                    "INSERT OR IGNORE INTO receipts (message, reader, read_ms) \
                     SELECT id, ?2, ?3 FROM messages WHERE id = ?1",
                    params![message.0.as_slice(), reader, to_i64(now)],
                )?;
            }
        }
        Effect::Edit { message, text: _ } => {
            tx.execute(
                "UPDATE messages SET body = ?2, edited_ms = ?3 WHERE id = ?1 AND deleted_ms IS NULL",
                params![message.0.as_slice(), sealed, to_i64(now)],
            )?;
        }
        Effect::Delete { message } => {
            tx.execute(
                "UPDATE messages SET body = ?2, attachment = NULL, raw = NULL, edited_ms = NULL, deleted_ms = ?3 \
                 WHERE id = ?1",
                params![message.0.as_slice(), sealed, to_i64(now)],
            )?;
            tx.execute("DELETE FROM reactions WHERE message = ?1", [message.0.as_slice()])?;
        }
        Effect::Disappearing { conversation, secs } => {
            tx.execute(
                "UPDATE conversations SET disappearing_secs = ?2 WHERE id = ?1",
                params![conversation.0.as_slice(), secs],
            )?;
        }
        Effect::GroupName { conversation, name } => {
            tx.execute(
                "UPDATE conversations SET group_name = ?2 WHERE id = ?1 AND peer IS NULL",
                params![conversation.0.as_slice(), name],
            )?;
        }
    }
    Ok(())
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

/// What a sealed MLS state chunk is bound to: its entry, its index, and whether it is the
/// entry's last, so that chunks cannot be swapped, dropped from the end or appended unnoticed.
/// A one-chunk entry is bound as whole entries were before chunks existed.
fn mls_chunk_aad(key: &[u8], index: u32, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(9 + key.len());
    if index == 0 && last {
        aad.extend_from_slice(b"mls:");
    } else {
        aad.extend_from_slice(b"mlc:");
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(u8::from(last));
    }
    aad.extend_from_slice(key);
    aad
}

fn raw_aad(id: &MessageId) -> Vec<u8> {
    let mut aad = b"raw:".to_vec();
    aad.extend_from_slice(&id.0);
    aad
}

fn reaction_aad(message: &MessageId, user: &str) -> Vec<u8> {
    let mut aad = b"reaction:".to_vec();
    aad.extend_from_slice(&message.0);
    aad.extend_from_slice(user.as_bytes());
    aad
}

fn attachment_aad(id: &MessageId) -> Vec<u8> {
    let mut aad = b"attachment:".to_vec();
    aad.extend_from_slice(&id.0);
    aad
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

mod at_rest;
mod export;
mod outbox;
pub use at_rest::DATABASE_ENCRYPTION;
pub(crate) use outbox::OutboxEntry;

#[cfg(test)]
mod tests;
