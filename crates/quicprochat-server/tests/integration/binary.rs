//! The `qpc-server` binary as an operator runs it: flags, metrics endpoint, SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use quicprochat_proto::{method, v1};
use quicprochat_rpc::{RpcClient, ServerTrust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

#[tokio::test(flavor = "multi_thread")]
async fn binary_serves_metrics_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (quic, http) = (free_udp_port(), free_tcp_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_qpc-server"))
        .args(["--listen", &format!("127.0.0.1:{quic}"), "--metrics-listen", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env("QPC_LOG", "info")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait (bounded) for the dev certificate, then for the server to answer.
    let cert_path = dir.path().join(quicprochat_server::files::DEV_CERT);
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
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || {
        let _ = child.stdin.take();
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "exit: {:?}", output.status);
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}
