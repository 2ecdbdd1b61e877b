//! A client process killed (SIGKILL) in the middle of sending, then restarted on the same state
//! dir: every message it queued reaches the peer exactly once and in order.
//!
//! The sender is this test binary run again as a child process (the ignored test
//! `killed::child_sender`, driven by environment variables), so the kill is a real one: no
//! destructor, no flush, mid-transaction or mid-RPC wherever it lands.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use quicprochat_sdk::{ClientConfig, ClientEvent, KdfStrength, QpcClient, Trust};

use crate::{client, next_event, start_server};

const ENV_ADDR: &str = "QPC_TEST_CHILD_SERVER";
const ENV_CERT: &str = "QPC_TEST_CHILD_CERT";
const ENV_STATE: &str = "QPC_TEST_CHILD_STATE";
/// Messages the child sends (it is killed long before the end).
const MESSAGES: usize = 1000;

fn text(i: usize) -> String {
    format!("message {i:04}")
}

/// The child: logs in as alice and sends numbered messages to bob, printing each one's number
/// once `send_text` returned.
#[tokio::test]
#[ignore = "run as a child process by killed::a_client_killed_mid_send_delivers_each_message_once"]
async fn child_sender() {
    let (Ok(addr), Ok(cert), Ok(state)) = (std::env::var(ENV_ADDR), std::env::var(ENV_CERT), std::env::var(ENV_STATE))
    else {
        return;
    };
    let cert = std::fs::read(cert).unwrap();
    let mut config = ClientConfig::new(addr.parse().unwrap(), Trust::PinnedCertificate(cert), state);
    config.kdf = KdfStrength::InsecureTestOnly;
    let alice = QpcClient::connect(config).await.unwrap();
    alice.login("alice", b"a").await.unwrap();
    let dm = alice.find_conversation("bob").unwrap().unwrap();
    for i in 0..MESSAGES {
        dm.send_text(&text(i)).await.unwrap();
        println!("sent {i}");
    }
}

#[tokio::test]
async fn a_client_killed_mid_send_delivers_each_message_once() {
    let server_dir = tempfile::tempdir().unwrap();
    let (alice_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_server(server_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut bob_events = bob.subscribe();
    bob.register("bob", b"b").await.unwrap();
    {
        let alice = client(&server, alice_dir.path()).await;
        alice.register("alice", b"a").await.unwrap();
        alice.dm("bob").await.unwrap();
        alice.close();
    }
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;

    let cert = server_dir.path().join("pinned.der");
    std::fs::write(&cert, server.certificate_der()).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed::child_sender", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ENV_ADDR, server.local_addr().to_string())
        .env(ENV_CERT, &cert)
        .env(ENV_STATE, alice_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Let it get well into sending, then kill it without warning. (Read on a blocking thread:
    // the server runs on this test's runtime.)
    let last_sent = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last_sent = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(n) = line.strip_prefix("sent ") {
                last_sent = Some(n.trim().parse::<usize>().unwrap());
                if last_sent >= Some(20) {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        last_sent
    })
    .await
    .unwrap();
    let last_sent = last_sent.expect("the child sent nothing");

    // Restarted on the same state dir: whatever was queued goes out.
    let alice = client(&server, alice_dir.path()).await;
    alice.login("alice", b"a").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while alice.pending_sends().unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A marker after everything the killed process queued: once bob has it, he has the rest.
    let dm = alice.find_conversation("bob").unwrap().unwrap();
    dm.send_text("after the restart").await.unwrap();
    next_event(
        &mut bob_events,
        |e| matches!(e, ClientEvent::MessageReceived { message, .. } if message.text == "after the restart"),
    )
    .await;

    let bob_dm = bob.find_conversation("alice").unwrap().unwrap();
    let texts: Vec<String> = bob_dm.messages(10_000).unwrap().into_iter().map(|m| m.text).collect();
    let (marker, sent) = texts.split_last().unwrap();
    assert_eq!(marker, "after the restart");
    // Every message whose send returned arrived; at most the ones in flight at the kill after
    // it; each exactly once, in order.
    assert!(sent.len() > last_sent, "{} delivered, but {} were sent", sent.len(), last_sent + 1);
    let expected: Vec<String> = (0..sent.len()).map(text).collect();
    assert_eq!(sent, expected.as_slice(), "lost, duplicated or reordered");
    server.shutdown().await.unwrap();
}
