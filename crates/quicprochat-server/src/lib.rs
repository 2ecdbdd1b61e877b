//! `qpc-server`: the quicprochat delivery server as a library, so tests and the zero-config
//! client can run it in-process. The binary in `main.rs` only parses flags and calls [`start`].
//!
//! Layers: [`routes`] adapts RPCs to the transport-agnostic [`services`], which work over the
//! [`store::Store`] trait and the [`state::AppState`] built once here.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
pub mod middleware;
pub mod push;
pub mod ratelimit;
pub mod routes;
pub mod services;
pub mod session;
pub mod state;
pub mod store;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quicprochat_core::identity::IdentityKeyPair;
use quicprochat_core::opaque::OpaqueServerSetup;
use quicprochat_rpc::{RpcServer, ServerOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use ratelimit::Rate;
pub use state::{Clock, Limits};

use crate::state::AppState;
use crate::store::SqliteStore;

/// File names inside the data dir.
pub mod files {
    /// The SQLite database.
    pub const DATABASE: &str = "qpc-server.db";
    /// OPAQUE server setup (secret).
    pub const OPAQUE_SETUP: &str = "opaque-setup.key";
    /// Delivery-proof signing key (secret).
    pub const SIGNING_KEY: &str = "signing.key";
    /// Dev-mode self-signed certificate (DER), for clients to pin.
    pub const DEV_CERT: &str = "server-cert.der";
    /// Directory of blob files.
    pub const BLOBS: &str = "blobs";
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data dir or a key file could not be read or written.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file exists but does not parse.
    #[error("key file {0} is corrupt")]
    CorruptKeyFile(PathBuf),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    /// The transport could not be set up or failed.
    #[error("transport: {0}")]
    Rpc(#[from] quicprochat_rpc::Error),
    /// The server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
}

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// UDP address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Where the database and keys live.
    pub data_dir: PathBuf,
    /// Certificate and key files (PEM or DER); `None` = dev mode with a self-signed certificate.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Service limits.
    pub limits: Limits,
    /// Transport options.
    pub rpc: ServerOptions,
    /// Wall clock (tests may substitute a manual one).
    pub clock: Clock,
}

impl ServerConfig {
    /// Dev-mode defaults for `data_dir` on `listen`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            tls: None,
            limits: Limits::default(),
            rpc: ServerOptions::default(),
            clock: Clock::system(),
        }
    }
}

/// A server accepting connections in the background.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    cert_der: Vec<u8>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), quicprochat_rpc::Error>>,
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// The server's certificate (DER), for clients to pin.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }
    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
    /// Stops accepting, drains in-flight RPCs, closes connections and waits.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.wait().await
    }
    /// Waits until the server stops (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task.await.map_err(|e| ServerError::Task(e.to_string()))??;
        Ok(())
    }
}

/// Opens the data dir, loads or creates the keys and database, binds and starts serving.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
        what: "creating the data dir",
        path: dir.clone(),
        source,
    })?;
    let store = SqliteStore::open(&dir.join(files::DATABASE))?;
    let opaque = load_or_create(
        dir,
        files::OPAQUE_SETUP,
        |b| OpaqueServerSetup::from_bytes(b).ok(),
        || OpaqueServerSetup::generate(&mut rand_core::OsRng).to_bytes().to_vec(),
    )?;
    let signing_key = load_or_create(
        dir,
        files::SIGNING_KEY,
        |b| <[u8; 32]>::try_from(b).ok().map(|s| IdentityKeyPair::from_secret_bytes(&s)),
        || IdentityKeyPair::generate(&mut rand_core::OsRng).secret_bytes().to_vec(),
    )?;

    let cert = match &config.tls {
        Some((cert, key)) => quicprochat_rpc::tls::load_pem_or_der_certificate(cert, key)?,
        None => {
            let (cert, generated) = quicprochat_rpc::tls::load_or_generate_dev_certificate(dir)?;
            if generated {
                tracing::warn!(path = %dir.join(files::DEV_CERT).display(), "dev mode: generated a self-signed certificate; clients must pin it");
            } else {
                tracing::warn!(path = %dir.join(files::DEV_CERT).display(), "dev mode: using the self-signed certificate in the data dir");
            }
            cert
        }
    };

    let state = Arc::new(AppState {
        store: Arc::new(store),
        opaque,
        signing_key,
        hub: push::PushHub::default(),
        clock: config.clock.clone(),
        limits: config.limits.clone(),
        revoked: Default::default(),
        blobs: services::blobs::BlobFiles::new(dir.join(files::BLOBS)),
        pending_logins: Default::default(),
    });
    let mut rpc_opts = config.rpc.clone();
    rpc_opts.max_payload =
        rpc_opts.max_payload.max(u32::try_from(config.limits.max_payload + 64 * 1024).unwrap_or(u32::MAX));
    let server = RpcServer::bind(config.listen, &cert, routes::router(&state), rpc_opts)?;
    let addr = server.local_addr()?;
    let shutdown = CancellationToken::new();
    let gc = tokio::spawn(gc_loop(Arc::clone(&state), shutdown.clone()));
    let serve = server.serve(shutdown.clone());
    let task = tokio::spawn(async move {
        let served = serve.await;
        // The GC loop ends with the same token; wait for it so no task outlives the server.
        let _ = gc.await;
        served
    });
    tracing::info!(%addr, data_dir = %dir.display(), "qpc-server listening");
    Ok(RunningServer { addr, cert_der: cert.cert_der.clone(), shutdown, task })
}

/// Purges expired envelopes every `gc_interval` until shutdown.
async fn gc_loop(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(state.limits.gc_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                state.revoked.prune(state.clock.now_ms());
                if let Ok((total, deepest)) = state.store.queue_depth().await {
                    metrics::gauge!("qpc_queue_entries").set(total as f64);
                    metrics::gauge!("qpc_queue_deepest").set(deepest as f64);
                }
                if let Err(e) = services::blobs::purge(&state).await {
                    tracing::warn!(error = %e, "purging blobs failed");
                }
                match services::delivery::purge_expired(&state).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "expired envelopes purged"),
                    Err(e) => tracing::warn!(error = %e, "purging expired envelopes failed"),
                }
            },
        }
    }
}

/// Loads a secret from `dir/name`, or generates it and writes it with mode 0600.
fn load_or_create<T>(
    dir: &Path,
    name: &str,
    parse: impl Fn(&[u8]) -> Option<T>,
    generate: impl Fn() -> Vec<u8>,
) -> Result<T, ServerError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes).ok_or(ServerError::CorruptKeyFile(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = zeroize::Zeroizing::new(generate());
            write_secret(&path, &bytes).map_err(|source| ServerError::Io {
                what: "writing a key file",
                path: path.clone(),
                source,
            })?;
            parse(&bytes).ok_or(ServerError::CorruptKeyFile(path))
        }
        Err(source) => Err(ServerError::Io { what: "reading a key file", path, source }),
    }
}

/// Writes a file atomically (temp + rename) readable only by its owner.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
