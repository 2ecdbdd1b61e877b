//! The `qpc-server` binary as an operator runs it: flags, metrics endpoint, SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use quicprochat_proto::{method, v1};
use quicprochat_rpc::{RpcClient, ServerTrust, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{login, register, register_device};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Starts the `qpc-server` binary in dev mode on free ports with metrics on; returns the child,
/// a connected client and the metrics port.
async fn spawn_server(dir: &std::path::Path) -> (std::process::Child, RpcClient, u16) {
    let (quic, http) = (free_udp_port(), free_tcp_port());
    let child = Command::new(env!("CARGO_BIN_EXE_qpc-server"))
        .args(["--listen", &format!("127.0.0.1:{quic}"), "--metrics-listen", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(dir)
        .env("QPC_LOG", "info")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait (bounded) for the dev certificate, then for the server to answer.
    let cert_path = dir.join(quicprochat_server::files::DEV_CERT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rpc = loop {
        if let Ok(cert) = std::fs::read(&cert_path) {
            let tls = quicprochat_rpc::tls::client_config(&ServerTrust::Pinned(cert)).unwrap();
            if let Ok(Ok(rpc)) = tokio::time::timeout(
                Duration::from_secs(2),
                RpcClient::connect(format!("127.0.0.1:{quic}").parse().unwrap(), "localhost", tls),
            )
            .await
            {
                break rpc;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "qpc-server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (child, rpc, http)
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn exit_output(mut child: std::process::Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let _ = child.stdin.take();
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_metrics_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rpc, http) = spawn_server(dir.path()).await;
    for _ in 0..3 {
        let _: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    }
    let metrics = scrape(http).await;
    assert!(metrics.contains("200 OK"), "{metrics}");
    assert!(metrics.contains(r#"qpc_rpc_requests_total{method="Health",status="OK"} 3"#), "{metrics}");
    assert!(metrics.contains("qpc_rpc_duration_seconds"), "{metrics}");
    assert!(metrics.contains("qpc_connections"), "{metrics}");

    // SIGTERM: drain, close, exit 0.
    rpc.close("done");
    sigterm(&child);
    let output = exit_output(child).await;
    assert!(output.status.success(), "exit: {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_calls_finish_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (child, rpc, http) = spawn_server(dir.path()).await;
    register(&rpc, "alice", b"pw").await;
    let token = login(&rpc, "alice", b"pw").await.unwrap();
    // Refused before a device is bound: counted under its method and status.
    let (status, _) = rpc.call_raw(method::PEEK, &[]).await.unwrap();
    assert_eq!(status, Status::Forbidden);
    register_device(&rpc, &token).await;
    let metrics = scrape(http).await;
    for line in [
        r#"qpc_rpc_requests_total{method="RegisterStart",status="OK"} 1"#,
        r#"qpc_rpc_requests_total{method="LoginFinish",status="OK"} 1"#,
        r#"qpc_rpc_requests_total{method="Peek",status="FORBIDDEN"} 1"#,
        r#"qpc_rpc_requests_total{method="RegisterDevice",status="OK"} 1"#,
        r#"qpc_rpc_duration_seconds_count{method="RegisterDevice"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // A long poll is in flight when the signal comes. (`biased`: it is sent before the Health
    // call, whose answer shows the server has taken its stream.)
    let request = v1::FetchWaitRequest { after_seq: 0, limit: 0, timeout_ms: 8_000 };
    let wait = rpc.call::<_, v1::PeekResponse>(method::FETCH_WAIT, &request);
    tokio::pin!(wait);
    tokio::select! {
        biased;
        early = &mut wait => panic!("FetchWait returned with nothing queued: {early:?}"),
        health = rpc.call::<_, v1::HealthResponse>(method::HEALTH, &v1::HealthRequest {}) => { health.unwrap(); }
    }
    sigterm(&child);

    // Once the drain has begun, new calls get UNAVAILABLE while the long poll still runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = tokio::select! {
            biased;
            early = &mut wait => panic!("FetchWait ended before the drain was seen: {early:?}"),
            answer = rpc.call_raw(method::HEALTH, &[]) => answer.unwrap(),
        };
        match answer.0 {
            Status::Unavailable => break,
            Status::Ok => {}
            other => panic!("unexpected status while draining: {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the server never started draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The in-flight call completes normally (empty at its timeout), then the process exits 0.
    let page = tokio::time::timeout(Duration::from_secs(30), &mut wait)
        .await
        .expect("the drain did not let the FetchWait finish")
        .expect("the in-flight FetchWait was cut off");
    assert!(page.envelopes.is_empty());
    let output = exit_output(child).await;
    assert!(output.status.success(), "exit: {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}
