//! Persistence behind one trait, so domain services never see SQL.
//!
//! Reads return `Result<Option<T>, StoreError>`; every multi-row effect (store an envelope, fan it
//! out, advance the epoch, record the idempotency key) happens in **one** transaction inside the
//! backend. `SqliteStore` is the embedded default; `PostgresStore` serves clusters of nodes on one
//! PostgreSQL database. Both pass the same conformance suite (`tests/integration/store_conformance.rs`).

mod pg_bus;
mod postgres;
mod sqlite;
mod types;

pub use postgres::{DEFAULT_MAX_CONNECTIONS, PostgresOptions, PostgresStore};
pub(crate) use sqlite::rekey as sqlite_rekey;
pub use sqlite::{DEFAULT_READ_CONNECTIONS, SqliteStore};
pub use types::*;

use async_trait::async_trait;

/// Errors of a store backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A unique value (username, device key) is already taken.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The row the operation needs does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller is not a member of the channel.
    #[error("device is not a member of the channel")]
    NotMember,
    /// A commit was built for an epoch the channel has already left.
    #[error("commit for epoch {attempted} but the channel is at epoch {current}")]
    StaleEpoch {
        /// The epoch the commit was built for.
        attempted: u64,
        /// The channel's current epoch.
        current: u64,
    },
    /// A recipient's queue holds the maximum number of envelopes.
    #[error("a recipient queue is full")]
    QueueFull,
    /// A welcome names a device that does not exist.
    #[error("welcome for an unknown device")]
    UnknownDevice,
    /// A chunk continues an upload of another total size.
    #[error("blob chunk for a total size of {given} bytes, but the upload has {stored}")]
    BlobSizeMismatch {
        /// The size the chunk announced.
        given: u64,
        /// The upload's size.
        stored: u64,
    },
    /// A chunk is empty or runs past the blob's size.
    #[error("blob chunk is empty or runs past the end of the blob")]
    BlobChunkOutOfRange,
    /// A chunk does not start where the upload stands (and is not a retry of a stored chunk).
    #[error("the upload has {received} bytes: the next chunk starts there")]
    BlobOutOfOrder {
        /// Bytes stored.
        received: u64,
    },
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The schema on disk is newer than this binary understands.
    #[error("database schema version {found} is newer than supported version {supported}")]
    SchemaTooNew {
        /// Version found on disk.
        found: i64,
        /// Highest version this binary knows.
        supported: i64,
    },
    /// A stored value does not have the expected shape.
    #[error("corrupt row in {0}")]
    Corrupt(&'static str),
    /// The database is encrypted with another `db_key` (or is not a database at all).
    #[error("the database does not open with this db_key (another key, or not encrypted with one)")]
    WrongDbKey,
    /// The file is not a database this server can read: encrypted (set `db_key`) or corrupt.
    #[error("the database file is encrypted (set db_key) or is not a database")]
    NotADatabase,
    /// A `db_key` was given to a build without database encryption.
    #[error("this build cannot encrypt its database: rebuild qpc-server with `--features sqlcipher`")]
    EncryptionUnavailable,
    /// A database file could not be read or replaced.
    #[error("database file: {0}")]
    Io(#[source] std::io::Error),
    /// The blocking worker could not run the operation.
    #[error("store worker failed: {0}")]
    Worker(String),
    /// The write ran, but the transaction it shared with other writes (group commit) failed
    /// to commit: nothing of it was stored.
    #[error("the write was not committed: {0}")]
    NotCommitted(String),
    /// PostgreSQL refused or failed a statement, or the connection broke.
    #[error("postgresql: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool (database down, pool exhausted).
    #[error("postgresql connection pool: {0}")]
    ConnectionPool(#[source] deadpool_postgres::PoolError),
    /// The connection pool could not be built.
    #[error("postgresql connection pool setup: {0}")]
    PoolSetup(#[source] deadpool_postgres::BuildError),
    /// `db_url` is not a PostgreSQL connection URL or key/value string.
    #[error("db_url is not a valid PostgreSQL connection string: {0}")]
    InvalidDatabaseUrl(#[source] tokio_postgres::Error),
    /// The configured schema name is not a plain lower-case SQL identifier.
    #[error("schema name {0:?} must be 1 to 63 characters of [a-z0-9_], not starting with a digit")]
    InvalidSchemaName(String),
    /// A transaction kept deadlocking or failing serialization against concurrent ones.
    #[error("transaction still conflicting with concurrent ones after {attempts} attempts: {source}")]
    Contended {
        /// How many times it ran.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Which backend the server stores its state in.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum StoreBackend {
    /// The embedded SQLite database in the data dir (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by every node of a cluster.
    Postgres(PostgresOptions),
}

/// Account and session persistence.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user; `AlreadyExists("user")` if the username is taken.
    async fn create_user(&self, username: &str, opaque_record: Vec<u8>, now_ms: u64) -> Result<UserRecord, StoreError>;
    /// Looks a user up by (already case-folded) username.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Persists a new session.
    async fn create_session(&self, session: SessionRecord) -> Result<(), StoreError>;
    /// Persists a login: its new session and its audit event, in one transaction that a
    /// power cut (not a crash) may lose once it has returned. A login lost that way is undone
    /// whole, session and audit entry together, and the client logs in again; in exchange a
    /// login does not wait for a sync of its own.
    async fn record_login(&self, session: SessionRecord, event: AuditEvent) -> Result<(), StoreError>;
    /// Loads a session by the SHA-256 of its token.
    async fn session(&self, token_hash: [u8; 32]) -> Result<Option<SessionRecord>, StoreError>;
    /// Binds a device to a session.
    async fn set_session_device(&self, token_hash: [u8; 32], device: DeviceId) -> Result<(), StoreError>;
    /// Appends an auth or account event to the audit log (kept after account deletion, with ids
    /// only: never usernames, addresses or secrets).
    async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError>;
    /// Revokes a session; returns whether it existed.
    async fn delete_session(&self, token_hash: [u8; 32]) -> Result<bool, StoreError>;
    /// Deletes an account and, in the same transaction, its sessions, devices, key packages,
    /// queues, memberships and the blobs (with their bytes) no other account references, plus
    /// envelopes and channels nothing references any more. `None` if the account did not exist.
    async fn delete_account(&self, user: UserId) -> Result<Option<DeletedAccount>, StoreError>;
}

/// Devices and their key packages.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Inserts a device, or does nothing if this exact key is already bound to this user.
    /// `AlreadyExists("device")` if the key is bound to another account.
    async fn upsert_device(&self, device: DeviceRecord) -> Result<(), StoreError>;
    /// Devices of a user, oldest first.
    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Adds key packages to a device's pool and optionally replaces its last-resort package.
    /// Returns the pool size afterwards.
    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u32, StoreError>;
    /// Atomically removes and returns one key package per device of `user` (the last-resort
    /// one, not removed, for a device whose pool is empty).
    async fn claim_key_packages(&self, user: UserId) -> Result<Vec<ClaimedKeyPackage>, StoreError>;
    /// Pool size and whether a last-resort package is present.
    async fn key_package_status(&self, device: DeviceId) -> Result<(u32, bool), StoreError>;
    /// The device with this identity key.
    async fn device_by_key(&self, identity_key: [u8; 32]) -> Result<Option<DeviceRecord>, StoreError>;
    /// Deletes one of `user`'s devices with its queue, key packages, memberships, hybrid key,
    /// endpoint hints and bound sessions, in one transaction. Returns the deleted sessions'
    /// hashes, or `None` if `user` has no such device.
    async fn delete_device(&self, user: UserId, device: DeviceId) -> Result<Option<Vec<[u8; 32]>>, StoreError>;
    /// Sets a device's hybrid public key.
    async fn set_hybrid_key(&self, device: DeviceId, public_key: Vec<u8>) -> Result<(), StoreError>;
    /// A device's hybrid public key.
    async fn hybrid_key(&self, device: DeviceId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Hybrid public keys of a user's devices.
    async fn hybrid_keys_of(&self, user: UserId) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError>;
    /// Replaces a device's peer-to-peer hints.
    async fn set_endpoint(&self, endpoint: EndpointRecord) -> Result<(), StoreError>;
    /// Unexpired hints of a user's devices.
    async fn endpoints_of(&self, user: UserId, now_ms: u64) -> Result<Vec<EndpointRecord>, StoreError>;
}

/// Channels, membership and per-device queues.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Creates a channel with `first_member` in it, unless a channel with this id exists.
    /// Returns `true` when this call created it.
    async fn create_channel(&self, channel: NewChannel) -> Result<bool, StoreError>;
    /// Loads a channel.
    async fn channel(&self, id: ChannelId) -> Result<Option<ChannelRecord>, StoreError>;
    /// Member devices of a channel.
    async fn members(&self, id: ChannelId) -> Result<Vec<DeviceId>, StoreError>;
    /// Channels `device` is a member of.
    async fn channels_of(&self, device: DeviceId) -> Result<Vec<ChannelRecord>, StoreError>;
    /// Sets a channel's default envelope TTL.
    async fn set_retention(&self, id: ChannelId, retention_secs: u32) -> Result<(), StoreError>;
    /// Stores one envelope (and optional welcomes) and fans it out, in one transaction:
    /// idempotency lookup, membership check, commit epoch check and advance, payload stored once,
    /// one queue entry per other member device, welcomes queued to (and making members of) the
    /// devices they add.
    async fn enqueue(&self, request: EnqueueBatch) -> Result<EnqueueOutcome, StoreError>;
    /// Queue entries waiting in all device queues, and in the deepest one.
    async fn queue_depth(&self) -> Result<(u64, u64), StoreError>;
    /// Deletes queue entries and envelopes whose TTL passed before `now_ms`; returns how many
    /// envelopes went.
    async fn purge_expired(&self, now_ms: u64) -> Result<u64, StoreError>;
    /// The outcome recorded for `(sender, idempotency key)` within the idempotency window.
    async fn replayed(&self, sender: DeviceId, key: Vec<u8>, now_ms: u64)
    -> Result<Option<EnqueueOutcome>, StoreError>;
    /// Reads unexpired queue entries with `seq > after_seq`, at most `limit` and about
    /// `max_bytes`, and whether more are left after them (see [`QueuePage`]).
    async fn peek(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
        max_bytes: u64,
        now_ms: u64,
    ) -> Result<QueuePage, StoreError>;
    /// The unexpired queue entries at these `(device, seq)` positions, each with its device,
    /// ordered by device and then sequence number; positions acknowledged, expired or never
    /// filled are left out. One call reads back a whole fan-out that another node announced.
    async fn queued_at(
        &self,
        positions: Vec<(DeviceId, u64)>,
        now_ms: u64,
    ) -> Result<Vec<(DeviceId, QueuedEntry)>, StoreError>;
    /// Deletes queue entries with `seq <= up_to_seq`; returns how many.
    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> Result<u64, StoreError>;
}

/// Blobs: client-encrypted files, their metadata and their bytes (stored as the chunks that were
/// uploaded), so that every node of a cluster serves every blob.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// A blob or upload.
    async fn blob(&self, id: [u8; 32]) -> Result<Option<BlobRecord>, StoreError>;
    /// Stores one chunk of an upload, in one transaction: creates the upload when this is its
    /// first chunk, records the uploader's account as referencing the blob, and stores `data` at
    /// `offset` with the upload's new progress (complete when it reaches `total_size`). Returns the
    /// blob afterwards.
    ///
    /// A complete blob is left as it is (the same ciphertext uploaded again). A chunk whose exact
    /// bytes are already stored at `offset` (a retry) changes nothing. Otherwise
    /// [`StoreError::BlobOutOfOrder`] unless `offset` is where the upload stands (and for the chunk
    /// that would complete the blob without `hash_checked`), [`StoreError::BlobSizeMismatch`] and
    /// [`StoreError::BlobChunkOutOfRange`] for a chunk that does not fit the upload.
    async fn write_blob_chunk(&self, chunk: BlobChunk) -> Result<BlobRecord, StoreError>;
    /// Up to `max_len` stored bytes of blob `id` from `offset` (fewer at the end of what is
    /// stored, none past it) with the blob's record, in one read. `None` if there is no such
    /// blob. Reads only the chunks that hold the range.
    async fn read_blob(&self, id: [u8; 32], offset: u64, max_len: u32) -> Result<Option<BlobSlice>, StoreError>;
    /// Deletes an upload that is not complete, with its bytes (its hash did not match). A complete
    /// blob stays. Whether something was deleted.
    async fn discard_upload(&self, id: [u8; 32]) -> Result<bool, StoreError>;
    /// Deletes a blob, complete or not, with its bytes. Whether it existed.
    async fn delete_blob(&self, id: [u8; 32]) -> Result<bool, StoreError>;
    /// Deletes blobs whose retention passed, with their bytes, in one transaction; how many.
    async fn purge_expired_blobs(&self, now_ms: u64) -> Result<u64, StoreError>;
    /// Stores bytes of an existing blob at `offset` without changing its record: the import of
    /// blob files written by earlier versions. Nothing happens if a chunk is stored at `offset`
    /// already. `NotFound("blob")` if there is no such blob, [`StoreError::BlobChunkOutOfRange`]
    /// if the bytes are empty or reach past the blob's `received`.
    async fn import_blob_chunk(&self, id: [u8; 32], offset: u64, data: Vec<u8>) -> Result<(), StoreError>;
}

/// Everything the server persists.
pub trait Store: AccountStore + DeviceStore + DeliveryStore + BlobStore {}
impl<T: AccountStore + DeviceStore + DeliveryStore + BlobStore> Store for T {}
