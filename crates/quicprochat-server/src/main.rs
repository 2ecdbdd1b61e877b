//! `qpc-server`: parse flags and environment, start the server, wait for SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// The quicprochat server.
#[derive(Debug, Parser)]
#[command(name = "qpc-server", version, about)]
struct Args {
    /// UDP address for QUIC.
    #[arg(long, env = "QPC_LISTEN", default_value = "0.0.0.0:7000")]
    listen: SocketAddr,
    /// Directory for the database, keys and dev certificate.
    #[arg(long, env = "QPC_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// TLS certificate (PEM or DER); without it the server runs in dev mode (self-signed).
    #[arg(long, env = "QPC_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM or DER).
    #[arg(long, env = "QPC_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "QPC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("QPC_LOG").unwrap_or_else(|_| "info".into());
    if args.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(filter).init();
    }
    let mut config = quicprochat_server::ServerConfig::new(args.listen, args.data_dir);
    config.tls = args.tls_cert.zip(args.tls_key);
    let server = quicprochat_server::start(config).await.context("starting qpc-server")?;
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
