//! The raw baselines: what QUIC with our framing (echo, push) and SQLite with the store's
//! durability settings can do on this machine, with no authentication, MLS or storage logic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quicprochat_rpc::{ServerTrust, frame};
use tokio::task::JoinSet;

use crate::process::{ServerProcess, delta};
use crate::report::{Latencies, ProcessUsage};
use crate::roles::{self, PUSH_PUBLISH, PUSH_SUBSCRIBE};

/// The shape of a load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub clients: usize,
    pub duration: Duration,
    pub payload: usize,
    pub in_flight: usize,
}

/// Completed operations over a measured window.
#[derive(Debug, Default)]
pub struct Throughput {
    pub ops: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl Throughput {
    /// Waits for every measuring loop and adds up their latencies; `started` is when they began.
    pub async fn collect(mut loops: JoinSet<anyhow::Result<Latencies>>, started: Instant) -> anyhow::Result<Self> {
        let mut latencies = Latencies::default();
        while let Some(done) = loops.join_next().await {
            latencies.extend(done??);
        }
        Ok(Self { ops: latencies.len() as u64, elapsed: started.elapsed(), latencies })
    }

    pub fn per_sec(&self) -> f64 {
        if self.elapsed.is_zero() { 0.0 } else { self.ops as f64 / self.elapsed.as_secs_f64() }
    }
}

/// A raw QUIC connection with our TLS and transport settings.
pub async fn connect(server: &ServerProcess) -> anyhow::Result<quinn::Connection> {
    let config =
        quicprochat_rpc::tls::client_config_with(&ServerTrust::Pinned(server.cert_der.clone()), &roles::transport())?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint.connect(server.addr, "localhost")?.await?)
}

/// One request frame out, one response frame back, on a fresh bidirectional stream.
async fn exchange(connection: &quinn::Connection, method_id: u16, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&frame::encode_request(method_id, 1, payload, u32::MAX)?).await?;
    send.finish()?;
    Ok(recv.read_to_end(usize::MAX).await?)
}

/// `echo-baseline`: `clients` connections, each with `in_flight` request loops.
pub async fn echo(load: Load, pin: Option<&str>) -> anyhow::Result<(Throughput, ProcessUsage)> {
    let server = ServerProcess::spawn("echo", pin).await?;
    let mut connections = Vec::new();
    for _ in 0..load.clients {
        connections.push(connect(&server).await?);
    }
    let payload = Arc::new(vec![0x5a; load.payload]);
    let before = server.usage()?;
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut loops = JoinSet::new();
    for connection in &connections {
        for _ in 0..load.in_flight.max(1) {
            let (connection, payload) = (connection.clone(), Arc::clone(&payload));
            loops.spawn(async move {
                let mut latencies = Latencies::default();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    exchange(&connection, 1, &payload).await?;
                    latencies.record(sent.elapsed());
                }
                anyhow::Ok(latencies)
            });
        }
    }
    let result = Throughput::collect(loops, started).await?;
    let usage = delta(before, server.usage()?);
    server.stop().await;
    Ok((result, usage))
}

/// `push-baseline`: `subscribers` connections each receive every frame the server publishes,
/// `rate` frames per second for the duration. Returns the latencies (server queueing to
/// client receipt), frames received and frames expected.
pub async fn push(
    subscribers: usize,
    rate: u32,
    load: Load,
    pin: Option<&str>,
) -> anyhow::Result<(Latencies, u64, u64, ProcessUsage)> {
    let server = ServerProcess::spawn("push", pin).await?;
    let count = (f64::from(rate) * load.duration.as_secs_f64()).ceil().max(1.0) as u32;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    let mut connections = Vec::new();
    for _ in 0..subscribers {
        let connection = connect(&server).await?;
        exchange(&connection, PUSH_SUBSCRIBE, &[]).await?;
        let (received, subscribed) = (Arc::clone(&received), connection.clone());
        readers.spawn(async move {
            // The stream shows up with its first frame.
            let mut uni = subscribed.accept_uni().await?;
            let mut latencies = Latencies::default();
            let mut header = [0u8; frame::PUSH_HEADER_LEN];
            for _ in 0..count {
                uni.read_exact(&mut header).await?;
                let len = u32::from_be_bytes(header[2..6].try_into()?) as usize;
                let mut body = vec![0u8; len];
                uni.read_exact(&mut body).await?;
                let queued = u64::from_be_bytes(body.get(..8).context("short push frame")?.try_into()?);
                latencies.record(Duration::from_nanos(roles::wall_clock_nanos().saturating_sub(queued)));
                received.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        });
        connections.push(connection);
    }
    let control = connect(&server).await?;
    let interval_us = (1_000_000 / rate.max(1)).max(1);
    let mut publish = count.to_be_bytes().to_vec();
    publish.extend_from_slice(&interval_us.to_be_bytes());
    publish.extend_from_slice(&(load.payload as u32).to_be_bytes());
    let before = server.usage()?;
    exchange(&control, PUSH_PUBLISH, &publish).await?;
    let mut latencies = Latencies::default();
    // Frames dropped by a full queue never arrive: stop waiting a while after the last one.
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(done) = readers.join_next().await {
            latencies.extend(done??);
        }
        anyhow::Ok(())
    })
    .await;
    if wait.is_err() {
        readers.abort_all();
    }
    let usage = delta(before, server.usage()?);
    server.stop().await;
    Ok((latencies, received.load(Ordering::Relaxed), u64::from(count) * subscribers as u64, usage))
}

/// `sqlite-baseline`: single inserts of `payload` bytes, each its own transaction, with the
/// store's durability (WAL, `synchronous = FULL`: one sync per commit), for the duration.
pub async fn sqlite(load: Load) -> anyhow::Result<Throughput> {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir()?;
        let conn = rusqlite::Connection::open(dir.path().join("baseline.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch("CREATE TABLE envelopes (seq INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL)")?;
        let payload = vec![0x5a; load.payload];
        let mut insert = conn.prepare("INSERT INTO envelopes (payload) VALUES (?1)")?;
        let mut result = Throughput::default();
        let started = Instant::now();
        while started.elapsed() < load.duration {
            let t = Instant::now();
            insert.execute([&payload])?;
            result.latencies.record(t.elapsed());
            result.ops += 1;
        }
        result.elapsed = started.elapsed();
        anyhow::Ok(result)
    })
    .await?
}

/// Memory a raw, established QUIC connection costs the echo server, KiB per connection.
pub async fn idle(connections: usize, pin: Option<&str>) -> anyhow::Result<f64> {
    let server = ServerProcess::spawn("echo", pin).await?;
    let first = connect(&server).await?;
    exchange(&first, 1, b"warm").await?;
    let before = server.usage()?.rss_kib;
    let mut open = vec![first];
    for _ in 0..connections {
        let connection = connect(&server).await?;
        exchange(&connection, 1, b"ping").await?;
        open.push(connection);
    }
    let after = server.usage()?.rss_kib;
    server.stop().await;
    Ok(after.saturating_sub(before) as f64 / connections.max(1) as f64)
}
