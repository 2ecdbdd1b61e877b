//! Scenarios against a real `qpc-server` process: every figure next to the baseline that bounds
//! it, measured in the same run with the same concurrency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use quicprochat_core::opaque::{ClientLogin, ClientRegistration, OpaqueParams};
use quicprochat_proto::{method, v1};
use quicprochat_rpc::{RpcClient, ServerTrust};
use quicprochat_sdk::{ClientConfig, ClientEvent, ConversationId, KdfStrength, QpcClient, Trust};
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;

use crate::baseline::{self, Load, Throughput};
use crate::process::{ServerProcess, delta};
use crate::report::{Figure, Latencies, Report, latency_figures};

/// Password of every bench account (OPAQUE with light Argon2 parameters on the client: the
/// server's work is what is measured).
const PASSWORD: &[u8] = b"bench password";

/// SDK registrations running at once while a large group is set up.
const SETUP_CONCURRENCY: usize = 8;

/// A logged-in SDK client with its event stream and state dir.
pub(crate) struct Member {
    pub client: QpcClient,
    events: broadcast::Receiver<ClientEvent>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn member(server: &ServerProcess, name: &str) -> anyhow::Result<Member> {
    member_at(server.addr, server.cert_der.clone(), name).await
}

async fn member_at(addr: std::net::SocketAddr, cert_der: Vec<u8>, name: &str) -> anyhow::Result<Member> {
    let dir = tempfile::tempdir()?;
    let mut config = ClientConfig::new(addr, Trust::PinnedCertificate(cert_der), dir.path());
    config.kdf = KdfStrength::InsecureTestOnly;
    let client = QpcClient::connect(config).await?;
    let events = client.subscribe();
    client.register(name, PASSWORD).await.with_context(|| format!("registering {name}"))?;
    Ok(Member { client, events, _dir: dir })
}

/// Registers `count` members named `member0`, `member1`, …, [`SETUP_CONCURRENCY`] at a time,
/// handing each to `finish` as soon as it is registered (e.g. to close it); returns what
/// `finish` made of them, in order. Progress goes to stderr.
pub(crate) async fn register_members<T, F>(server: &ServerProcess, count: usize, finish: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, Member) -> anyhow::Result<T> + Send + Sync + 'static,
{
    let started = Instant::now();
    let (finish, slots) = (Arc::new(finish), Arc::new(Semaphore::new(SETUP_CONCURRENCY)));
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let (finish, slots, addr, cert) =
            (Arc::clone(&finish), Arc::clone(&slots), server.addr, server.cert_der.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let m = member_at(addr, cert, &format!("member{i}")).await?;
            anyhow::Ok((i, finish(i, m)?))
        });
    }
    let mut done: Vec<Option<T>> = std::iter::repeat_with(|| None).take(count).collect();
    // Every tenth of a large group, or once at the end.
    let (mut registered, step) = (0, if count >= 100 { count / 10 } else { count.max(1) });
    while let Some(joined) = tasks.join_next().await {
        let (i, made) = joined??;
        done[i] = Some(made);
        registered += 1;
        if registered % step == 0 || registered == count {
            eprintln!("qpc-bench: {registered}/{count} members registered ({:.1} s)", started.elapsed().as_secs_f64());
        }
    }
    done.into_iter().map(|m| m.context("a member was not registered")).collect()
}

pub(crate) async fn joined(m: &mut Member) -> anyhow::Result<ConversationId> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, m.events.recv()).await.context("no invitation within 60 s")? {
            Ok(ClientEvent::ConversationCreated { conversation, .. }) => return Ok(conversation),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => anyhow::bail!("event stream closed"),
        }
    }
}

/// A message text of about `size` bytes that names its sender and number.
fn text(sender: usize, n: u64, size: usize) -> String {
    let mut t = format!("{sender}:{n}:");
    if t.len() < size {
        t.extend(std::iter::repeat_n('x', size - t.len()));
    }
    t
}

fn parse(text: &str) -> Option<(usize, u64)> {
    let mut parts = text.splitn(3, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

type SendTimes = Arc<Mutex<HashMap<(usize, u64), Instant>>>;

/// Where the `relay` servers keep their data: the embedded store of one node, or one
/// PostgreSQL schema shared by `nodes` nodes.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// `postgres://…` of the database.
    pub db_url: String,
    /// Server processes on it (senders use the first, receivers the last).
    pub nodes: usize,
}

/// The PostgreSQL schema of a cluster run: dropped by [`stop_nodes`], or, when the run ends early
/// (an error on the way), when this is dropped, so that no failed run leaves its tables behind.
pub(crate) struct BenchSchema {
    db_url: String,
    name: String,
    dropped: bool,
}

impl BenchSchema {
    async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        drop_schema(&self.db_url, &self.name).await
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop may run inside the runtime (or while unwinding): a thread with a runtime of its own.
        let (db_url, name) = (self.db_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(drop_schema(&db_url, &name))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("qpc-bench: could not drop the schema {}; drop it by hand", self.name);
        }
    }
}

/// Starts the `qpc` servers of a run: one on its embedded store, or `cluster.nodes` on a fresh
/// PostgreSQL schema (returned, to drop afterwards).
pub(crate) async fn start_nodes(
    pin: Option<&str>,
    cluster: Option<&Cluster>,
) -> anyhow::Result<(Vec<ServerProcess>, Option<BenchSchema>)> {
    let Some(cluster) = cluster else { return Ok((vec![ServerProcess::spawn("qpc", pin).await?], None)) };
    let mut suffix = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
    let name = format!("qpc_bench_{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let schema = BenchSchema { db_url: cluster.db_url.clone(), name, dropped: false };
    let env =
        [(crate::roles::DB_URL_ENV, cluster.db_url.as_str()), (crate::roles::DB_SCHEMA_ENV, schema.name.as_str())];
    let mut nodes = Vec::new();
    // One after the other: the first creates the schema and runs the migrations.
    for _ in 0..cluster.nodes.max(1) {
        nodes.push(ServerProcess::spawn_with("qpc", pin, &env).await?);
    }
    Ok((nodes, Some(schema)))
}

/// Stops the servers [`start_nodes`] started and drops the schema it made, if any; returns how
/// many nodes there were.
pub(crate) async fn stop_nodes(nodes: Vec<ServerProcess>, schema: Option<BenchSchema>) -> anyhow::Result<usize> {
    let count = nodes.len();
    for node in nodes {
        node.stop().await;
    }
    if let Some(schema) = schema {
        schema.drop_now().await?;
    }
    Ok(count)
}

async fn drop_schema(db_url: &str, schema: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(db_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// What `nodes` used since `before` (one reading per node), all together: CPU summed, memory of
/// the largest.
pub(crate) fn nodes_usage(
    nodes: &[ServerProcess],
    before: Vec<crate::report::ProcessUsage>,
) -> anyhow::Result<crate::report::ProcessUsage> {
    let mut usage = crate::report::ProcessUsage::default();
    for (node, before) in nodes.iter().zip(before) {
        let used = delta(before, node.usage()?);
        usage.cpu_secs += used.cpu_secs;
        usage.rss_kib = usage.rss_kib.max(used.rss_kib);
    }
    Ok(usage)
}

/// The note of a `relay` or `fanout --raw` run on a cluster of `node_count` nodes.
pub(crate) fn cluster_note(cluster: &Cluster, node_count: usize) -> String {
    format!(
        "{node_count} node(s) on PostgreSQL ({}); senders on the first node, receivers on the last; server CPU summed",
        if cluster.nodes > 1 { "cross-node push over LISTEN/NOTIFY" } else { "one node" }
    )
}

/// `relay`: `clients` sender/receiver pairs, each in its own DM, `in_flight` messages
/// outstanding per pair; compared with the echo and SQLite baselines at the same load. With a
/// cluster, senders and receivers sit on different nodes (cross-node push).
pub async fn relay(load: Load, pin: Option<&str>, cluster: Option<&Cluster>) -> anyhow::Result<Report> {
    let (echo, echo_usage) = baseline::echo(load, pin).await?;
    let sqlite = baseline::sqlite(load).await?;

    let (nodes, schema) = start_nodes(pin, cluster).await?;
    let (server, receiving) = (&nodes[0], &nodes[nodes.len() - 1]);
    let mut pairs = Vec::new();
    for i in 0..load.clients {
        let sender = member(server, &format!("sender{i}")).await?;
        let mut receiver = member(receiving, &format!("receiver{i}")).await?;
        let dm = sender.client.dm(&format!("receiver{i}")).await?;
        joined(&mut receiver).await?;
        pairs.push((sender, receiver, dm));
    }
    let sent_at: SendTimes = Arc::default();
    let before: Vec<_> = nodes.iter().map(ServerProcess::usage).collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut tasks = JoinSet::new();
    let mut receivers = JoinSet::new();
    for (i, (sender, receiver, dm)) in pairs.into_iter().enumerate() {
        let window = Arc::new(Semaphore::new(load.in_flight.max(1)));
        let (sent_at_tx, window_tx) = (Arc::clone(&sent_at), Arc::clone(&window));
        // The sender's final count, so the receiver knows when it has everything.
        let (total_tx, total_rx) = tokio::sync::watch::channel(None::<u64>);
        let size = load.payload;
        tasks.spawn(async move {
            let _keep = sender;
            let mut n = 0u64;
            while Instant::now() < deadline {
                // A message that never arrives must not hold the sender past the deadline.
                match tokio::time::timeout_at(deadline.into(), window_tx.acquire()).await {
                    Ok(permit) => permit?.forget(),
                    Err(_) => break,
                }
                sent_at_tx.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert((i, n), Instant::now());
                dm.send_text(&text(i, n, size)).await?;
                n += 1;
            }
            let _ = total_tx.send(Some(n));
            anyhow::Ok(n)
        });
        let sent_at_rx = Arc::clone(&sent_at);
        receivers.spawn(async move {
            let Member { client: _client, mut events, _dir } = receiver;
            let mut latencies = Latencies::default();
            let mut last = started;
            let drain_until = deadline + Duration::from_secs(10);
            loop {
                if total_rx.borrow().is_some_and(|total| latencies.len() as u64 >= total) {
                    break;
                }
                let left = drain_until.saturating_duration_since(Instant::now());
                let event = match tokio::time::timeout(left.min(Duration::from_millis(100)), events.recv()).await {
                    Err(_) if left.is_zero() => break,
                    Err(_) => continue,
                    Ok(Err(broadcast::error::RecvError::Closed)) => break,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                    Ok(Ok(event)) => event,
                };
                let ClientEvent::MessageReceived { message, .. } = event else { continue };
                let Some(key) = parse(&message.text) else { continue };
                let sent = sent_at_rx.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.remove(&key);
                if let Some(sent) = sent {
                    latencies.record(sent.elapsed());
                    last = Instant::now();
                    window.add_permits(1);
                }
            }
            anyhow::Ok((latencies, last))
        });
    }
    let mut sent = 0;
    while let Some(done) = tasks.join_next().await {
        sent += done??;
    }
    let mut ours = Throughput::default();
    let mut last = started;
    while let Some(done) = receivers.join_next().await {
        let (latencies, at) = done??;
        ours.latencies.extend(latencies);
        last = last.max(at);
    }
    // Messages per second over the span from the first send to the last receipt.
    ours.elapsed = last.duration_since(started);
    ours.ops = ours.latencies.len() as u64;
    let usage = nodes_usage(&nodes, before)?;
    let node_count = stop_nodes(nodes, schema).await?;

    let mut figures = vec![
        Figure::new("relay messages/s vs echo", "msg/s", ours.per_sec()).against(echo.per_sec()),
        Figure::new("relay messages/s vs sqlite inserts", "msg/s", ours.per_sec()).against(sqlite.per_sec()),
    ];
    let sqlite_latency = { sqlite }.latencies.summary();
    figures.extend(latency_figures(
        "send→receive vs echo",
        ours.latencies.summary(),
        Some({ echo }.latencies.summary()),
    ));
    figures.push(Figure::new("sqlite insert latency p50", "ms", sqlite_latency.p50_ms));
    let mut notes = Vec::new();
    if let Some(cluster) = cluster {
        notes.push(cluster_note(cluster, node_count));
    }
    if ours.ops < sent {
        notes.push(format!("{} of {sent} messages arrived within 10 s after the run", ours.ops));
    }
    Ok(Report { figures, server: Some(usage), baseline_server: Some(echo_usage), notes, ..Report::of("relay", load) })
}

/// `fanout`: one group of `clients` members; member 0 sends `rate` messages per second; every
/// other member's receive latency, against the push baseline with as many subscribers.
pub async fn fanout(load: Load, rate: u32, pin: Option<&str>) -> anyhow::Result<Report> {
    let subscribers = load.clients.saturating_sub(1).max(1);
    let (push_latencies, push_received, push_expected, push_usage) =
        baseline::push(subscribers, rate, load, pin).await?;

    let server = ServerProcess::spawn("qpc", pin).await?;
    let mut members = register_members(&server, subscribers + 1, |_, m| Ok(m)).await?;
    let names: Vec<String> = (1..=subscribers).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let group = members[0].client.create_group("bench", &refs).await?;
    for m in &mut members[1..] {
        joined(m).await?;
    }
    let count = (f64::from(rate) * load.duration.as_secs_f64()).ceil().max(1.0) as u64;
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut receivers = JoinSet::new();
    for m in members.drain(1..) {
        let sent_at = Arc::clone(&sent_at);
        receivers.spawn(async move {
            let Member { client: _client, mut events, _dir } = m;
            let mut latencies = Latencies::default();
            let mut got = 0;
            let give_up =
                Instant::now() + Duration::from_secs(60) + Duration::from_secs(count / u64::from(rate.max(1)));
            while got < count {
                let left = give_up.saturating_duration_since(Instant::now());
                let event = match tokio::time::timeout(left, events.recv()).await {
                    Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => break,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                    Ok(Ok(event)) => event,
                };
                let ClientEvent::MessageReceived { message, .. } = event else { continue };
                let Some((_, n)) = parse(&message.text) else { continue };
                let sent = sent_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.get(&n).copied();
                if let Some(sent) = sent {
                    latencies.record(sent.elapsed());
                    got += 1;
                }
            }
            anyhow::Ok(latencies)
        });
    }
    let before = server.usage()?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / u64::from(rate.max(1))));
    for n in 0..count {
        tick.tick().await;
        sent_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(n, Instant::now());
        group.send_text(&text(0, n, load.payload)).await?;
    }
    let mut ours = Latencies::default();
    while let Some(done) = receivers.join_next().await {
        ours.extend(done??);
    }
    let usage = delta(before, server.usage()?);
    server.stop().await;
    let expected = count * subscribers as u64;
    let mut notes = Vec::new();
    if (ours.len() as u64) < expected {
        notes.push(format!("{} of {expected} deliveries measured", ours.len()));
    }
    if push_received < push_expected {
        notes.push(format!("push baseline: {push_received} of {push_expected} frames arrived"));
    }
    notes.push(format!(
        "{rate} messages/s to {subscribers} members = {} deliveries/s",
        u64::from(rate) * subscribers as u64
    ));
    let mut push_latencies = push_latencies;
    Ok(Report {
        in_flight: 0,
        figures: latency_figures("push", ours.summary(), Some(push_latencies.summary())),
        server: Some(usage),
        baseline_server: Some(push_usage),
        notes,
        ..Report::of("fanout", load)
    })
}

/// A fresh RPC connection to a server with the certificate `cert` pinned.
async fn connect_rpc(addr: std::net::SocketAddr, cert: &[u8]) -> anyhow::Result<RpcClient> {
    let tls =
        quicprochat_rpc::tls::client_config_with(&ServerTrust::Pinned(cert.to_vec()), &crate::roles::transport())?;
    Ok(RpcClient::connect(addr, "localhost", tls).await?)
}

async fn rpc(server: &ServerProcess) -> anyhow::Result<RpcClient> {
    connect_rpc(server.addr, &server.cert_der).await
}

async fn register(rpc: &RpcClient, username: &str) -> anyhow::Result<()> {
    let (registration, request) = ClientRegistration::start(&mut rand_core::OsRng, PASSWORD)?;
    let start: v1::RegisterStartResponse = rpc
        .call(
            method::REGISTER_START,
            &v1::RegisterStartRequest { username: username.into(), registration_request: request.into() },
        )
        .await?;
    let upload =
        registration.finish(&mut rand_core::OsRng, PASSWORD, &start.registration_response, &OpaqueParams::light())?;
    let _: v1::RegisterFinishResponse = rpc
        .call(
            method::REGISTER_FINISH,
            &v1::RegisterFinishRequest { username: username.into(), registration_upload: upload.into() },
        )
        .await?;
    Ok(())
}

/// One OPAQUE login; returns the session token.
async fn login(rpc: &RpcClient, username: &str) -> anyhow::Result<Vec<u8>> {
    let (login, request) = ClientLogin::start(&mut rand_core::OsRng, PASSWORD)?;
    let start: v1::LoginStartResponse = rpc
        .call(
            method::LOGIN_START,
            &v1::LoginStartRequest { username: username.into(), credential_request: request.into() },
        )
        .await?;
    let out = login.finish(PASSWORD, &start.credential_response, &OpaqueParams::light())?;
    let finish: v1::LoginFinishResponse = rpc
        .call(
            method::LOGIN_FINISH,
            &v1::LoginFinishRequest { login_id: start.login_id, credential_finalization: out.finalization.into() },
        )
        .await?;
    Ok(finish.session_token.to_vec())
}

/// Runs `clients` loops of `op` (each on a fresh connection) for the duration; returns the
/// completed count and the server's CPU time meanwhile.
async fn connection_loops<F, Fut>(
    server: &ServerProcess,
    load: Load,
    op: F,
) -> anyhow::Result<(Throughput, crate::report::ProcessUsage)>
where
    F: Fn(usize, RpcClient) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let before = server.usage()?;
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut loops = JoinSet::new();
    for i in 0..load.clients {
        let (op, addr, cert) = (op.clone(), server.addr, server.cert_der.clone());
        loops.spawn(async move {
            let mut latencies = Latencies::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let client = connect_rpc(addr, &cert).await?;
                op(i, client.clone()).await?;
                client.close("done");
                latencies.record(t.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let result = Throughput::collect(loops, started).await?;
    Ok((result, delta(before, server.usage()?)))
}

/// `connect`: QUIC + TLS handshakes per second (connect, one `Health`, close).
pub async fn connect(load: Load, pin: Option<&str>) -> anyhow::Result<Report> {
    let server = ServerProcess::spawn("qpc", pin).await?;
    let (mut handshakes, usage) = connection_loops(&server, load, |_, rpc| async move {
        let _: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await?;
        Ok(())
    })
    .await?;
    server.stop().await;
    let per = if handshakes.ops > 0 { usage.cpu_secs * 1000.0 / handshakes.ops as f64 } else { 0.0 };
    let mut figures = vec![
        Figure::new("handshakes/s", "1/s", handshakes.per_sec()),
        Figure::new("server CPU per handshake", "ms", per),
    ];
    figures.extend(latency_figures("connect", handshakes.latencies.summary(), None));
    Ok(Report { payload_bytes: 0, in_flight: 1, figures, server: Some(usage), ..Report::of("connect", load) })
}

/// `login`: connect + OPAQUE login per iteration, against connect + `Health` (the handshake
/// rate) on the same server.
pub async fn login_scenario(load: Load, pin: Option<&str>) -> anyhow::Result<Report> {
    let server = ServerProcess::spawn("qpc", pin).await?;
    let setup = rpc(&server).await?;
    for i in 0..load.clients {
        register(&setup, &format!("user{i}")).await?;
    }
    setup.close("done");
    let (handshakes, handshake_usage) = connection_loops(&server, load, |_, rpc| async move {
        let _: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await?;
        Ok(())
    })
    .await?;
    let (mut logins, login_usage) = connection_loops(&server, load, |i, rpc| async move {
        login(&rpc, &format!("user{i}")).await?;
        Ok(())
    })
    .await?;
    server.stop().await;
    let per =
        |usage: crate::report::ProcessUsage, ops: u64| if ops > 0 { usage.cpu_secs * 1000.0 / ops as f64 } else { 0.0 };
    let handshake_cpu = per(handshake_usage, handshakes.ops);
    let login_cpu = per(login_usage, logins.ops);
    let mut figures = vec![
        Figure::new("connect+login/s vs handshakes/s", "1/s", logins.per_sec()).against(handshakes.per_sec()),
        Figure::new("server CPU per connect+login", "ms", login_cpu).against(handshake_cpu),
        Figure::new("server CPU per login (minus handshake)", "ms", (login_cpu - handshake_cpu).max(0.0)),
    ];
    figures.extend(latency_figures("connect+login", logins.latencies.summary(), None));
    Ok(Report {
        payload_bytes: 0,
        in_flight: 1,
        figures,
        server: Some(login_usage),
        baseline_server: Some(handshake_usage),
        ..Report::of("login", load)
    })
}

/// `idle`: `clients` authenticated connections doing nothing; the server's memory per
/// connection against a raw QUIC connection's on the echo server.
pub async fn idle(load: Load, pin: Option<&str>) -> anyhow::Result<Report> {
    let raw_per_connection = baseline::idle(load.clients, pin).await?;
    let server = ServerProcess::spawn("qpc", pin).await?;
    let setup = rpc(&server).await?;
    register(&setup, "idler").await?;
    let token = login(&setup, "idler").await?;
    let before = server.usage()?.rss_kib;
    let mut open = vec![setup];
    for _ in 0..load.clients {
        let client = rpc(&server).await?;
        let _: v1::ResumeResponse =
            client.call(method::RESUME, &v1::ResumeRequest { session_token: token.clone().into() }).await?;
        open.push(client);
    }
    let after = server.usage()?;
    server.stop().await;
    let ours = after.rss_kib.saturating_sub(before) as f64 / load.clients.max(1) as f64;
    Ok(Report {
        duration_secs: 0.0,
        payload_bytes: 0,
        in_flight: 0,
        figures: vec![
            Figure::new("server memory per idle authenticated connection", "KiB", ours).against(raw_per_connection),
        ],
        server: Some(after),
        notes: vec![
            "baseline: an established raw QUIC connection (same TLS and transport settings) on the echo server".into(),
        ],
        ..Report::of("idle", load)
    })
}
