//! The durable outbox: sends made offline, and sends interrupted by a crash, reach the other
//! side exactly once.

use quicprochat_sdk::{ClientEvent, DeliveryState, MessageId};

use crate::{client, next_event, received_text, start_server};

fn is_message(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::MessageReceived { .. })
}

/// How many envelopes the server ever stored (the highest sequence it assigned; acked ones are
/// deleted, the counter is not), read from its database.
fn stored_envelopes(server_dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        server_dir.join(quicprochat_server::files::DATABASE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'envelopes'", [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn sends_made_offline_wait_in_the_outbox_and_go_out_once_in_order() {
    let server_dir = tempfile::tempdir().unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_server(server_dir.path()).await;
    let addr = server.local_addr();
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let (mut alice_events, mut bob_events) = (alice.subscribe(), bob.subscribe());
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    let dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;

    server.shutdown().await.unwrap();
    next_event(&mut alice_events, |e| matches!(e, ClientEvent::ConnectionLost { .. })).await;

    // Offline: both sends succeed locally and wait, in order.
    let first = dm.send_text("written offline").await.unwrap();
    let second = dm.send_text("and another").await.unwrap();
    assert_eq!(alice.pending_sends().unwrap(), 2);
    let history = dm.messages(10).unwrap();
    let state = |id: MessageId| history.iter().find(|m| m.id == id).unwrap().delivery.clone();
    assert_eq!((state(first), state(second)), (DeliveryState::Queued, DeliveryState::Queued));

    // The server comes back: the outbox drains by itself.
    let server =
        quicprochat_server::start(quicprochat_server::ServerConfig::new(addr, server_dir.path())).await.unwrap();
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "written offline")));
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "and another")));
    for id in [first, second] {
        next_event(
            &mut alice_events,
            |e| matches!(e, ClientEvent::DeliveryConfirmed { message, .. } if *message == id),
        )
        .await;
    }
    assert_eq!(alice.pending_sends().unwrap(), 0);
    assert!(dm.messages(10).unwrap().iter().all(|m| m.delivery == DeliveryState::Confirmed));

    // Exactly once: nothing more arrives, and bob's history holds each message once.
    assert_eq!(bob.sync().await.unwrap(), 0);
    let bob_dm = bob.find_conversation("alice").unwrap().unwrap();
    let texts: Vec<String> = bob_dm.messages(10).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["written offline", "and another"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_send_cut_off_by_a_crash_is_delivered_exactly_once_after_a_restart() {
    let server_dir = tempfile::tempdir().unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_server(server_dir.path()).await;
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    let dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    let before = stored_envelopes(server_dir.path());

    // The server accepts the message, then the process "dies" before it records that.
    alice.crash_after_next_enqueue_for_tests();
    let id = dm.send_text("sent just before the crash").await.unwrap();
    alice.close();
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "sent just before the crash")));

    // A new process on the same state dir sends it again (same idempotency key) at login.
    let alice = client(&server, alice_dir.path()).await;
    let mut alice_events = alice.subscribe();
    alice.login("alice", b"a").await.unwrap();
    next_event(&mut alice_events, |e| matches!(e, ClientEvent::DeliveryConfirmed { message, .. } if *message == id))
        .await;
    assert_eq!(alice.pending_sends().unwrap(), 0);

    // The server stored it once; bob has it once.
    assert_eq!(stored_envelopes(server_dir.path()), before + 1);
    assert_eq!(bob.sync().await.unwrap(), 0);
    let bob_dm = bob.find_conversation("alice").unwrap().unwrap();
    assert_eq!(bob_dm.messages(10).unwrap().iter().filter(|m| m.id == id).count(), 1);
    server.shutdown().await.unwrap();
}
