//! The push stream.

use quicprochat_proto::v1;
use quicprochat_rpc::PushFrame;

use crate::harness::*;

#[tokio::test]
async fn push_frames_arrive_in_order_on_one_stream() {
    let server = TestServer::start().await;
    let client = server.client().await;

    let sent: PushRequest = client.call(PUSH, &PushRequest { count: 100 }).await.unwrap();
    assert_eq!(sent.count, 100);
    let mut stream = tokio::time::timeout(WAIT, client.accept_push()).await.unwrap().unwrap();
    for i in 0..100u32 {
        let frame: PushFrame = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame.event_type, EVENT);
        let event: v1::SessionExpired = frame.decode().unwrap();
        assert_eq!(event.reason, i.to_string());
    }

    // Later pushes use the same stream.
    let _: PushRequest = client.call(PUSH, &PushRequest { count: 2 }).await.unwrap();
    for i in 0..2u32 {
        let frame = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
        let event: v1::SessionExpired = frame.decode().unwrap();
        assert_eq!(event.reason, i.to_string());
    }
}

#[tokio::test]
async fn push_stream_ends_cleanly_on_shutdown() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    let _: PushRequest = client.call(PUSH, &PushRequest { count: 1 }).await.unwrap();
    let mut stream = client.accept_push().await.unwrap();
    assert!(stream.next().await.unwrap().is_some());

    server.shutdown.cancel();
    let end = tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap();
    assert_eq!(end, None);
    tokio::time::timeout(WAIT, server.task.join_next()).await.unwrap().unwrap().unwrap().unwrap();
}
