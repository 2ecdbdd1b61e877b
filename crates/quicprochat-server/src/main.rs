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
    /// File holding the encryption-at-rest key (64 hex characters); the key itself may come
    /// from QPC_DB_KEY instead. Needs a build with `--features sqlcipher`.
    #[arg(long, env = "QPC_DB_KEY_FILE")]
    db_key_file: Option<PathBuf>,
    /// Storage backend: sqlite (embedded, default) or postgres (clusters; needs --db-url).
    #[arg(long, env = "QPC_STORE")]
    store: Option<String>,
    /// PostgreSQL connection URL (postgres://user:password@host:5432/database). Prefer
    /// QPC_DB_URL or the config file when it holds a password: command lines are public.
    #[arg(long, env = "QPC_DB_URL", hide_env_values = true)]
    db_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Rotate the encryption-at-rest key of a stopped server's data dir: re-encrypt the
    /// database and reseal the key files from the current db_key (QPC_DB_KEY / --db-key-file)
    /// to a new one (QPC_NEW_DB_KEY / --new-db-key-file). Safe to run again if interrupted.
    Rekey {
        /// File holding the new key (64 hex characters); or set QPC_NEW_DB_KEY.
        #[arg(long, env = "QPC_NEW_DB_KEY_FILE")]
        new_db_key_file: Option<PathBuf>,
    },
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

async fn run(mut args: Args) -> anyhow::Result<()> {
    let command = args.command.take();
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
            // Read from the environment only, never a flag: command lines are public.
            db_key: std::env::var("QPC_DB_KEY").ok().map(|key| config::SecretText(zeroize::Zeroizing::new(key))),
            db_key_file: args.db_key_file,
            store: args.store,
            db_url: args.db_url.map(|url| config::SecretText(zeroize::Zeroizing::new(url))),
        },
        file,
    )?;

    if let Some(Command::Rekey { new_db_key_file }) = command {
        anyhow::ensure!(
            matches!(resolved.server.store, quicprochat_server::store::StoreBackend::Sqlite),
            "rekey rotates the key of the embedded SQLite store; rotating the db_key of a PostgreSQL \
             cluster (which seals its shared secrets) is not supported yet"
        );
        let old =
            resolved.server.db_key.as_ref().context("rekey needs the current key: QPC_DB_KEY or --db-key-file")?;
        let text = match (std::env::var("QPC_NEW_DB_KEY").ok(), new_db_key_file) {
            (Some(text), _) => zeroize::Zeroizing::new(text),
            (None, Some(path)) => zeroize::Zeroizing::new(
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            ),
            (None, None) => anyhow::bail!("rekey needs the new key: QPC_NEW_DB_KEY or --new-db-key-file"),
        };
        let new = quicprochat_server::at_rest::DbKey::from_hex(&text).context("the new db_key")?;
        quicprochat_server::rekey(&resolved.server.data_dir, old, &new).context("rotating the db_key")?;
        println!("data dir {} now encrypted with the new db_key", resolved.server.data_dir.display());
        return Ok(());
    }

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
        quicprochat_server::serve_metrics(addr)?;
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
