//! Rich messaging between two users: edits, deletes, reactions, receipts, typing, disappearing
//! messages, unknown message kinds and local names.

use std::time::Duration;

use quicprochat_sdk::{ClientEvent, ConversationHandle, MessageId, MessageKind, QpcClient, Reaction, SdkError};
use quicprochat_server::RunningServer;
use tempfile::TempDir;
use tokio::sync::broadcast;

use crate::{client, next_event, start_server};

/// Alice and Bob with a DM, both online.
struct Pair {
    server: RunningServer,
    alice: QpcClient,
    bob: QpcClient,
    alice_dm: ConversationHandle,
    bob_dm: ConversationHandle,
    alice_events: broadcast::Receiver<ClientEvent>,
    bob_events: broadcast::Receiver<ClientEvent>,
    bob_dir: TempDir,
    _dirs: (TempDir, TempDir),
}

async fn pair() -> Pair {
    let (server_dir, alice_dir, bob_dir) = (tempdir(), tempdir(), tempdir());
    let server = start_server(server_dir.path()).await;
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    let alice_dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    let bob_dm = bob.dm("alice").await.unwrap();
    Pair { server, alice, bob, alice_dm, bob_dm, alice_events, bob_events, bob_dir, _dirs: (server_dir, alice_dir) }
}

fn tempdir() -> TempDir {
    tempfile::tempdir().unwrap()
}

/// Waits for the next `MessageReceived` and returns the message id.
async fn received(events: &mut broadcast::Receiver<ClientEvent>, text: &str) -> MessageId {
    match next_event(events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await {
        ClientEvent::MessageReceived { message, .. } => {
            assert_eq!(message.text, text);
            message.id
        }
        _ => unreachable!(),
    }
}

/// Polls `done` every 50 ms until it holds, failing after 20 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events already delivered to `events`, without waiting.
fn drain(events: &mut broadcast::Receiver<ClientEvent>) -> Vec<ClientEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

#[tokio::test]
async fn edits_deletes_reactions_and_receipts_round_trip() {
    let Pair { server, alice, bob, mut alice_dm, bob_dm, mut alice_events, mut bob_events, _dirs, .. } = pair().await;
    let id = alice_dm.send_text("helo").await.unwrap();
    assert_eq!(received(&mut bob_events, "helo").await, id);

    alice_dm.edit(id, "hello").await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageEdited { .. })).await;
    assert!(matches!(e, ClientEvent::MessageEdited { message, ref by, ref text, .. }
        if message == id && by == "alice" && text == "hello"));
    for m in [&alice_dm.messages(10).unwrap()[0], &bob_dm.messages(10).unwrap()[0]] {
        assert_eq!(m.text, "hello");
        assert!(m.edited_at_ms.is_some());
    }

    bob_dm.react(id, "👍").await.unwrap();
    let e = next_event(&mut alice_events, |e| matches!(e, ClientEvent::ReactionAdded { .. })).await;
    assert!(matches!(e, ClientEvent::ReactionAdded { message, ref user, ref emoji, .. }
        if message == id && user == "bob" && emoji == "👍"));
    let bobs = vec![Reaction { user: "bob".into(), emoji: "👍".into() }];
    assert_eq!(alice_dm.messages(10).unwrap()[0].reactions, bobs);
    assert_eq!(bob_dm.messages(10).unwrap()[0].reactions, bobs);

    bob_dm.mark_read(id).await.unwrap();
    let e = next_event(&mut alice_events, |e| matches!(e, ClientEvent::ReadReceipt { .. })).await;
    assert!(matches!(e, ClientEvent::ReadReceipt { ref messages, ref reader, .. }
        if messages == &vec![id] && reader == "bob"));
    assert_eq!(alice_dm.messages(10).unwrap()[0].read_by, vec!["bob".to_owned()]);

    // Only the sender may change a message.
    assert!(matches!(bob_dm.edit(id, "hijacked").await, Err(SdkError::NotOwnMessage(m)) if m == id));
    assert!(matches!(bob_dm.delete(id).await, Err(SdkError::NotOwnMessage(m)) if m == id));
    let unknown = MessageId([0; 16]);
    assert!(matches!(alice_dm.react(unknown, "👍").await, Err(SdkError::UnknownMessage(m)) if m == unknown));
    assert!(matches!(alice_dm.react(id, "").await, Err(SdkError::InvalidReaction { .. })));

    bob_dm.remove_reaction(id).await.unwrap();
    let e = next_event(&mut alice_events, |e| matches!(e, ClientEvent::ReactionRemoved { .. })).await;
    assert!(matches!(e, ClientEvent::ReactionRemoved { message, ref user, .. } if message == id && user == "bob"));
    assert!(alice_dm.messages(10).unwrap()[0].reactions.is_empty());

    alice_dm.delete(id).await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageDeleted { .. })).await;
    assert!(matches!(e, ClientEvent::MessageDeleted { message, ref by, .. } if message == id && by == "alice"));
    for m in [&alice_dm.messages(10).unwrap()[0], &bob_dm.messages(10).unwrap()[0]] {
        assert_eq!((m.id, m.text.as_str()), (id, ""), "a tombstone keeps the id, not the text");
        assert!(m.deleted_at_ms.is_some());
    }
    assert!(matches!(alice_dm.edit(id, "back").await, Err(SdkError::MessageDeleted(m)) if m == id));

    // A local name: this device only, and it sticks.
    assert!(matches!(alice_dm.rename("  "), Err(SdkError::EmptyConversationName)));
    alice_dm.rename("Bobby").unwrap();
    assert_eq!(alice_dm.name(), "Bobby");
    assert_eq!(alice.conversation(alice_dm.id()).unwrap().unwrap().name(), "Bobby");
    assert_eq!(alice.find_conversation("bob").unwrap().unwrap().name(), "Bobby", "still found by peer");
    assert_eq!(bob.conversations().unwrap()[0].name, "alice");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn typing_reaches_online_peers_and_is_never_stored() {
    let Pair { server, alice_dm, bob, bob_dm, mut bob_events, bob_dir, _dirs, .. } = pair().await;
    alice_dm.typing(true).await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::Typing { .. })).await;
    assert!(matches!(e, ClientEvent::Typing { conversation, ref username, started: true }
        if conversation == alice_dm.id() && username == "alice"));
    alice_dm.typing(false).await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::Typing { .. })).await;
    assert!(matches!(e, ClientEvent::Typing { started: false, .. }));
    assert_eq!(bob.sync().await.unwrap(), 0, "nothing was queued for bob");
    assert!(bob_dm.messages(10).unwrap().is_empty());

    // The ratchet stays in step: the next real message still decrypts.
    alice_dm.send_text("done typing").await.unwrap();
    received(&mut bob_events, "done typing").await;

    // Offline devices never see typing, not even when they come back.
    bob.close();
    drop((bob, bob_dm));
    alice_dm.typing(true).await.unwrap();
    alice_dm.send_text("while you were away").await.unwrap();
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    bob.login("bob", b"b").await.unwrap();
    let seen = drain(&mut bob_events);
    assert!(!seen.iter().any(|e| matches!(e, ClientEvent::Typing { .. })), "typing was stored: {seen:?}");
    assert!(seen.iter().any(|e| matches!(e, ClientEvent::MessageReceived { message, .. }
        if message.text == "while you were away")));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn disappearing_messages_vanish_on_both_devices_and_on_the_server() {
    let Pair { server, alice, alice_dm, bob, bob_dm, mut bob_events, bob_dir, _dirs, .. } = pair().await;
    let ttl = Duration::from_secs(2);
    alice_dm.set_disappearing(Some(ttl)).await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::DisappearingTimerChanged { .. })).await;
    assert!(
        matches!(e, ClientEvent::DisappearingTimerChanged { ref by, ttl: Some(t), .. } if by == "alice" && t == ttl)
    );
    assert_eq!(bob_dm.disappearing().unwrap(), Some(ttl));
    assert_eq!(alice.conversations().unwrap()[0].disappearing, Some(ttl));

    let id = alice_dm.send_text("this will self-destruct").await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await;
    assert!(matches!(e, ClientEvent::MessageReceived { ref message, .. }
        if message.id == id && message.expires_at_ms.is_some()));

    // Bob's background timer deletes it without anyone reading the history.
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageExpired { .. })).await;
    assert!(matches!(e, ClientEvent::MessageExpired { message, .. } if message == id));
    assert!(bob_dm.messages(10).unwrap().is_empty());
    eventually("alice's copy is gone", || alice_dm.messages(10).unwrap().is_empty()).await;

    // The server drops it too once the timer has run, even unread.
    bob.close();
    drop((bob, bob_dm));
    let sent = tokio::time::Instant::now();
    alice_dm.send_text("gone before you come back").await.unwrap();
    tokio::time::sleep_until(sent + ttl + Duration::from_millis(500)).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    bob.login("bob", b"b").await.unwrap();
    let seen = drain(&mut bob_events);
    assert!(!seen.iter().any(|e| matches!(e, ClientEvent::MessageReceived { .. })), "delivered: {seen:?}");

    // Turning the timer off keeps later messages.
    alice_dm.set_disappearing(None).await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::DisappearingTimerChanged { .. })).await;
    assert!(matches!(e, ClientEvent::DisappearingTimerChanged { ttl: None, .. }));
    alice_dm.send_text("this one stays").await.unwrap();
    received(&mut bob_events, "this one stays").await;
    let bob_dm = bob.dm("alice").await.unwrap();
    assert_eq!(bob_dm.disappearing().unwrap(), None);
    assert_eq!(bob_dm.messages(10).unwrap()[0].expires_at_ms, None);
    assert!(matches!(
        alice_dm.set_disappearing(Some(quicprochat_sdk::MAX_DISAPPEARING * 2)).await,
        Err(SdkError::DisappearingTimerTooLong { .. })
    ));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_kind_from_a_newer_version_is_kept() {
    let Pair { server, alice_dm, bob_dm, mut bob_events, _dirs, .. } = pair().await;
    let id = alice_dm.send_unknown_body_for_tests(99, b"a poll, perhaps").await.unwrap();
    let e = next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await;
    let ClientEvent::MessageReceived { message, .. } = e else { unreachable!() };
    assert_eq!((message.id, message.kind), (id, MessageKind::Unsupported { body_field: Some(99) }));
    assert_eq!(message.sender, "alice");
    assert!(!message.text.is_empty(), "the history says what it is");
    let history = bob_dm.messages(10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].kind, MessageKind::Unsupported { body_field: Some(99) });

    alice_dm.send_text("and a normal one").await.unwrap();
    received(&mut bob_events, "and a normal one").await;
    server.shutdown().await.unwrap();
}
