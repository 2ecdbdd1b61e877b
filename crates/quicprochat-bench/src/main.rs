//! `qpc-bench`: load scenarios for quicprochat. Every server under test runs as its own process
//! (this binary, `serve <role>`), optionally pinned with `taskset`; each figure is printed next
//! to the raw baseline that bounds it, measured in the same run at the same concurrency.
//! See docs/benchmarks.md.

mod baseline;
mod process;
mod raw;
mod report;
mod roles;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::baseline::Load;
use crate::report::{Figure, Output, Report, latency_figures};

#[derive(Debug, Parser)]
#[command(name = "qpc-bench", version, about = "Load scenarios for quicprochat, as ratios to their baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
struct Common {
    /// Concurrent clients (connections, pairs, group members or idle connections).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Measured time per scenario, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Message or request payload, bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Requests or messages outstanding per client.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// One JSON object per scenario instead of a table (same as `--output json`).
    #[arg(long)]
    json: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Pin the server process to these CPUs (`taskset -c`), e.g. `0`.
    #[arg(long)]
    pin: Option<String>,
    /// relay and fanout --raw: run qpc-server on this PostgreSQL database (a fresh schema, dropped
    /// after).
    #[arg(long)]
    db_url: Option<String>,
    /// relay and fanout --raw, with --db-url: qpc-server nodes sharing the database (senders on
    /// the first, receivers on the last).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
}

impl Common {
    fn cluster(&self) -> Option<scenarios::Cluster> {
        self.db_url.clone().map(|db_url| scenarios::Cluster { db_url, nodes: self.nodes.max(1) })
    }

    fn output(&self) -> Output {
        if self.json { Output::Json } else { self.output }
    }

    fn load(&self) -> anyhow::Result<Load> {
        anyhow::ensure!(self.clients > 0, "--clients must be at least 1");
        anyhow::ensure!(self.duration > 0.0 && self.duration.is_finite(), "--duration must be positive");
        Ok(Load {
            clients: self.clients,
            duration: Duration::from_secs_f64(self.duration),
            payload: self.payload,
            in_flight: self.in_flight.max(1),
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Raw quinn echo: one request frame per bidirectional stream, no auth, no storage.
    EchoBaseline(Common),
    /// Raw quinn push: frames to N subscribers over one long-lived unidirectional stream each.
    PushBaseline {
        #[command(flatten)]
        common: Common,
        /// Frames per second (each to every subscriber).
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// Raw SQLite insert loop with the store's durability settings.
    SqliteBaseline(Common),
    /// Sender/receiver pairs through qpc-server (login, DM, MLS, enqueue, push, decrypt, ack).
    Relay {
        #[command(flatten)]
        common: Common,
        /// Measure the server's path: the SDK sets up the DMs, then bare RPC connections on the
        /// same sessions enqueue PrivateMessage-shaped payloads and read pushes (no client MLS).
        #[arg(long)]
        raw: bool,
    },
    /// One group of `--clients` members; one sender at `--rate` messages per second.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Messages per second from the sender.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Measure the server's push path: the SDK sets up the group, then a bare RPC sender and
        /// one bare RPC subscriber per member (no client MLS).
        #[arg(long)]
        raw: bool,
    },
    /// OPAQUE logins per second (connect + login) and server CPU per login.
    Login(Common),
    /// QUIC + TLS handshakes per second against qpc-server.
    Connect(Common),
    /// Server memory per idle authenticated connection.
    Idle(Common),
    /// Every scenario in turn.
    All {
        #[command(flatten)]
        common: Common,
        /// Fanout and push-baseline rate.
        #[arg(long, default_value_t = 20)]
        rate: u32,
    },
    /// Internal: run a server under test (`qpc`, `echo`, `push`) until stdin closes.
    #[command(hide = true)]
    Serve {
        role: String,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qpc-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { role, dir } => {
            process::ensure_dir(&dir)?;
            roles::serve(&role, &dir).await
        }
        Command::EchoBaseline(c) => echo_baseline(&c).await?.print(c.output()),
        Command::PushBaseline { common: c, rate } => push_baseline(&c, rate).await?.print(c.output()),
        Command::SqliteBaseline(c) => sqlite_baseline(&c).await?.print(c.output()),
        Command::Relay { common: c, raw } => {
            let (load, pin, cluster) = (c.load()?, c.pin.as_deref(), c.cluster());
            let report = if raw {
                raw::relay(load, pin, cluster.as_ref()).await?
            } else {
                scenarios::relay(load, pin, cluster.as_ref()).await?
            };
            report.print(c.output())
        }
        Command::Fanout { common: c, rate, raw } => {
            let (load, pin) = (c.load()?, c.pin.as_deref());
            let report = if raw {
                raw::fanout(load, rate, pin, c.cluster().as_ref()).await?
            } else {
                scenarios::fanout(load, rate, pin).await?
            };
            report.print(c.output())
        }
        Command::Login(c) => scenarios::login_scenario(c.load()?, c.pin.as_deref()).await?.print(c.output()),
        Command::Connect(c) => scenarios::connect(c.load()?, c.pin.as_deref()).await?.print(c.output()),
        Command::Idle(c) => scenarios::idle(c.load()?, c.pin.as_deref()).await?.print(c.output()),
        Command::All { common: c, rate } => {
            let (load, pin) = (c.load()?, c.pin.as_deref());
            echo_baseline(&c).await?.print(c.output())?;
            push_baseline(&c, rate).await?.print(c.output())?;
            sqlite_baseline(&c).await?.print(c.output())?;
            scenarios::relay(load, pin, c.cluster().as_ref()).await?.print(c.output())?;
            scenarios::fanout(load, rate, pin).await?.print(c.output())?;
            scenarios::login_scenario(load, pin).await?.print(c.output())?;
            scenarios::connect(load, pin).await?.print(c.output())?;
            scenarios::idle(load, pin).await?.print(c.output())
        }
    }
}

fn plain(scenario: &'static str, c: &Common, figures: Vec<Figure>) -> Report {
    Report {
        scenario,
        clients: c.clients,
        duration_secs: c.duration,
        payload_bytes: c.payload,
        in_flight: c.in_flight,
        figures,
        server: None,
        baseline_server: None,
        notes: Vec::new(),
    }
}

async fn echo_baseline(c: &Common) -> anyhow::Result<Report> {
    let (mut result, usage) = baseline::echo(c.load()?, c.pin.as_deref()).await?;
    let mut figures = vec![Figure::new("requests/s", "1/s", result.per_sec())];
    figures.extend(latency_figures("request", result.latencies.summary(), None));
    let mut report = plain("echo-baseline", c, figures);
    report.server = Some(usage);
    Ok(report)
}

async fn push_baseline(c: &Common, rate: u32) -> anyhow::Result<Report> {
    let (mut latencies, received, expected, usage) =
        baseline::push(c.clients, rate, c.load()?, c.pin.as_deref()).await?;
    let mut report = plain("push-baseline", c, latency_figures("push", latencies.summary(), None));
    report.server = Some(usage);
    if received < expected {
        report.notes.push(format!("{received} of {expected} frames arrived"));
    }
    Ok(report)
}

async fn sqlite_baseline(c: &Common) -> anyhow::Result<Report> {
    let mut result = baseline::sqlite(c.load()?).await?;
    let mut figures = vec![Figure::new("inserts/s", "1/s", result.per_sec())];
    figures.extend(latency_figures("insert", result.latencies.summary(), None));
    Ok(plain("sqlite-baseline", c, figures))
}
