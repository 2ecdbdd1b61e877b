//! Channels, fan-out, commit sequencing, peek/ack, long-poll and push.

use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{Message, event, method, v1};
use quicprochat_rpc::{RpcClient, Status};

use crate::harness::{TestServer, dm_with, user};

async fn create_dm(rpc: &RpcClient, peer: &str) -> v1::CreateChannelResponse {
    rpc.call(method::CREATE_CHANNEL, &v1::CreateChannelRequest { kind: v1::ChannelKind::Dm as i32, peer: peer.into() })
        .await
        .unwrap()
}

fn envelope(kind: v1::EnvelopeKind, epoch: u64, payload: &[u8]) -> Option<v1::Envelope> {
    Some(v1::Envelope { kind: kind as i32, epoch, payload: Bytes::copy_from_slice(payload) })
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
    let (_bob, _, bob_device) = user(&server, "bob").await;
    let channel = dm_with(&alice, "bob", &bob_device).await;
    let commit = |epoch| v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: envelope(v1::EnvelopeKind::Commit, epoch, b"commit"),
        ..Default::default()
    };
    let err = alice.call::<_, v1::EnqueueResponse>(method::ENQUEUE, &commit(0)).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Conflict));
    let quicprochat_rpc::Error::Rpc(rpc_err) = err else { panic!("expected an RPC error") };
    assert_eq!(rpc_err.details.get("current_epoch").map(String::as_str), Some("1"));
    let ok: v1::EnqueueResponse = alice.call(method::ENQUEUE, &commit(1)).await.unwrap();
    assert_eq!(ok.epoch, 2);
}

#[tokio::test]
async fn only_members_enqueue_and_recipients_peek_then_ack() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, bob_device) = user(&server, "bob").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    let channel = dm_with(&alice, "bob", &bob_device).await;

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
    let payloads: Vec<&[u8]> = page.envelopes.iter().map(|e| e.envelope.as_ref().unwrap().payload.as_ref()).collect();
    assert_eq!(payloads, vec![&b"welcome"[..], b"ciphertext-1", b"ciphertext-2"], "welcome first, retry stored once");
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
    let (_bob, _, bob_device) = user(&server, "bob").await;
    let channel = dm_with(&alice, "bob", &bob_device).await;
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
    let (bob, _, bob_device) = user(&server, "bob").await;
    let channel = dm_with(&alice, "bob", &bob_device).await;
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
    assert_eq!(note.envelope.unwrap().envelope.unwrap().payload.as_ref(), b"hi");

    let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(woke.envelopes.len(), 1);
    assert_eq!(woke.envelopes[0].envelope.as_ref().unwrap().payload.as_ref(), b"hi");
}

#[tokio::test]
async fn queued_envelopes_survive_a_restart() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, bob_token, bob_device) = user(&server, "bob").await;
    let _channel = dm_with(&alice, "bob", &bob_device).await;
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
    assert_eq!(page.envelopes[0].envelope.as_ref().unwrap().payload.as_ref(), b"welcome");
}
