//! SDK integration tests against a real server on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conversations;
mod dm;
mod echo_bot;
mod export;
mod group;
mod killed;
mod outbox;
mod rich;

use std::path::Path;
use std::time::Duration;

use quicprochat_sdk::{ClientConfig, ClientEvent, KdfStrength, QpcClient, Trust};
use quicprochat_server::{RunningServer, ServerConfig};
use tokio::sync::broadcast;

pub async fn start_server(dir: &Path) -> RunningServer {
    start_server_with(dir, |_| {}).await
}

/// [`start_server`] with its configuration changed by `adjust` first.
pub async fn start_server_with(dir: &Path, adjust: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    // QPC_TEST_LOG=debug shows client and server logs when a test needs explaining.
    if let Ok(filter) = std::env::var("QPC_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    adjust(&mut config);
    quicprochat_server::start(config).await.unwrap()
}

pub async fn client(server: &RunningServer, state_dir: &Path) -> QpcClient {
    client_with(server, state_dir, |_| {}).await
}

/// [`client`] with its configuration changed by `adjust` first.
pub async fn client_with(
    server: &RunningServer,
    state_dir: &Path,
    adjust: impl FnOnce(&mut ClientConfig),
) -> QpcClient {
    let mut config =
        ClientConfig::new(server.local_addr(), Trust::PinnedCertificate(server.certificate_der().to_vec()), state_dir);
    config.kdf = KdfStrength::InsecureTestOnly;
    adjust(&mut config);
    QpcClient::connect(config).await.unwrap()
}

/// Waits (bounded) for the first event matching `pred`.
pub async fn next_event(
    events: &mut broadcast::Receiver<ClientEvent>,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream failed: {e}"),
            Err(_) => panic!("timed out waiting for an event"),
        }
    }
}

/// A registered user with its client and its event stream.
#[derive(Debug)]
pub struct Member {
    pub client: QpcClient,
    pub events: broadcast::Receiver<ClientEvent>,
    _dir: tempfile::TempDir,
}

/// Registers `name` with a client of its own.
pub async fn member(server: &RunningServer, name: &str) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let client = client(server, dir.path()).await;
    let events = client.subscribe();
    client.register(name, b"pw").await.unwrap();
    Member { client, events, _dir: dir }
}

pub fn received_text(e: &ClientEvent) -> Option<(&str, &str)> {
    match e {
        ClientEvent::MessageReceived { message, .. } => Some((message.sender.as_str(), message.text.as_str())),
        _ => None,
    }
}
