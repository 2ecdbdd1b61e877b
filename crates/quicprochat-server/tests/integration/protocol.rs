//! The wire protocol refuses bad input with typed statuses and keeps serving.

use std::time::Duration;

use quicprochat_proto::{Message, method, v1};
use quicprochat_rpc::Status;

use crate::harness::TestServer;

async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await.unwrap().unwrap()
}

fn status_of(response: &[u8]) -> u8 {
    assert!(response.len() >= 9, "short response: {response:?}");
    response[0]
}

async fn still_serving(server: &TestServer) {
    let rpc = server.client().await;
    let health: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(health.status, "serving");
}

#[tokio::test]
async fn malformed_payload_is_bad_request() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let (status, body) = rpc.call_raw(method::LOGIN_START, &[0xff, 0xff, 0xff, 0x0f]).await.unwrap();
    assert_eq!(status, Status::BadRequest);
    let err = v1::Error::decode(body).unwrap();
    assert_eq!(err.code, Status::BadRequest.as_u8() as u32);
    still_serving(&server).await;
}

#[tokio::test]
async fn truncated_header_is_bad_request() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let response = raw_exchange(rpc.connection(), &[0x03, 0x20, 0, 0]).await;
    assert_eq!(status_of(&response), Status::BadRequest.as_u8());
    still_serving(&server).await;
}

#[tokio::test]
async fn oversized_length_prefix_is_refused_before_reading() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let mut frame = Vec::new();
    frame.extend_from_slice(&method::HEALTH.to_be_bytes());
    frame.extend_from_slice(&7u32.to_be_bytes());
    frame.extend_from_slice(&u32::MAX.to_be_bytes());
    // No body follows: the server must answer from the header alone.
    let (mut send, mut recv) = rpc.connection().open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await.unwrap().unwrap();
    assert_eq!(status_of(&response), Status::PayloadTooLarge.as_u8());
    assert_eq!(&response[1..5], &7u32.to_be_bytes());
    still_serving(&server).await;
}

#[tokio::test]
async fn unknown_method_is_typed() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let (status, _) = rpc.call_raw(4242, &[]).await.unwrap();
    assert_eq!(status, Status::UnknownMethod);
    still_serving(&server).await;
}

#[tokio::test]
async fn calls_without_a_session_are_unauthenticated() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let err = rpc.call::<_, v1::PeekResponse>(method::PEEK, &v1::PeekRequest::default()).await.unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));
    let err = rpc
        .call::<_, v1::CreateChannelResponse>(method::CREATE_CHANNEL, &v1::CreateChannelRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unauthenticated));
    still_serving(&server).await;
}

#[tokio::test]
async fn a_stalled_request_stream_is_cut_off_without_affecting_others() {
    let server = TestServer::start_with(|c| c.rpc.read_timeout = Duration::from_millis(300)).await;
    let rpc = server.client().await;
    // Part of a header, and the stream is left open: the frame never completes.
    let (mut send, mut recv) = rpc.connection().open_bi().await.unwrap();
    send.write_all(&[0x03, 0x20, 0, 0]).await.unwrap();
    // The connection keeps serving other calls meanwhile.
    let health: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(health.status, "serving");
    let response = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("the stalled stream was never cut off")
        .unwrap();
    assert_eq!(status_of(&response), Status::DeadlineExceeded.as_u8());
    drop(send);
    // A stalled payload after a whole header, likewise.
    let (mut send, mut recv) = rpc.connection().open_bi().await.unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&method::HEALTH.to_be_bytes());
    frame.extend_from_slice(&9u32.to_be_bytes());
    frame.extend_from_slice(&100u32.to_be_bytes());
    frame.extend_from_slice(&[0u8; 10]);
    send.write_all(&frame).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("the stalled stream was never cut off")
        .unwrap();
    assert_eq!(status_of(&response), Status::DeadlineExceeded.as_u8());
    assert_eq!(&response[1..5], &9u32.to_be_bytes());
    drop(send);
    let _: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    still_serving(&server).await;
}
