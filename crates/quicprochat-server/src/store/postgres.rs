//! The cluster store: one PostgreSQL database shared by every `qpc-server` node, reached through a
//! connection pool.
//!
//! The semantics are [`super::SqliteStore`]'s, transaction for transaction. SQLite gets its
//! isolation from a single writer; here transactions run at READ COMMITTED (each statement sees
//! everything committed before it) and take explicit row locks wherever an outcome depends on
//! rows another transaction may be writing:
//!
//! - every enqueue locks its **channel row** (`FOR NO KEY UPDATE`) before it reads the epoch or
//!   the members: commits are sequenced (the first for epoch E wins, the next sees E+1), the
//!   envelopes of one channel are ordered, and a retried enqueue re-checks its idempotency key
//!   under the lock;
//! - **device rows** are locked, always in id order, to allocate per-device sequence numbers and
//!   check queue depth (enqueue), to claim and upload key packages, and to delete devices and
//!   accounts;
//! - **envelope rows** are not locked to decide whether the last queue entry naming one went (ack,
//!   device and account deletion): the acks of one envelope would wait in line for its row. A
//!   transaction that may have deleted an envelope's last entries together with others not yet
//!   committed settles the envelope after its commit instead (see [`release`]), so a payload is
//!   never left behind by concurrent acks.
//! - a **blob row** is locked for each chunk written to the blob (so chunks of one upload reaching
//!   two nodes are stored once and in order), and account deletion locks the blobs the account
//!   references, in id order, before deciding which no other account references.
//!
//! A transaction that deadlocks or fails serialization anyway (PostgreSQL aborts one of the
//! pair) is rolled back and run again, a bounded number of times.
//!
//! Migrations are versioned in `schema_version` and applied under an advisory lock, so nodes
//! starting together migrate once.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls, Row};

use crate::cluster::ClusterEvent;

use super::{
    AccountStore, AuditEvent, ChannelId, ChannelKind, ChannelRecord, ClaimedKeyPackage, DeletedAccount, DeliveryStore,
    DeviceId, DeviceRecord, DeviceStore, EndpointRecord, EnqueueBatch, EnqueueOutcome, EnvelopeKind, NewChannel,
    QueuePage, QueuedEntry, SessionRecord, StoreError, UserId, UserRecord,
};

/// Migrations, applied in order; `schema_version` records each one that ran. The first is the
/// whole schema `SqliteStore` reached in its six steps.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            BYTEA PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    opaque_record BYTEA NOT NULL,
    created_ms    BIGINT NOT NULL
);
CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    user_id    BYTEA NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    device_id  BYTEA,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(user_id);
CREATE INDEX sessions_by_device ON sessions(device_id);
CREATE TABLE devices (
    id           BYTEA PRIMARY KEY,
    user_id      BYTEA NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    identity_key BYTEA NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    next_seq     BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX devices_by_user ON devices(user_id);
CREATE TABLE key_packages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   BYTEA NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    key_package BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE TABLE channels (
    id             BYTEA PRIMARY KEY,
    kind           BIGINT NOT NULL,
    epoch          BIGINT NOT NULL DEFAULT 0,
    group_info     BYTEA,
    created_ms     BIGINT NOT NULL,
    retention_secs BIGINT NOT NULL DEFAULT 0,
    tracker        BYTEA
);
CREATE TABLE channel_members (
    channel_id BYTEA NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    device_id  BYTEA NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (channel_id, device_id)
);
CREATE INDEX channel_members_by_device ON channel_members(device_id);
CREATE TABLE envelopes (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         BYTEA NOT NULL UNIQUE,
    channel_id BYTEA NOT NULL,
    kind       BIGINT NOT NULL,
    epoch      BIGINT NOT NULL,
    payload    BYTEA NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT
);
CREATE INDEX envelopes_by_expiry ON envelopes(expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE queue (
    device_id BYTEA NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq       BIGINT NOT NULL,
    envelope  BIGINT NOT NULL REFERENCES envelopes(seq) ON DELETE CASCADE,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX queue_by_envelope ON queue(envelope);
CREATE TABLE idempotency (
    device_id   BYTEA NOT NULL,
    key         BYTEA NOT NULL,
    envelope    BIGINT NOT NULL,
    envelope_id BYTEA NOT NULL,
    epoch_after BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX idempotency_by_age ON idempotency(created_ms);
CREATE TABLE hybrid_keys (
    device_id  BYTEA PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    public_key BYTEA NOT NULL
);
CREATE TABLE endpoints (
    device_id  BYTEA PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    endpoint   BYTEA NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE audit_log (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms     BIGINT NOT NULL,
    event     TEXT NOT NULL,
    user_id   BYTEA,
    device_id BYTEA,
    method    TEXT,
    status    TEXT
);
CREATE INDEX audit_log_by_user ON audit_log(user_id, id);
CREATE TABLE blobs (
    id         BYTEA PRIMARY KEY,
    total_size BIGINT NOT NULL,
    received   BIGINT NOT NULL DEFAULT 0,
    complete   BOOLEAN NOT NULL DEFAULT FALSE,
    uploader   BYTEA REFERENCES devices(id) ON DELETE SET NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX blobs_by_expiry ON blobs(expires_ms);
CREATE INDEX blobs_by_uploader ON blobs(uploader);
"#,
    r#"
CREATE TABLE cluster_secrets (
    name       TEXT PRIMARY KEY,
    value      BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);
"#,
    // Rate-limit buckets shared by the nodes. UNLOGGED: no WAL on the request path; after a
    // PostgreSQL crash the table comes back empty, i.e. every bucket full, which is harmless.
    r#"
CREATE UNLOGGED TABLE rate_buckets (
    class        TEXT NOT NULL,
    key          BYTEA NOT NULL,
    milli_tokens BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    granted      BOOLEAN NOT NULL,
    PRIMARY KEY (class, key)
);
"#,
    // Blob bytes move from files into the database (the files are imported at start-up), and
    // every account that uploaded a blob references it. Chunks are ciphertext: stored out of line
    // without trying to compress them.
    r#"
CREATE TABLE blob_chunks (
    blob_id     BYTEA NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    byte_offset BIGINT NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (blob_id, byte_offset)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE blob_refs (
    blob_id BYTEA NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    user_id BYTEA NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (blob_id, user_id)
);
CREATE INDEX blob_refs_by_user ON blob_refs(user_id);
INSERT INTO blob_refs (blob_id, user_id) SELECT b.id, d.user_id FROM blobs b JOIN devices d ON d.id = b.uploader;
"#,
    // Each device counts its queue, so that checking depth does not count rows: raised by the
    // enqueue that allocates the sequence number, lowered by this trigger whatever deletes the
    // rows (ack, expiry, cascades). It locks the devices in id order, as an enqueue does.
    r#"
ALTER TABLE devices ADD COLUMN queue_depth BIGINT NOT NULL DEFAULT 0;
UPDATE devices d SET queue_depth = (SELECT COUNT(*) FROM queue q WHERE q.device_id = d.id);
CREATE FUNCTION queue_depth_down() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM 1 FROM devices WHERE id IN (SELECT device_id FROM gone) ORDER BY id FOR NO KEY UPDATE;
    UPDATE devices d SET queue_depth = d.queue_depth - g.n
        FROM (SELECT device_id, COUNT(*) AS n FROM gone GROUP BY device_id) AS g
        WHERE d.id = g.device_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER queue_depth_down AFTER DELETE ON queue REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION queue_depth_down();
"#,
    // Every enqueue rewrites the row of each device it queues to (sequence number, depth) and
    // every ack its own. Room left on each page lets the new version stay there (a HOT update),
    // so no index of the table is written: an enqueue to 999 devices updates their rows in about
    // a quarter of the time. Rows already stored take the room as they move.
    r#"
ALTER TABLE devices SET (fillfactor = 50);
"#,
    // A queue row's foreign keys were checked row by row, one lookup of the device and one of
    // the envelope for every recipient: 6.5 of the 8.8 ms an enqueue to 999 devices spent
    // inserting its rows. The store keeps both relations itself: an envelope's entries are
    // inserted with it by the enqueue that creates it and deleted before it (see `release`), and
    // a device's or an account's deletion deletes the device's queue under the lock of its row,
    // which every enqueue to the device takes first.
    r#"
ALTER TABLE queue DROP CONSTRAINT IF EXISTS queue_device_id_fkey;
ALTER TABLE queue DROP CONSTRAINT IF EXISTS queue_envelope_fkey;
"#,
];

/// Idempotency records are honoured for this long (as in `SqliteStore`; the conformance suite
/// checks both).
const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Pool size when none is configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// How often a transaction runs before a deadlock or serialization failure is returned.
const MAX_ATTEMPTS: u32 = 8;

/// First argument of the migration advisory lock (the second is the schema's hash).
const MIGRATION_LOCK: i32 = 0x5150_4301;

/// Where and how to connect.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database` or a key/value connection string. May hold a
    /// password: never logged.
    pub url: String,
    /// Most connections the pool opens.
    pub max_connections: usize,
    /// Schema for every table (created if missing); `None` = the connection's `search_path`.
    pub schema: Option<String>,
}

impl PostgresOptions {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), max_connections: DEFAULT_MAX_CONNECTIONS, schema: None }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("schema", &self.schema)
            .finish()
    }
}

/// PostgreSQL-backed [`super::Store`] (see the module docs for its locking).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// For the dedicated `LISTEN` connection.
    pub(super) config: tokio_postgres::Config,
    /// Tells this node's announcements apart from other nodes' on the bus.
    pub(super) node: [u8; 8],
    /// The notification channel of this schema.
    pub(super) channel: String,
    /// Envelopes whose [`release::settle`] failed, for the next purge.
    unsettled: Arc<Mutex<Vec<i64>>>,
    /// Whether this node's purge has swept the envelopes a stopped node may have left.
    swept: Arc<AtomicBool>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("pool", &self.pool.status()).finish()
    }
}

impl PostgresStore {
    /// Connects, creates the schema if one is configured and missing, and runs pending
    /// migrations.
    pub async fn connect(options: &PostgresOptions) -> Result<Self, StoreError> {
        let config = connection_config(options)?;
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(StoreError::PoolSetup)?;
        let mut client = pool.get().await.map_err(StoreError::ConnectionPool)?;
        migrate(&mut client, options.schema.as_deref()).await?;
        let schema: Option<String> = client.query_one("SELECT current_schema()::text", &[]).await?.try_get(0)?;
        drop(client);
        let mut node = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut node);
        let channel = format!("qpc_deliveries_{}", schema.unwrap_or_default());
        Ok(Self {
            pool,
            config,
            node,
            channel,
            unsettled: Arc::new(Mutex::new(Vec::new())),
            swept: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A connection from the pool.
    pub(super) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(StoreError::ConnectionPool)
    }

    /// Closes the pool: connections are dropped as they come back.
    pub fn close(&self) {
        self.pool.close();
    }

    /// The cluster-wide secret `name`: the value stored by whichever node asked first, or
    /// `candidate` if this is the first ask. Every node on the database gets the same bytes.
    pub async fn cluster_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO cluster_secrets (name, value, created_ms) \
                 VALUES ($1, $2, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT) ON CONFLICT (name) DO NOTHING",
                &[&name, &candidate],
            )
            .await?;
        Ok(client.query_one("SELECT value FROM cluster_secrets WHERE name = $1", &[&name]).await?.try_get(0)?)
    }
}

/// Announces new queue entries to the other nodes; PostgreSQL sends it when (and only if) the
/// transaction commits.
async fn announce(
    tx: &Transaction<'_>,
    node: &[u8; 8],
    channel: &str,
    deliveries: &[(DeviceId, QueuedEntry)],
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let event = ClusterEvent::Delivered(deliveries.iter().map(|(device, entry)| (*device, entry.seq)).collect());
    // Delivery items are short and fixed-size: they always fit.
    for text in event.encode(&hex::encode(node)).unwrap_or_default() {
        exec(tx, "SELECT pg_notify($1, $2)", &[&channel, &text]).await?;
    }
    Ok(())
}

/// Runs a transaction function `op(&mut client, …)` with a pooled connection, again on a fresh
/// connection after a deadlock or serialization failure (up to [`MAX_ATTEMPTS`] runs), and records
/// its time as a write.
macro_rules! retrying {
    ($store:expr, $client:ident => $op:expr) => {{
        let started = std::time::Instant::now();
        let mut attempt: u32 = 1;
        let result = loop {
            #[allow(unused_mut)]
            let mut $client = $store.client().await?;
            match $op.await {
                Err(StoreError::Postgres(e)) if is_transient(&e) => {
                    if attempt >= MAX_ATTEMPTS {
                        break Err(StoreError::Contended { attempts: attempt, source: e });
                    }
                    drop($client);
                    backoff(attempt).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        record("write", started);
        result
    }};
}

/// Runs a read on a pooled connection and records its time.
macro_rules! reading {
    ($store:expr, $client:ident => $op:expr) => {{
        let started = std::time::Instant::now();
        let result = async {
            let $client = $store.client().await?;
            $op.await
        }
        .await;
        record("read", started);
        result
    }};
}

// After the macros: the blob store uses them.
mod blobs;
mod enqueue;
mod release;

impl PostgresStore {
    /// Settles the envelopes a committed transaction's [`release::release`] returned; if that
    /// fails, leaves them to the next purge (the caller's transaction stands either way).
    async fn settle_released(&self, seqs: Vec<i64>) {
        if seqs.is_empty() {
            return;
        }
        let settled: Result<(), StoreError> =
            async { retrying!(self, client => release::settle(&mut client, &seqs)) }.await;
        if let Err(e) = settled {
            tracing::warn!(error = %e, envelopes = seqs.len(), "could not settle released envelopes; the next purge will");
            if let Ok(mut unsettled) = self.unsettled.lock() {
                unsettled.extend(seqs);
            }
        }
    }
}

fn record(kind: &'static str, started: std::time::Instant) {
    metrics::histogram!("qpc_store_operation_seconds", "kind" => kind).record(started.elapsed().as_secs_f64());
}

/// Deadlock or serialization failure: PostgreSQL rolled the transaction back, running it again
/// is safe.
fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Waits 2^attempt ms plus jitter, so two conflicting transactions do not meet again.
async fn backoff(attempt: u32) {
    let base = 1u64 << attempt.min(8);
    let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// The connection settings of `options`: the URL, the schema first on the search path, and an
/// application name for `pg_stat_activity`.
fn connection_config(options: &PostgresOptions) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = options.url.parse().map_err(StoreError::InvalidDatabaseUrl)?;
    if let Some(schema) = &options.schema {
        check_schema_name(schema)?;
        let mut startup = config.get_options().map(str::to_owned).unwrap_or_default();
        if !startup.is_empty() {
            startup.push(' ');
        }
        startup.push_str(&format!("-c search_path={schema}"));
        config.options(&startup);
    }
    if config.get_application_name().is_none() {
        config.application_name("qpc-server");
    }
    Ok(config)
}

fn check_schema_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok { Ok(()) } else { Err(StoreError::InvalidSchemaName(name.to_owned())) }
}

/// Applies pending migrations in one transaction, under an advisory lock per schema so that
/// nodes starting at once do not race.
async fn migrate(client: &mut Object, schema: Option<&str>) -> Result<(), StoreError> {
    let tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(COALESCE($2::text, current_schema()::text, '')))",
        &[&MIGRATION_LOCK, &schema],
    )
    .await?;
    if let Some(schema) = schema {
        // Checked by `check_schema_name`: a plain identifier.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )
    .await?;
    let found: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await?.try_get(0)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_ms) \
             VALUES ($1, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT)",
            &[&(i as i64 + 1)],
        )
        .await?;
        tracing::info!(version = i + 1, "applied a PostgreSQL schema migration");
    }
    tx.commit().await?;
    Ok(())
}

async fn begin(client: &mut Object) -> Result<Transaction<'_>, StoreError> {
    Ok(client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?)
}

async fn rows<C: GenericClient>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

async fn row<C: GenericClient>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

async fn exec<C: GenericClient>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

async fn count<C: GenericClient>(c: &C, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<i64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, params).await?.try_get(0)?)
}

fn u64_to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i64_to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn bytes16(v: &[u8], what: &'static str) -> Result<[u8; 16], StoreError> {
    <[u8; 16]>::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn bytes32(v: &[u8], what: &'static str) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn get16(r: &Row, i: usize, what: &'static str) -> Result<[u8; 16], StoreError> {
    bytes16(r.try_get::<_, &[u8]>(i)?, what)
}

fn get32(r: &Row, i: usize, what: &'static str) -> Result<[u8; 32], StoreError> {
    bytes32(r.try_get::<_, &[u8]>(i)?, what)
}

fn user_from(r: &Row) -> Result<UserRecord, StoreError> {
    Ok(UserRecord { id: UserId(get16(r, 0, "users.id")?), username: r.try_get(1)?, opaque_record: r.try_get(2)? })
}

fn device_from(r: &Row) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        id: DeviceId(get16(r, 0, "devices.id")?),
        user_id: UserId(get16(r, 1, "devices.user_id")?),
        identity_key: get32(r, 2, "devices.identity_key")?,
        name: r.try_get(3)?,
        created_ms: i64_to_u64(r.try_get(4)?),
    })
}

const CHANNEL_COLUMNS: &str = "c.id, c.kind, c.epoch, c.group_info, c.retention_secs, c.tracker";

fn channel_from(r: &Row) -> Result<ChannelRecord, StoreError> {
    Ok(ChannelRecord {
        id: ChannelId(get16(r, 0, "channels.id")?),
        kind: ChannelKind::from_i64(r.try_get(1)?).ok_or(StoreError::Corrupt("channels.kind"))?,
        epoch: i64_to_u64(r.try_get(2)?),
        group_info: r.try_get(3)?,
        retention_secs: u32::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
        tracker: r.try_get(5)?,
    })
}

fn entry_from(r: &Row) -> Result<QueuedEntry, StoreError> {
    Ok(QueuedEntry {
        seq: i64_to_u64(r.try_get(0)?),
        channel: ChannelId(get16(r, 1, "envelopes.channel_id")?),
        envelope_id: get16(r, 2, "envelopes.id")?,
        kind: EnvelopeKind::from_i64(r.try_get(3)?).ok_or(StoreError::Corrupt("envelopes.kind"))?,
        epoch: i64_to_u64(r.try_get(4)?),
        payload: r.try_get::<_, Vec<u8>>(5)?.into(),
        created_ms: i64_to_u64(r.try_get(6)?),
    })
}

fn device_ids(rows: &[Row], what: &'static str) -> Result<Vec<DeviceId>, StoreError> {
    rows.iter().map(|r| get16(r, 0, what).map(DeviceId)).collect()
}

#[async_trait]
impl AccountStore for PostgresStore {
    async fn create_user(&self, username: &str, opaque_record: Vec<u8>, now_ms: u64) -> Result<UserRecord, StoreError> {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let inserted = retrying!(self, client => exec(
            &client,
            "INSERT INTO users (id, username, opaque_record, created_ms) VALUES ($1, $2, $3, $4)",
            &[&id.as_slice(), &username, &opaque_record, &u64_to_i64(now_ms)],
        ));
        match inserted {
            Ok(_) => Ok(UserRecord { id: UserId(id), username: username.to_owned(), opaque_record }),
            Err(StoreError::Postgres(e)) if is_unique_violation(&e) => Err(StoreError::AlreadyExists("user")),
            Err(e) => Err(e),
        }
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            "SELECT id, username, opaque_record FROM users WHERE username = $1",
            &[&username],
        ))?;
        found.as_ref().map(user_from).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            "SELECT id, username, opaque_record FROM users WHERE id = $1",
            &[&id.0.as_slice()],
        ))?;
        found.as_ref().map(user_from).transpose()
    }

    async fn create_session(&self, s: SessionRecord) -> Result<(), StoreError> {
        retrying!(self, client => insert_session(&client, &s))
    }

    async fn record_login(&self, s: SessionRecord, event: AuditEvent) -> Result<(), StoreError> {
        retrying!(self, client => record_login_tx(&mut client, &s, &event))
    }

    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            "SELECT user_id, device_id, created_ms, expires_ms FROM sessions WHERE token_hash = $1",
            &[&token_hash.as_slice()],
        ))?;
        found
            .map(|r| {
                let device: Option<&[u8]> = r.try_get(1)?;
                Ok(SessionRecord {
                    token_hash,
                    user_id: UserId(get16(&r, 0, "sessions.user_id")?),
                    device_id: device.map(|d| bytes16(d, "sessions.device_id").map(DeviceId)).transpose()?,
                    created_ms: i64_to_u64(r.try_get(2)?),
                    expires_ms: i64_to_u64(r.try_get(3)?),
                })
            })
            .transpose()
    }

    async fn set_session_device(&self, token_hash: [u8; 32], device: DeviceId) -> Result<(), StoreError> {
        let n = retrying!(self, client => exec(
            &client,
            "UPDATE sessions SET device_id = $2 WHERE token_hash = $1",
            &[&token_hash.as_slice(), &device.0.as_slice()],
        ))?;
        if n == 0 { Err(StoreError::NotFound("session")) } else { Ok(()) }
    }

    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        retrying!(self, client => insert_audit(&client, &event))
    }

    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool, StoreError> {
        let n = retrying!(self, client => exec(
            &client,
            "DELETE FROM sessions WHERE token_hash = $1",
            &[&token_hash.as_slice()],
        ))?;
        Ok(n > 0)
    }

    async fn delete_account(&self, user: UserId) -> Result<Option<DeletedAccount>, StoreError> {
        let (deleted, released) = retrying!(self, client => delete_account_tx(&mut client, user))?;
        self.settle_released(released).await;
        Ok(deleted)
    }
}

async fn insert_session<C: GenericClient>(c: &C, s: &SessionRecord) -> Result<(), StoreError> {
    let device = s.device_id.map(|d| d.0.to_vec());
    exec(
        c,
        "INSERT INTO sessions (token_hash, user_id, device_id, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
        &[
            &s.token_hash.as_slice(),
            &s.user_id.0.as_slice(),
            &device,
            &u64_to_i64(s.created_ms),
            &u64_to_i64(s.expires_ms),
        ],
    )
    .await?;
    Ok(())
}

async fn insert_audit<C: GenericClient>(c: &C, event: &AuditEvent) -> Result<(), StoreError> {
    let user = event.user.map(|u| u.0.to_vec());
    let device = event.device.map(|d| d.0.to_vec());
    exec(
        c,
        "INSERT INTO audit_log (at_ms, event, user_id, device_id, method, status) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&u64_to_i64(event.at_ms), &event.kind.as_str(), &user, &device, &event.method, &event.status],
    )
    .await?;
    Ok(())
}

/// A login's session and audit event in one transaction whose commit does not wait for the
/// WAL flush (see [`AccountStore::record_login`]).
async fn record_login_tx(client: &mut Object, s: &SessionRecord, event: &AuditEvent) -> Result<(), StoreError> {
    let tx = begin(client).await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
    insert_session(&tx, s).await?;
    insert_audit(&tx, event).await?;
    tx.commit().await?;
    Ok(())
}

/// The account's deletion, and the envelopes to settle after it (see [`release`]).
async fn delete_account_tx(
    client: &mut Object,
    user: UserId,
) -> Result<(Option<DeletedAccount>, Vec<i64>), StoreError> {
    let tx = begin(client).await?;
    let uid = user.0.as_slice();
    let devices: Vec<Vec<u8>> = rows(&tx, "SELECT id FROM devices WHERE user_id = $1 ORDER BY id FOR UPDATE", &[&uid])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let devices: Vec<&[u8]> = devices.iter().map(Vec::as_slice).collect();
    let queued = release::delete_queues(&tx, &devices).await?;
    exec(&tx, "DELETE FROM idempotency WHERE device_id = ANY($1)", &[&devices]).await?;
    let mut sessions = rows(&tx, "SELECT token_hash FROM sessions WHERE user_id = $1", &[&uid])
        .await?
        .iter()
        .map(|r| get32(r, 0, "sessions.token_hash"))
        .collect::<Result<Vec<_>, _>>()?;
    // The blobs the account references, locked, then those no other account references deleted
    // (their chunks cascade): a reference added meanwhile by another account's upload committed
    // under the lock and is seen.
    let referenced: Vec<Vec<u8>> = rows(
        &tx,
        "SELECT b.id FROM blobs b JOIN blob_refs r ON r.blob_id = b.id WHERE r.user_id = $1 ORDER BY b.id FOR UPDATE OF b",
        &[&uid],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?;
    if !referenced.is_empty() {
        exec(
            &tx,
            "DELETE FROM blobs b WHERE b.id = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.blob_id = b.id AND r.user_id <> $2)",
            &[&referenced, &uid],
        )
        .await?;
    }
    // Sessions, devices, key packages and memberships cascade.
    let existed = exec(&tx, "DELETE FROM users WHERE id = $1", &[&uid]).await? == 1;
    let released = release::release(&tx, &queued).await?;
    exec(
        &tx,
        "DELETE FROM channels WHERE NOT EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = channels.id)",
        &[],
    )
    .await?;
    tx.commit().await?;
    if !existed {
        return Ok((None, released));
    }
    sessions.sort_unstable();
    Ok((Some(DeletedAccount { sessions }), released))
}

#[async_trait]
impl DeviceStore for PostgresStore {
    async fn upsert_device(&self, d: DeviceRecord) -> Result<(), StoreError> {
        // A concurrent insert of the same device waits here and then sees the row.
        let inserted = retrying!(self, client => exec(
            &client,
            "INSERT INTO devices (id, user_id, identity_key, name, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
            &[&d.id.0.as_slice(), &d.user_id.0.as_slice(), &d.identity_key.as_slice(), &d.name, &u64_to_i64(d.created_ms)],
        ))?;
        if inserted == 1 {
            return Ok(());
        }
        let owner =
            reading!(self, client => row(&client, "SELECT user_id FROM devices WHERE id = $1", &[&d.id.0.as_slice()]))?;
        match owner {
            Some(r) if r.try_get::<_, &[u8]>(0)? == d.user_id.0.as_slice() => Ok(()),
            // Bound to another account, or this identity key is (under another id).
            _ => Err(StoreError::AlreadyExists("device")),
        }
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            "SELECT id, user_id, identity_key, name, created_ms FROM devices WHERE user_id = $1 ORDER BY created_ms, id",
            &[&user.0.as_slice()],
        ))?;
        found.iter().map(device_from).collect()
    }

    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u32, StoreError> {
        retrying!(self, client => add_key_packages_tx(&mut client, device, &packages, last_resort.as_deref()))
    }

    async fn claim_key_packages(&self, user: UserId) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
        retrying!(self, client => claim_key_packages_tx(&mut client, user))
    }

    async fn key_package_status(&self, device: DeviceId) -> Result<(u32, bool), StoreError> {
        let r = reading!(self, client => async {
            let stmt = client
                .prepare_cached(
                    "SELECT COUNT(*) FILTER (WHERE NOT last_resort), COUNT(*) FILTER (WHERE last_resort) \
                     FROM key_packages WHERE device_id = $1",
                )
                .await?;
            Ok::<_, StoreError>(client.query_one(&stmt, &[&device.0.as_slice()]).await?)
        })?;
        let (pool, last): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        Ok((to_u32(pool), last > 0))
    }

    async fn device_by_key(&self, identity_key: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            "SELECT id, user_id, identity_key, name, created_ms FROM devices WHERE identity_key = $1",
            &[&identity_key.as_slice()],
        ))?;
        found.as_ref().map(device_from).transpose()
    }

    async fn delete_device(&self, user: UserId, device: DeviceId) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
        let (sessions, released) = retrying!(self, client => delete_device_tx(&mut client, user, device))?;
        self.settle_released(released).await;
        Ok(sessions)
    }

    async fn set_hybrid_key(&self, device: DeviceId, public_key: Vec<u8>) -> Result<(), StoreError> {
        retrying!(self, client => exec(
            &client,
            "INSERT INTO hybrid_keys (device_id, public_key) VALUES ($1, $2) \
             ON CONFLICT (device_id) DO UPDATE SET public_key = EXCLUDED.public_key",
            &[&device.0.as_slice(), &public_key],
        ))?;
        Ok(())
    }

    async fn hybrid_key(&self, device: DeviceId) -> Result<Option<Vec<u8>>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            "SELECT public_key FROM hybrid_keys WHERE device_id = $1",
            &[&device.0.as_slice()],
        ))?;
        Ok(found.map(|r| r.try_get(0)).transpose()?)
    }

    async fn hybrid_keys_of(&self, user: UserId) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            "SELECT h.device_id, h.public_key FROM hybrid_keys h JOIN devices d ON d.id = h.device_id \
             WHERE d.user_id = $1 ORDER BY d.created_ms, d.id",
            &[&user.0.as_slice()],
        ))?;
        found.iter().map(|r| Ok((DeviceId(get16(r, 0, "hybrid_keys.device_id")?), r.try_get(1)?))).collect()
    }

    async fn set_endpoint(&self, e: EndpointRecord) -> Result<(), StoreError> {
        retrying!(self, client => exec(
            &client,
            "INSERT INTO endpoints (device_id, endpoint, expires_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET endpoint = EXCLUDED.endpoint, expires_ms = EXCLUDED.expires_ms",
            &[&e.device_id.0.as_slice(), &e.endpoint, &u64_to_i64(e.expires_ms)],
        ))?;
        Ok(())
    }

    async fn endpoints_of(&self, user: UserId, now_ms: u64) -> Result<Vec<EndpointRecord>, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            "SELECT e.device_id, e.endpoint, e.expires_ms FROM endpoints e JOIN devices d ON d.id = e.device_id \
             WHERE d.user_id = $1 AND e.expires_ms > $2 ORDER BY d.created_ms, d.id",
            &[&user.0.as_slice(), &u64_to_i64(now_ms)],
        ))?;
        found
            .iter()
            .map(|r| {
                Ok(EndpointRecord {
                    device_id: DeviceId(get16(r, 0, "endpoints.device_id")?),
                    endpoint: r.try_get(1)?,
                    expires_ms: i64_to_u64(r.try_get(2)?),
                })
            })
            .collect()
    }
}

async fn add_key_packages_tx(
    client: &mut Object,
    device: DeviceId,
    packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> Result<u32, StoreError> {
    let tx = begin(client).await?;
    let dev = device.0.as_slice();
    // One upload or claim per device at a time: two last-resort uploads must not both stay.
    rows(&tx, "SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE", &[&dev]).await?;
    if !packages.is_empty() {
        // Ids follow the upload order: claims hand out the oldest first.
        exec(
            &tx,
            "INSERT INTO key_packages (device_id, key_package, last_resort) \
             SELECT $1, kp, FALSE FROM UNNEST($2::BYTEA[]) WITH ORDINALITY AS t(kp, n) ORDER BY n",
            &[&dev, &packages],
        )
        .await?;
    }
    if let Some(lr) = last_resort {
        exec(&tx, "DELETE FROM key_packages WHERE device_id = $1 AND last_resort", &[&dev]).await?;
        exec(&tx, "INSERT INTO key_packages (device_id, key_package, last_resort) VALUES ($1, $2, TRUE)", &[&dev, &lr])
            .await?;
    }
    let pool =
        count(&tx, "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND NOT last_resort", &[&dev]).await?;
    tx.commit().await?;
    Ok(to_u32(pool))
}

async fn claim_key_packages_tx(client: &mut Object, user: UserId) -> Result<Vec<ClaimedKeyPackage>, StoreError> {
    let tx = begin(client).await?;
    // Locked in id order like everywhere else; handed out oldest device first.
    let mut devices: Vec<([u8; 16], i64)> = rows(
        &tx,
        "SELECT id, created_ms FROM devices WHERE user_id = $1 ORDER BY id FOR NO KEY UPDATE",
        &[&user.0.as_slice()],
    )
    .await?
    .iter()
    .map(|r| Ok((get16(r, 0, "devices.id")?, r.try_get(1)?)))
    .collect::<Result<_, StoreError>>()?;
    devices.sort_by_key(|(id, created)| (*created, *id));
    let mut out = Vec::new();
    for (dev, _) in devices {
        let d = dev.as_slice();
        // Regular packages first (oldest first); the last-resort one only when none is left.
        let pick = row(
            &tx,
            "SELECT id, key_package, last_resort FROM key_packages WHERE device_id = $1 \
             ORDER BY last_resort ASC, id ASC LIMIT 1",
            &[&d],
        )
        .await?;
        let Some(pick) = pick else { continue };
        let (id, key_package, last_resort): (i64, Vec<u8>, bool) =
            (pick.try_get(0)?, pick.try_get(1)?, pick.try_get(2)?);
        if !last_resort {
            exec(&tx, "DELETE FROM key_packages WHERE id = $1", &[&id]).await?;
        }
        let remaining =
            count(&tx, "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND NOT last_resort", &[&d]).await?;
        out.push(ClaimedKeyPackage {
            device_id: DeviceId(dev),
            key_package,
            last_resort,
            remaining: to_u32(remaining),
        });
    }
    tx.commit().await?;
    Ok(out)
}

/// The device's deletion (its sessions' token hashes), and the envelopes to settle after it (see
/// [`release`]).
async fn delete_device_tx(
    client: &mut Object,
    user: UserId,
    device: DeviceId,
) -> Result<(Option<Vec<[u8; 32]>>, Vec<i64>), StoreError> {
    let tx = begin(client).await?;
    let dev = device.0.as_slice();
    let owned =
        rows(&tx, "SELECT 1 FROM devices WHERE id = $1 AND user_id = $2 FOR UPDATE", &[&dev, &user.0.as_slice()])
            .await?;
    if owned.is_empty() {
        return Ok((None, Vec::new()));
    }
    let queued = release::delete_queues(&tx, &[dev]).await?;
    let sessions = rows(&tx, "DELETE FROM sessions WHERE device_id = $1 RETURNING token_hash", &[&dev])
        .await?
        .iter()
        .map(|r| get32(r, 0, "sessions.token_hash"))
        .collect::<Result<Vec<_>, _>>()?;
    exec(&tx, "DELETE FROM idempotency WHERE device_id = $1", &[&dev]).await?;
    // Key packages, memberships, hybrid key and endpoint cascade.
    exec(&tx, "DELETE FROM devices WHERE id = $1 AND user_id = $2", &[&dev, &user.0.as_slice()]).await?;
    let released = release::release(&tx, &queued).await?;
    tx.commit().await?;
    Ok((Some(sessions), released))
}

/// The recorded outcome of an earlier enqueue with this idempotency key, if within the window.
async fn find_replay<C: GenericClient>(
    c: &C,
    sender: &DeviceId,
    key: &[u8],
    now_ms: u64,
) -> Result<Option<EnqueueOutcome>, StoreError> {
    if key.is_empty() {
        return Ok(None);
    }
    let earlier = row(
        c,
        "SELECT envelope, epoch_after, envelope_id, created_ms FROM idempotency \
         WHERE device_id = $1 AND key = $2 AND created_ms >= $3",
        &[&sender.0.as_slice(), &key, &u64_to_i64(now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS))],
    )
    .await?;
    Ok(match earlier {
        Some(r) => replay_from(&r, 0)?,
        None => None,
    })
}

/// The recorded outcome in columns `at..at + 4` of `r` (`envelope, epoch_after, envelope_id,
/// created_ms` of an idempotency record), or `None` where they are NULL (no record).
fn replay_from(r: &Row, at: usize) -> Result<Option<EnqueueOutcome>, StoreError> {
    let Some(seq) = r.try_get::<_, Option<i64>>(at)? else { return Ok(None) };
    Ok(Some(EnqueueOutcome {
        seq: i64_to_u64(seq),
        envelope_id: get16(r, at + 2, "envelopes.id")?,
        timestamp_ms: i64_to_u64(r.try_get(at + 3)?),
        epoch: i64_to_u64(r.try_get(at + 1)?),
        replayed: true,
        deliveries: Vec::new(),
    }))
}

async fn create_channel_tx(client: &mut Object, c: &NewChannel) -> Result<bool, StoreError> {
    let tx = begin(client).await?;
    let id = c.id.0.as_slice();
    // A racing creator waits for this insert and then does nothing: exactly one gets `true`.
    let created = exec(
        &tx,
        "INSERT INTO channels (id, kind, epoch, created_ms) VALUES ($1, $2, 0, $3) ON CONFLICT (id) DO NOTHING",
        &[&id, &c.kind.as_i64(), &u64_to_i64(c.now_ms)],
    )
    .await?
        == 1;
    if created {
        exec(
            &tx,
            "INSERT INTO channel_members (channel_id, device_id) VALUES ($1, $2)",
            &[&id, &c.first_member.0.as_slice()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(created)
}

async fn purge_expired_tx(client: &mut Object, now_ms: u64) -> Result<u64, StoreError> {
    let tx = begin(client).await?;
    let now = u64_to_i64(now_ms);
    // Queue entries first, then envelopes: the order an ack deletes them in, so a purge and an
    // ack of the same envelope do not deadlock. Every node may purge; a row goes once.
    exec(
        &tx,
        "DELETE FROM queue WHERE envelope IN \
         (SELECT seq FROM envelopes WHERE expires_ms IS NOT NULL AND expires_ms <= $1)",
        &[&now],
    )
    .await?;
    let purged = exec(&tx, "DELETE FROM envelopes WHERE expires_ms IS NOT NULL AND expires_ms <= $1", &[&now]).await?;
    exec(
        &tx,
        "DELETE FROM idempotency WHERE created_ms < $1",
        &[&u64_to_i64(now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS))],
    )
    .await?;
    tx.commit().await?;
    Ok(purged)
}

/// How many entries the ack deleted, and the envelopes to settle after it (see [`release`]).
async fn ack_tx(client: &mut Object, device: DeviceId, up_to_seq: u64) -> Result<(u64, Vec<i64>), StoreError> {
    let tx = begin(client).await?;
    // An ack lost to a crash of the database costs a repeated delivery, which clients drop (the
    // SQLite store does not sync acks either): the commit does not wait for the WAL flush, so
    // the device's row, which the deletion's trigger locks, is held for less time and enqueues
    // to the device wait less. The setting goes out with the deletion (its answer is not awaited
    // first), so it costs no round trip.
    let relaxed = async { Ok(tx.batch_execute("SET LOCAL synchronous_commit = off").await?) };
    let (id, up_to) = (device.0.as_slice(), u64_to_i64(up_to_seq));
    let params: [&(dyn ToSql + Sync); 2] = [&id, &up_to];
    let deleted = rows(&tx, "DELETE FROM queue WHERE device_id = $1 AND seq <= $2 RETURNING envelope", &params);
    let ((), released) = tokio::try_join!(relaxed, deleted)?;
    let removed = released.len() as u64;
    // The payload is stored once; it goes when the last queue entry naming it is acked.
    let released = release::release(&tx, &release::named(&released)?).await?;
    tx.commit().await?;
    Ok((removed, released))
}

#[async_trait]
impl DeliveryStore for PostgresStore {
    async fn create_channel(&self, channel: NewChannel) -> Result<bool, StoreError> {
        retrying!(self, client => create_channel_tx(&mut client, &channel))
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            &format!("SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.id = $1"),
            &[&id.0.as_slice()],
        ))?;
        found.as_ref().map(channel_from).transpose()
    }

    async fn members(&self, id: ChannelId) -> Result<Vec<DeviceId>, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            "SELECT device_id FROM channel_members WHERE channel_id = $1 ORDER BY device_id",
            &[&id.0.as_slice()],
        ))?;
        device_ids(&found, "channel_members.device_id")
    }

    async fn channels_of(&self, device: DeviceId) -> Result<Vec<ChannelRecord>, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            &format!(
                "SELECT {CHANNEL_COLUMNS} FROM channels c JOIN channel_members m ON m.channel_id = c.id \
                 WHERE m.device_id = $1 ORDER BY c.created_ms, c.id"
            ),
            &[&device.0.as_slice()],
        ))?;
        found.iter().map(channel_from).collect()
    }

    async fn set_retention(&self, id: ChannelId, retention_secs: u32) -> Result<(), StoreError> {
        let n = retrying!(self, client => exec(
            &client,
            "UPDATE channels SET retention_secs = $2 WHERE id = $1",
            &[&id.0.as_slice(), &i64::from(retention_secs)],
        ))?;
        if n == 0 { Err(StoreError::NotFound("channel")) } else { Ok(()) }
    }

    async fn enqueue(&self, batch: EnqueueBatch) -> Result<EnqueueOutcome, StoreError> {
        retrying!(self, client => enqueue::enqueue_tx(&mut client, &batch, &self.node, &self.channel))
    }

    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let r = reading!(self, client => row(
            &client,
            "SELECT COALESCE(SUM(queue_depth), 0)::BIGINT, COALESCE(MAX(queue_depth), 0) FROM devices",
            &[],
        ))?
        .ok_or(StoreError::Corrupt("queue"))?;
        Ok((i64_to_u64(r.try_get(0)?), i64_to_u64(r.try_get(1)?)))
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<u64, StoreError> {
        let purged = retrying!(self, client => purge_expired_tx(&mut client, now_ms))?;
        // Also the envelopes whose last entries went without them being settled: this node's
        // failed settles, and on its first purge, any left by a node that stopped.
        let unsettled = self.unsettled.lock().map(|mut u| std::mem::take(&mut *u)).unwrap_or_default();
        self.settle_released(unsettled).await;
        if !self.swept.load(Ordering::Relaxed) {
            let swept = release::sweep(&self.client().await?).await?;
            self.swept.store(true, Ordering::Relaxed);
            if swept > 0 {
                tracing::info!(envelopes = swept, "deleted envelopes that no queue entry named");
            }
        }
        Ok(purged)
    }

    async fn replayed(
        &self,
        sender: DeviceId,
        key: Vec<u8>,
        now_ms: u64,
    ) -> Result<Option<EnqueueOutcome>, StoreError> {
        reading!(self, client => find_replay(&client, &sender, &key, now_ms))
    }

    async fn peek(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
        max_bytes: u64,
        now_ms: u64,
    ) -> Result<QueuePage, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            "SELECT q.seq, e.channel_id, e.id, e.kind, e.epoch, e.payload, e.created_ms \
             FROM queue q JOIN envelopes e ON e.seq = q.envelope \
             WHERE q.device_id = $1 AND q.seq > $2 AND (e.expires_ms IS NULL OR e.expires_ms > $4) \
             ORDER BY q.seq LIMIT $3",
            &[&device.0.as_slice(), &u64_to_i64(after_seq), &i64::from(limit), &u64_to_i64(now_ms)],
        ))?;
        let mut page = QueuePage::collect(found.iter().map(entry_from), max_bytes)?;
        if let Some(last) = page.look_after(limit) {
            let found = reading!(self, client => row(
                &client,
                "SELECT EXISTS (SELECT 1 FROM queue q JOIN envelopes e ON e.seq = q.envelope \
                 WHERE q.device_id = $1 AND q.seq > $2 AND (e.expires_ms IS NULL OR e.expires_ms > $3))",
                &[&device.0.as_slice(), &u64_to_i64(last), &u64_to_i64(now_ms)],
            ))?;
            page.more = match found {
                Some(r) => r.try_get(0)?,
                None => false,
            };
        }
        Ok(page)
    }

    async fn queued_at(
        &self,
        positions: Vec<(DeviceId, u64)>,
        now_ms: u64,
    ) -> Result<Vec<(DeviceId, QueuedEntry)>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let devices: Vec<&[u8]> = positions.iter().map(|(device, _)| device.0.as_slice()).collect();
        let seqs: Vec<i64> = positions.iter().map(|&(_, seq)| u64_to_i64(seq)).collect();
        // The queue rows first, then each envelope once: the positions of a fan-out all name one
        // envelope, and a Welcome to a large group is megabytes.
        let located = reading!(self, client => rows(
            &client,
            "SELECT q.device_id, q.seq, q.envelope \
             FROM unnest($1::bytea[], $2::bigint[]) AS wanted(device_id, seq) \
             JOIN queue q ON q.device_id = wanted.device_id AND q.seq = wanted.seq \
             ORDER BY q.device_id, q.seq",
            &[&devices, &seqs],
        ))?;
        let mut named: Vec<i64> = located.iter().map(|r| r.try_get(2)).collect::<Result<_, _>>()?;
        named.sort_unstable();
        named.dedup();
        if named.is_empty() {
            return Ok(Vec::new());
        }
        // `entry_from` reads the envelope's seq where a queue entry's goes; each found entry
        // takes its own below.
        let envelopes = reading!(self, client => rows(
            &client,
            "SELECT e.seq, e.channel_id, e.id, e.kind, e.epoch, e.payload, e.created_ms FROM envelopes e \
             WHERE e.seq = ANY($1) AND (e.expires_ms IS NULL OR e.expires_ms > $2)",
            &[&named, &u64_to_i64(now_ms)],
        ))?;
        let by_seq = envelopes
            .iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)?, entry_from(r)?)))
            .collect::<Result<HashMap<_, _>, StoreError>>()?;
        let mut found = Vec::with_capacity(located.len());
        for r in &located {
            if let Some(envelope) = by_seq.get(&r.try_get::<_, i64>(2)?) {
                let seq = i64_to_u64(r.try_get(1)?);
                found.push((DeviceId(get16(r, 0, "queue.device_id")?), QueuedEntry { seq, ..envelope.clone() }));
            }
        }
        Ok(found)
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError> {
        let (removed, released) = retrying!(self, client => ack_tx(&mut client, device, up_to_seq))?;
        self.settle_released(released).await;
        Ok(removed)
    }
}
