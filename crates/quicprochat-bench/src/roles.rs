//! The servers under test, each run as its own process (`qpc-bench serve <role>`): the real
//! `qpc-server`, and the raw quinn servers that bound it. Each prints `READY <addr>` once it
//! listens, with its certificate in `DIR/server-cert.der`, and stops when its stdin closes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use quicprochat_rpc::frame;
use quicprochat_rpc::{ServerOptions, TransportOptions};
use quicprochat_server::{Rate, ServerConfig};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

/// Largest frame the baselines read.
const MAX_FRAME: usize = 16 << 20;
/// Method id of the push baseline's "subscribe" request.
pub const PUSH_SUBSCRIBE: u16 = 1;
/// Method id of the push baseline's "publish" request: `count u32 | interval_us u32 | payload u32`.
pub const PUSH_PUBLISH: u16 = 2;
/// Environment of a `qpc` role: the PostgreSQL URL to use instead of the embedded store.
pub const DB_URL_ENV: &str = "QPC_BENCH_DB_URL";
/// Environment of a `qpc` role: the PostgreSQL schema shared by the nodes of one run.
pub const DB_SCHEMA_ENV: &str = "QPC_BENCH_DB_SCHEMA";
/// Environment of a `qpc` role: serve the server's Prometheus metrics on this TCP address
/// (`QPC_BENCH_METRICS=127.0.0.1:9100 qpc-bench relay --raw …`, then scrape it during the run).
pub const METRICS_ENV: &str = "QPC_BENCH_METRICS";
/// Frames queued per push subscriber before new ones are dropped (as the server's push queue).
const PUSH_QUEUE: usize = 1024;

/// Transport settings shared by every role, so the baselines run on the same QUIC and TLS
/// configuration as the server.
pub fn transport() -> TransportOptions {
    TransportOptions::default()
}

/// Runs a role until stdin closes.
pub async fn serve(role: &str, dir: &Path) -> anyhow::Result<()> {
    let addr = match role {
        "qpc" => {
            let server = start_qpc(dir).await?;
            let addr = server.local_addr();
            announce(addr);
            wait_for_stdin_close().await;
            server.shutdown().await?;
            return Ok(());
        }
        "echo" => spawn_raw(dir, Raw::Echo)?,
        "push" => spawn_raw(dir, Raw::Push)?,
        other => anyhow::bail!("unknown role {other:?} (qpc, echo, push)"),
    };
    announce(addr);
    wait_for_stdin_close().await;
    Ok(())
}

fn announce(addr: SocketAddr) {
    println!("READY {addr}");
}

async fn wait_for_stdin_close() {
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// The real server, dev mode, with limits out of the way of a load test: the rates and queue
/// depth that protect a production server would otherwise be what is measured.
async fn start_qpc(dir: &Path) -> anyhow::Result<quicprochat_server::RunningServer> {
    if let Ok(addr) = std::env::var(METRICS_ENV) {
        let addr: SocketAddr = addr.parse().with_context(|| format!("{METRICS_ENV}={addr}"))?;
        quicprochat_server::serve_metrics(addr)?;
    }
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?, dir);
    let unlimited = Rate { per_minute: u32::MAX / 2, burst: u32::MAX / 2 };
    config.limits.enqueue_rate = unlimited;
    config.limits.auth_rate = unlimited;
    config.limits.lookup_rate = unlimited;
    config.limits.max_queue_depth = u32::MAX / 2;
    config.rpc = ServerOptions { transport: transport(), ..ServerOptions::default() };
    // Set by the parent for cluster runs: every node on one PostgreSQL schema.
    if let Ok(url) = std::env::var(DB_URL_ENV) {
        let mut options = quicprochat_server::store::PostgresOptions::new(url);
        options.schema = std::env::var(DB_SCHEMA_ENV).ok();
        config.store = quicprochat_server::store::StoreBackend::Postgres(options);
    }
    quicprochat_server::start(config).await.context("starting qpc-server")
}

#[derive(Clone, Copy)]
enum Raw {
    Echo,
    Push,
}

fn spawn_raw(dir: &Path, kind: Raw) -> anyhow::Result<SocketAddr> {
    let (cert, _) = quicprochat_rpc::tls::load_or_generate_dev_certificate(dir)?;
    let config = quicprochat_rpc::tls::server_config(&cert, &transport())?;
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    let subscribers: Subscribers = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let subscribers = Arc::clone(&subscribers);
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let (connection, subscribers) = (connection.clone(), Arc::clone(&subscribers));
                    tokio::spawn(async move {
                        let _ = match kind {
                            Raw::Echo => echo(send, recv).await,
                            Raw::Push => push_request(&connection, &subscribers, send, recv).await,
                        };
                    });
                }
            });
        }
    });
    Ok(addr)
}

/// One request frame in, the same payload back in a response frame: framing and transport only.
async fn echo(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> anyhow::Result<()> {
    let request = recv.read_to_end(MAX_FRAME).await?;
    let (header, payload) = frame::decode_request(&request, MAX_FRAME as u32)?;
    let response = frame::encode_response(0, header.request_id, payload, MAX_FRAME as u32)?;
    send.write_all(&response).await?;
    send.finish()?;
    Ok(())
}

type Subscribers = Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>;

/// Subscribe: open the connection's push stream, fed by a bounded queue and one writer task.
/// Publish: write `count` frames, `interval_us` apart, to every subscriber, each carrying the
/// wall-clock time it was queued (the client measures latency against it).
async fn push_request(
    connection: &quinn::Connection,
    subscribers: &Subscribers,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let request = recv.read_to_end(MAX_FRAME).await?;
    let (header, payload) = frame::decode_request(&request, MAX_FRAME as u32)?;
    match header.method_id {
        PUSH_SUBSCRIBE => {
            let mut uni = connection.open_uni().await?;
            let (tx, mut rx) = mpsc::channel::<Bytes>(PUSH_QUEUE);
            tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    if uni.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
            subscribers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(tx);
        }
        PUSH_PUBLISH => {
            let field = |i: usize| -> anyhow::Result<u32> {
                let bytes = payload.get(i * 4..i * 4 + 4).context("publish request too short")?;
                Ok(u32::from_be_bytes(bytes.try_into()?))
            };
            let (count, interval, size) = (field(0)?, Duration::from_micros(u64::from(field(1)?)), field(2)? as usize);
            let targets: Vec<mpsc::Sender<Bytes>> =
                subscribers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
            let mut tick = tokio::time::interval(interval.max(Duration::from_micros(1)));
            for _ in 0..count {
                tick.tick().await;
                let mut body = wall_clock_nanos().to_be_bytes().to_vec();
                body.resize(size.max(8), 0);
                let frame = frame::encode_push(1, &body, MAX_FRAME as u32)?;
                for target in &targets {
                    let _ = target.try_send(frame.clone());
                }
            }
        }
        other => anyhow::bail!("unknown push baseline method {other}"),
    }
    let response = frame::encode_response(0, header.request_id, &[], MAX_FRAME as u32)?;
    send.write_all(&response).await?;
    send.finish()?;
    Ok(())
}

/// Nanoseconds since the Unix epoch: comparable across processes on one machine.
pub fn wall_clock_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
