//! The local store: migrations and rich-message effects, on a temporary database.

use super::*;

const CONVERSATION: ConversationId = ConversationId([1; 16]);
const OTHER: ConversationId = ConversationId([2; 16]);

fn open(dir: &tempfile::TempDir) -> LocalStore {
    LocalStore::open(&dir.path().join("state.db"), Zeroizing::new([7u8; 32])).unwrap()
}

fn conversation(store: &mut LocalStore, id: ConversationId) {
    let row = ConversationRow::new(id, 1, "bob".into(), None);
    store.apply(Change { conversation: Some(row), ..Default::default() }).unwrap();
}

fn row<'a>(id: u8, sender: &'a str, text: &'a str) -> MessageRow<'a> {
    MessageRow {
        id: MessageId([id; 16]),
        conversation: CONVERSATION,
        sender,
        text,
        sent_at_ms: 1,
        outgoing: false,
        attachment: None,
        expires_at_ms: None,
        unsupported: None,
        sender_device: Some([id; 16]),
    }
}

fn effect(store: &mut LocalStore, effect: Effect<'_>) {
    store.apply(Change { effect: Some(effect), ..Default::default() }).unwrap();
}

#[test]
fn a_version_3_database_migrates_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let key = Zeroizing::new([7u8; 32]);
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        let body = seal_with_key(&mut rand_core::OsRng, &key, &[5; 16], b"old").unwrap();
        conn.execute(
            "INSERT INTO conversations (id, kind, name, peer, created_ms) VALUES (?1, 1, 'bob', 'bob', 0)",
            [CONVERSATION.0.as_slice()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO messages (id, conversation, sender, body, sent_at_ms, stored_ms, outgoing) \
             VALUES (?1, ?2, 'bob', ?3, 1, 2, 0)",
            params![[5u8; 16].as_slice(), CONVERSATION.0.as_slice(), body],
        )
        .unwrap();
    }
    let store = LocalStore::open(&path, key).unwrap();
    let version: i64 = store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let messages = store.messages(&CONVERSATION, 10).unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!((m.text.as_str(), m.kind), ("old", MessageKind::Text));
    assert_eq!((m.edited_at_ms, m.deleted_at_ms, m.expires_at_ms), (None, None, None));
    assert!(m.reactions.is_empty() && m.read_by.is_empty());
    assert_eq!(store.conversation(&CONVERSATION).unwrap().unwrap().disappearing_secs, None);
}

#[test]
fn reactions_receipts_edits_and_deletes_apply_to_the_stored_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    conversation(&mut store, CONVERSATION);
    let id = MessageId([3; 16]);
    store.apply(Change { message: Some(row(3, "alice", "helo")), ..Default::default() }).unwrap();

    effect(&mut store, Effect::React { message: id, user: "bob", emoji: Some("👍") });
    effect(&mut store, Effect::React { message: id, user: "bob", emoji: Some("🎉") });
    effect(&mut store, Effect::React { message: id, user: "carol", emoji: Some("👍") });
    effect(&mut store, Effect::React { message: id, user: "carol", emoji: None });
    effect(&mut store, Effect::Read { messages: &[id, MessageId([99; 16])], reader: "bob" });
    effect(&mut store, Effect::Edit { message: id, text: "hello" });
    let m = store.message(&id).unwrap().unwrap();
    assert_eq!(m.text, "hello");
    assert!(m.edited_at_ms.is_some());
    assert_eq!(m.reactions, vec![Reaction { user: "bob".into(), emoji: "🎉".into() }], "one reaction per user");
    assert_eq!(m.read_by, vec!["bob".to_owned()], "receipts for unknown messages are dropped");
    assert_eq!(
        store.target(&id).unwrap(),
        Some(Target { conversation: CONVERSATION, sender: "alice".into(), deleted: false })
    );

    effect(&mut store, Effect::Delete { message: id });
    effect(&mut store, Effect::Edit { message: id, text: "resurrected" });
    let m = store.message(&id).unwrap().unwrap();
    assert_eq!(m.text, "", "a tombstone has no body, and edits do not bring it back");
    assert!(m.deleted_at_ms.is_some() && m.edited_at_ms.is_none());
    assert!(m.reactions.is_empty());
    assert!(store.target(&id).unwrap().unwrap().deleted);
}

#[test]
fn expired_messages_are_purged_with_their_reactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    conversation(&mut store, CONVERSATION);
    let soon = MessageRow { expires_at_ms: Some(1_000), ..row(1, "alice", "soon") };
    let later = MessageRow { expires_at_ms: Some(5_000), ..row(2, "alice", "later") };
    let kept = row(3, "alice", "kept");
    for m in [soon, later, kept] {
        store.apply(Change { message: Some(m), ..Default::default() }).unwrap();
    }
    effect(&mut store, Effect::React { message: MessageId([1; 16]), user: "bob", emoji: Some("👀") });
    assert_eq!(store.next_expiry().unwrap(), Some(1_000));
    assert_eq!(store.purge_expired(999).unwrap(), vec![]);
    assert_eq!(store.purge_expired(1_000).unwrap(), vec![(CONVERSATION, MessageId([1; 16]))]);
    assert_eq!(store.next_expiry().unwrap(), Some(5_000));
    let reactions: i64 = store.conn.query_row("SELECT COUNT(*) FROM reactions", [], |r| r.get(0)).unwrap();
    assert_eq!(reactions, 0, "reactions go with their message");
    store.purge_expired(u64::MAX / 2).unwrap();
    let texts: Vec<String> = store.messages(&CONVERSATION, 10).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, vec!["kept"]);
    assert_eq!(store.next_expiry().unwrap(), None);
}

#[test]
fn unsupported_messages_keep_their_raw_payload_and_timers_and_names_persist() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    conversation(&mut store, CONVERSATION);
    conversation(&mut store, OTHER);
    let raw = [1u8, 2, 3, 4];
    let m = MessageRow { unsupported: Some(Unsupported { body_field: Some(42), raw: &raw }), ..row(8, "bob", "?") };
    store.apply(Change { message: Some(m), ..Default::default() }).unwrap();
    let id = MessageId([8; 16]);
    assert_eq!(store.message(&id).unwrap().unwrap().kind, MessageKind::Unsupported { body_field: Some(42) });
    assert_eq!(store.raw_payload(&id).unwrap().unwrap().as_slice(), &raw);

    effect(&mut store, Effect::Disappearing { conversation: CONVERSATION, secs: Some(30) });
    assert!(store.rename_conversation(&CONVERSATION, "Bobby").unwrap());
    drop(store);
    let store = open(&dir);
    let c = store.conversation(&CONVERSATION).unwrap().unwrap();
    assert_eq!((c.name.as_str(), c.disappearing_secs), ("Bobby", Some(30)));
    assert_eq!(store.conversation(&OTHER).unwrap().unwrap().disappearing_secs, None);
}

#[test]
fn unread_counts_follow_the_read_marker_and_own_sends() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    conversation(&mut store, CONVERSATION);
    conversation(&mut store, OTHER);
    for id in 1..=3 {
        store.apply(Change { message: Some(row(id, "bob", "hi")), ..Default::default() }).unwrap();
    }
    assert_eq!(store.unread(&CONVERSATION).unwrap(), 3);
    assert_eq!(store.unread(&OTHER).unwrap(), 0);

    // Read through the second: the first two are newly read, the third is still unread.
    let read = store.mark_read_through(&CONVERSATION, Some(&MessageId([2; 16])), 100).unwrap();
    assert_eq!(read, vec![MessageId([1; 16]), MessageId([2; 16])]);
    assert_eq!(store.unread(&CONVERSATION).unwrap(), 1);
    // Reading an older message again moves nothing.
    assert!(store.mark_read_through(&CONVERSATION, Some(&MessageId([1; 16])), 100).unwrap().is_empty());
    // A message of another conversation is not a marker here.
    assert!(store.mark_read_through(&OTHER, Some(&MessageId([3; 16])), 100).unwrap().is_empty());

    // A deleted message does not count; a reply of this user reads everything before it.
    effect(&mut store, Effect::Delete { message: MessageId([3; 16]) });
    assert_eq!(store.unread(&CONVERSATION).unwrap(), 0);
    store.apply(Change { message: Some(row(4, "bob", "more")), ..Default::default() }).unwrap();
    assert_eq!(store.unread(&CONVERSATION).unwrap(), 1);
    let mine = MessageRow { outgoing: true, ..row(5, "alice", "reply") };
    store.apply(Change { message: Some(mine), ..Default::default() }).unwrap();
    assert_eq!(store.unread(&CONVERSATION).unwrap(), 0);

    // Reading everything, with a limit on how many ids come back (the newest).
    for id in 6..=8 {
        store.apply(Change { message: Some(row(id, "bob", "x")), ..Default::default() }).unwrap();
    }
    let read = store.mark_read_through(&CONVERSATION, None, 2).unwrap();
    assert_eq!(read, vec![MessageId([7; 16]), MessageId([8; 16])]);
    assert_eq!(store.unread(&CONVERSATION).unwrap(), 0);
}

#[test]
fn a_local_rename_wins_over_the_group_name_and_left_conversations_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    conversation(&mut store, CONVERSATION);
    conversation(&mut store, OTHER);
    effect(&mut store, Effect::GroupName { conversation: CONVERSATION, name: "team" });
    let c = store.conversation(&CONVERSATION).unwrap().unwrap();
    assert_eq!((c.name.as_str(), c.group_name.as_deref()), ("team", Some("team")));
    store.rename_conversation(&CONVERSATION, "my team").unwrap();
    effect(&mut store, Effect::GroupName { conversation: CONVERSATION, name: "renamed" });
    let c = store.conversation(&CONVERSATION).unwrap().unwrap();
    assert_eq!((c.name.as_str(), c.group_name.as_deref()), ("my team", Some("renamed")));

    // A DM has no group name.
    let dm = ConversationId([3; 16]);
    let row = ConversationRow::new(dm, 1, "carol".into(), Some("carol".into()));
    store.apply(Change { conversation: Some(row), ..Default::default() }).unwrap();
    effect(&mut store, Effect::GroupName { conversation: dm, name: "nope" });
    assert_eq!(store.conversation(&dm).unwrap().unwrap().name, "carol");

    store.mark_left(&OTHER).unwrap();
    let listed: Vec<_> = store.conversations().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(listed, vec![CONVERSATION, dm]);
    assert!(store.conversation(&OTHER).unwrap().unwrap().left, "a left conversation stays readable");
    store.mark_left(&dm).unwrap();
    assert!(store.conversation_by_peer("carol").unwrap().is_none());
}

#[cfg(feature = "sqlcipher")]
mod encrypted {
    use super::*;

    fn header(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()[..16].to_vec()
    }

    #[test]
    fn the_whole_file_is_encrypted_and_opens_only_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut store = open(&dir);
            conversation(&mut store, CONVERSATION);
            store.apply(Change { message: Some(row(1, "bob", "secret")), ..Default::default() }).unwrap();
        }
        assert_ne!(header(&path), b"SQLite format 3\0");
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(3).any(|w| w == b"bob"), "a sender's name is readable in the file");
        assert!(matches!(LocalStore::open(&path, Zeroizing::new([8u8; 32])), Err(SdkError::LocalStoreUnreadable)));
        let store = open(&dir);
        assert_eq!(store.message(&MessageId([1; 16])).unwrap().unwrap().text, "secret");
    }

    #[test]
    fn a_cleartext_database_of_an_earlier_build_is_encrypted_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // As a build without the feature wrote it (column-sealed with the same key).
            let conn = Connection::open(&path).unwrap();
            migrate(&conn).unwrap();
            let mut store = LocalStore { conn, key: Zeroizing::new([7u8; 32]) };
            conversation(&mut store, CONVERSATION);
            store.apply(Change { message: Some(row(1, "bob", "kept")), ..Default::default() }).unwrap();
        }
        assert_eq!(header(&path), b"SQLite format 3\0");
        let store = open(&dir);
        assert_eq!(store.message(&MessageId([1; 16])).unwrap().unwrap().text, "kept");
        drop(store);
        assert_ne!(header(&path), b"SQLite format 3\0");
        assert!(!dir.path().join("state.db.encrypting").exists());
    }
}

#[test]
fn mls_entries_replace_an_earlier_snapshot_and_restore_the_client() {
    use quicprochat_core::identity::IdentityKeyPair;
    use quicprochat_core::mls::{MlsClient, MlsSuite};

    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    // What an earlier version kept: one sealed snapshot in `meta`.
    let snapshot = store.seal(MLS_STATE.as_bytes(), b"earlier snapshot").unwrap();
    store.conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![MLS_STATE, snapshot]).unwrap();
    assert!(store.mls_state().unwrap().is_some());

    let identity = IdentityKeyPair::generate(&mut rand_core::OsRng);
    let mls = MlsClient::new(&identity, "bob", MlsSuite::Classic).unwrap();
    mls.generate_key_package().unwrap();
    let changes = mls.state_changes().unwrap();
    assert!(!changes.is_empty());
    store.apply(Change { mls: Some(&changes), ..Default::default() }).unwrap();
    mls.mark_persisted(&changes).unwrap();
    assert!(store.mls_state().unwrap().is_none(), "the snapshot is superseded");

    // Only what changed is written next time, and deletions go too.
    mls.generate_key_package().unwrap();
    let more = mls.state_changes().unwrap();
    assert!(!more.is_empty());
    assert!(more.writes().all(|w| changes.writes().all(|written| written.key != w.key)), "nothing rewritten");
    store.apply(Change { mls: Some(&more), ..Default::default() }).unwrap();

    drop(store);
    let store = open(&dir);
    let restored =
        MlsClient::restore_entries(&identity, "bob", MlsSuite::Classic, store.mls_entries().unwrap()).unwrap();
    assert_eq!(restored.export_state().unwrap().as_slice(), mls.export_state().unwrap().as_slice());
    // Entries are sealed: another key cannot read them.
    let other = LocalStore::open(&dir.path().join("state.db"), Zeroizing::new([9u8; 32]));
    assert!(other.is_err() || other.unwrap().mls_entries().is_err());
}

fn chunk_rows(store: &LocalStore, key: &[u8]) -> i64 {
    store.conn.query_row("SELECT count(*) FROM mls_chunks WHERE key = ?1", [key], |r| r.get(0)).unwrap()
}

#[test]
fn mls_entries_are_written_in_chunks_and_read_back_whole() {
    use quicprochat_core::identity::IdentityKeyPair;
    use quicprochat_core::mls::{MlsClient, MlsSuite};

    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let identity = IdentityKeyPair::generate(&mut rand_core::OsRng);
    let bytes = |len: usize, salt: usize| -> Vec<u8> { (0..len).map(|i| ((i + salt) % 251) as u8).collect() };
    let mut entries = vec![
        (b"big".to_vec(), bytes(3 * STATE_CHUNK_LEN + 5, 0)),
        (b"big2".to_vec(), bytes(2 * STATE_CHUNK_LEN + 7, 1)),
        (b"small".to_vec(), b"s".to_vec()),
        (b"empty".to_vec(), Vec::new()),
    ];
    entries.sort();
    // A client restored from a snapshot has everything to write.
    let snapshot = MlsClient::restore_entries(&identity, "bob", MlsSuite::Classic, entries.clone())
        .unwrap()
        .export_state()
        .unwrap();
    let mls = MlsClient::restore(&identity, "bob", MlsSuite::Classic, &snapshot).unwrap();
    let changes = mls.state_changes().unwrap();
    assert_eq!(changes.writes().count(), 4 + 3 + 1 + 1);
    store.apply(Change { mls: Some(&changes), ..Default::default() }).unwrap();
    assert_eq!((chunk_rows(&store, b"big"), chunk_rows(&store, b"big2")), (4, 3));
    assert_eq!(chunk_rows(&store, b"empty"), 1);
    let mut read = store.mls_entries().unwrap();
    read.sort();
    assert_eq!(read, entries);

    // Chunks dropped, lost from the end, moved, swapped between entries or cut short are
    // refused, never read as another value.
    let short = store.seal(&mls_chunk_aad(b"big", 1, false), b"short").unwrap();
    let big = "key = CAST('big' AS BLOB)";
    let big2 = "key = CAST('big2' AS BLOB)";
    for damage in [
        format!("DELETE FROM mls_chunks WHERE {big} AND chunk = 3"),
        format!("DELETE FROM mls_chunks WHERE {big} AND chunk = 1"),
        format!("DELETE FROM mls_chunks WHERE {big} AND chunk = 0"),
        format!(
            "UPDATE mls_chunks SET value = (SELECT value FROM mls_chunks WHERE {big} AND chunk = 2) WHERE {big} AND chunk = 1"
        ),
        format!(
            "UPDATE mls_chunks SET value = (SELECT value FROM mls_chunks WHERE {big2} AND chunk = 1) WHERE {big} AND chunk = 1"
        ),
        format!(
            "UPDATE mls_chunks SET value = (SELECT value FROM mls_chunks WHERE {big} AND chunk = 2) WHERE {big2} AND chunk = 2"
        ),
        format!("UPDATE mls_chunks SET value = X'{}' WHERE {big} AND chunk = 1", hex(&short)),
    ] {
        let tx = store.conn.unchecked_transaction().unwrap();
        assert_eq!(tx.execute(&damage, []).unwrap(), 1, "{damage}");
        let damaged = store.mls_entries();
        assert!(matches!(damaged, Err(SdkError::LocalStoreDamaged(_) | SdkError::Crypto(_))), "{damage}: {damaged:?}");
        drop(tx);
    }
    assert_eq!(store.mls_entries().unwrap().len(), 4, "the damage was rolled back");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn a_version_8_database_keeps_its_mls_entries_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let key = Zeroizing::new([7u8; 32]);
    let big: Vec<u8> = (0..2 * STATE_CHUNK_LEN + 10).map(|i| (i % 253) as u8).collect();
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..8] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
        // As version 8 wrote them: whole, bound to the key alone.
        for (entry, value) in [(&b"big"[..], &big[..]), (&b"small"[..], &b"s"[..])] {
            let sealed = seal_with_key(&mut rand_core::OsRng, &key, &mls_chunk_aad(entry, 0, true), value).unwrap();
            conn.execute("INSERT INTO mls_entries (key, value) VALUES (?1, ?2)", params![entry, sealed]).unwrap();
        }
    }
    let store = LocalStore::open(&path, key.clone()).unwrap();
    let version: i64 = store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    assert_eq!((chunk_rows(&store, b"big"), chunk_rows(&store, b"small")), (3, 1));
    let mut read = store.mls_entries().unwrap();
    read.sort();
    let expected = vec![(b"big".to_vec(), big), (b"small".to_vec(), b"s".to_vec())];
    assert_eq!(read, expected);
    // Opened again, it is left as it is.
    drop(store);
    let store = LocalStore::open(&path, key).unwrap();
    assert_eq!(chunk_rows(&store, b"big"), 3);
    let mut read = store.mls_entries().unwrap();
    read.sort();
    assert_eq!(read, expected);
}
