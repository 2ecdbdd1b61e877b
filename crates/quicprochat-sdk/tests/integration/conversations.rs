//! Conversation bookkeeping: a group's name reaching invitees, unread counts and read markers,
//! leaving and being removed, typing indicators that end by themselves, lookup by message id.

use std::time::Duration;

use quicprochat_sdk::{ClientEvent, ConversationHandle, ConversationId, SdkError, TYPING_TIMEOUT};
use quicprochat_server::RunningServer;

use crate::{Member, client, member, next_event, start_server, start_server_with};

/// Alice and bob, registered, with alice's DM to bob (bob has joined it).
async fn dm_pair(server: &RunningServer) -> (Member, Member, ConversationHandle) {
    let alice = member(server, "alice").await;
    let mut bob = member(server, "bob").await;
    let alice_dm = alice.client.dm("bob").await.unwrap();
    next_event(&mut bob.events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    (alice, bob, alice_dm)
}

/// Waits for the group's name to arrive; returns what this device shows.
async fn renamed(m: &mut Member, id: ConversationId) -> String {
    match next_event(
        &mut m.events,
        |e| matches!(e, ClientEvent::ConversationRenamed { conversation, .. } if *conversation == id),
    )
    .await
    {
        ClientEvent::ConversationRenamed { name, .. } => name,
        _ => unreachable!(),
    }
}

async fn received(m: &mut Member, text: &str) -> quicprochat_sdk::Message {
    match next_event(&mut m.events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await {
        ClientEvent::MessageReceived { message, .. } => {
            assert_eq!(message.text, text);
            message
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_groups_name_reaches_invitees_and_a_group_of_two_is_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let mut dave = member(&server, "dave").await;

    let pair = alice.client.create_group("  pair  ", &["bob"]).await.unwrap();
    assert_eq!(pair.name(), "pair");
    assert_eq!(renamed(&mut bob, pair.id()).await, "pair");
    let listed = bob.client.conversations().unwrap();
    assert_eq!((listed[0].name.as_str(), listed[0].peer.as_deref()), ("pair", None), "a group of two is no DM");

    // A member who learned the name passes it on when inviting.
    let mut bob_pair = bob.client.conversation(pair.id()).unwrap().unwrap();
    bob_pair.invite("carol").await.unwrap();
    assert_eq!(renamed(&mut carol, pair.id()).await, "pair");
    assert_eq!(carol.client.conversation(pair.id()).unwrap().unwrap().name(), "pair");

    // A local rename wins over the shared name, also when it is told again.
    bob_pair.rename("mine").unwrap();
    pair.invite("dave").await.unwrap();
    assert_eq!(renamed(&mut dave, pair.id()).await, "pair");
    assert_eq!(renamed(&mut bob, pair.id()).await, "mine");
    assert!(matches!(alice.client.create_group(" ", &[]).await, Err(SdkError::EmptyConversationName)));
    let long = "x".repeat(129);
    assert!(matches!(alice.client.create_group(&long, &[]).await, Err(SdkError::ConversationNameTooLong { .. })));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unread_counts_follow_reading_and_replying() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let (mut alice, mut bob, alice_dm) = dm_pair(&server).await;
    let bob_dm = bob.client.dm("alice").await.unwrap();

    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        alice_dm.send_text(text).await.unwrap();
        ids.push(received(&mut bob, text).await.id);
    }
    assert_eq!(bob_dm.unread().unwrap(), 3);
    assert_eq!(bob.client.conversations().unwrap()[0].unread, 3);
    assert_eq!(alice_dm.unread().unwrap(), 0, "one's own messages are never unread");
    let found = bob.client.message(ids[1]).unwrap().unwrap();
    assert_eq!((found.text.as_str(), found.conversation), ("two", bob_dm.id()));

    bob_dm.mark_read(ids[1]).await.unwrap();
    assert_eq!(bob_dm.unread().unwrap(), 1);
    let e = next_event(&mut alice.events, |e| matches!(e, ClientEvent::ReadReceipt { .. })).await;
    assert!(matches!(e, ClientEvent::ReadReceipt { messages, .. } if messages == vec![ids[1]]));

    assert_eq!(bob_dm.mark_all_read().await.unwrap(), 1);
    assert_eq!(bob_dm.unread().unwrap(), 0);
    let e = next_event(&mut alice.events, |e| matches!(e, ClientEvent::ReadReceipt { .. })).await;
    assert!(matches!(e, ClientEvent::ReadReceipt { messages, .. } if messages == vec![ids[2]]));
    assert_eq!(bob_dm.mark_all_read().await.unwrap(), 0, "nothing left to read, no receipt sent");

    alice_dm.send_text("four").await.unwrap();
    received(&mut bob, "four").await;
    assert_eq!(bob_dm.unread().unwrap(), 1);
    bob_dm.send_text("reply").await.unwrap();
    assert_eq!(bob_dm.unread().unwrap(), 0, "replying reads what came before");
    received(&mut alice, "reply").await;
    assert_eq!(alice.client.conversations().unwrap()[0].unread, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn leaving_or_being_removed_unlists_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let team = alice.client.create_group("team", &["bob", "carol"]).await.unwrap();
    renamed(&mut bob, team.id()).await;
    renamed(&mut carol, team.id()).await;
    team.send_text("hello").await.unwrap();
    received(&mut carol, "hello").await;

    let carol_team = carol.client.conversation(team.id()).unwrap().unwrap();
    carol_team.leave().await.unwrap();
    assert!(carol.client.conversations().unwrap().is_empty(), "a left conversation is not listed");
    assert!(carol.client.find_conversation("team").unwrap().is_none());
    assert!(matches!(carol_team.send_text("still here?").await, Err(SdkError::LeftConversation)));
    assert!(matches!(carol_team.invite("bob").await, Err(SdkError::LeftConversation)));
    assert_eq!(carol_team.messages(10).unwrap().len(), 1, "its history stays readable");
    // The next member to see the proposal commits it.
    let e = next_event(&mut alice.events, |e| matches!(e, ClientEvent::MemberLeft { .. })).await;
    assert!(matches!(e, ClientEvent::MemberLeft { ref username, .. } if username == "carol"));

    // Removed by someone else: unlisted once the commit is in, and never "healed" back in.
    team.remove("bob").await.unwrap();
    next_event(&mut bob.events, |e| matches!(e, ClientEvent::MemberLeft { username, .. } if username == "bob")).await;
    assert!(bob.client.conversations().unwrap().is_empty());
    team.send_text("after bob").await.unwrap();
    assert!(bob.client.sync().await.is_ok());
    assert!(bob.client.conversations().unwrap().is_empty());
    let lost = std::iter::from_fn(|| bob.events.try_recv().ok()).any(|e| matches!(e, ClientEvent::MessagesLost { .. }));
    assert!(!lost, "a removed member does not rejoin by itself");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_typing_indicator_ends_by_itself_or_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let (_alice, mut bob, alice_dm) = dm_pair(&server).await;
    let typing = |e: &ClientEvent| matches!(e, ClientEvent::Typing { .. });

    // Started and never stopped (the stop was lost): it ends after the timeout.
    let before = tokio::time::Instant::now();
    alice_dm.typing(true).await.unwrap();
    assert!(matches!(next_event(&mut bob.events, typing).await, ClientEvent::Typing { started: true, .. }));
    alice_dm.typing(true).await.unwrap(); // a refresh is not shown again
    assert!(matches!(next_event(&mut bob.events, typing).await, ClientEvent::Typing { started: false, .. }));
    assert!(before.elapsed() >= TYPING_TIMEOUT - Duration::from_millis(100));

    // The typist's message ends it at once, before the message is shown.
    alice_dm.typing(true).await.unwrap();
    assert!(matches!(next_event(&mut bob.events, typing).await, ClientEvent::Typing { started: true, .. }));
    alice_dm.send_text("done").await.unwrap();
    let e = next_event(&mut bob.events, |e| typing(e) || matches!(e, ClientEvent::MessageReceived { .. })).await;
    assert!(matches!(e, ClientEvent::Typing { started: false, .. }), "got {e:?}");
    received(&mut bob, "done").await;
    server.shutdown().await.unwrap();
}

/// Entries in the server's queues, read from its database.
fn server_queue_len(server_dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        server_dir.join(quicprochat_server::files::DATABASE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0)).unwrap()
}

/// Waits (bounded) for the server's queues to empty out.
async fn queues_empty_out(server_dir: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let queued = server_queue_len(server_dir);
        if queued == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{queued} envelopes never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn what_was_applied_but_not_yet_acknowledged_is_acknowledged_at_the_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let alice = member(&server, "alice").await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    bob.register("bob", b"pw").await.unwrap();
    let dm = alice.client.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    // The Welcome's pass is over (it holds the lock a sync waits for): the message comes by push.
    bob.sync().await.unwrap();
    dm.send_text("applied").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await;
    // Closed before its acker's wait (at least half a second) is over.
    bob.close();
    drop(bob);
    assert_eq!(server_queue_len(dir.path()), 1, "stored by bob, not acknowledged");

    let bob = client(&server, bob_dir.path()).await;
    bob.login("bob", b"pw").await.unwrap();
    queues_empty_out(dir.path()).await;
    assert_eq!(bob.sync().await.unwrap(), 0, "nothing is read twice");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn pushed_messages_are_acknowledged_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let (_alice, mut bob, alice_dm) = dm_pair(&server).await;
    for i in 0..5 {
        alice_dm.send_text(&format!("m{i}")).await.unwrap();
    }
    for i in 0..5 {
        received(&mut bob, &format!("m{i}")).await;
    }
    // Stored on bob's device and acknowledged: the server's queues empty out.
    queues_empty_out(dir.path()).await;
    assert_eq!(bob.client.sync().await.unwrap(), 0, "nothing is read twice");
    assert_eq!(bob.client.conversations().unwrap()[0].unread, 5);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_group_whose_welcome_passes_the_servers_payload_limit_is_added_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    // With X-Wing keys a commit adding eight devices (their key packages, and a path
    // encrypted to the group) and its Welcome (the ratchet tree, every invitee's secrets) are
    // each over 20 KiB; a commit adding four, and its Welcome, fit 24 KiB.
    let server = start_server_with(dir.path(), |c| c.limits.max_payload = 24 * 1024).await;
    let alice = member(&server, "alice").await;
    let names: Vec<String> = (1..=8).map(|i| format!("member{i}")).collect();
    let mut invitees = Vec::new();
    for name in &names {
        invitees.push(member(&server, name).await);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let team = alice.client.create_group("team", &refs).await.unwrap();
    for invitee in &mut invitees {
        assert_eq!(renamed(invitee, team.id()).await, "team");
    }
    team.send_text("all here").await.unwrap();
    for invitee in &mut invitees {
        received(invitee, "all here").await;
    }
    assert_eq!(team.members().unwrap().len(), 9);
    server.shutdown().await.unwrap();
}
