//! The walking skeleton end to end: register, DM, push both ways, restart everything, continue.

use quicprochat_sdk::{ClientEvent, SdkError};

use crate::{client, client_with, next_event, received_text, start_server, start_server_with};

fn is_message(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::MessageReceived { .. })
}

#[tokio::test]
async fn dm_both_ways_by_push_survives_restarts() {
    let server_dir = tempfile::tempdir().unwrap();
    let alice_dir = tempfile::tempdir().unwrap();
    let bob_dir = tempfile::tempdir().unwrap();

    let server = start_server(server_dir.path()).await;
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"alice pw").await.unwrap();
    bob.register("bob", b"bob pw").await.unwrap();

    let alice_dm = alice.dm("bob").await.unwrap();
    let joined = next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    let ClientEvent::ConversationCreated { conversation, name } = joined else { unreachable!() };
    assert_eq!(conversation, alice_dm.id());
    assert_eq!(name, "alice");
    let bob_dm = bob.dm("alice").await.unwrap();
    assert_eq!(bob_dm.id(), alice_dm.id());

    // Delivered by push: nothing in the SDK polls, so the event proves the push path.
    let sent = alice_dm.send_text("hello bob").await.unwrap();
    let confirmed = next_event(&mut alice_events, |e| matches!(e, ClientEvent::DeliveryConfirmed { .. })).await;
    assert!(matches!(confirmed, ClientEvent::DeliveryConfirmed { message, .. } if message == sent));
    assert!(alice_dm.is_delivery_confirmed(sent).unwrap(), "the verified proof is kept");
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "hello bob")));
    bob_dm.send_text("hello alice").await.unwrap();
    let e = next_event(&mut alice_events, is_message).await;
    assert_eq!(received_text(&e), Some(("bob", "hello alice")));

    // Restart the server and both clients.
    alice.close();
    bob.close();
    drop((alice, bob, alice_dm, bob_dm));
    server.shutdown().await.unwrap();
    let server = start_server(server_dir.path()).await;

    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    alice.login("alice", b"alice pw").await.unwrap();
    bob.login("bob", b"bob pw").await.unwrap();

    let alice_dm = alice.dm("bob").await.unwrap();
    let bob_dm = bob.dm("alice").await.unwrap();
    assert_eq!(alice_dm.id(), bob_dm.id(), "same MLS group after the restart");
    assert_eq!(alice_dm.messages(10).unwrap().len(), 2, "history survived on disk");

    alice_dm.send_text("still there?").await.unwrap();
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "still there?")));
    bob_dm.send_text("yes, same group").await.unwrap();
    let e = next_event(&mut alice_events, is_message).await;
    assert_eq!(received_text(&e), Some(("bob", "yes, same group")));

    // Nothing was delivered twice.
    let history = bob_dm.messages(100).unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["hello bob", "hello alice", "still there?", "yes, same group"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_password_and_offline_delivery() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await;
    let alice_dir = tempfile::tempdir().unwrap();
    let bob_dir = tempfile::tempdir().unwrap();

    let alice = client(&server, alice_dir.path()).await;
    alice.register("alice", b"pw-a").await.unwrap();
    let bob = client(&server, bob_dir.path()).await;
    bob.register("bob", b"pw-b").await.unwrap();
    bob.close();
    drop(bob);

    // bob is offline: alice's DM and messages wait in his queue.
    let dm = alice.dm("bob").await.unwrap();
    dm.send_text("while you were away").await.unwrap();

    let intruder_dir = tempfile::tempdir().unwrap();
    let intruder = client(&server, intruder_dir.path()).await;
    assert!(matches!(intruder.login("bob", b"not bob's").await, Err(SdkError::InvalidCredentials)));

    let bob = client(&server, bob_dir.path()).await;
    let mut events = bob.subscribe();
    bob.login("bob", b"pw-b").await.unwrap();
    let e = next_event(&mut events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "while you were away")));

    let taken_dir = tempfile::tempdir().unwrap();
    let taken = client(&server, taken_dir.path()).await;
    assert!(matches!(taken.register("alice", b"x").await, Err(SdkError::UsernameTaken)));

    // The local account file is sealed with the password: a wrong one is refused locally.
    let bob_again = client(&server, bob_dir.path()).await;
    assert!(matches!(bob_again.login("bob", b"wrong").await, Err(SdkError::LocalAccountLocked(_))));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn key_package_pool_is_refilled_on_key_packages_low() {
    let server_dir = tempfile::tempdir().unwrap();
    // Thirteen registrations (each a RegisterStart and a LoginStart) from one address in a few
    // seconds: more than the default per-address auth burst allows on a fast machine.
    let server = start_server_with(server_dir.path(), |c| {
        c.limits.auth_rate = quicprochat_server::Rate { per_minute: 6000, burst: 200 };
    })
    .await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = client(&server, bob_dir.path()).await;
    bob.register("bob", b"pw").await.unwrap();
    let pool = || -> i64 {
        let db = rusqlite::Connection::open(server_dir.path().join(quicprochat_server::files::DATABASE)).unwrap();
        db.query_row("SELECT COUNT(*) FROM key_packages WHERE last_resort = 0", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(pool(), 20);

    let mut bob_events = bob.subscribe();
    let mut dirs = Vec::new();
    for i in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let friend = client(&server, dir.path()).await;
        friend.register(&format!("friend{i}"), b"pw").await.unwrap();
        friend.dm("bob").await.unwrap();
        next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
        friend.close();
        dirs.push(dir);
    }
    // 12 claimed from 20: the claim that left 9 pushed KeyPackagesLow and bob refilled.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while pool() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "pool was not refilled: {}", pool());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(bob.conversations().unwrap().len(), 12);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn clients_reconnect_by_themselves_after_a_server_restart() {
    let server_dir = tempfile::tempdir().unwrap();
    let alice_dir = tempfile::tempdir().unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await;
    let addr = server.local_addr();
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    let dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;

    server.shutdown().await.unwrap();
    next_event(&mut alice_events, |e| matches!(e, ClientEvent::ConnectionLost { .. })).await;
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConnectionLost { .. })).await;

    // Same address, same data: the clients find it again on their own.
    let config = quicprochat_server::ServerConfig::new(addr, server_dir.path());
    let server = quicprochat_server::start(config).await.unwrap();
    next_event(&mut alice_events, |e| matches!(e, ClientEvent::Reconnected)).await;
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::Reconnected)).await;

    dm.send_text("after the restart").await.unwrap();
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "after the restart")));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn safety_numbers_match_rotation_keeps_talking_and_accounts_delete() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await;
    let alice_dir = tempfile::tempdir().unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    assert!(matches!(alice.safety_number("bob"), Err(SdkError::NoSharedConversation(_))));
    let dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;

    let from_alice = alice.safety_number("bob").unwrap();
    let from_bob = bob.safety_number("alice").unwrap();
    assert_eq!(from_alice, from_bob, "both sides see the same number");
    assert_eq!(from_alice.split(' ').count(), 12);
    assert!(from_alice.split(' ').all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));

    let before = dm.epoch().unwrap();
    let after = dm.rotate_key().await.unwrap();
    assert_eq!(after, before + 1);
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::EpochChanged { epoch, .. } if *epoch == after)).await;
    dm.send_text("new keys").await.unwrap();
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "new keys")));

    alice.delete_account().await.unwrap();
    assert!(!alice_dir.path().exists(), "local state is wiped");
    let again_dir = tempfile::tempdir().unwrap();
    let again = client(&server, again_dir.path()).await;
    assert!(matches!(again.login("alice", b"a").await, Err(SdkError::InvalidCredentials)));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_five_megabyte_file_round_trips() {
    let server_dir = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await;
    let (alice_dir, bob_dir, files) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    let dm = alice.dm("bob").await.unwrap();

    let original: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let path = files.path().join("holiday.bin");
    std::fs::write(&path, &original).unwrap();
    let calls = std::sync::Mutex::new(Vec::new());
    dm.send_file(&path, |sent, total| calls.lock().unwrap().push((sent, total))).await.unwrap();
    let calls = calls.into_inner().unwrap();
    assert!(calls.len() > 10, "progress reported per chunk");
    assert_eq!(calls.last().map(|c| c.0), calls.last().map(|c| c.1), "ends at 100 %");

    let e = next_event(&mut bob_events, is_message).await;
    let ClientEvent::MessageReceived { message, .. } = e else { unreachable!() };
    let attachment = message.attachment.clone().unwrap();
    assert_eq!((attachment.name.as_str(), attachment.size), ("holiday.bin", original.len() as u64));
    // The server holds one complete blob, and only ciphertext: no 64-byte run of the file is in it.
    let db = rusqlite::Connection::open_with_flags(
        server_dir.path().join(quicprochat_server::files::DATABASE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let complete: i64 = db.query_row("SELECT COUNT(*) FROM blobs WHERE complete = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(complete, 1);
    let mut chunks = db.prepare("SELECT data FROM blob_chunks ORDER BY byte_offset").unwrap();
    let stored: Vec<u8> = chunks.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap().flat_map(|c| c.unwrap()).collect();
    assert!(stored.len() > original.len(), "ciphertext with its tag");
    assert!(!stored.windows(64).any(|w| w == &original[..64]), "the plaintext reached the server");

    let out = tempfile::tempdir().unwrap();
    let saved = bob.download_file(message.id, out.path(), |_, _| {}).await.unwrap();
    assert_eq!(saved, out.path().join("holiday.bin"));
    let got = std::fs::read(&saved).unwrap();
    assert!(got == original, "the file round-trips byte for byte");
    let again = bob.download_file(message.id, out.path(), |_, _| {}).await.unwrap();
    assert_eq!(again, out.path().join("holiday.bin (2)"), "never overwrites");
    let text_only = dm.send_text("no file here").await.unwrap();
    assert!(matches!(alice.download_file(text_only, out.path(), |_, _| {}).await, Err(SdkError::NoAttachment)));
    server.shutdown().await.unwrap();
}

/// A server, alice, and bob, registered, with every push bob's connection gets lost from then
/// on: only his long-poll (after `push_quiet` without a push) and his explicit syncs read his
/// queue. The directories go when the returned array is dropped: keep it to the end.
async fn alice_and_deaf_bob(
    push_quiet: std::time::Duration,
) -> (
    quicprochat_server::RunningServer,
    quicprochat_sdk::QpcClient,
    quicprochat_sdk::QpcClient,
    tokio::sync::broadcast::Receiver<ClientEvent>,
    [tempfile::TempDir; 3],
) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Room to fill more than one page of bob's queue at once.
    let server = start_server_with(dirs[0].path(), |c| {
        c.limits.enqueue_rate = quicprochat_server::Rate { per_minute: 6000, burst: 200 };
    })
    .await;
    let alice = client(&server, dirs[1].path()).await;
    let bob = client_with(&server, dirs[2].path(), |c| c.push_quiet = push_quiet).await;
    let bob_events = bob.subscribe();
    alice.register("alice", b"a").await.unwrap();
    bob.register("bob", b"b").await.unwrap();
    bob.ignore_push_for_tests();
    (server, alice, bob, bob_events, dirs)
}

#[tokio::test]
async fn messages_arrive_by_long_poll_when_push_notifications_are_lost() {
    let (server, alice, _bob, mut bob_events, _dirs) = alice_and_deaf_bob(std::time::Duration::from_millis(200)).await;
    let dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    dm.send_text("found by the long-poll").await.unwrap();
    let e = next_event(&mut bob_events, is_message).await;
    assert_eq!(received_text(&e), Some(("alice", "found by the long-poll")));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sync_pass_stops_at_the_end_of_the_queue_as_it_read_it() {
    // No long-poll during the test: only the explicit syncs below read bob's queue.
    let (server, alice, bob, mut bob_events, _dirs) = alice_and_deaf_bob(std::time::Duration::from_secs(3600)).await;
    let dm = alice.dm("bob").await.unwrap();
    for text in ["one", "two", "three"] {
        dm.send_text(text).await.unwrap();
    }

    let before = bob.pages_read_for_tests();
    assert_eq!(bob.sync().await.unwrap(), 4, "the welcome and three messages");
    assert_eq!(bob.pages_read_for_tests() - before, 1, "a short page is the end: no second Peek to find it empty");
    for text in ["one", "two", "three"] {
        let e = next_event(&mut bob_events, is_message).await;
        assert_eq!(received_text(&e), Some(("alice", text)));
    }

    assert_eq!(bob.sync().await.unwrap(), 0);
    assert_eq!(bob.pages_read_for_tests() - before, 2, "an empty queue costs one Peek");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sync_pass_reads_on_while_a_page_stops_short_of_the_end() {
    let (server, alice, bob, _bob_events, _dirs) = alice_and_deaf_bob(std::time::Duration::from_secs(3600)).await;
    let dm = alice.dm("bob").await.unwrap();
    for i in 0..120 {
        dm.send_text(&format!("m{i}")).await.unwrap();
    }
    let before = bob.pages_read_for_tests();
    assert_eq!(bob.sync().await.unwrap(), 121, "the welcome and 120 messages");
    assert_eq!(bob.pages_read_for_tests() - before, 2, "a full page of 100, then the rest, which ends the queue");
    assert_eq!(bob.conversations().unwrap()[0].unread, 120);
    server.shutdown().await.unwrap();
}
