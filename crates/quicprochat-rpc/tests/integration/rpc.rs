//! Calls: success, refusals, malformed frames, sessions, concurrency, deadlines.

use bytes::Bytes;
use prost::Message as _;
use quicprochat_proto::v1;
use quicprochat_rpc::frame::{self, RequestHeader, ResponseHeader};
use quicprochat_rpc::{Error, RpcClient, Status, codes};
use tokio::task::JoinSet;

use crate::harness::*;

async fn health(client: &RpcClient) -> v1::HealthResponse {
    tokio::time::timeout(WAIT, client.call(HEALTH, &v1::HealthRequest {})).await.unwrap().unwrap()
}

/// Writes raw bytes on a fresh stream (finishing it if asked) and reads the whole response.
async fn raw_exchange(client: &RpcClient, bytes: &[u8], finish: bool) -> (ResponseHeader, Bytes) {
    let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let response = tokio::time::timeout(WAIT, recv.read_to_end(1 << 16)).await.unwrap().unwrap();
    let (header, payload) = frame::decode_response(&response, 1 << 16).unwrap();
    (header, Bytes::copy_from_slice(payload))
}

fn error_body(payload: Bytes) -> v1::Error {
    v1::Error::decode(payload).unwrap()
}

#[tokio::test]
async fn ok_call() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let resp = health(&client).await;
    assert_eq!(resp.status, "serving");
    assert_eq!(client.max_payload(), frame::DEFAULT_MAX_PAYLOAD);
}

#[tokio::test]
async fn unknown_method() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let (status, payload) = client.call_raw(4242, &[]).await.unwrap();
    assert_eq!(status, Status::UnknownMethod);
    assert_eq!(error_body(payload).code, u32::from(Status::UnknownMethod.as_u8()));

    let err = client.call::<_, v1::HealthResponse>(4242, &v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::UnknownMethod));
    assert!(!err.is_retryable());
    health(&client).await;
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_without_reading_the_body() {
    let server = TestServer::start().await;
    let client = server.client().await;

    // Only the header: if the server waited for the declared body, this would time out.
    let header = RequestHeader { method_id: HEALTH, request_id: 77, payload_len: SERVER_MAX_PAYLOAD + 1 };
    let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
    send.write_all(&header.encode()).await.unwrap();
    let response = tokio::time::timeout(WAIT, recv.read_to_end(1 << 16)).await.unwrap().unwrap();
    let (head, payload) = frame::decode_response(&response, 1 << 16).unwrap();
    assert_eq!(Status::from_u8(head.status), Some(Status::PayloadTooLarge));
    assert_eq!(head.request_id, 77);
    assert_eq!(v1::Error::decode(payload).unwrap().code, 7);
    // The server told us to stop sending the body.
    let stopped = tokio::time::timeout(WAIT, send.stopped()).await.unwrap().unwrap();
    assert_eq!(stopped, Some(codes::REQUEST_REFUSED));

    // A real oversized body from the client (whose own limit is larger) gets the same answer.
    let big = vec![0u8; 2 * SERVER_MAX_PAYLOAD as usize];
    let (status, _) = tokio::time::timeout(WAIT, client.call_raw(HEALTH, &big)).await.unwrap().unwrap();
    assert_eq!(status, Status::PayloadTooLarge);

    // Above the client's own limit nothing is sent at all.
    let huge = vec![0u8; frame::DEFAULT_MAX_PAYLOAD as usize + 1];
    let err = client.call_raw(HEALTH, &huge).await.unwrap_err();
    assert!(matches!(err, Error::Frame(frame::FrameError::PayloadTooLarge { .. })));

    health(&client).await;
}

#[tokio::test]
async fn malformed_frames_are_bad_requests() {
    let server = TestServer::start().await;
    let client = server.client().await;

    // Truncated header.
    let (head, payload) = raw_exchange(&client, &[0, 1, 2, 3, 4], true).await;
    assert_eq!(Status::from_u8(head.status), Some(Status::BadRequest));
    assert_eq!(head.request_id, 0);
    assert!(error_body(payload).message.contains("truncated request header"));

    // Body shorter than declared.
    let mut frame = RequestHeader { method_id: HEALTH, request_id: 5, payload_len: 100 }.encode().to_vec();
    frame.extend_from_slice(&[0u8; 10]);
    let (head, payload) = raw_exchange(&client, &frame, true).await;
    assert_eq!(Status::from_u8(head.status), Some(Status::BadRequest));
    assert_eq!(head.request_id, 5);
    assert!(error_body(payload).message.contains("truncated request payload"));

    // A payload that is not protobuf: field 1, length 5, one byte.
    let (status, payload) = client.call_raw(HEALTH, &[0x0a, 0x05, 0x01]).await.unwrap();
    assert_eq!(status, Status::BadRequest);
    assert!(error_body(payload).message.contains("malformed request"));

    // An empty stream.
    let (head, _) = raw_exchange(&client, &[], true).await;
    assert_eq!(Status::from_u8(head.status), Some(Status::BadRequest));

    // A second frame after the first: one request per stream, so neither is run.
    let mut two = RequestHeader { method_id: HEALTH, request_id: 6, payload_len: 0 }.encode().to_vec();
    two.extend_from_slice(&RequestHeader { method_id: HEALTH, request_id: 7, payload_len: 0 }.encode());
    let (head, payload) = raw_exchange(&client, &two, true).await;
    assert_eq!(Status::from_u8(head.status), Some(Status::BadRequest));
    assert_eq!(head.request_id, 6);
    assert!(error_body(payload).message.contains("after the request frame"));

    health(&client).await;
}

#[tokio::test]
async fn calls_close_their_streams_without_stopping_them() {
    // Each side reads the end of the other's frame, so neither stops a stream the other has
    // finished: a STOP_SENDING per call would cost a packet each way. The end usually arrives
    // with the frame's last bytes; one that arrives later may still be stopped, hence the margin.
    let server = TestServer::start().await;
    let client = server.client().await;
    const CALLS: u64 = 20;
    for _ in 0..CALLS {
        health(&client).await;
    }
    let stats = client.connection().stats();
    assert!(stats.frame_rx.stop_sending < CALLS / 2, "server stopped {} of {CALLS} calls", stats.frame_rx.stop_sending);
    assert!(stats.frame_tx.stop_sending < CALLS / 2, "client stopped {} of {CALLS} calls", stats.frame_tx.stop_sending);
}

#[tokio::test]
async fn stalled_request_is_cut_off_without_affecting_other_streams() {
    let server = TestServer::start().await;
    let client = server.client().await;

    let header = RequestHeader { method_id: HEALTH, request_id: 9, payload_len: 10 };
    let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
    send.write_all(&header.encode()).await.unwrap();
    send.write_all(&[0u8; 3]).await.unwrap();
    // Meanwhile other calls are served.
    health(&client).await;
    let response = tokio::time::timeout(WAIT, recv.read_to_end(1 << 16)).await.unwrap().unwrap();
    let (head, _) = frame::decode_response(&response, 1 << 16).unwrap();
    assert_eq!(Status::from_u8(head.status), Some(Status::DeadlineExceeded));
    assert_eq!(head.request_id, 9);
    health(&client).await;
}

#[tokio::test]
async fn sessions_are_per_connection() {
    let mut server = TestServer::start().await;
    let client = server.client().await;

    let err = client.call::<_, v1::HealthResponse>(WHOAMI, &v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));

    let login: v1::ResumeResponse =
        client.call(LOGIN, &v1::ResumeRequest { session_token: Bytes::from_static(b"alice") }).await.unwrap();
    assert_eq!(login.username, "alice");
    let me: v1::HealthResponse = client.call(WHOAMI, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(me.status, "alice");

    // Another connection is not bound.
    let other = server.client().await;
    let err = other.call::<_, v1::HealthResponse>(WHOAMI, &v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));

    // Logout unbinds.
    let _: v1::LogoutResponse = other.call(LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    let _: v1::ResumeResponse =
        other.call(LOGIN, &v1::ResumeRequest { session_token: Bytes::from_static(b"bob") }).await.unwrap();
    let _: v1::LogoutResponse = other.call(LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    let err = other.call::<_, v1::HealthResponse>(WHOAMI, &v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));

    // The disconnect hook learns the session the connection ended with.
    client.close("done");
    let (_, session) = tokio::time::timeout(WAIT, server.disconnects.recv()).await.unwrap().unwrap();
    assert_eq!(session.as_deref(), Some("alice"));
    other.close("done");
    let (_, session) = tokio::time::timeout(WAIT, server.disconnects.recv()).await.unwrap().unwrap();
    assert_eq!(session, None);
}

#[tokio::test]
async fn fifty_calls_complete_while_a_slow_call_waits() {
    let mut server = TestServer::start().await;
    let client = server.client().await;

    let slow_client = client.clone();
    let mut slow = JoinSet::new();
    slow.spawn(async move { slow_client.call::<_, v1::HealthResponse>(SLOW, &v1::HealthRequest {}).await });
    server.slow_call_entered().await;

    let mut calls = JoinSet::new();
    for _ in 0..50 {
        let client = client.clone();
        calls.spawn(async move { client.call::<_, v1::HealthResponse>(HEALTH, &v1::HealthRequest {}).await });
    }
    let all = tokio::time::timeout(WAIT, async {
        let mut n = 0;
        while let Some(done) = calls.join_next().await {
            assert_eq!(done.unwrap().unwrap().status, "serving");
            n += 1;
        }
        n
    })
    .await
    .unwrap();
    assert_eq!(all, 50);

    server.open_gate(1);
    let slow_done = tokio::time::timeout(WAIT, slow.join_next()).await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(slow_done.status, "serving");
}

#[tokio::test]
async fn route_deadline_is_enforced() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let err = tokio::time::timeout(WAIT, client.call::<_, v1::HealthResponse>(NEVER, &v1::HealthRequest {}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::DeadlineExceeded));
    assert!(err.is_retryable());
}

#[tokio::test]
async fn panicking_handler_answers_internal() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let err = client.call::<_, v1::HealthResponse>(PANIC, &v1::HealthRequest {}).await.unwrap_err();
    let rpc = err.as_rpc().unwrap();
    assert_eq!(rpc.status, Status::Internal);
    assert_eq!(rpc.message, "internal error");
    health(&client).await;
}

#[tokio::test]
async fn layers_wrap_every_call_in_order_and_may_answer_themselves() {
    let server = TestServer::start().await;
    let client = server.client().await;
    health(&client).await;
    let err = client.call::<_, v1::HealthResponse>(WHOAMI, &v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));
    let log = std::mem::take(&mut *server.layer_log.lock().unwrap());
    assert_eq!(
        log,
        [
            format!("outer>{HEALTH}"),
            format!("inner>{HEALTH}"),
            "inner<OK".to_owned(),
            "outer<OK".to_owned(),
            format!("outer>{WHOAMI}(authed)"),
            format!("inner>{WHOAMI}(authed)"),
            "inner<UNAUTHENTICATED".to_owned(),
            "outer<UNAUTHENTICATED".to_owned(),
        ]
    );

    // The gate layer answers for the banned session: the inner layer and the handler never run.
    let _: v1::ResumeResponse =
        client.call(LOGIN, &v1::ResumeRequest { session_token: Bytes::from_static(BANNED.as_bytes()) }).await.unwrap();
    server.layer_log.lock().unwrap().clear();
    let err = client.call::<_, v1::HealthResponse>(WHOAMI, &v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Forbidden));
    assert_eq!(*server.layer_log.lock().unwrap(), [format!("outer>{WHOAMI}(authed)"), "outer<FORBIDDEN".to_owned()]);
}
