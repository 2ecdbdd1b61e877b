//! Two `qpc-server` processes on one PostgreSQL database, as an operator runs them: alice on
//! node A and bob on node B chat by push; node A is killed with SIGKILL while alice is sending;
//! alice moves to node B and nothing that was acknowledged is lost or duplicated.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::{PushStream, RpcClient, ServerTrust};

use crate::harness::{dm_with, login, private, register, register_device_as, test_identity};
use crate::pg::PgSchema;

const WAIT: Duration = Duration::from_secs(20);

/// Messages alice sends while node A goes away.
const TOTAL: usize = 40;

/// A `qpc-server` process; killed (SIGKILL) when dropped, so a failing test leaves none behind.
struct Node {
    child: Child,
    addr: SocketAddr,
    cert: Vec<u8>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts `qpc-server --store postgres` on a free port with its own data dir, and waits
    /// (bounded) until it answers.
    async fn spawn(db_url: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Generous limits: this test is about failover, not throttling.
        let config = dir.path().join("qpc-server.toml");
        std::fs::write(
            &config,
            "[limits]\nenqueue_per_minute = 100000\nenqueue_burst = 10000\nauth_per_minute = 10000\nauth_burst = 1000\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_qpc-server"))
            .arg("--config")
            .arg(&config)
            .args(["--listen", &addr.to_string(), "--store", "postgres"])
            .arg("--data-dir")
            .arg(dir.path())
            .env("QPC_DB_URL", db_url)
            .env("QPC_LOG", "info")
            .current_dir(dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        // Owned at once, so it is killed whatever happens next.
        let mut node = Node { child, addr, cert: Vec::new(), dir };
        let cert_path = node.dir.path().join(quicprochat_server::files::DEV_CERT);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(cert) = std::fs::read(&cert_path) {
                node.cert = cert;
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "qpc-server wrote no certificate: {}", node.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            // Read again: the first read may have caught the file half written.
            if let Ok(cert) = std::fs::read(&cert_path) {
                node.cert = cert;
            }
            let connected = tokio::time::timeout(Duration::from_secs(2), node.try_client()).await;
            if let Ok(Ok(rpc)) = connected
                && rpc.call::<_, v1::HealthResponse>(method::HEALTH, &v1::HealthRequest {}).await.is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("qpc-server exited with {status}: {}", node.log());
            }
            assert!(tokio::time::Instant::now() < deadline, "qpc-server did not come up: {}", node.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    async fn try_client(&self) -> Result<RpcClient, quicprochat_rpc::Error> {
        let tls = quicprochat_rpc::tls::client_config(&ServerTrust::Pinned(self.cert.clone())).unwrap();
        RpcClient::connect(self.addr, "localhost", tls).await
    }

    async fn client(&self) -> RpcClient {
        self.try_client().await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no drain, no goodbye.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(i: usize) -> Vec<u8> {
    private(format!("m{i}").as_bytes())
}

fn app(channel: &Bytes, payload: Vec<u8>, key: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: Some(v1::Envelope { kind: v1::EnvelopeKind::Application as i32, epoch: 1, payload: payload.into() }),
        idempotency_key: Bytes::copy_from_slice(key),
        ..Default::default()
    }
}

/// The next pushed message notification: its seq and inline payload.
async fn next_message(stream: &mut PushStream) -> (u64, Vec<u8>) {
    let frame = tokio::time::timeout(WAIT, stream.next()).await.expect("no push arrived").unwrap().unwrap();
    assert_eq!(frame.event_type, event::MESSAGE_NOTIFICATION);
    let note = v1::MessageNotification::decode(frame.payload).unwrap();
    (note.seq, note.envelope.unwrap().envelope.unwrap().payload.to_vec())
}

async fn peek(rpc: &RpcClient, after_seq: u64) -> Vec<(u64, Vec<u8>)> {
    let page: v1::PeekResponse =
        rpc.call(method::PEEK, &v1::PeekRequest { after_seq, limit: 1000, max_bytes: 0 }).await.unwrap();
    page.envelopes.into_iter().map(|e| (e.seq, e.envelope.unwrap().payload.to_vec())).collect()
}

/// Registers `name` on `rpc`, logs in and binds the test device; returns the session token.
async fn sign_up(rpc: &RpcClient, name: &str) -> Vec<u8> {
    register(rpc, name, b"pw").await;
    let token = login(rpc, name, b"pw").await.unwrap();
    register_device_as(rpc, &token, test_identity(name)).await;
    let _: v1::SubscribeResponse = rpc.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_survive_sigkill_of_one_mid_conversation() {
    let Some(schema) = PgSchema::fresh("two_server_processes_survive_sigkill_of_one_mid_conversation").await else {
        return;
    };
    // The binary takes the schema from the connection's search path.
    schema.client().await.batch_execute(&format!("CREATE SCHEMA {}", schema.schema)).await.unwrap();
    let separator = if schema.url.contains('?') { '&' } else { '?' };
    let db_url = format!("{}{separator}options=-c%20search_path%3D{}", schema.url, schema.schema);
    let mut node_a = Node::spawn(&db_url).await;
    let node_b = Node::spawn(&db_url).await;

    let alice = node_a.client().await;
    let alice_token = sign_up(&alice, "alice").await;
    let bob = node_b.client().await;
    sign_up(&bob, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;

    // The welcome crosses from A to B by push; bob replies, alice gets it on A and acks it.
    let mut bob_push = tokio::time::timeout(WAIT, bob.accept_push()).await.unwrap().unwrap();
    let (welcome_seq, _) = next_message(&mut bob_push).await;
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &app(&channel, private(b"r1"), b"r1")).await.unwrap();
    let mut alice_push = tokio::time::timeout(WAIT, alice.accept_push()).await.unwrap().unwrap();
    let (r1_seq, r1) = next_message(&mut alice_push).await;
    assert_eq!(r1, private(b"r1"));
    let _: v1::AckResponse = alice.call(method::ACK, &v1::AckRequest { up_to_seq: r1_seq }).await.unwrap();

    // Alice keeps sending on A; each send waits for its answer, and stops at the first one
    // that gets none. Half-way she waits for the kill, so however slow the machine, A dies
    // while the conversation goes on.
    let (killed, mut kill_seen) = tokio::sync::watch::channel(false);
    let sender = {
        let (alice, channel) = (alice.clone(), channel.clone());
        tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0..TOTAL {
                if i == TOTAL / 2 {
                    let _ = kill_seen.wait_for(|killed| *killed).await;
                }
                let request = app(&channel, text(i), format!("k{i}").as_bytes());
                let call = alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &request);
                match tokio::time::timeout(Duration::from_secs(3), call).await {
                    Ok(Ok(accepted)) => answered.push(accepted.envelope_id),
                    _ => return answered,
                }
                // Pacing, so that the kill lands mid-conversation.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            answered
        })
    };
    let mut pushed = Vec::new();
    while pushed.len() < 5 {
        pushed.push(next_message(&mut bob_push).await);
    }
    node_a.kill();
    let _ = killed.send(true);
    let answered = tokio::time::timeout(WAIT, sender).await.expect("the sender never gave up").unwrap();
    // Five were pushed to bob, so at least four were answered (the fifth answer may have been
    // cut off by the kill); at most half of them before it.
    assert!((4..=TOTAL / 2).contains(&answered.len()), "killed mid-conversation: {} answered", answered.len());

    // While alice is offline bob replies again.
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &app(&channel, private(b"r2"), b"r2")).await.unwrap();

    // Alice reconnects to B, resumes her session and sends again everything that got no answer,
    // with the same idempotency keys (the first may have been stored before A died).
    let alice = node_b.client().await;
    let _: v1::ResumeResponse =
        alice.call(method::RESUME, &v1::ResumeRequest { session_token: alice_token.into() }).await.unwrap();
    let _: v1::SubscribeResponse = alice.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
    for i in answered.len()..TOTAL {
        let request = app(&channel, text(i), format!("k{i}").as_bytes());
        let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &request).await.unwrap();
    }
    // A retry of something answered on A gets A's answer.
    let again: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, text(0), b"k0")).await.unwrap();
    assert_eq!(again.envelope_id.as_ref(), answered[0].as_ref());

    // Alice's queue: what she acked on A is gone, what bob sent meanwhile is there, once.
    let waiting = peek(&alice, 0).await;
    assert_eq!(waiting.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), vec![private(b"r2")]);
    let _: v1::AckResponse = alice.call(method::ACK, &v1::AckRequest { up_to_seq: waiting[0].0 }).await.unwrap();
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &app(&channel, private(b"r3"), b"r3")).await.unwrap();
    let mut alice_push = tokio::time::timeout(WAIT, alice.accept_push()).await.unwrap().unwrap();
    assert_eq!(next_message(&mut alice_push).await.1, private(b"r3"));

    // Bob: every message alice sent is in his queue exactly once and in order, and reached him
    // by push (from A before it died, from B after), never twice.
    while pushed.len() < TOTAL {
        pushed.push(next_message(&mut bob_push).await);
    }
    let expected: Vec<Vec<u8>> = (0..TOTAL).map(text).collect();
    assert_eq!(pushed.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), expected);
    let queue = peek(&bob, welcome_seq).await;
    assert_eq!(queue, pushed, "the queue holds what was pushed, once each");
    let _: v1::AckResponse =
        bob.call(method::ACK, &v1::AckRequest { up_to_seq: queue.last().unwrap().0 }).await.unwrap();
    assert!(peek(&bob, 0).await.is_empty());
    // No stray push of a duplicate is pending either.
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, private(b"end"), b"end")).await.unwrap();
    assert_eq!(next_message(&mut bob_push).await.1, private(b"end"));
}
