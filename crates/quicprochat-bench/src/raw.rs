//! `relay --raw` and `fanout --raw`: the server's path without the clients' work.
//!
//! The SDK sets the scene as in the SDK modes (accounts, devices, DMs, the MLS group, so the
//! server's channel tracker knows the membership). Then every SDK client is closed, which does
//! not log out, and the measured traffic runs on bare RPC connections that `Resume` those
//! sessions: senders `Enqueue` application envelopes whose payload is shaped like an MLS
//! PrivateMessage, receivers read their push stream and acknowledge as the SDK does. The server
//! never decrypts, so it does for these exactly the work it does for a real message; what is
//! left out is the clients' MLS, local storage and event handling, which in the SDK modes run in
//! this process on the server's CPUs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use quicprochat_proto::{event, method, v1};
use quicprochat_rpc::{RpcClient, ServerTrust};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::baseline::{self, Load, Throughput};
use crate::process::ServerProcess;
use crate::report::{Figure, Latencies, Report, latency_figures};
use crate::scenarios::{self, Cluster, Member};

/// Start of a serialised MLS `PrivateMessage`: protocol version mls10 (1) and wire format 2,
/// which is what the server checks of an application envelope.
const PRIVATE_MESSAGE: [u8; 4] = [0x00, 0x01, 0x00, 0x02];
/// The prefix, then the sender's index (u32) and the message's number (u64), big-endian.
const HEADER_LEN: usize = PRIVATE_MESSAGE.len() + 4 + 8;
/// How long the receivers may take, after the last send, for what is still on its way.
const DRAIN: Duration = Duration::from_secs(10);
/// Receiver connections opened at once during setup.
const CONNECT_CONCURRENCY: usize = 16;
/// Sender index of the warm-up message every sender enqueues before the measurement.
const WARM_UP: u32 = u32::MAX;
/// How long the receivers may take to read and acknowledge the warm-up.
const WARM_UP_WAIT: Duration = Duration::from_secs(300);

/// What every raw report says about itself.
fn raw_note() -> String {
    format!(
        "raw: the SDK set up accounts, devices and channels, then closed; the measured clients are bare RPC \
         connections that Resume those sessions. Payloads are shaped like an MLS PrivateMessage (the server checks \
         only the wire format and never decrypts, so it does the work of a real message); no client-side MLS or \
         storage. Receivers acknowledge like the SDK: Ack(up_to_seq) from a background task, one in flight, each \
         {} ms ± half at random after the last (the SDK's ack_delay), pushes read meanwhile coalesced",
        quicprochat_sdk::ACK_COALESCE.as_millis()
    )
}

/// A payload of `size` bytes (at least the header) from sender `sender`, message `n`.
fn payload(sender: u32, n: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(HEADER_LEN));
    p.extend_from_slice(&PRIVATE_MESSAGE);
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(size.max(HEADER_LEN), 0x5a);
    p
}

/// The sender and number of a [`payload`].
fn parse(payload: &[u8]) -> Option<(u32, u64)> {
    let rest = payload.strip_prefix(&PRIVATE_MESSAGE)?;
    let sender = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let n = u64::from_be_bytes(rest.get(4..12)?.try_into().ok()?);
    Some((sender, n))
}

fn poisoned<T>(_: T) -> anyhow::Error {
    anyhow::anyhow!("a lock was poisoned")
}

/// The member's session token; its SDK client is closed (the session stays valid).
fn hand_over(m: Member) -> anyhow::Result<Vec<u8>> {
    let token = m.client.session_token()?.to_vec();
    m.client.close();
    Ok(token)
}

/// Where raw connections go, with the TLS configuration built once.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: quinn::ClientConfig,
}

impl Target {
    fn of(server: &ServerProcess) -> anyhow::Result<Self> {
        let trust = ServerTrust::Pinned(server.cert_der.clone());
        let tls = quicprochat_rpc::tls::client_config_with(&trust, &crate::roles::transport())?;
        Ok(Self { addr: server.addr, tls })
    }

    /// A fresh connection on the session `token` (a device's, from the SDK).
    async fn resume(&self, token: &[u8]) -> anyhow::Result<RpcClient> {
        let rpc = RpcClient::connect(self.addr, "localhost", self.tls.clone()).await?;
        let request = v1::ResumeRequest { session_token: Bytes::copy_from_slice(token) };
        let _: v1::ResumeResponse = rpc.call(method::RESUME, &request).await.context("Resume")?;
        Ok(rpc)
    }

    /// A connection on the session `token`, subscribed to its device's pushes.
    async fn subscriber(&self, token: &[u8]) -> anyhow::Result<RpcClient> {
        let rpc = self.resume(token).await?;
        let _: v1::SubscribeResponse =
            rpc.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.context("Subscribe")?;
        Ok(rpc)
    }
}

/// A raw sender into one channel.
struct Sender {
    rpc: RpcClient,
    channel: Bytes,
    /// The channel's epoch, from `GetChannel`.
    epoch: u64,
    /// Member devices the server lists for the channel.
    members: usize,
}

impl Sender {
    async fn open(target: &Target, token: &[u8], channel: [u8; 16]) -> anyhow::Result<Self> {
        let rpc = target.resume(token).await?;
        let channel = Bytes::copy_from_slice(&channel);
        let got: v1::GetChannelResponse = rpc
            .call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel.clone() })
            .await
            .context("GetChannel")?;
        let info = got.channel.context("GetChannel answered without the channel")?;
        Ok(Self { rpc, channel, epoch: info.epoch, members: info.member_devices.len() })
    }

    /// An application envelope carrying `payload`, with a fresh idempotency key (16 random
    /// bytes, as the SDK's message ids).
    fn request(&self, payload: Vec<u8>) -> v1::EnqueueRequest {
        let mut key = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        v1::EnqueueRequest {
            channel_id: self.channel.clone(),
            envelope: Some(v1::Envelope {
                kind: v1::EnvelopeKind::Application as i32,
                epoch: self.epoch,
                payload: payload.into(),
            }),
            idempotency_key: Bytes::copy_from_slice(&key),
            ..Default::default()
        }
    }

    /// One `Enqueue`, answered.
    async fn send(&self, request: &v1::EnqueueRequest) -> anyhow::Result<()> {
        let _: v1::EnqueueResponse = self.rpc.call(method::ENQUEUE, request).await.context("Enqueue")?;
        Ok(())
    }
}

/// Messages matched by all receivers so far, so the run knows when everything is in.
#[derive(Clone)]
struct Arrivals(Arc<watch::Sender<u64>>);

impl Arrivals {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    fn one(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Until `expected` have arrived (true) or `until` has passed (false).
    async fn wait_for(&self, expected: u64, until: Instant) -> bool {
        let mut arrived = self.0.subscribe();
        let _ = tokio::time::timeout_at(until.into(), arrived.wait_for(|n| *n >= expected)).await;
        *self.0.borrow() >= expected
    }
}

/// Every sender enqueues one warm-up message, and every receiver reads and acknowledges it
/// before the measurement starts: its push stream is open then (as the push baseline's are),
/// and what the setup left in its queue (the Welcome, the group's commits) is deleted by that
/// Ack, not by the first measured one.
///
/// A receiver that fails meanwhile (its Ack refused, its connection lost) will never count: the
/// run stops at once with its error rather than after [`WARM_UP_WAIT`].
async fn warm_up<T: 'static>(
    senders: &[&Sender],
    receivers: &mut JoinSet<anyhow::Result<T>>,
    count: usize,
    warmed: &Arrivals,
) -> anyhow::Result<()> {
    let started = Instant::now();
    for sender in senders {
        sender.send(&sender.request(payload(WARM_UP, 0, HEADER_LEN))).await?;
    }
    let (expected, deadline) = (count as u64, started + WARM_UP_WAIT);
    while !warmed.wait_for(expected, (Instant::now() + Duration::from_secs(1)).min(deadline)).await {
        let mut failures = Vec::new();
        while let Some(ended) = receivers.try_join_next() {
            match ended {
                Ok(Ok(_)) => failures.push("a receiver's push stream ended".to_owned()),
                Ok(Err(e)) => failures.push(format!("{e:#}")),
                Err(e) => failures.push(format!("a receiver task failed: {e}")),
            }
        }
        if !failures.is_empty() || Instant::now() >= deadline {
            let arrived = *warmed.0.borrow();
            let why = match failures.first() {
                Some(first) => format!("; {} receiver(s) ended, the first with: {first}", failures.len()),
                None => String::new(),
            };
            anyhow::bail!("only {arrived} of {expected} receivers acknowledged the warm-up message{why}");
        }
    }
    if started.elapsed() > Duration::from_secs(1) {
        eprintln!("qpc-bench: warm-up read and acknowledged in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the run is gone: stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

/// Reads `rpc`'s push stream until `stop`, handing every message of this run to `on_message`
/// (sender, number, when its frame was read), and acknowledges as the SDK does: `Ack(up_to_seq)`
/// from a task of its own with at most one in flight, each after the SDK's `ack_delay()`,
/// pushes read meanwhile coalesced into it. An envelope too large to travel inline is read with `Peek`, as the SDK would. The
/// warm-up message is acknowledged at once and counted in `warmed`. Returns how many Acks failed.
async fn receive<F>(
    rpc: &RpcClient,
    mut stop: watch::Receiver<bool>,
    warmed: &Arrivals,
    mut on_message: F,
) -> anyhow::Result<u64>
where
    F: FnMut(u32, u64, Instant) -> anyhow::Result<()>,
{
    let (acks, mut pending) = watch::channel(0u64);
    let acker = {
        let rpc = rpc.clone();
        tokio::spawn(async move {
            let mut failed = 0u64;
            while pending.changed().await.is_ok() {
                tokio::time::sleep(quicprochat_sdk::ack_delay()).await;
                let up_to_seq = *pending.borrow_and_update();
                if rpc.call::<_, v1::AckResponse>(method::ACK, &v1::AckRequest { up_to_seq }).await.is_err() {
                    failed += 1;
                }
            }
            failed
        })
    };
    let read = async {
        // The server opens the stream with its first push to this connection.
        let mut stream = tokio::select! {
            opened = rpc.accept_push() => opened.context("accepting the push stream")?,
            () = stopped(&mut stop) => return anyhow::Ok(()),
        };
        loop {
            // Abandoning a half-read frame is fine here: the stream is not read again.
            let frame = tokio::select! {
                next = stream.next() => match next.context("reading the push stream")? {
                    Some(frame) => frame,
                    None => return Ok(()),
                },
                () = stopped(&mut stop) => return Ok(()),
            };
            let at = Instant::now();
            if frame.event_type != event::MESSAGE_NOTIFICATION {
                continue;
            }
            let note: v1::MessageNotification = frame.decode()?;
            // Sequence 0 marks an ephemeral envelope: never queued, never acknowledged.
            if note.seq == 0 {
                continue;
            }
            let queued = match note.envelope {
                Some(queued) => queued,
                None => peek_one(rpc, note.seq).await?,
            };
            match queued.envelope.as_ref().and_then(|e| parse(&e.payload)) {
                Some((WARM_UP, _)) => {
                    let request = v1::AckRequest { up_to_seq: note.seq };
                    let _: v1::AckResponse = rpc.call(method::ACK, &request).await.context("Ack of the warm-up")?;
                    warmed.one();
                    continue;
                }
                Some((sender, n)) => on_message(sender, n, at)?,
                None => {}
            }
            acks.send_if_modified(|up_to| {
                let newer = note.seq > *up_to;
                *up_to = (*up_to).max(note.seq);
                newer
            });
        }
    }
    .await;
    // The acker sends what is still pending, then ends.
    drop(acks);
    let failed = acker.await?;
    read.map(|()| failed)
}

/// The queue entry `seq`, for a push that announced it without the envelope.
async fn peek_one(rpc: &RpcClient, seq: u64) -> anyhow::Result<v1::QueuedEnvelope> {
    let request = v1::PeekRequest { after_seq: seq.saturating_sub(1), limit: 1, max_bytes: 0 };
    let page: v1::PeekResponse = rpc.call(method::PEEK, &request).await.context("Peek")?;
    page.envelopes.into_iter().find(|e| e.seq == seq).context("a pushed entry is not in the queue")
}

/// `relay --raw`: `clients` DM pairs set up by the SDK; per pair, `in_flight` raw `Enqueue` loops
/// sharing a window of `in_flight` messages not yet received, and one raw receiver. Compared
/// with the echo and SQLite baselines at the same load.
pub async fn relay(load: Load, pin: Option<&str>, cluster: Option<&Cluster>) -> anyhow::Result<Report> {
    let (mut echo, echo_usage) = baseline::echo(load, pin).await?;
    let mut sqlite = baseline::sqlite(load).await?;

    let (nodes, schema) = scenarios::start_nodes(pin, cluster).await?;
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let mut pairs = Vec::new();
    for i in 0..load.clients {
        let sender = scenarios::member(first, &format!("sender{i}")).await?;
        let mut receiver = scenarios::member(last, &format!("receiver{i}")).await?;
        let dm = sender.client.dm(&format!("receiver{i}")).await?;
        scenarios::joined(&mut receiver).await?;
        let channel = dm.id().0;
        drop(dm);
        pairs.push((hand_over(sender)?, hand_over(receiver)?, channel));
    }
    let (sending, receiving) = (Target::of(first)?, Target::of(last)?);
    let mut open = Vec::new();
    for (sender, receiver, channel) in &pairs {
        open.push((Sender::open(&sending, sender, *channel).await?, receiving.subscriber(receiver).await?));
    }
    let mut connections: Vec<RpcClient> = Vec::new();

    let sent_at: Arc<Mutex<HashMap<(u32, u64), Instant>>> = Arc::default();
    let (arrivals, warmed) = (Arrivals::new(), Arrivals::new());
    let (stop, stopping) = watch::channel(false);
    let mut receivers = JoinSet::new();
    let mut senders = Vec::new();
    for (i, (sender, receiver)) in open.into_iter().enumerate() {
        let window = Arc::new(Semaphore::new(load.in_flight));
        let (sent_at, arrivals, warmed, stopping) =
            (Arc::clone(&sent_at), arrivals.clone(), warmed.clone(), stopping.clone());
        let released = Arc::clone(&window);
        receivers.spawn(async move {
            let (mut latencies, mut last) = (Latencies::default(), None);
            let failed = receive(&receiver, stopping, &warmed, |from, n, at| {
                let sent = sent_at.lock().map_err(poisoned)?.remove(&(from, n));
                if let Some(sent) = sent {
                    latencies.record(at.duration_since(sent));
                    last = Some(at);
                    released.add_permits(1);
                    arrivals.one();
                }
                Ok(())
            })
            .await?;
            anyhow::Ok((latencies, last, failed, receiver))
        });
        connections.push(sender.rpc.clone());
        senders.push((u32::try_from(i)?, Arc::new(sender), window));
    }
    let all: Vec<&Sender> = senders.iter().map(|(_, s, _)| s.as_ref()).collect();
    warm_up(&all, &mut receivers, senders.len(), &warmed).await?;

    let before: Vec<_> = nodes.iter().map(ServerProcess::usage).collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut loops = JoinSet::new();
    for (index, sender, window) in senders {
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..load.in_flight {
            let (sender, window, next, sent_at) =
                (Arc::clone(&sender), Arc::clone(&window), Arc::clone(&next), Arc::clone(&sent_at));
            let size = load.payload;
            loops.spawn(async move {
                let mut latencies = Latencies::default();
                while Instant::now() < deadline {
                    // A message that never arrives must not hold the sender past the deadline.
                    match tokio::time::timeout_at(deadline.into(), window.acquire()).await {
                        Ok(permit) => permit?.forget(),
                        Err(_) => break,
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let request = sender.request(payload(index, n, size));
                    let t = Instant::now();
                    sent_at.lock().map_err(poisoned)?.insert((index, n), t);
                    sender.send(&request).await?;
                    latencies.record(t.elapsed());
                }
                anyhow::Ok(latencies)
            });
        }
    }
    let mut enqueue = Throughput::collect(loops, started).await?;
    let sent = enqueue.ops;
    arrivals.wait_for(sent, Instant::now() + DRAIN).await;
    let _ = stop.send(true);
    let (mut ours, mut last, mut failed_acks) = (Throughput::default(), started, 0);
    while let Some(done) = receivers.join_next().await {
        let (latencies, at, failed, receiver) = done??;
        ours.latencies.extend(latencies);
        last = last.max(at.unwrap_or(started));
        failed_acks += failed;
        connections.push(receiver);
    }
    // Messages per second over the span from the first send to the last receipt.
    ours.elapsed = last.duration_since(started);
    ours.ops = ours.latencies.len() as u64;
    let usage = scenarios::nodes_usage(&nodes, before)?;
    for connection in connections {
        connection.close("done");
    }
    let node_count = scenarios::stop_nodes(nodes, schema).await?;

    let echo_latency = echo.latencies.summary();
    let mut figures = vec![
        Figure::new("relay messages/s vs echo", "msg/s", ours.per_sec()).against(echo.per_sec()),
        Figure::new("relay messages/s vs sqlite inserts", "msg/s", ours.per_sec()).against(sqlite.per_sec()),
    ];
    figures.extend(latency_figures("Enqueue vs echo", enqueue.latencies.summary(), Some(echo_latency)));
    figures.extend(latency_figures("send→receive vs echo", ours.latencies.summary(), Some(echo_latency)));
    figures.push(Figure::new("sqlite insert latency p50", "ms", sqlite.latencies.summary().p50_ms));
    let mut notes = vec![
        raw_note(),
        format!(
            "{} pair(s), each with {} Enqueue loop(s) sharing a window of {} message(s) not yet received; Enqueue \
             latency is the RPC's round trip (stream opened, request written, response read), as the echo baseline's",
            load.clients, load.in_flight, load.in_flight
        ),
    ];
    if let Some(cluster) = cluster {
        notes.push(scenarios::cluster_note(cluster, node_count));
    }
    if ours.ops < sent {
        notes.push(format!("{} of {sent} messages arrived within {} s after the run", ours.ops, DRAIN.as_secs()));
    }
    if failed_acks > 0 {
        notes.push(format!("{failed_acks} Ack calls failed"));
    }
    Ok(Report {
        figures,
        server: Some(usage),
        baseline_server: Some(echo_usage),
        notes,
        ..Report::of("relay --raw", load)
    })
}

/// A registered fanout member: the group's creator stays open, the others are handed over.
enum Registered {
    Open(Member),
    Closed(Vec<u8>),
}

/// `fanout --raw`: one group of `clients` members set up by the SDK; a raw sender enqueues
/// `rate` messages per second into it (open loop), and every other member's raw receiver records
/// its push latency (send to receipt), against the push baseline with as many subscribers. With a
/// cluster, the sender is on the first node and the receivers on the last (cross-node push).
pub async fn fanout(load: Load, rate: u32, pin: Option<&str>, cluster: Option<&Cluster>) -> anyhow::Result<Report> {
    let subscribers = load.clients.saturating_sub(1).max(1);
    let rate = rate.max(1);
    let (mut push_latencies, push_received, push_expected, push_usage) =
        baseline::push(subscribers, rate, load, pin).await?;

    let (nodes, schema) = scenarios::start_nodes(pin, cluster).await?;
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let (target, receiving) = (Target::of(first)?, Target::of(last)?);
    let setup = Instant::now();
    // Members are closed as soon as they are registered (their key packages are on the
    // server), so nobody spends CPU on the Welcome; the server still counts them as members,
    // since membership follows the commit's tree.
    let registered = scenarios::register_members(first, subscribers + 1, |i, m| {
        if i == 0 { Ok(Registered::Open(m)) } else { hand_over(m).map(Registered::Closed) }
    })
    .await?;
    let (mut creator, mut tokens) = (None, Vec::new());
    for r in registered {
        match r {
            Registered::Open(m) => creator = Some(m),
            Registered::Closed(token) => tokens.push(token),
        }
    }
    let creator = creator.context("the group's creator was not registered")?;
    let names: Vec<String> = (1..=subscribers).map(|i| format!("member{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let creating = Instant::now();
    eprintln!("qpc-bench: creating the group of {} members", subscribers + 1);
    let channel = creator.client.create_group("bench", &refs).await?.id().0;
    let created_in = creating.elapsed();
    eprintln!("qpc-bench: group created in {:.1} s", created_in.as_secs_f64());
    let sender = Sender::open(&target, &hand_over(creator)?, channel).await?;
    anyhow::ensure!(
        sender.members == subscribers + 1,
        "the server lists {} member devices in the group, not {}",
        sender.members,
        subscribers + 1
    );
    let mut connecting = JoinSet::new();
    let slots = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for token in tokens {
        let (receiving, slots) = (receiving.clone(), Arc::clone(&slots));
        connecting.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            receiving.subscriber(&token).await
        });
    }
    let mut listeners = Vec::new();
    while let Some(connected) = connecting.join_next().await {
        listeners.push(connected??);
    }
    eprintln!("qpc-bench: {} receivers subscribed; setup took {:.1} s", listeners.len(), setup.elapsed().as_secs_f64());

    let count = (f64::from(rate) * load.duration.as_secs_f64()).ceil().max(1.0) as u64;
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let (arrivals, warmed) = (Arrivals::new(), Arrivals::new());
    let (stop, stopping) = watch::channel(false);
    let mut receivers = JoinSet::new();
    let listening = listeners.len();
    for receiver in listeners {
        let (sent_at, arrivals, warmed, stopping) =
            (Arc::clone(&sent_at), arrivals.clone(), warmed.clone(), stopping.clone());
        receivers.spawn(async move {
            let mut latencies = Latencies::default();
            let failed = receive(&receiver, stopping, &warmed, |from, n, at| {
                let sent = if from == 0 { sent_at.lock().map_err(poisoned)?.get(&n).copied() } else { None };
                if let Some(sent) = sent {
                    latencies.record(at.duration_since(sent));
                    arrivals.one();
                }
                Ok(())
            })
            .await?;
            anyhow::Ok((latencies, failed, receiver))
        });
    }
    warm_up(&[&sender], &mut receivers, listening, &warmed).await?;
    let before: Vec<_> = nodes.iter().map(ServerProcess::usage).collect::<anyhow::Result<_>>()?;
    let rss_after_setup = before.iter().map(|u| u.rss_kib).max().unwrap_or(0);
    // Open loop: each message goes out at its tick, answered or not the one before, so the
    // server gets the offered rate even when it falls behind.
    let (sender, mut sends) = (Arc::new(sender), JoinSet::new());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / u64::from(rate)));
    let sending = Instant::now();
    for n in 0..count {
        tick.tick().await;
        let (sender, sent_at) = (Arc::clone(&sender), Arc::clone(&sent_at));
        let request = sender.request(payload(0, n, load.payload));
        sends.spawn(async move {
            let t = Instant::now();
            sent_at.lock().map_err(poisoned)?.insert(n, t);
            sender.send(&request).await?;
            anyhow::Ok(t.elapsed())
        });
    }
    let mut enqueue = Latencies::default();
    while let Some(done) = sends.join_next().await {
        enqueue.record(done??);
    }
    let answered_in = sending.elapsed();
    let expected = count * subscribers as u64;
    arrivals.wait_for(expected, Instant::now() + DRAIN).await;
    let _ = stop.send(true);
    let (mut ours, mut failed_acks, mut connections) = (Latencies::default(), 0, vec![sender.rpc.clone()]);
    while let Some(done) = receivers.join_next().await {
        let (latencies, failed, receiver) = done??;
        ours.extend(latencies);
        failed_acks += failed;
        connections.push(receiver);
    }
    let usage = scenarios::nodes_usage(&nodes, before)?;
    for connection in connections {
        connection.close("done");
    }
    let node_count = scenarios::stop_nodes(nodes, schema).await?;

    let mut figures = latency_figures("push", ours.summary(), Some(push_latencies.summary()));
    figures.extend(latency_figures("Enqueue", enqueue.summary(), None));
    let mut notes = vec![
        raw_note(),
        format!(
            "{rate} messages/s to {subscribers} members = {} deliveries/s, sent open-loop (each at its tick); the \
             last of {count} Enqueues was answered {:.2} s after the first went out; push latency is from the \
             sender's Enqueue to the receiver reading the push frame",
            u64::from(rate) * subscribers as u64,
            answered_in.as_secs_f64()
        ),
        format!(
            "setup: {} members registered, group created in {:.1} s; server RSS {} MiB after it",
            subscribers + 1,
            created_in.as_secs_f64(),
            rss_after_setup / 1024
        ),
    ];
    if let Some(cluster) = cluster {
        notes.push(scenarios::cluster_note(cluster, node_count));
    }
    if (ours.len() as u64) < expected {
        notes.push(format!("{} of {expected} deliveries measured", ours.len()));
    }
    if push_received < push_expected {
        notes.push(format!("push baseline: {push_received} of {push_expected} frames arrived"));
    }
    if failed_acks > 0 {
        notes.push(format!("{failed_acks} Ack calls failed"));
    }
    Ok(Report {
        in_flight: 0,
        figures,
        server: Some(usage),
        baseline_server: Some(push_usage),
        notes,
        ..Report::of("fanout --raw", load)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_look_like_private_messages_and_name_their_sender_and_number() {
        let p = payload(7, 1 << 40, 256);
        assert_eq!(p.len(), 256);
        assert_eq!(p[..4], [0x00, 0x01, 0x00, 0x02]);
        assert_eq!(parse(&p), Some((7, 1 << 40)));
        // Never shorter than what names it.
        assert_eq!(parse(&payload(1, 2, 0)), Some((1, 2)));
        assert_eq!(parse(b"\x00\x01\x00\x01whatever-else"), None);
        assert_eq!(parse(&PRIVATE_MESSAGE), None);
    }
}
