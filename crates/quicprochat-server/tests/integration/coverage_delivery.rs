//! Delivery (200): ephemeral envelopes, a waiting FetchWait beside other calls, racing
//! commits, fan-out, paging, and every documented refusal of Enqueue and BatchEnqueue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quicprochat_core::mls::{MlsClient, MlsSuite};
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::{PushStream, RpcClient, Status};
use quicprochat_server::{Clock, Rate};

use crate::harness::{
    TestServer, dm_with, dm_with_package, group_with, login, member, mls_client, private, register_device_as,
    rpc_error, test_identity, user,
};

const WAIT: Duration = Duration::from_secs(10);

fn app(channel: &Bytes, payload: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: Some(v1::Envelope {
            kind: v1::EnvelopeKind::Application as i32,
            epoch: 1,
            payload: private(payload).into(),
        }),
        ..Default::default()
    }
}

async fn enqueue(rpc: &RpcClient, request: &v1::EnqueueRequest) -> Result<v1::EnqueueResponse, quicprochat_rpc::Error> {
    rpc.call(method::ENQUEUE, request).await
}

async fn peek(rpc: &RpcClient) -> Vec<v1::QueuedEnvelope> {
    let page: v1::PeekResponse = rpc.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    page.envelopes
}

fn payload_of(e: &v1::QueuedEnvelope) -> Vec<u8> {
    e.envelope.as_ref().unwrap().payload.to_vec()
}

fn kind_of(e: &v1::QueuedEnvelope) -> i32 {
    e.envelope.as_ref().unwrap().kind
}

async fn subscribe(rpc: &RpcClient) {
    let _: v1::SubscribeResponse = rpc.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
}

/// The next push on `stream` (opened by the first push), as a MessageNotification.
async fn next_note(stream: &mut PushStream) -> v1::MessageNotification {
    let frame = tokio::time::timeout(WAIT, stream.next()).await.expect("no push arrived").unwrap().unwrap();
    assert_eq!(frame.event_type, event::MESSAGE_NOTIFICATION);
    v1::MessageNotification::decode(frame.payload).unwrap()
}

async fn accept_push(rpc: &RpcClient) -> PushStream {
    tokio::time::timeout(WAIT, rpc.accept_push()).await.expect("the push stream did not open").unwrap()
}

#[tokio::test]
async fn ephemeral_envelopes_reach_online_members_by_push_and_are_never_stored() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (carol, carol_token, _) = user(&server, "carol").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    carol.close("offline");
    let (channel, _mls) = group_with(&alice, "alice", &[member("bob"), member("carol")]).await;
    subscribe(&bob).await;

    let db = server.db();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let stored_before = (count("SELECT COUNT(*) FROM envelopes"), count("SELECT COUNT(*) FROM queue"));

    let mut typing = app(&channel, b"alice is typing");
    typing.ephemeral = true;
    let sent = enqueue(&alice, &typing).await.unwrap();
    assert_eq!(sent.seq, 0, "ephemeral envelopes get no sequence number");
    assert_eq!(sent.epoch, 1);

    // bob is online: it arrives by push, inline.
    let mut bob_push = accept_push(&bob).await;
    let note = next_note(&mut bob_push).await;
    assert_eq!(note.seq, 0);
    assert_eq!(note.channel_id, channel);
    let inline = note.envelope.expect("small envelopes travel inline");
    assert_eq!(inline.envelope.unwrap().payload.to_vec(), private(b"alice is typing"));

    // Nothing was stored, for anyone.
    let bob_queue = peek(&bob).await;
    assert_eq!(bob_queue.len(), 1);
    assert_eq!(kind_of(&bob_queue[0]), v1::EnvelopeKind::Welcome as i32);
    assert_eq!((count("SELECT COUNT(*) FROM envelopes"), count("SELECT COUNT(*) FROM queue")), stored_before);
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM envelopes WHERE payload = ?1", [private(b"alice is typing")], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    // carol was offline: when she comes back, the first thing she gets is the next stored message.
    let carol = server.client().await;
    let _: v1::ResumeResponse =
        carol.call(method::RESUME, &v1::ResumeRequest { session_token: carol_token.into() }).await.unwrap();
    subscribe(&carol).await;
    let carol_queue = peek(&carol).await;
    assert_eq!(carol_queue.len(), 1, "only her welcome");
    assert_eq!(kind_of(&carol_queue[0]), v1::EnvelopeKind::Welcome as i32);
    let stored = enqueue(&alice, &app(&channel, b"stored")).await.unwrap();
    assert!(stored.seq > 0);
    let mut carol_push = accept_push(&carol).await;
    let note = next_note(&mut carol_push).await;
    assert_ne!(note.seq, 0);
    assert_eq!(payload_of(&note.envelope.unwrap()), private(b"stored"));
    let note = next_note(&mut bob_push).await;
    assert_eq!(payload_of(&note.envelope.unwrap()), private(b"stored"), "bob got the typing indicator once");

    // Only application envelopes can be ephemeral, only members send them, to a channel that exists.
    let mut commit = typing.clone();
    commit.envelope.as_mut().unwrap().kind = v1::EnvelopeKind::Commit as i32;
    assert_eq!(rpc_error(enqueue(&alice, &commit).await).status, Status::BadRequest);
    assert_eq!(rpc_error(enqueue(&mallory, &typing).await).status, Status::Forbidden);
    let mut nowhere = typing.clone();
    nowhere.channel_id = vec![0xEE; 16].into();
    assert_eq!(rpc_error(enqueue(&alice, &nowhere).await).status, Status::NotFound);
}

#[tokio::test]
async fn a_waiting_fetch_wait_does_not_hold_up_other_calls_on_its_connection() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let after_seq = peek(&bob).await[0].seq;

    let wait_request = v1::FetchWaitRequest { after_seq, limit: 10, timeout_ms: 60_000 };
    let fetch_wait = bob.call::<_, v1::PeekResponse>(method::FETCH_WAIT, &wait_request);
    tokio::pin!(fetch_wait);
    // 20 calls on the same connection while the FetchWait waits.
    let others = async {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..20 {
            let bob = bob.clone();
            calls.spawn(async move {
                match i % 3 {
                    0 => {
                        let page: v1::PeekResponse =
                            bob.call(method::PEEK, &v1::PeekRequest { after_seq, ..Default::default() }).await.unwrap();
                        assert!(page.envelopes.is_empty());
                    }
                    1 => {
                        let found: v1::ResolveUserResponse = bob
                            .call(method::RESOLVE_USER, &v1::ResolveUserRequest { username: "alice".into() })
                            .await
                            .unwrap();
                        assert_eq!(found.username, "alice");
                    }
                    _ => {
                        let health: v1::HealthResponse = bob.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
                        assert_eq!(health.status, "serving");
                    }
                }
            });
        }
        let mut done = 0;
        while let Some(call) = calls.join_next().await {
            call.unwrap();
            done += 1;
        }
        done
    };
    // `biased`: the FetchWait is sent first, then the others run while it is pending.
    let done = tokio::select! {
        biased;
        early = &mut fetch_wait => panic!("FetchWait returned with nothing enqueued: {early:?}"),
        done = tokio::time::timeout(Duration::from_secs(60), others) => done.expect("calls beside a waiting FetchWait hung"),
    };
    assert_eq!(done, 20);

    let sent = enqueue(&alice, &app(&channel, b"wake up")).await.unwrap();
    let woke = tokio::time::timeout(WAIT, &mut fetch_wait).await.expect("FetchWait was not woken").unwrap();
    assert_eq!(woke.envelopes.len(), 1);
    assert_eq!(payload_of(&woke.envelopes[0]), private(b"wake up"));
    assert_eq!(woke.envelopes[0].envelope_id, sent.envelope_id);
}

#[tokio::test]
async fn fetch_wait_returns_what_is_queued_or_nothing_at_its_capped_timeout() {
    let server = TestServer::start_with(|c| c.limits.max_wait = Duration::from_millis(200)).await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (_channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let wait = |after_seq, timeout_ms| {
        let bob = bob.clone();
        async move {
            let request = v1::FetchWaitRequest { after_seq, limit: 0, timeout_ms };
            let page: v1::PeekResponse = tokio::time::timeout(WAIT, bob.call(method::FETCH_WAIT, &request))
                .await
                .expect("FetchWait outlived its timeout")
                .unwrap();
            page.envelopes
        }
    };
    // Something is queued: it returns at once.
    let queued = wait(0, 60_000).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(kind_of(&queued[0]), v1::EnvelopeKind::Welcome as i32);
    // Nothing after it: empty at the timeout, which the server caps (here at 200 ms).
    assert!(wait(queued[0].seq, 0).await.is_empty());
    assert!(wait(queued[0].seq, u32::MAX).await.is_empty());
}

#[tokio::test]
async fn two_commits_racing_for_one_epoch_one_wins_the_other_conflicts() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, bob_device) = user(&server, "bob").await;
    let bob_mls = mls_client("bob");
    let kp = bob_mls.generate_key_package().unwrap();
    let (channel, alice_mls) = dm_with_package(&alice, "alice", "bob", bob_device, kp).await;
    let welcome = peek(&bob).await;
    let joined = bob_mls.join_from_welcome(&payload_of(&welcome[0])).unwrap();
    assert_eq!(joined.epoch, 1);

    let commit = |mls: &MlsClient| {
        let rotate = mls.self_update(&channel).unwrap();
        assert_eq!(rotate.epoch_before, 1);
        v1::EnqueueRequest {
            channel_id: channel.clone(),
            envelope: Some(v1::Envelope {
                kind: v1::EnvelopeKind::Commit as i32,
                epoch: 1,
                payload: rotate.commit.into(),
            }),
            group_info: rotate.group_info.into(),
            ..Default::default()
        }
    };
    let (from_alice, from_bob) = (commit(&alice_mls), commit(&bob_mls));
    let (a, b) = tokio::join!(enqueue(&alice, &from_alice), enqueue(&bob, &from_bob));
    let (winner, loser, won, lost) = match (a, b) {
        (Ok(won), Err(lost)) => ("alice", "bob", won, lost),
        (Err(lost), Ok(won)) => ("bob", "alice", won, lost),
        other => panic!("exactly one commit must win: {other:?}"),
    };
    assert_eq!(won.epoch, 2, "{winner} moved the channel to epoch 2");
    let lost = lost.as_rpc().cloned().expect("an RPC error");
    assert_eq!(lost.status, Status::Conflict, "{loser}: {lost:?}");
    assert_eq!(lost.details.get("current_epoch").map(String::as_str), Some("2"));

    let got: v1::GetChannelResponse =
        alice.call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel.clone() }).await.unwrap();
    assert_eq!(got.channel.unwrap().epoch, 2);
    // Only the winning commit was delivered: to the loser, who must resynchronise.
    let commits = |queue: Vec<v1::QueuedEnvelope>| -> Vec<Vec<u8>> {
        queue.iter().filter(|e| kind_of(e) == v1::EnvelopeKind::Commit as i32).map(payload_of).collect()
    };
    let (winner_rpc, loser_rpc, winning) =
        if winner == "alice" { (&alice, &bob, &from_alice) } else { (&bob, &alice, &from_bob) };
    assert!(commits(peek(winner_rpc).await).is_empty());
    assert_eq!(commits(peek(loser_rpc).await), vec![winning.envelope.as_ref().unwrap().payload.to_vec()]);
}

#[tokio::test]
async fn enqueue_refuses_what_breaks_its_rules() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let status = |r: Result<v1::EnqueueResponse, quicprochat_rpc::Error>| rpc_error(r).status;

    // NOT_FOUND: no such channel, for application and handshake envelopes alike.
    let mut nowhere = app(&channel, b"x");
    nowhere.channel_id = vec![0xAB; 16].into();
    assert_eq!(status(enqueue(&alice, &nowhere).await), Status::NotFound);
    nowhere.envelope.as_mut().unwrap().kind = v1::EnvelopeKind::Commit as i32;
    assert_eq!(status(enqueue(&alice, &nowhere).await), Status::NotFound);

    // BAD_REQUEST, each for one rule.
    let mut cases: Vec<(&str, v1::EnqueueRequest)> = Vec::new();
    let mut r = app(&channel, b"x");
    r.envelope = None;
    cases.push(("no envelope", r));
    let mut r = app(&channel, b"x");
    r.envelope.as_mut().unwrap().payload = Bytes::new();
    cases.push(("empty payload", r));
    let mut r = app(&channel, b"x");
    r.envelope.as_mut().unwrap().payload = Bytes::from_static(b"plaintext, not an MLS PrivateMessage");
    cases.push(("application payload not a PrivateMessage", r));
    let mut r = app(&channel, b"x");
    r.envelope.as_mut().unwrap().kind = v1::EnvelopeKind::Welcome as i32;
    cases.push(("welcome outside BatchEnqueue", r));
    let mut r = app(&channel, b"x");
    r.envelope.as_mut().unwrap().kind = v1::EnvelopeKind::Unspecified as i32;
    cases.push(("kind unspecified", r));
    let mut r = app(&channel, b"x");
    r.idempotency_key = vec![1u8; 65].into();
    cases.push(("idempotency key over 64 bytes", r));
    let mut r = app(&channel, b"x");
    r.channel_id = vec![1u8; 15].into();
    cases.push(("channel id not 16 bytes", r));
    for (what, request) in cases {
        assert_eq!(status(enqueue(&alice, &request).await), Status::BadRequest, "{what}");
    }
    // None of it was stored.
    let n: i64 = server.db().query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "only bob's welcome");
}

#[tokio::test]
async fn payloads_over_the_limit_are_refused_and_large_ones_are_pushed_by_seq_only() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    subscribe(&bob).await;
    let info: v1::ServerInfoResponse = alice.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
    const LIMIT: usize = 4 * 1024 * 1024;
    assert_eq!(info.max_payload_bytes as usize, LIMIT, "the default envelope limit is 4 MiB");

    // `private` adds a 4-byte header.
    let sized = |len: usize| app(&channel, &vec![0x5A; len - 4]);
    for len in [64 * 1024, 64 * 1024 + 1, LIMIT] {
        enqueue(&alice, &sized(len)).await.unwrap();
    }
    let r = enqueue(&alice, &sized(LIMIT + 1)).await;
    assert_eq!(rpc_error(r).status, Status::PayloadTooLarge);

    // The queue has them all, whole, in two pages: a page holds at most 4 MiB of payloads
    // (or one entry), whatever budget the client asks for.
    let first: v1::PeekResponse =
        bob.call(method::PEEK, &v1::PeekRequest { max_bytes: u64::MAX, ..Default::default() }).await.unwrap();
    let after_seq = first.envelopes.last().unwrap().seq;
    let second: v1::PeekResponse =
        bob.call(method::PEEK, &v1::PeekRequest { after_seq, ..Default::default() }).await.unwrap();
    assert_eq!((first.envelopes.len(), second.envelopes.len()), (3, 1));
    let queued: Vec<_> = first.envelopes[1..].iter().chain(&second.envelopes).cloned().collect();
    let lens: Vec<usize> = queued.iter().map(|e| payload_of(e).len()).collect();
    assert_eq!(lens, vec![64 * 1024, 64 * 1024 + 1, LIMIT]);
    // Pushes name the queue entry; up to 64 KiB the envelope travels inline.
    let mut push = accept_push(&bob).await;
    let note = next_note(&mut push).await;
    assert_eq!(note.seq, queued[0].seq);
    assert_eq!(note.envelope.expect("64 KiB travels inline"), queued[0]);
    for entry in &queued[1..] {
        let note = next_note(&mut push).await;
        assert_eq!(note.seq, entry.seq);
        assert_eq!(note.channel_id, channel);
        assert!(note.envelope.is_none(), "over 64 KiB only the seq is pushed");
    }
}

#[tokio::test]
async fn batch_enqueue_refuses_what_breaks_its_rules() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, bob_device) = user(&server, "bob").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    let created: v1::CreateChannelResponse = alice
        .call(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest { kind: v1::ChannelKind::Group as i32, peer: String::new() },
        )
        .await
        .unwrap();
    let channel = created.channel_id.clone();
    let batch =
        |channel: &Bytes, commit: Vec<u8>, welcomes: Vec<(Vec<u8>, Vec<u8>)>, info: Vec<u8>| v1::BatchEnqueueRequest {
            channel_id: channel.clone(),
            commit: Some(v1::Envelope { kind: v1::EnvelopeKind::Commit as i32, epoch: 0, payload: commit.into() }),
            welcomes: welcomes
                .into_iter()
                .map(|(device, payload)| v1::WelcomeDelivery { device_id: device.into(), payload: payload.into() })
                .collect(),
            group_info: info.into(),
            ..Default::default()
        };
    let send = |rpc: RpcClient, request: v1::BatchEnqueueRequest| async move {
        rpc.call::<_, v1::BatchEnqueueResponse>(method::BATCH_ENQUEUE, &request).await
    };

    // A Welcome for a device the server does not know (its key package is real).
    let stranger = quicprochat_core::identity::IdentityKeyPair::generate(&mut rand_core::OsRng);
    let stranger_device = stranger.device_id().0.to_vec();
    let stranger_kp = MlsClient::new(&stranger, "bob", MlsSuite::default()).unwrap().generate_key_package().unwrap();
    let alice_mls = mls_client("alice");
    alice_mls.create_group(&channel).unwrap();
    let add = alice_mls.add_members(&channel, &[stranger_kp]).unwrap();
    let r =
        send(alice.clone(), batch(&channel, add.commit, vec![(stranger_device, add.welcome)], add.group_info)).await;
    assert_eq!(rpc_error(r).status, Status::BadRequest, "welcome for an unknown device");
    alice_mls.clear_pending_commit(&channel).unwrap();

    // A Welcome for a device the commit does not add.
    let (bob_dev, bob_kp) = member("bob");
    assert_eq!(bob_dev, bob_device);
    let add = alice_mls.add_members(&channel, std::slice::from_ref(&bob_kp)).unwrap();
    let mallory_device = test_identity("mallory").device_id().0.to_vec();
    let wrong = batch(
        &channel,
        add.commit.clone(),
        vec![(mallory_device.clone(), add.welcome.clone())],
        add.group_info.clone(),
    );
    assert_eq!(rpc_error(send(alice.clone(), wrong).await).status, Status::BadRequest);

    // A shared Welcome naming nobody, a device the commit does not add, or a device twice.
    let shared = |devices: Vec<Vec<u8>>, also: Vec<(Vec<u8>, Vec<u8>)>| {
        let mut request = batch(&channel, add.commit.clone(), also, add.group_info.clone());
        request.shared_welcome = Some(v1::SharedWelcome {
            payload: add.welcome.clone().into(),
            device_ids: devices.into_iter().map(Bytes::from).collect(),
        });
        request
    };
    for (refused, why) in [
        (shared(vec![], vec![]), "a shared welcome naming nobody"),
        (shared(vec![bob_dev.clone(), mallory_device.clone()], vec![]), "a device the commit does not add"),
        (shared(vec![bob_dev.clone(), bob_dev.clone()], vec![]), "a device named twice"),
        (shared(vec![bob_dev.clone()], vec![(bob_dev.clone(), add.welcome.clone())]), "named in both fields"),
    ] {
        assert_eq!(rpc_error(send(alice.clone(), refused).await).status, Status::BadRequest, "{why}");
    }

    // No commit, or something else than a commit.
    let mut no_commit = batch(&channel, add.commit.clone(), vec![], add.group_info.clone());
    no_commit.commit = None;
    assert_eq!(rpc_error(send(alice.clone(), no_commit).await).status, Status::BadRequest);
    let mut not_commit = batch(&channel, private(b"x"), vec![], add.group_info.clone());
    not_commit.commit.as_mut().unwrap().kind = v1::EnvelopeKind::Application as i32;
    assert_eq!(rpc_error(send(alice.clone(), not_commit).await).status, Status::BadRequest);

    // A Welcome over the payload limit.
    let huge = batch(&channel, add.commit.clone(), vec![(bob_dev.clone(), vec![0u8; 4 * 1024 * 1024 + 1])], vec![]);
    assert_eq!(rpc_error(send(alice.clone(), huge).await).status, Status::PayloadTooLarge);

    // No such channel.
    let elsewhere = batch(&Bytes::from(vec![0xCD; 16]), add.commit.clone(), vec![], add.group_info.clone());
    assert_eq!(rpc_error(send(alice.clone(), elsewhere).await).status, Status::NotFound);

    // Not a member: mallory makes up a group under alice's channel id.
    let forger = mls_client("mallory");
    forger.create_group(&channel).unwrap();
    let (_, kp) = member("bob");
    let forged = forger.add_members(&channel, &[kp]).unwrap();
    let r = send(
        mallory.clone(),
        batch(&channel, forged.commit, vec![(bob_dev.clone(), forged.welcome)], forged.group_info),
    )
    .await;
    assert_eq!(rpc_error(r).status, Status::Forbidden);

    // Nothing above changed the channel; the real batch goes through once…
    let ok = send(
        alice.clone(),
        batch(&channel, add.commit.clone(), vec![(bob_dev.clone(), add.welcome.clone())], add.group_info.clone()),
    )
    .await
    .unwrap();
    assert_eq!(ok.epoch, 1);
    // …and again it is a commit for an epoch the channel has left.
    let r = send(alice.clone(), batch(&channel, add.commit, vec![(bob_dev, add.welcome)], add.group_info)).await;
    let e = rpc_error(r);
    assert_eq!(e.status, Status::Conflict);
    assert_eq!(e.details.get("current_epoch").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn batch_enqueue_counts_against_the_enqueue_rate() {
    let server = TestServer::start_with(|c| c.limits.enqueue_rate = Rate { per_minute: 1, burst: 1 }).await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (channel, mls) = dm_with(&alice, "alice", "bob").await;
    let rotate = mls.self_update(&channel).unwrap();
    let r = alice
        .call::<_, v1::BatchEnqueueResponse>(
            method::BATCH_ENQUEUE,
            &v1::BatchEnqueueRequest {
                channel_id: channel.clone(),
                commit: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Commit as i32,
                    epoch: 1,
                    payload: rotate.commit.into(),
                }),
                group_info: rotate.group_info.into(),
                ..Default::default()
            },
        )
        .await;
    let e = rpc_error(r);
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 0, "{e:?}");
    assert_eq!(rpc_error(enqueue(&alice, &app(&channel, b"x")).await).status, Status::RateLimited);
}

#[tokio::test]
async fn fan_out_reaches_the_senders_other_devices_and_stores_the_payload_once() {
    let server = TestServer::start().await;
    let (alice1, _, _) = user(&server, "alice").await;
    let alice2 = server.client().await;
    let token = login(&alice2, "alice", b"pw").await.unwrap();
    let (_, alice2_device) = register_device_as(&alice2, &token, test_identity("alice-2")).await;
    let alice2_kp = MlsClient::new(&test_identity("alice-2"), "alice", MlsSuite::default())
        .unwrap()
        .generate_key_package()
        .unwrap();
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = group_with(&alice1, "alice", &[(alice2_device, alice2_kp), member("bob")]).await;

    let sent = enqueue(&alice1, &app(&channel, b"to everyone else")).await.unwrap();
    for rpc in [&alice2, &bob] {
        let queue = peek(rpc).await;
        assert_eq!(queue.len(), 2);
        assert_eq!(payload_of(&queue[1]), private(b"to everyone else"));
        assert_eq!(queue[1].envelope_id, sent.envelope_id);
    }
    assert!(peek(&alice1).await.is_empty(), "never to the sending device");

    let db = server.db();
    let stored = |db: &rusqlite::Connection| -> (i64, i64) {
        db.query_row(
            "SELECT COUNT(DISTINCT e.seq), COUNT(q.seq) FROM envelopes e LEFT JOIN queue q ON q.envelope = e.seq \
             WHERE e.payload = ?1",
            [private(b"to everyone else")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(stored(&db), (1, 2), "one payload, two queue entries");
    // The payload goes with the last acknowledgement.
    for rpc in [&alice2, &bob] {
        let last = peek(rpc).await[1].seq;
        let _: v1::AckResponse = rpc.call(method::ACK, &v1::AckRequest { up_to_seq: last }).await.unwrap();
    }
    assert_eq!(stored(&db), (0, 0));
}

#[tokio::test]
async fn fetch_returns_and_acknowledges_peek_pages() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    for i in 0..5u8 {
        enqueue(&alice, &app(&channel, &[i; 1000])).await.unwrap();
    }
    let all = peek(&bob).await;
    assert_eq!(all.len(), 6);
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    let page = |after_seq, limit, max_bytes| {
        let bob = bob.clone();
        async move {
            let page: v1::PeekResponse =
                bob.call(method::PEEK, &v1::PeekRequest { after_seq, limit, max_bytes }).await.unwrap();
            page.envelopes.iter().map(|e| e.seq).collect::<Vec<u64>>()
        }
    };
    assert_eq!(page(0, 2, 0).await, seqs[..2]);
    assert_eq!(page(seqs[1], 2, 0).await, seqs[2..4]);
    assert_eq!(page(seqs[5], 0, 0).await, Vec::<u64>::new());
    // A byte budget: whole entries up to it, and always at least one.
    assert_eq!(page(seqs[0], 0, 2 * 1004 + 10).await, seqs[1..3]);
    assert_eq!(page(seqs[0], 0, 1).await, seqs[1..2]);

    // Fetch = Peek then Ack.
    let first: v1::FetchResponse = bob.call(method::FETCH, &v1::FetchRequest { limit: 1 }).await.unwrap();
    assert_eq!(first.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs[..1]);
    assert_eq!(peek(&bob).await.len(), 5);
    let rest: v1::FetchResponse = bob.call(method::FETCH, &v1::FetchRequest::default()).await.unwrap();
    assert_eq!(rest.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs[1..]);
    assert_eq!(payload_of(&rest.envelopes[0]), private(&[0u8; 1000]));
    assert!(peek(&bob).await.is_empty());
    let none: v1::FetchResponse = bob.call(method::FETCH, &v1::FetchRequest::default()).await.unwrap();
    assert!(none.envelopes.is_empty());
    let acked: v1::AckResponse = bob.call(method::ACK, &v1::AckRequest { up_to_seq: u64::MAX }).await.unwrap();
    assert_eq!(acked.removed, 0);
}

#[tokio::test]
async fn idempotency_keys_are_remembered_for_24_hours() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let server = TestServer::start_with(|c| c.clock = Clock::manual(Arc::clone(&now))).await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let mut request = app(&channel, b"once");
    request.idempotency_key = Bytes::from_static(b"message-1");
    let first = enqueue(&alice, &request).await.unwrap();
    now.fetch_add(24 * 3600 * 1000 - 1000, Ordering::SeqCst);
    let retry = enqueue(&alice, &request).await.unwrap();
    assert_eq!((retry.envelope_id.clone(), retry.seq), (first.envelope_id.clone(), first.seq));
    assert_eq!(peek(&bob).await.len(), 2, "welcome and one copy");
    now.fetch_add(2000, Ordering::SeqCst);
    let later = enqueue(&alice, &request).await.unwrap();
    assert_ne!(later.envelope_id, first.envelope_id, "after 24 hours the key is forgotten");
    assert_eq!(peek(&bob).await.len(), 3);
}

#[tokio::test]
async fn a_rate_limited_retry_gets_the_original_answer_after_retry_after_ms() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let server = TestServer::start_with(|c| {
        c.clock = Clock::manual(Arc::clone(&now));
        c.limits.enqueue_rate = Rate { per_minute: 6, burst: 2 };
    })
    .await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    // The DM's BatchEnqueue takes the first token, this enqueue the second.
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let mut request = app(&channel, b"exactly once");
    request.idempotency_key = Bytes::from_static(b"k");
    let first = enqueue(&alice, &request).await.unwrap();
    // The answer was lost; the retry is limited like any call.
    let e = rpc_error(enqueue(&alice, &request).await);
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 10_000, "six per minute: {}", e.retry_after_ms);
    now.fetch_add(e.retry_after_ms, Ordering::SeqCst);
    let retry = enqueue(&alice, &request).await.unwrap();
    assert_eq!((retry.envelope_id, retry.seq), (first.envelope_id, first.seq));
    assert_eq!(peek(&bob).await.len(), 2, "welcome and one copy");
}

#[tokio::test]
async fn a_shared_welcome_is_stored_once_and_reaches_every_device_it_adds() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (carol, _, _) = user(&server, "carol").await;
    let info: v1::ServerInfoResponse = alice.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
    assert!(info.features.iter().any(|f| f == "shared_welcome"), "{:?}", info.features);

    let (channel, _mls) = group_with(&alice, "alice", &[member("bob"), member("carol")]).await;
    let (at_bob, at_carol) = (peek(&bob).await, peek(&carol).await);
    assert_eq!((at_bob.len(), at_carol.len()), (1, 1));
    for queued in [&at_bob[0], &at_carol[0]] {
        assert_eq!(kind_of(queued), v1::EnvelopeKind::Welcome as i32);
        assert_eq!(queued.channel_id, channel);
    }
    assert_eq!(at_bob[0].envelope_id, at_carol[0].envelope_id, "one envelope");
    assert_eq!(at_bob[0].envelope, at_carol[0].envelope);
    let db = server.db();
    let welcomes: i64 = db.query_row("SELECT COUNT(*) FROM envelopes WHERE kind = 3", [], |r| r.get(0)).unwrap();
    assert_eq!(welcomes, 1, "stored once");

    // Acknowledged by one, it stays for the other; by both, it goes.
    let ack = |rpc: &RpcClient, seq: u64| {
        let rpc = rpc.clone();
        async move {
            let _: v1::AckResponse = rpc.call(method::ACK, &v1::AckRequest { up_to_seq: seq }).await.unwrap();
        }
    };
    ack(&bob, at_bob[0].seq).await;
    assert_eq!(peek(&carol).await.len(), 1);
    ack(&carol, at_carol[0].seq).await;
    let welcomes: i64 = db.query_row("SELECT COUNT(*) FROM envelopes WHERE kind = 3", [], |r| r.get(0)).unwrap();
    assert_eq!(welcomes, 0);
}
