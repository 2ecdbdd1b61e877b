//! Limits, retention, key package refill, account deletion, session expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::Status;
use quicprochat_server::{Clock, Rate};

use crate::harness::{TestServer, dm_with, login, private, user};

const GENEROUS: Rate = Rate { per_minute: 1_000_000, burst: 100_000 };

fn app(channel: &Bytes, payload: &[u8], ttl_secs: u32) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: Some(v1::Envelope {
            kind: v1::EnvelopeKind::Application as i32,
            epoch: 1,
            payload: private(payload).into(),
        }),
        ttl_secs,
        ..Default::default()
    }
}

#[tokio::test]
async fn queue_depth_limit_refuses_then_recovers_after_ack() {
    let server = TestServer::start_with(|c| {
        c.limits.max_queue_depth = 1000;
        c.limits.enqueue_rate = GENEROUS;
    })
    .await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    // The welcome is entry 1; 999 more fill bob's queue.
    for i in 0..999u32 {
        let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, &i.to_be_bytes(), 0)).await.unwrap();
    }
    let err =
        alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &app(&channel, b"one too many", 0)).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::QueueFull));
    let quicprochat_rpc::Error::Rpc(e) = err else { panic!("expected an RPC error") };
    assert!(e.retry_after_ms > 0);

    let page: v1::PeekResponse =
        bob.call(method::PEEK, &v1::PeekRequest { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(page.envelopes.len(), 1000);
    let _: v1::AckResponse = bob.call(method::ACK, &v1::AckRequest { up_to_seq: page.envelopes[9].seq }).await.unwrap();
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"fits again", 0)).await.unwrap();
}

#[tokio::test]
async fn enqueue_rate_limit_kicks_in_and_recovers() {
    let server = TestServer::start_with(|c| c.limits.enqueue_rate = Rate { per_minute: 600, burst: 3 }).await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    // The BatchEnqueue of the DM takes one token.
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    for _ in 0..2 {
        let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"x", 0)).await.unwrap();
    }
    let err = alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &app(&channel, b"x", 0)).await.unwrap_err();
    let quicprochat_rpc::Error::Rpc(e) = err else { panic!("expected an RPC error") };
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 100, "10 per second: {}", e.retry_after_ms);
    // Waiting as long as the server says is enough.
    tokio::time::sleep(Duration::from_millis(e.retry_after_ms + 20)).await;
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"x", 0)).await.unwrap();
}

#[tokio::test]
async fn envelopes_with_a_ttl_vanish_acked_or_not() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let clock = Clock::manual(Arc::clone(&now));
    let server = TestServer::start_with(|c| {
        c.clock = clock;
        c.limits.gc_interval = Duration::from_millis(20);
    })
    .await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"disappearing", 60)).await.unwrap();
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(&channel, b"kept", 0)).await.unwrap();
    let payloads = |page: &v1::PeekResponse| -> Vec<Vec<u8>> {
        page.envelopes[1..].iter().map(|e| e.envelope.as_ref().unwrap().payload.to_vec()).collect()
    };
    let before: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert_eq!(payloads(&before), vec![private(b"disappearing"), private(b"kept")]);

    now.fetch_add(61_000, Ordering::SeqCst);
    let after: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert_eq!(payloads(&after), vec![private(b"kept")], "expired envelopes are never served");

    // The GC task removes it from disk as well.
    let db = server.db();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = db
            .query_row("SELECT COUNT(*) FROM envelopes WHERE payload = ?1", [private(b"disappearing")], |r| r.get(0))
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "GC did not purge the expired envelope");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn claiming_below_the_low_water_mark_pushes_key_packages_low() {
    let server = TestServer::start().await;
    let (bob, _, _) = user(&server, "bob").await;
    let _: v1::SubscribeResponse = bob.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
    let _: v1::UploadKeyPackagesResponse = bob
        .call(
            method::UPLOAD_KEY_PACKAGES,
            &v1::UploadKeyPackagesRequest {
                key_packages: vec![b"a".to_vec().into(), b"b".to_vec().into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (alice, _, _) = user(&server, "alice").await;
    let _: v1::FetchKeyPackagesResponse =
        alice.call(method::FETCH_KEY_PACKAGES, &v1::FetchKeyPackagesRequest { username: "bob".into() }).await.unwrap();
    let mut push = tokio::time::timeout(Duration::from_secs(10), bob.accept_push()).await.unwrap().unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), push.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.event_type, event::KEY_PACKAGES_LOW);
    assert_eq!(v1::KeyPackagesLow::decode(frame.payload).unwrap().pool_size, 1);
}

#[tokio::test]
async fn delete_account_purges_everything_of_the_user() {
    let server = TestServer::start().await;
    let (alice, alice_token, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &app(&channel, b"to alice", 0)).await.unwrap();
    let _: v1::UploadKeyPackagesResponse = alice
        .call(
            method::UPLOAD_KEY_PACKAGES,
            &v1::UploadKeyPackagesRequest { key_packages: vec![b"k".to_vec().into()], ..Default::default() },
        )
        .await
        .unwrap();

    let _: v1::DeleteAccountResponse = alice.call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await.unwrap();
    let err = alice.call::<_, v1::PeekResponse>(method::PEEK, &v1::PeekRequest::default()).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated), "the connection is unbound");
    let err = login(&alice, "alice", b"pw").await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));
    let resumed = alice
        .call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: alice_token.into() })
        .await;
    assert_eq!(resumed.unwrap_err().rpc_status(), Some(Status::Unauthenticated));

    let db = server.db();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM users"), 1);
    assert_eq!(count("SELECT COUNT(*) FROM sessions WHERE user_id NOT IN (SELECT id FROM users)"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM devices"), 1);
    assert_eq!(count("SELECT COUNT(*) FROM key_packages"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM queue"), 1, "only bob's welcome is left");
    assert_eq!(count("SELECT COUNT(*) FROM envelopes WHERE payload = X'00010002746f20616c696365'"), 0);
    // The name is free again.
    crate::harness::register(&bob, "alice", b"new").await;
}

#[tokio::test]
async fn expired_session_is_unbound_with_a_push() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let clock = Clock::manual(Arc::clone(&now));
    let server = TestServer::start_with(|c| c.clock = clock).await;
    let (alice, token, _) = user(&server, "alice").await;
    let _: v1::SubscribeResponse = alice.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
    now.fetch_add(31 * 24 * 3600 * 1000, Ordering::SeqCst);
    let err = alice.call::<_, v1::PeekResponse>(method::PEEK, &v1::PeekRequest::default()).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));
    let mut push = tokio::time::timeout(Duration::from_secs(10), alice.accept_push()).await.unwrap().unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), push.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.event_type, event::SESSION_EXPIRED);
    let resumed =
        alice.call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: token.into() }).await;
    assert_eq!(resumed.unwrap_err().rpc_status(), Some(Status::Unauthenticated));
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let server = TestServer::start().await;
    let (alice, token, _) = user(&server, "alice").await;
    let _: v1::LogoutResponse = alice.call(method::LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    let err = alice.call::<_, v1::PeekResponse>(method::PEEK, &v1::PeekRequest::default()).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));
    let resumed =
        alice.call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: token.into() }).await;
    assert_eq!(resumed.unwrap_err().rpc_status(), Some(Status::Unauthenticated));
}

#[tokio::test]
async fn login_attempts_are_rate_limited_per_address_and_audited() {
    // Four attempts, then one per minute: the fifth is refused within the test.
    let server = TestServer::start_with(|c| c.limits.auth_rate = Rate { per_minute: 1, burst: 4 }).await;
    let rpc = server.client().await;
    let start = v1::LoginStartRequest { username: "alice".into(), credential_request: Bytes::from_static(b"junk") };
    for _ in 0..4 {
        let err = rpc.call::<_, v1::LoginStartResponse>(method::LOGIN_START, &start).await.unwrap_err();
        assert_eq!(err.rpc_status(), Some(Status::BadRequest), "not limited yet: {err}");
    }
    let err = rpc.call::<_, v1::LoginStartResponse>(method::LOGIN_START, &start).await.unwrap_err();
    let quicprochat_rpc::Error::Rpc(e) = err else { panic!("expected an RPC error") };
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 30_000, "one per minute: {}", e.retry_after_ms);
    // Registration comes from the same budget; unauthenticated methods like Health do not.
    let register = v1::RegisterStartRequest { username: "alice".into(), registration_request: Bytes::new() };
    let err = rpc.call::<_, v1::RegisterStartResponse>(method::REGISTER_START, &register).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::RateLimited));
    let _: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();

    let db = server.db();
    let refused: Vec<(String, String)> = db
        .prepare("SELECT method, status FROM audit_log WHERE event = 'refused' ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        refused,
        [("LoginStart".to_owned(), "RATE_LIMITED".to_owned()), ("RegisterStart".to_owned(), "RATE_LIMITED".to_owned())]
    );
}

#[tokio::test]
async fn directory_lookups_are_rate_limited_per_account() {
    let server = TestServer::start_with(|c| c.limits.lookup_rate = Rate { per_minute: 1, burst: 3 }).await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let resolve = |name: &str| v1::ResolveUserRequest { username: name.into() };
    for name in ["bob", "nobody", "bob"] {
        let _ = alice.call::<_, v1::ResolveUserResponse>(method::RESOLVE_USER, &resolve(name)).await;
    }
    let err = alice.call::<_, v1::ResolveUserResponse>(method::RESOLVE_USER, &resolve("bob")).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::RateLimited));
    // Key package fetches share the budget; another account has its own.
    let fetch = v1::FetchKeyPackagesRequest { username: "bob".into() };
    let err = alice.call::<_, v1::FetchKeyPackagesResponse>(method::FETCH_KEY_PACKAGES, &fetch).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::RateLimited));
    let found: v1::ResolveUserResponse = bob.call(method::RESOLVE_USER, &resolve("alice")).await.unwrap();
    assert!(!found.user_id.is_empty());
}
