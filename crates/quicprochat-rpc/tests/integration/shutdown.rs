//! Graceful shutdown.

use quicprochat_proto::v1;
use quicprochat_rpc::{Error, SHUTDOWN_REASON, Status};
use tokio::task::JoinSet;

use crate::harness::*;

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_calls_finish() {
    let mut server = TestServer::start().await;
    let client = server.client().await;

    let slow_client = client.clone();
    let mut slow = JoinSet::new();
    slow.spawn(async move { slow_client.call::<_, v1::HealthResponse>(SLOW, &v1::HealthRequest {}).await });
    server.slow_call_entered().await;

    server.shutdown.cancel();

    // New calls on the draining connection are refused as UNAVAILABLE.
    let err = tokio::time::timeout(WAIT, client.call::<_, v1::HealthResponse>(HEALTH, &v1::HealthRequest {}))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Unavailable));
    assert!(err.is_retryable());

    // The in-flight call completes once its handler does.
    server.open_gate(1);
    let resp = tokio::time::timeout(WAIT, slow.join_next()).await.unwrap().unwrap().unwrap().unwrap();
    assert_eq!(resp.status, "serving");

    // serve() returns, and the connection was closed with code 0.
    tokio::time::timeout(WAIT, server.task.join_next()).await.unwrap().unwrap().unwrap().unwrap();
    tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    match client.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code, quinn::VarInt::from_u32(0));
            assert_eq!(&close.reason[..], SHUTDOWN_REASON);
        }
        other => panic!("unexpected close reason {other:?}"),
    }
    let err = client.call::<_, v1::HealthResponse>(HEALTH, &v1::HealthRequest {}).await.unwrap_err();
    assert!(matches!(err, Error::Connection(_)));
}

#[tokio::test]
async fn shutdown_with_idle_connections_is_prompt() {
    let mut server = TestServer::start().await;
    let clients = [server.client().await, server.client().await];
    server.shutdown.cancel();
    tokio::time::timeout(WAIT, server.task.join_next()).await.unwrap().unwrap().unwrap().unwrap();
    for client in &clients {
        tokio::time::timeout(WAIT, client.closed()).await.unwrap();
    }
}
