//! Two server nodes on one PostgreSQL database: shared secrets, cross-node push and long-poll,
//! and a client moving to the surviving node when its node goes away.

use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::{PushStream, RpcClient};
use quicprochat_server::ServerConfig;
use quicprochat_server::store::StoreBackend;

use crate::harness::{TestServer, dm_with, private, user};
use crate::pg::PgSchema;

const WAIT: Duration = Duration::from_secs(10);

async fn node(schema: &PgSchema) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.store = StoreBackend::Postgres(schema.options());
    TestServer { server: quicprochat_server::start(config).await.unwrap(), dir }
}

fn app(channel: &Bytes, payload: &[u8], key: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: Some(v1::Envelope {
            kind: v1::EnvelopeKind::Application as i32,
            epoch: 1,
            payload: private(payload).into(),
        }),
        idempotency_key: Bytes::copy_from_slice(key),
        ..Default::default()
    }
}

async fn pushed(stream: &mut PushStream) -> Vec<u8> {
    let frame = tokio::time::timeout(WAIT, stream.next()).await.expect("no push arrived").unwrap().unwrap();
    assert_eq!(frame.event_type, event::MESSAGE_NOTIFICATION);
    let note = v1::MessageNotification::decode(frame.payload).unwrap();
    note.envelope.unwrap().envelope.unwrap().payload.to_vec()
}

async fn subscribe(rpc: &RpcClient) {
    let _: v1::SubscribeResponse = rpc.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
}

async fn signing_key(rpc: &RpcClient) -> Bytes {
    let info: v1::ServerInfoResponse = rpc.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
    info.signing_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_chat_by_push_and_survive_losing_one() {
    let Some(schema) = PgSchema::fresh("two_nodes_on_one_database_chat_by_push_and_survive_losing_one").await else {
        return;
    };
    let (a, b) = (node(&schema).await, node(&schema).await);
    let (alice, alice_token, _) = user(&a, "alice").await;
    let (bob, _, _) = user(&b, "bob").await;
    assert_eq!(signing_key(&alice).await, signing_key(&bob).await, "one delivery-proof key for the cluster");

    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    subscribe(&alice).await;
    subscribe(&bob).await;
    let welcome: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert_eq!(welcome.envelopes.len(), 1, "the welcome enqueued on node A is in bob's queue on node B");

    // Alice on A, bob on B, by push both ways.
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"m1", b"k1")).await.unwrap();
    let mut bob_push = tokio::time::timeout(WAIT, bob.accept_push()).await.unwrap().unwrap();
    assert_eq!(pushed(&mut bob_push).await, private(b"m1"));
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"m2", b"k2")).await.unwrap();
    assert_eq!(pushed(&mut bob_push).await, private(b"m2"));
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &app(&channel, b"r1", b"")).await.unwrap();
    let mut alice_push = tokio::time::timeout(WAIT, alice.accept_push()).await.unwrap().unwrap();
    assert_eq!(pushed(&mut alice_push).await, private(b"r1"));

    // A long-poll on B is woken by an enqueue on A.
    let after = welcome.envelopes[0].seq + 2;
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.call::<_, v1::PeekResponse>(
                method::FETCH_WAIT,
                &v1::FetchWaitRequest { after_seq: after, limit: 10, timeout_ms: 20_000 },
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"m3", b"k3")).await.unwrap();
    let woke = tokio::time::timeout(WAIT, waiter).await.expect("the long-poll on B was not woken").unwrap().unwrap();
    assert_eq!(woke.envelopes[0].envelope.as_ref().unwrap().payload.to_vec(), private(b"m3"));
    assert_eq!(pushed(&mut bob_push).await, private(b"m3"));

    // Node A goes away mid-conversation; alice resumes her session on B, logs in there with her
    // password, and retries her last send (its answer "was lost") before sending on.
    let TestServer { server: node_a, dir: _dir_a } = a;
    node_a.shutdown().await.unwrap();
    let alice = b.client().await;
    let _: v1::ResumeResponse =
        alice.call(method::RESUME, &v1::ResumeRequest { session_token: alice_token.into() }).await.unwrap();
    crate::harness::login(&b.client().await, "alice", b"pw").await.expect("OPAQUE setup shared by the nodes");
    let retried: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"m3", b"k3")).await.unwrap();
    let m4: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"m4", b"k4")).await.unwrap();
    assert_eq!(pushed(&mut bob_push).await, private(b"m4"), "the retry was not delivered again");
    assert_ne!(retried.envelope_id, m4.envelope_id);

    // Everything bob was sent is in his queue once, in order.
    let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    let got: Vec<Vec<u8>> = page.envelopes[1..].iter().map(|e| e.envelope.as_ref().unwrap().payload.to_vec()).collect();
    assert_eq!(got, vec![private(b"m1"), private(b"m2"), private(b"m3"), private(b"m4")]);
    let _: v1::AckResponse =
        bob.call(method::ACK, &v1::AckRequest { up_to_seq: page.envelopes.last().unwrap().seq }).await.unwrap();
    let after: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert!(after.envelopes.is_empty());
    b.server.shutdown().await.unwrap();
}
