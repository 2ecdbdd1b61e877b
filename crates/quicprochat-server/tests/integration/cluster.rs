//! Two server nodes on one PostgreSQL database: shared secrets, cross-node push (one device and a
//! group's) and long-poll,
//! a client moving to the surviving node when its node goes away, revocations, events and
//! ephemeral envelopes crossing nodes, rate limits shared by the nodes, and blobs uploaded through
//! one node downloaded through the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::{PushStream, RpcClient, Status};
use quicprochat_server::middleware::SESSION_RECHECK_MS;
use quicprochat_server::store::StoreBackend;
use quicprochat_server::{Clock, Rate, ServerConfig};
use sha2::{Digest, Sha256};

use crate::harness::{TestServer, dm_with, group_with, keyed_app, member, private, register_device, user};
use crate::pg::PgSchema;

const WAIT: Duration = Duration::from_secs(10);

async fn node(schema: &PgSchema) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.store = StoreBackend::Postgres(schema.options());
    TestServer { server: quicprochat_server::start(config).await.unwrap(), dir }
}

/// The payload of the next pushed message that is not a Welcome: a Welcome enqueued on the other
/// node before this device subscribed may still be announced, late, by the cross-node bus.
async fn pushed(stream: &mut PushStream) -> Vec<u8> {
    loop {
        let frame = tokio::time::timeout(WAIT, stream.next()).await.expect("no push arrived").unwrap().unwrap();
        assert_eq!(frame.event_type, event::MESSAGE_NOTIFICATION);
        let note = v1::MessageNotification::decode(frame.payload).unwrap();
        let envelope = note.envelope.unwrap().envelope.unwrap();
        if envelope.kind != v1::EnvelopeKind::Welcome as i32 {
            return envelope.payload.to_vec();
        }
    }
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
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &keyed_app(&channel, b"m1", b"k1")).await.unwrap();
    let mut bob_push = tokio::time::timeout(WAIT, bob.accept_push()).await.unwrap().unwrap();
    assert_eq!(pushed(&mut bob_push).await, private(b"m1"));
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &keyed_app(&channel, b"m2", b"k2")).await.unwrap();
    assert_eq!(pushed(&mut bob_push).await, private(b"m2"));
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &keyed_app(&channel, b"r1", b"")).await.unwrap();
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
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &keyed_app(&channel, b"m3", b"k3")).await.unwrap();
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
    let retried: v1::EnqueueResponse = alice.call(method::ENQUEUE, &keyed_app(&channel, b"m3", b"k3")).await.unwrap();
    let m4: v1::EnqueueResponse = alice.call(method::ENQUEUE, &keyed_app(&channel, b"m4", b"k4")).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_sent_on_one_node_is_pushed_to_every_member_on_the_other() {
    let Some(schema) = PgSchema::fresh("a_group_message_sent_on_one_node_is_pushed_to_every_member_on_the_other").await
    else {
        return;
    };
    let (a, b) = (node(&schema).await, node(&schema).await);
    let (alice, _, _) = user(&a, "alice").await;
    let mut members = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let (rpc, _, _) = user(&b, name).await;
        subscribe(&rpc).await;
        members.push(rpc);
    }
    let (channel, _mls) = group_with(&alice, "alice", &[member("bob"), member("carol"), member("dave")]).await;
    // One announcement names all three of B's devices; B reads the entries back and pushes each.
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &keyed_app(&channel, b"to all", b"k1")).await.unwrap();
    for rpc in &members {
        let mut push = tokio::time::timeout(WAIT, rpc.accept_push()).await.unwrap().unwrap();
        assert_eq!(pushed(&mut push).await, private(b"to all"));
    }
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

async fn node_with(schema: &PgSchema, tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
    config.store = StoreBackend::Postgres(schema.options());
    tune(&mut config);
    TestServer { server: quicprochat_server::start(config).await.unwrap(), dir }
}

/// The status of an authenticated call that needs only a session.
async fn list_devices(rpc: &RpcClient) -> Status {
    rpc.call_raw(method::LIST_DEVICES, &[]).await.unwrap().0
}

/// Waits (bounded) until `rpc`'s session is refused: the revocation made on the other node
/// has reached this one.
async fn refused_soon(rpc: &RpcClient) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match list_devices(rpc).await {
            Status::Ok => {}
            Status::Unauthenticated => break,
            other => panic!("unexpected status {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the revocation never reached the other node");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Unbound: it stays refused.
    assert_eq!(list_devices(rpc).await, Status::Unauthenticated);
}

async fn resumed(server: &TestServer, token: &[u8]) -> RpcClient {
    let rpc = server.client().await;
    let _: v1::ResumeResponse =
        rpc.call(method::RESUME, &v1::ResumeRequest { session_token: Bytes::copy_from_slice(token) }).await.unwrap();
    rpc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revoke_and_deletion_on_one_node_unbind_sessions_on_the_other() {
    let Some(schema) = PgSchema::fresh("logout_revoke_and_deletion_on_one_node_unbind_sessions_on_the_other").await
    else {
        return;
    };
    let (a, b) = (node(&schema).await, node(&schema).await);

    // Logout on A ends the same session bound on B.
    let (alice_a, token, _) = user(&a, "alice").await;
    let alice_b = resumed(&b, &token).await;
    assert_eq!(list_devices(&alice_b).await, Status::Ok);
    let _: v1::LogoutResponse = alice_a.call(method::LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    refused_soon(&alice_b).await;

    // A device revoked on A loses its session and its pushes on B.
    let phone = b.client().await;
    let phone_token = crate::harness::login(&phone, "alice", b"pw").await.unwrap();
    let (_, phone_device) = register_device(&phone, &phone_token).await;
    subscribe(&phone).await;
    let laptop = a.client().await;
    crate::harness::login(&laptop, "alice", b"pw").await.unwrap();
    assert_eq!(list_devices(&phone).await, Status::Ok);
    let _: v1::RevokeDeviceResponse =
        laptop.call(method::REVOKE_DEVICE, &v1::RevokeDeviceRequest { device_id: phone_device.into() }).await.unwrap();
    refused_soon(&phone).await;

    // Deleting the account on A ends its sessions on B.
    let tablet = b.client().await;
    crate::harness::login(&tablet, "alice", b"pw").await.unwrap();
    assert_eq!(list_devices(&tablet).await, Status::Ok);
    let _: v1::DeleteAccountResponse = laptop.call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await.unwrap();
    refused_soon(&tablet).await;
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_whose_announcement_was_lost_ends_the_session_at_the_next_recheck() {
    let Some(schema) =
        PgSchema::fresh("a_revocation_whose_announcement_was_lost_ends_the_session_at_the_next_recheck").await
    else {
        return;
    };
    let now = Arc::new(AtomicU64::new(Clock::system().now_ms()));
    let b = node_with(&schema, |c| c.clock = Clock::manual(Arc::clone(&now))).await;
    let (alice, token, _) = user(&b, "alice").await;
    assert_eq!(list_devices(&alice).await, Status::Ok);
    // The session goes from the database with no announcement (as if the node's bus connection
    // was down when another node revoked it).
    let hash: [u8; 32] = Sha256::digest(&token).into();
    let removed =
        schema.client().await.execute("DELETE FROM sessions WHERE token_hash = $1", &[&hash.as_slice()]).await.unwrap();
    assert_eq!(removed, 1);
    assert_eq!(list_devices(&alice).await, Status::Ok, "not re-read on every call");
    now.fetch_add(SESSION_RECHECK_MS, Ordering::SeqCst);
    assert_eq!(list_devices(&alice).await, Status::Unauthenticated, "re-read after the recheck period");
    assert_eq!(list_devices(&alice).await, Status::Unauthenticated);
    b.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_low_and_typing_reach_a_device_on_the_other_node() {
    let Some(schema) = PgSchema::fresh("key_packages_low_and_typing_reach_a_device_on_the_other_node").await else {
        return;
    };
    let (a, b) = (node(&schema).await, node(&schema).await);
    let (bob, _, _) = user(&b, "bob").await;
    subscribe(&bob).await;
    let _: v1::UploadKeyPackagesResponse = bob
        .call(
            method::UPLOAD_KEY_PACKAGES,
            &v1::UploadKeyPackagesRequest {
                key_packages: vec![Bytes::from_static(b"one")],
                last_resort: Bytes::from_static(b"last"),
            },
        )
        .await
        .unwrap();
    let (alice, _, _) = user(&a, "alice").await;
    let _: v1::FetchKeyPackagesResponse =
        alice.call(method::FETCH_KEY_PACKAGES, &v1::FetchKeyPackagesRequest { username: "bob".into() }).await.unwrap();
    let mut push = tokio::time::timeout(WAIT, bob.accept_push()).await.unwrap().unwrap();
    let frame = tokio::time::timeout(WAIT, push.next()).await.expect("no KeyPackagesLow").unwrap().unwrap();
    assert_eq!(frame.event_type, event::KEY_PACKAGES_LOW);
    assert_eq!(frame.decode::<v1::KeyPackagesLow>().unwrap().pool_size, 0);

    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let welcome = tokio::time::timeout(WAIT, push.next()).await.expect("no welcome").unwrap().unwrap();
    assert!(v1::MessageNotification::decode(welcome.payload).unwrap().seq > 0);
    let mut typing = keyed_app(&channel, b"typing", b"");
    typing.ephemeral = true;
    let sent: v1::EnqueueResponse = alice.call(method::ENQUEUE, &typing).await.unwrap();
    assert_eq!(sent.seq, 0);
    let frame =
        tokio::time::timeout(WAIT, push.next()).await.expect("the typing envelope did not cross").unwrap().unwrap();
    let note = v1::MessageNotification::decode(frame.payload).unwrap();
    assert_eq!(note.seq, 0, "ephemeral: never stored");
    assert_eq!(note.envelope.unwrap().envelope.unwrap().payload.to_vec(), private(b"typing"));
    let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert_eq!(page.envelopes.len(), 1, "only the welcome is stored");
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_together_do_not_exceed_one_rate_limit() {
    let Some(schema) = PgSchema::fresh("two_nodes_together_do_not_exceed_one_rate_limit").await else {
        return;
    };
    // Time stands still: no refill, so exactly the burst is granted.
    let now = Arc::new(AtomicU64::new(Clock::system().now_ms()));
    let burst = 5;
    let tune = |c: &mut ServerConfig| {
        c.clock = Clock::manual(Arc::clone(&now));
        c.limits.enqueue_rate = Rate { per_minute: 1, burst };
        c.limits.lookup_rate = Rate { per_minute: 1, burst };
    };
    let (a, b) = (node_with(&schema, tune).await, node_with(&schema, tune).await);
    let (alice_a, token, _) = user(&a, "alice").await;
    let (_bob, _, _) = user(&b, "bob").await;
    let alice_b = resumed(&b, &token).await;
    let (channel, _mls) = dm_with(&alice_a, "alice", "bob").await; // takes one enqueue token

    let mut granted = 0;
    for i in 0..2 * burst {
        let rpc = if i % 2 == 0 { &alice_a } else { &alice_b };
        let request = keyed_app(&channel, &i.to_be_bytes(), &i.to_be_bytes());
        match rpc.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &request).await {
            Ok(_) => granted += 1,
            Err(e) => assert_eq!(e.rpc_status(), Some(Status::RateLimited)),
        }
    }
    assert_eq!(granted, burst - 1, "one bucket for both nodes");

    let mut looked_up = 0;
    for i in 0..2 * burst {
        let rpc = if i % 2 == 0 { &alice_a } else { &alice_b };
        let request = v1::ResolveUserRequest { username: "bob".into() };
        match rpc.call::<_, v1::ResolveUserResponse>(method::RESOLVE_USER, &request).await {
            Ok(_) => looked_up += 1,
            Err(e) => assert_eq!(e.rpc_status(), Some(Status::RateLimited)),
        }
    }
    assert_eq!(looked_up, burst);

    // A minute later the bucket has one token more, for either node.
    now.fetch_add(60_000, Ordering::SeqCst);
    let _: v1::EnqueueResponse = alice_b.call(method::ENQUEUE, &keyed_app(&channel, b"later", b"later")).await.unwrap();
    let err =
        alice_a.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &keyed_app(&channel, b"x", b"x")).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::RateLimited));
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}

async fn upload_chunk(
    rpc: &RpcClient,
    id: &[u8],
    data: &[u8],
    start: usize,
    end: usize,
) -> v1::UploadBlobChunkResponse {
    let request = v1::UploadBlobChunkRequest {
        blob_id: Bytes::copy_from_slice(id),
        total_size: data.len() as u64,
        offset: start as u64,
        data: Bytes::copy_from_slice(&data[start..end]),
    };
    rpc.call(method::UPLOAD_BLOB_CHUNK, &request).await.unwrap()
}

async fn download_all(rpc: &RpcClient, id: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let request =
            v1::DownloadBlobChunkRequest { blob_id: Bytes::copy_from_slice(id), offset: got.len() as u64, max_len: 0 };
        let chunk: v1::DownloadBlobChunkResponse = rpc.call(method::DOWNLOAD_BLOB_CHUNK, &request).await.unwrap();
        got.extend_from_slice(&chunk.data);
        if got.len() as u64 >= chunk.total_size {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_uploaded_through_one_node_downloads_through_the_other() {
    let Some(schema) = PgSchema::fresh("a_blob_uploaded_through_one_node_downloads_through_the_other").await else {
        return;
    };
    const CHUNK: usize = 256 * 1024;
    // Each node has a data dir of its own (`node` makes one): nothing on disk is shared.
    let (a, b) = (node(&schema).await, node(&schema).await);
    let (alice_a, token, _) = user(&a, "alice").await;
    let (bob_b, bob_token, _) = user(&b, "bob").await;

    let data: Vec<u8> = (0..3 * CHUNK + 4321).map(|i| (i * 7 % 253) as u8).collect();
    let id = Sha256::digest(&data).to_vec();
    for start in (0..data.len()).step_by(CHUNK) {
        upload_chunk(&alice_a, &id, &data, start, (start + CHUNK).min(data.len())).await;
    }
    assert_eq!(download_all(&bob_b, &id).await, data, "node B serves what node A stored");

    // An upload started on A resumes on B, where it is completed and hash-checked.
    let other: Vec<u8> = data.iter().rev().copied().collect();
    let other_id = Sha256::digest(&other).to_vec();
    upload_chunk(&alice_a, &other_id, &other, 0, CHUNK).await;
    let alice_b = resumed(&b, &token).await;
    let info: v1::BlobInfoResponse =
        alice_b.call(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: other_id.clone().into() }).await.unwrap();
    assert_eq!((info.received, info.complete), (CHUNK as u64, false));
    let mut last = None;
    for start in (CHUNK..other.len()).step_by(CHUNK) {
        last = Some(upload_chunk(&alice_b, &other_id, &other, start, (start + CHUNK).min(other.len())).await);
    }
    assert!(last.unwrap().complete);
    let bob_a = resumed(&a, &bob_token).await;
    assert_eq!(download_all(&bob_a, &other_id).await, other);
    for node in [&a, &b] {
        assert!(!node.dir.path().join(quicprochat_server::files::BLOBS).exists(), "no blob files on any node");
    }
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
}
