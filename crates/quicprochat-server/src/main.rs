//! `qpc-server`: merge flags, environment and config file, start the server, drain on
//! SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use quicprochat_server::config::{self, Overrides};

/// The quicprochat server. Settings: flags > QPC_* environment > qpc-server.toml > defaults.
#[derive(Debug, Parser)]
#[command(name = "qpc-server", version, about)]
struct Args {
    /// Configuration file (TOML). Default: ./qpc-server.toml when present.
    #[arg(long, env = "QPC_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address for QUIC [default: 0.0.0.0:7000].
    #[arg(long, env = "QPC_LISTEN")]
    listen: Option<String>,
    /// Directory for the database, keys and dev certificate [default: ./data].
    #[arg(long, env = "QPC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TLS certificate (PEM or DER); without it the server runs in dev mode (self-signed).
    #[arg(long, env = "QPC_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM or DER).
    #[arg(long, env = "QPC_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Refuse to start with any dev or insecure setting.
    #[arg(long, env = "QPC_PRODUCTION", num_args = 0..=1, default_missing_value = "true")]
    production: Option<bool>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "QPC_LOG_FORMAT")]
    log_format: Option<String>,
    /// Serve Prometheus metrics over HTTP on this TCP address (off by default).
    #[arg(long, env = "QPC_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qpc-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => config::read_file(path, true)?,
        None => config::read_file(std::path::Path::new(config::DEFAULT_CONFIG_FILE), false)?,
    };
    let resolved = config::resolve(
        Overrides {
            listen: args.listen,
            data_dir: args.data_dir,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            production: args.production,
            log_format: args.log_format,
            metrics_listen: args.metrics_listen,
        },
        file,
    )?;

    let filter = tracing_subscriber::EnvFilter::try_from_env("QPC_LOG").unwrap_or_else(|_| "info".into());
    if resolved.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init();
    }
    if !resolved.production {
        tracing::warn!("running in dev mode (not --production)");
    }

    if let Some(addr) = resolved.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(%addr, "Prometheus metrics on http://{addr}/metrics");
    }
    let server = quicprochat_server::start(resolved.server).await.context("starting qpc-server")?;
    let token = server.shutdown_token();
    let serving = server.wait();
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => result.context("serving")?,
        () = wait_for_signal() => {
            tracing::info!("shutdown requested: draining in-flight requests");
            token.cancel();
            serving.await.context("draining")?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
