//! `qpc-server`: the quicprochat delivery server as a library, so tests and the zero-config
//! client can run it in-process. The binary in `main.rs` only parses flags and calls [`start`].
//!
//! Layers: [`routes`] adapts RPCs to the transport-agnostic [`services`], which work over the
//! [`store::Store`] trait and the [`state::AppState`] built once here.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod at_rest;
mod blob_import;
pub mod cluster;
pub mod config;
pub mod error;
pub mod middleware;
pub mod push;
pub mod ratelimit;
pub mod relay;
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
use quicprochat_core::keystore;
use quicprochat_core::opaque::OpaqueServerSetup;
use quicprochat_rpc::{RpcServer, ServerOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use ratelimit::Rate;
pub use state::{Clock, DEFAULT_MAX_PAYLOAD, Limits};

use crate::state::AppState;
use crate::store::{PostgresStore, SqliteStore, Store, StoreBackend};

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
    /// Directory of blob files written by versions before blobs moved into the store; imported
    /// at start-up, then removed.
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
    #[error("key file {0} is corrupt (or sealed with a db_key that was not given)")]
    CorruptKeyFile(PathBuf),
    /// A key file is sealed with another db_key.
    #[error("key file {0} is sealed with another db_key")]
    KeyFileLocked(PathBuf),
    /// A cluster-wide secret in the database does not parse, or is sealed with another db_key
    /// (every node of a cluster needs the same one).
    #[error("cluster secret {0} in the database is corrupt or sealed with another db_key")]
    CorruptClusterSecret(&'static str),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    /// The transport could not be set up or failed.
    #[error("transport: {0}")]
    Rpc(#[from] quicprochat_rpc::Error),
    /// The server task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(String),
    /// The Prometheus endpoint could not be served.
    #[error("serving metrics on {addr}: {reason}")]
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        reason: String,
    },
}

/// Serves the process's metrics in the Prometheus text format on `addr` (HTTP, `/metrics`),
/// as `--metrics-listen` does. Installs the process-wide recorder, so call it once.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), ServerError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| ServerError::Metrics { addr, reason: e.to_string() })
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
    /// Encryption at rest of the database and key files; `None` = stored in the clear.
    pub db_key: Option<at_rest::DbKey>,
    /// Where state is stored: the embedded SQLite database (default) or PostgreSQL.
    pub store: StoreBackend,
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
            db_key: None,
            store: StoreBackend::default(),
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
    let key = config.db_key.as_ref();
    let opaque_parse = |b: &[u8]| OpaqueServerSetup::from_bytes(b).ok();
    let opaque_new = || OpaqueServerSetup::generate(&mut rand_core::OsRng).to_bytes().to_vec();
    let signing_parse = |b: &[u8]| <[u8; 32]>::try_from(b).ok().map(|s| IdentityKeyPair::from_secret_bytes(&s));
    let signing_new = || IdentityKeyPair::generate(&mut rand_core::OsRng).secret_bytes().to_vec();
    let (store, cluster, opaque, signing_key): (Arc<dyn Store>, Option<PostgresStore>, _, _) = match &config.store {
        StoreBackend::Sqlite => {
            let store = SqliteStore::open_with(&dir.join(files::DATABASE), store::DEFAULT_READ_CONNECTIONS, key)?;
            if key.is_some() {
                tracing::info!("encryption at rest: database and key files sealed with db_key");
            }
            let opaque = load_or_create(dir, files::OPAQUE_SETUP, key, opaque_parse, opaque_new)?;
            let signing_key = load_or_create(dir, files::SIGNING_KEY, key, signing_parse, signing_new)?;
            (Arc::new(store), None, opaque, signing_key)
        }
        StoreBackend::Postgres(options) => {
            let store = PostgresStore::connect(options).await?;
            tracing::info!(schema = ?options.schema, "storing state in PostgreSQL");
            if key.is_some() {
                tracing::info!(
                    "encryption at rest: cluster secrets sealed with db_key (the database is PostgreSQL's to encrypt)"
                );
            }
            // Every node on the database logs in every user and signs with the same key.
            let opaque = shared_secret(&store, files::OPAQUE_SETUP, key, opaque_parse, opaque_new).await?;
            let signing_key = shared_secret(&store, files::SIGNING_KEY, key, signing_parse, signing_new).await?;
            (Arc::new(store.clone()), Some(store), opaque, signing_key)
        }
    };

    // Blob bytes of an earlier version, from files into the store, before anyone asks for them.
    blob_import::import_blob_files(store.as_ref(), &dir.join(files::BLOBS)).await?;

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
        store,
        opaque,
        signing_key,
        hub: push::PushHub::default(),
        clock: config.clock.clone(),
        limits: config.limits.clone(),
        revoked: Default::default(),
        cluster: cluster.clone().map(|store| Arc::new(store) as Arc<dyn cluster::Cluster>),
        pending_logins: Default::default(),
    });
    let mut rpc_opts = config.rpc.clone();
    rpc_opts.max_payload =
        rpc_opts.max_payload.max(u32::try_from(config.limits.max_payload + 64 * 1024).unwrap_or(u32::MAX));
    let server = RpcServer::bind(config.listen, &cert, routes::router(&state), rpc_opts)?;
    let addr = server.local_addr()?;
    let shutdown = CancellationToken::new();
    let gc = tokio::spawn(gc_loop(Arc::clone(&state), shutdown.clone()));
    let relay = cluster.map(|store| {
        let (events, listener) = store.listen_cluster(shutdown.clone());
        (tokio::spawn(relay::run(Arc::clone(&state), events)), listener)
    });
    let serve = server.serve(shutdown.clone());
    let task = tokio::spawn(async move {
        let served = serve.await;
        // The GC loop and the cluster listener end with the same token; wait for them so no
        // task outlives the server.
        let _ = gc.await;
        if let Some((relay, listener)) = relay {
            let _ = listener.await;
            let _ = relay.await;
        }
        served
    });
    tracing::info!(%addr, data_dir = %dir.display(), "qpc-server listening");
    Ok(RunningServer { addr, cert_der: cert.cert_der.clone(), shutdown, task })
}

/// Loads the cluster-wide secret `name` from the database, or stores a new one if no node has
/// yet. With a `db_key` it is stored sealed (as the key files are), so every node needs the same
/// key.
async fn shared_secret<T>(
    store: &PostgresStore,
    name: &'static str,
    key: Option<&at_rest::DbKey>,
    parse: impl Fn(&[u8]) -> Option<T>,
    generate: impl Fn() -> Vec<u8>,
) -> Result<T, ServerError> {
    let plain = zeroize::Zeroizing::new(generate());
    let candidate = match key {
        Some(key) => keystore::seal_with_key(&mut rand_core::OsRng, key.key_files(), name.as_bytes(), &plain)
            .map_err(|_| ServerError::CorruptClusterSecret(name))?,
        None => plain.to_vec(),
    };
    let stored = zeroize::Zeroizing::new(store.cluster_secret(name, &candidate).await?);
    let plain = match key {
        Some(key) => keystore::open_with_key(key.key_files(), name.as_bytes(), &stored)
            .map_err(|_| ServerError::CorruptClusterSecret(name))?,
        None => stored,
    };
    parse(&plain).ok_or(ServerError::CorruptClusterSecret(name))
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
                purge_idle_buckets(&state).await;
                if let Ok((total, deepest)) = state.store.queue_depth().await {
                    metrics::gauge!("qpc_queue_entries").set(total as f64);
                    metrics::gauge!("qpc_queue_deepest").set(deepest as f64);
                }
                match services::blobs::purge(&state).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "expired blobs purged with their bytes"),
                    Err(e) => tracing::warn!(error = %e, "purging blobs failed"),
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

/// Forgets shared rate-limit buckets idle long enough to be full again (every node may do it:
/// a bucket deleted twice is deleted once).
async fn purge_idle_buckets(state: &AppState) {
    let Some(cluster) = &state.cluster else { return };
    let now = state.clock.now_ms();
    for (class, rate) in state.limits.rates().classes() {
        let fill_ms = u64::from(rate.burst) * 60_000 / u64::from(rate.per_minute.max(1));
        if let Err(e) = cluster.purge_buckets(class, now.saturating_sub(fill_ms)).await {
            tracing::warn!(error = %e, "purging idle rate-limit buckets failed");
        }
    }
}

/// Rotates the encryption-at-rest key of the data dir `dir` (stopped server) from `old` to
/// `new`: the database is re-encrypted and the key files resealed. Files already under `new`
/// are left alone, so a rotation that was interrupted can be run again with the same keys.
pub fn rekey(dir: &Path, old: &at_rest::DbKey, new: &at_rest::DbKey) -> Result<(), ServerError> {
    store::sqlite_rekey(&dir.join(files::DATABASE), old, new)?;
    for name in [files::OPAQUE_SETUP, files::SIGNING_KEY] {
        let path = dir.join(name);
        let sealed = std::fs::read(&path).map_err(|source| ServerError::Io {
            what: "reading a key file",
            path: path.clone(),
            source,
        })?;
        if keystore::open_with_key(new.key_files(), name.as_bytes(), &sealed).is_ok() {
            continue;
        }
        let plain = keystore::open_with_key(old.key_files(), name.as_bytes(), &sealed)
            .map_err(|_| ServerError::KeyFileLocked(path.clone()))?;
        let resealed = keystore::seal_with_key(&mut rand_core::OsRng, new.key_files(), name.as_bytes(), &plain)
            .map_err(|_| ServerError::CorruptKeyFile(path.clone()))?;
        write_secret(&path, &resealed).map_err(|source| ServerError::Io {
            what: "writing a key file",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Loads the secret in `dir/name`, or generates and writes it. With a `db_key` the file is
/// sealed (ChaCha20-Poly1305 under the key-files subkey, bound to `name`); a file written in
/// the clear before the key was set is sealed in place on first use.
fn load_or_create<T>(
    dir: &Path,
    name: &str,
    key: Option<&at_rest::DbKey>,
    parse: impl Fn(&[u8]) -> Option<T>,
    generate: impl Fn() -> Vec<u8>,
) -> Result<T, ServerError> {
    let path = dir.join(name);
    let write = |plain: &[u8]| {
        let bytes = match key {
            Some(key) => keystore::seal_with_key(&mut rand_core::OsRng, key.key_files(), name.as_bytes(), plain)
                .map_err(|_| ServerError::CorruptKeyFile(path.clone()))?,
            None => plain.to_vec(),
        };
        write_secret(&path, &bytes).map_err(|source| ServerError::Io {
            what: "writing a key file",
            path: path.clone(),
            source,
        })
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let Some(key) = key else { return parse(&bytes).ok_or(ServerError::CorruptKeyFile(path)) };
            if let Ok(plain) = keystore::open_with_key(key.key_files(), name.as_bytes(), &bytes) {
                return parse(&plain).ok_or(ServerError::CorruptKeyFile(path));
            }
            // Not sealed with this key: a clear file from before db_key was set, or another key.
            let value = parse(&bytes).ok_or_else(|| ServerError::KeyFileLocked(path.clone()))?;
            write(&bytes)?;
            tracing::info!(file = name, "sealed a key file written before db_key was set");
            Ok(value)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let plain = zeroize::Zeroizing::new(generate());
            write(&plain)?;
            parse(&plain).ok_or(ServerError::CorruptKeyFile(path))
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
