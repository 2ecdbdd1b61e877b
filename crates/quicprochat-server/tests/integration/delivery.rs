//! Channels, fan-out, commit sequencing, peek/ack, long-poll and push.

use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::{RpcClient, Status};

use crate::harness::{TestServer, dm_with, private, user};

async fn create_dm(rpc: &RpcClient, peer: &str) -> v1::CreateChannelResponse {
    rpc.call(method::CREATE_CHANNEL, &v1::CreateChannelRequest { kind: v1::ChannelKind::Dm as i32, peer: peer.into() })
        .await
        .unwrap()
}

/// An envelope; application payloads get the PrivateMessage header the server checks.
fn envelope(kind: v1::EnvelopeKind, epoch: u64, payload: &[u8]) -> Option<v1::Envelope> {
    let payload = if kind == v1::EnvelopeKind::Application { private(payload) } else { payload.to_vec() };
    Some(v1::Envelope { kind: kind as i32, epoch, payload: payload.into() })
}

#[tokio::test]
async fn dm_channel_is_deterministic_and_new_once() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (first, second) = tokio::join!(create_dm(&alice, "bob"), create_dm(&bob, "alice"));
    assert_eq!(first.channel_id, second.channel_id);
    assert!(first.was_new ^ second.was_new, "exactly one creator");
    let again = create_dm(&alice, "bob").await;
    assert!(!again.was_new);
    assert_eq!(again.channel_id, first.channel_id);
    let err = alice
        .call::<_, v1::CreateChannelResponse>(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest { kind: v1::ChannelKind::Dm as i32, peer: "nobody".into() },
        )
        .await
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::NotFound));
}

#[tokio::test]
async fn stale_commit_gets_conflict_with_current_epoch() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (channel, mls) = dm_with(&alice, "alice", "bob").await;
    let rotate = mls.self_update(&channel).unwrap();
    let commit = |epoch, payload: &[u8]| v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: envelope(v1::EnvelopeKind::Commit, epoch, payload),
        group_info: rotate.group_info.clone().into(),
        idempotency_key: Bytes::from_static(b"rotate-once"),
        ..Default::default()
    };
    // Built for epoch 1 but labelled 0: the label must match the MLS content.
    let err = alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &commit(0, &rotate.commit)).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::BadRequest));
    let ok: v1::EnqueueResponse = alice.call(method::ENQUEUE, &commit(1, &rotate.commit)).await.unwrap();
    assert_eq!(ok.epoch, 2);
    mls.merge_pending_commit(&channel).unwrap();
    // A retry with the same idempotency key (the answer was lost) gets the original answer.
    let retry: v1::EnqueueResponse = alice.call(method::ENQUEUE, &commit(1, &rotate.commit)).await.unwrap();
    assert_eq!((retry.envelope_id, retry.epoch), (ok.envelope_id.clone(), 2));
    // Without it, the same commit is for an epoch the channel has left: CONFLICT with where it is.
    let mut again = commit(1, &rotate.commit);
    again.idempotency_key = Bytes::new();
    let err = alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &again).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Conflict));
    let quicprochat_rpc::Error::Rpc(rpc_err) = err else { panic!("expected an RPC error") };
    assert_eq!(rpc_err.details.get("current_epoch").map(String::as_str), Some("2"));
}

#[tokio::test]
async fn forged_or_malformed_commits_are_refused() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    let (channel, mls) = dm_with(&alice, "alice", "bob").await;
    let send = |rpc: RpcClient, payload: Vec<u8>| {
        let channel = channel.clone();
        async move {
            rpc.call::<_, v1::EnqueueResponse>(
                method::ENQUEUE,
                &v1::EnqueueRequest {
                    channel_id: channel,
                    envelope: envelope(v1::EnvelopeKind::Commit, 1, &payload),
                    ..Default::default()
                },
            )
            .await
        }
    };
    // Garbage is not a commit.
    let r = send(alice.clone(), b"not an MLS message".to_vec()).await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::BadRequest));
    // A commit whose signed content was altered fails its signature. (Its trailing MACs are
    // keyed by epoch secrets only members hold: the members, not the server, check those.)
    let mut tampered = mls.self_update(&channel).unwrap().commit;
    mls.clear_pending_commit(&channel).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let r = send(alice.clone(), tampered).await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::BadRequest));
    // A commit from a group mallory made up under the same id is not this channel's.
    let forger = crate::harness::mls_client("mallory");
    forger.create_group(&channel).unwrap();
    let forged = forger.self_update(&channel).unwrap().commit;
    let r = send(mallory, forged).await;
    assert!(matches!(r.unwrap_err().rpc_status(), Some(Status::Forbidden | Status::BadRequest | Status::Conflict)));
    // Nothing above changed the channel.
    let got: v1::GetChannelResponse =
        alice.call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel.clone() }).await.unwrap();
    assert_eq!(got.channel.unwrap().epoch, 1);
}

#[tokio::test]
async fn only_members_enqueue_and_recipients_peek_then_ack() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;

    let app = |payload: &[u8], key: &[u8]| v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: envelope(v1::EnvelopeKind::Application, 1, payload),
        idempotency_key: Bytes::copy_from_slice(key),
        ..Default::default()
    };
    let err = mallory.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &app(b"x", b"")).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Forbidden));

    let first: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(b"ciphertext-1", b"k1")).await.unwrap();
    let retry: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(b"ciphertext-1", b"k1")).await.unwrap();
    assert_eq!(first.envelope_id, retry.envelope_id, "idempotent retry returns the original");
    let _: v1::EnqueueResponse = alice.call(method::ENQUEUE, &app(b"ciphertext-2", b"k2")).await.unwrap();

    let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    let kinds: Vec<i32> = page.envelopes.iter().map(|e| e.envelope.as_ref().unwrap().kind).collect();
    let app_kind = v1::EnvelopeKind::Application as i32;
    assert_eq!(kinds, vec![v1::EnvelopeKind::Welcome as i32, app_kind, app_kind], "welcome first, retry stored once");
    let payloads: Vec<Vec<u8>> =
        page.envelopes[1..].iter().map(|e| e.envelope.as_ref().unwrap().payload.to_vec()).collect();
    assert_eq!(payloads, vec![private(b"ciphertext-1"), private(b"ciphertext-2")]);
    let seqs: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    let acked: v1::AckResponse = bob.call(method::ACK, &v1::AckRequest { up_to_seq: seqs[1] }).await.unwrap();
    assert_eq!(acked.removed, 2);
    let rest: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert_eq!(rest.envelopes.len(), 1);
    assert_eq!(rest.envelopes[0].seq, seqs[2]);

    // The sender never receives its own envelope.
    let own: v1::PeekResponse = alice.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert!(own.envelopes.is_empty());
}

#[tokio::test]
async fn delivery_proof_verifies_with_the_published_key() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let info: v1::ServerInfoResponse = alice.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
    let r: v1::EnqueueResponse = alice
        .call(
            method::ENQUEUE,
            &v1::EnqueueRequest {
                channel_id: channel.clone(),
                envelope: envelope(v1::EnvelopeKind::Application, 1, b"c"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let p = r.proof.unwrap();
    let digest = quicprochat_core::ids::delivery_proof_digest(&p.envelope_id, &p.channel_id, p.seq, p.timestamp_ms);
    quicprochat_core::identity::verify_signature(&info.signing_key, &digest, &p.signature).unwrap();
}

#[tokio::test]
async fn push_and_long_poll_deliver_new_envelopes() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let _: v1::SubscribeResponse = bob.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();

    // A long-poll registered before the envelope exists is woken by it.
    let welcome_seq = {
        let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
        page.envelopes[0].seq
    };
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.call::<_, v1::PeekResponse>(
                method::FETCH_WAIT,
                &v1::FetchWaitRequest { after_seq: welcome_seq, limit: 10, timeout_ms: 20_000 },
            )
            .await
        })
    };
    let _: v1::EnqueueResponse = alice
        .call(
            method::ENQUEUE,
            &v1::EnqueueRequest {
                channel_id: channel.clone(),
                envelope: envelope(v1::EnvelopeKind::Application, 1, b"hi"),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // The server opens the push stream with its first push.
    let mut push = tokio::time::timeout(Duration::from_secs(10), bob.accept_push()).await.unwrap().unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(10), push.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.event_type, event::MESSAGE_NOTIFICATION);
    let note = v1::MessageNotification::decode(frame.payload).unwrap();
    assert_eq!(note.envelope.unwrap().envelope.unwrap().payload.to_vec(), private(b"hi"));

    let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(woke.envelopes.len(), 1);
    assert_eq!(woke.envelopes[0].envelope.as_ref().unwrap().payload.to_vec(), private(b"hi"));
}

#[tokio::test]
async fn queued_envelopes_survive_a_restart() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, bob_token, _) = user(&server, "bob").await;
    let (_channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let TestServer { server: running, dir } = server;
    running.shutdown().await.unwrap();
    let restarted =
        quicprochat_server::start(quicprochat_server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path()))
            .await
            .unwrap();
    let server = TestServer { server: restarted, dir };
    let bob = server.client().await;
    let _: v1::ResumeResponse =
        bob.call(method::RESUME, &v1::ResumeRequest { session_token: bob_token.into() }).await.unwrap();
    let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert_eq!(page.envelopes.len(), 1);
    assert_eq!(page.envelopes[0].envelope.as_ref().unwrap().kind, v1::EnvelopeKind::Welcome as i32);
}
