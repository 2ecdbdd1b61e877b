//! Typed rows of the store.

use std::fmt;

use bytes::Bytes;

pub use quicprochat_core::ids::{ChannelId, DeviceId};

/// A 16-byte account id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub [u8; 16]);

impl UserId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl TryFrom<&[u8]> for UserId {
    type Error = ();
    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 16]>::try_from(value).map(UserId).map_err(|_| ())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", hex::encode(&self.0[..4]))
    }
}

/// An account.
#[derive(Clone)]
pub struct UserRecord {
    /// Account id.
    pub id: UserId,
    /// Case-folded username.
    pub username: String,
    /// The OPAQUE password file (not secret on its own, but never logged).
    pub opaque_record: Vec<u8>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord").field("id", &self.id).field("username", &self.username).finish_non_exhaustive()
    }
}

/// A login session. Only the hash of its token is stored.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// SHA-256 of the session token.
    pub token_hash: [u8; 32],
    /// Account the session belongs to.
    pub user_id: UserId,
    /// Device bound by `RegisterDevice`, if any.
    pub device_id: Option<DeviceId>,
    /// Creation time, Unix ms.
    pub created_ms: u64,
    /// Expiry time, Unix ms.
    pub expires_ms: u64,
}

/// A device bound to an account.
#[derive(Clone, Debug)]
pub struct DeviceRecord {
    /// `SHA-256(identity_key)[..16]`.
    pub id: DeviceId,
    /// Owner.
    pub user_id: UserId,
    /// Ed25519 public key.
    pub identity_key: [u8; 32],
    /// User-chosen label.
    pub name: String,
    /// Creation time, Unix ms.
    pub created_ms: u64,
}

/// A key package handed out by `claim_key_packages`.
#[derive(Clone, Debug)]
pub struct ClaimedKeyPackage {
    /// Device the package belongs to.
    pub device_id: DeviceId,
    /// Serialized MLS KeyPackage.
    pub key_package: Vec<u8>,
    /// Whether this is the device's reusable last-resort package.
    pub last_resort: bool,
    /// Regular key packages left in the device's pool afterwards.
    pub remaining: u32,
}

/// Direct message or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// Two accounts.
    Dm,
    /// Any number of accounts.
    Group,
}

impl ChannelKind {
    pub(crate) fn as_i64(self) -> i64 {
        match self {
            ChannelKind::Dm => 1,
            ChannelKind::Group => 2,
        }
    }
    pub(crate) fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(ChannelKind::Dm),
            2 => Some(ChannelKind::Group),
            _ => None,
        }
    }
}

/// A channel to create.
#[derive(Clone, Debug)]
pub struct NewChannel {
    /// Channel (and MLS group) id.
    pub id: ChannelId,
    /// Kind.
    pub kind: ChannelKind,
    /// The creating device, first member.
    pub first_member: DeviceId,
    /// Creation time, Unix ms.
    pub now_ms: u64,
}

/// A channel.
#[derive(Clone, Debug)]
pub struct ChannelRecord {
    /// Id.
    pub id: ChannelId,
    /// Kind.
    pub kind: ChannelKind,
    /// Current MLS epoch as sequenced by the server.
    pub epoch: u64,
    /// Latest MLS GroupInfo, if a commit carried one.
    pub group_info: Option<Vec<u8>>,
    /// Default envelope TTL in seconds (0 = until acked).
    pub retention_secs: u32,
    /// Serialised public MLS state the server validates handshake messages against
    /// (`None` until the first commit).
    pub tracker: Option<Vec<u8>>,
}

/// The validated effect of a handshake message on the channel's public MLS state.
#[derive(Clone, Debug)]
pub struct Tracking {
    /// The tracker the message was validated against (`None` for a channel's first commit):
    /// the store refuses the write if another message replaced it meanwhile.
    pub tracker_before: Option<Vec<u8>>,
    /// The tracker after the message.
    pub tracker: Vec<u8>,
    /// Member devices after the message (the MLS tree's leaves).
    pub members: Vec<DeviceId>,
}

/// Peer-to-peer connection hints of a device.
#[derive(Clone, Debug)]
pub struct EndpointRecord {
    /// The device.
    pub device_id: DeviceId,
    /// Opaque hint bytes.
    pub endpoint: Vec<u8>,
    /// Expiry, Unix ms.
    pub expires_ms: u64,
}

/// What an envelope carries, for routing (the payload is opaque).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// MLS application message.
    Application,
    /// MLS commit.
    Commit,
    /// MLS welcome.
    Welcome,
    /// MLS proposal.
    Proposal,
}

impl EnvelopeKind {
    pub(crate) fn as_i64(self) -> i64 {
        match self {
            EnvelopeKind::Application => 1,
            EnvelopeKind::Commit => 2,
            EnvelopeKind::Welcome => 3,
            EnvelopeKind::Proposal => 4,
        }
    }
    pub(crate) fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(EnvelopeKind::Application),
            2 => Some(EnvelopeKind::Commit),
            3 => Some(EnvelopeKind::Welcome),
            4 => Some(EnvelopeKind::Proposal),
            _ => None,
        }
    }
}

/// A welcome for the devices it adds: stored once, queued to each.
#[derive(Clone, Debug)]
pub struct WelcomeFor {
    /// The devices the welcome adds.
    pub devices: Vec<DeviceId>,
    /// MLS Welcome bytes.
    pub payload: Bytes,
}

/// One enqueue (an envelope plus, for a commit, its welcomes).
#[derive(Clone, Debug)]
pub struct EnqueueBatch {
    /// Target channel.
    pub channel: ChannelId,
    /// Sending device (must be a member).
    pub sender: DeviceId,
    /// Envelope kind.
    pub kind: EnvelopeKind,
    /// MLS epoch the payload was produced in.
    pub epoch: u64,
    /// Opaque payload.
    pub payload: Bytes,
    /// Welcomes to queue with a commit.
    pub welcomes: Vec<WelcomeFor>,
    /// GroupInfo of the new epoch, for commits.
    pub group_info: Option<Vec<u8>>,
    /// Fresh envelope id chosen by the caller.
    pub envelope_id: [u8; 16],
    /// Idempotency key (empty = none).
    pub idempotency_key: Vec<u8>,
    /// Expiry, Unix ms (None = until acked).
    pub expires_ms: Option<u64>,
    /// Now, Unix ms.
    pub now_ms: u64,
    /// Most entries a recipient queue may hold; the whole enqueue is refused beyond it.
    pub max_queue_depth: u32,
    /// For commits and proposals: the validated tracker and membership to store, provided the
    /// channel is still at `epoch`.
    pub tracking: Option<Tracking>,
}

impl EnqueueBatch {
    /// When the envelope expires, Unix ms: the sender's TTL, else, for anything but a commit, the
    /// channel's disappearing-messages setting (`retention_secs`, 0 = none).
    pub(crate) fn expiry(&self, retention_secs: u64) -> Option<u64> {
        if self.expires_ms.is_none() && retention_secs > 0 && self.kind != EnvelopeKind::Commit {
            return Some(self.now_ms.saturating_add(retention_secs.saturating_mul(1000)));
        }
        self.expires_ms
    }

    /// The channel's epoch after this batch, from its `current` one: a commit or a proposal must
    /// be for `current` (else [`super::StoreError::StaleEpoch`]), and a commit advances it.
    pub(crate) fn epoch_after(&self, current: u64) -> Result<u64, super::StoreError> {
        match self.kind {
            EnvelopeKind::Commit | EnvelopeKind::Proposal if self.epoch != current => {
                Err(super::StoreError::StaleEpoch { attempted: self.epoch, current })
            }
            EnvelopeKind::Commit => Ok(current.saturating_add(1)),
            _ => Ok(current),
        }
    }

    /// The outcome of storing this batch as the envelope `seq`, leaving the channel at `epoch`.
    pub(crate) fn accepted(&self, seq: u64, epoch: u64, deliveries: Vec<(DeviceId, QueuedEntry)>) -> EnqueueOutcome {
        EnqueueOutcome {
            seq,
            envelope_id: self.envelope_id,
            timestamp_ms: self.now_ms,
            epoch,
            replayed: false,
            deliveries,
        }
    }

    /// The queue entry at `seq` of an envelope of this batch (its own, or one of its welcomes).
    pub(crate) fn entry(&self, seq: u64, envelope_id: [u8; 16], kind: EnvelopeKind, payload: &Bytes) -> QueuedEntry {
        QueuedEntry {
            seq,
            channel: self.channel,
            envelope_id,
            kind,
            epoch: self.epoch,
            payload: payload.clone(),
            created_ms: self.now_ms,
        }
    }
}

/// The envelope as a recipient sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEntry {
    /// Per-device sequence number.
    pub seq: u64,
    /// Channel.
    pub channel: ChannelId,
    /// Envelope id.
    pub envelope_id: [u8; 16],
    /// Kind.
    pub kind: EnvelopeKind,
    /// MLS epoch.
    pub epoch: u64,
    /// Payload, shared by every entry of the envelope (a fan-out holds one copy).
    pub payload: Bytes,
    /// When the server accepted it, Unix ms.
    pub created_ms: u64,
}

/// One page of a device queue, as `Peek` reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueuePage {
    /// The entries, in sequence order.
    pub entries: Vec<QueuedEntry>,
    /// True when the page stopped at its entry or byte limit with entries left after it;
    /// false when it reached the end of the queue as it was when read.
    pub more: bool,
}

impl QueuePage {
    /// Builds a page from the entries a store read after the cursor, in order (at most the
    /// page's `limit`): about `max_bytes` of payload, the first entry always, however large.
    /// `more` is set when the bytes cut the page short; when the entries filled the limit,
    /// [`Self::look_after`] says where the store must look for one more.
    pub fn collect<E>(found: impl IntoIterator<Item = Result<QueuedEntry, E>>, max_bytes: u64) -> Result<Self, E> {
        let mut page = Self::default();
        let mut bytes = 0u64;
        for entry in found {
            let entry = entry?;
            bytes = bytes.saturating_add(entry.payload.len() as u64);
            if !page.entries.is_empty() && bytes > max_bytes {
                page.more = true;
                break;
            }
            page.entries.push(entry);
        }
        Ok(page)
    }

    /// The sequence after which an entry would make `more` true, for a page whose entries
    /// filled `limit`; `None` when `more` is already known. (Looking for it apart, rather than
    /// reading one entry beyond the limit, does not read a payload only to drop it.)
    pub fn look_after(&self, limit: u32) -> Option<u64> {
        let full = self.entries.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
        if self.more || !full { None } else { self.entries.last().map(|e| e.seq) }
    }
}

/// Result of an enqueue.
#[derive(Clone, Debug)]
pub struct EnqueueOutcome {
    /// Server-wide sequence number of the envelope.
    pub seq: u64,
    /// Envelope id (the original one for an idempotent retry).
    pub envelope_id: [u8; 16],
    /// When it was accepted, Unix ms.
    pub timestamp_ms: u64,
    /// Channel epoch afterwards.
    pub epoch: u64,
    /// True when this was a retry answered from the idempotency record.
    pub replayed: bool,
    /// New queue entries, for push.
    pub deliveries: Vec<(DeviceId, QueuedEntry)>,
}

/// What happened, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditKind {
    /// An account was registered.
    Registered,
    /// A login succeeded.
    LoginSucceeded,
    /// A login failed (wrong password or unknown user; `user` set only for a known user).
    LoginFailed,
    /// A session was revoked by `Logout`.
    LoggedOut,
    /// A device was bound to the account.
    DeviceRegistered,
    /// A device was revoked.
    DeviceRevoked,
    /// The account was deleted.
    AccountDeleted,
    /// A call was refused for who made it (UNAUTHENTICATED, FORBIDDEN, RATE_LIMITED); the
    /// entry names the method and the status.
    Refused,
}

impl AuditKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Registered => "registered",
            AuditKind::LoginSucceeded => "login_succeeded",
            AuditKind::LoginFailed => "login_failed",
            AuditKind::LoggedOut => "logged_out",
            AuditKind::DeviceRegistered => "device_registered",
            AuditKind::DeviceRevoked => "device_revoked",
            AuditKind::AccountDeleted => "account_deleted",
            AuditKind::Refused => "refused",
        }
    }
}

/// One audit log entry.
#[derive(Clone, Copy, Debug)]
pub struct AuditEvent {
    /// When, Unix ms.
    pub at_ms: u64,
    /// What.
    pub kind: AuditKind,
    /// Which account, when known.
    pub user: Option<UserId>,
    /// Which device, when relevant.
    pub device: Option<DeviceId>,
    /// The RPC method, for events recorded by the middleware.
    pub method: Option<&'static str>,
    /// The call's status name, for events recorded by the middleware.
    pub status: Option<&'static str>,
}

/// A stored blob or an upload in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    /// SHA-256 of the ciphertext.
    pub id: [u8; 32],
    /// Announced size.
    pub total_size: u64,
    /// Bytes received so far.
    pub received: u64,
    /// All bytes arrived and the hash matched.
    pub complete: bool,
    /// When it is deleted, Unix ms.
    pub expires_ms: u64,
}

/// One chunk of an upload, for [`super::BlobStore::write_blob_chunk`].
#[derive(Clone)]
pub struct BlobChunk {
    /// SHA-256 of the whole ciphertext: the blob's id.
    pub id: [u8; 32],
    /// The blob's size, as announced with every chunk (the first creates the upload with it).
    pub total_size: u64,
    /// Where `data` starts in the blob.
    pub offset: u64,
    /// The bytes (the service bounds them to 256 KiB).
    pub data: Vec<u8>,
    /// The device sending the chunk; its account then references the blob.
    pub uploader: DeviceId,
    /// The caller checked that the blob's stored bytes before `offset`, followed by `data`, hash
    /// to `id`. Required for the chunk that completes the blob.
    pub hash_checked: bool,
    /// Now, Unix ms (the creation time if this chunk starts the upload).
    pub now_ms: u64,
    /// When the blob is deleted, Unix ms, if this chunk starts the upload.
    pub expires_ms: u64,
}

impl fmt::Debug for BlobChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobChunk")
            .field("id", &hex::encode(&self.id[..4]))
            .field("total_size", &self.total_size)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .field("hash_checked", &self.hash_checked)
            .finish_non_exhaustive()
    }
}

/// What a backend does with a chunk, decided from the blob's row (locked) by
/// [`BlobChunk::step`], so both backends follow one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkStep {
    /// Nothing to write: the blob is complete (the same ciphertext uploaded again).
    Unchanged,
    /// Store the chunk; the blob then has `received` bytes, and is complete when `complete`.
    Append {
        /// Bytes stored afterwards.
        received: u64,
        /// The chunk completes the blob (its hash was checked).
        complete: bool,
    },
    /// The chunk lies within the stored bytes: a retry, and unchanged, if exactly these bytes are
    /// stored at its offset; otherwise out of order.
    Retry,
}

impl BlobChunk {
    /// The step for this chunk of the blob `stored` (as locked by the writing transaction).
    pub(crate) fn step(&self, stored: &BlobRecord) -> Result<ChunkStep, super::StoreError> {
        use super::StoreError;
        if stored.complete {
            return Ok(ChunkStep::Unchanged);
        }
        if stored.total_size != self.total_size {
            return Err(StoreError::BlobSizeMismatch { given: self.total_size, stored: stored.total_size });
        }
        let end = match self.offset.checked_add(self.data.len() as u64) {
            Some(end) if end <= stored.total_size && !self.data.is_empty() => end,
            _ => return Err(StoreError::BlobChunkOutOfRange),
        };
        let received = stored.received;
        if self.offset == received {
            let complete = end == stored.total_size;
            // A completing chunk whose hash nobody checked (the caller saw the upload elsewhere):
            // it is to be sent again, and is then checked.
            if complete && !self.hash_checked {
                return Err(StoreError::BlobOutOfOrder { received });
            }
            return Ok(ChunkStep::Append { received: end, complete });
        }
        if end <= received {
            return Ok(ChunkStep::Retry);
        }
        Err(StoreError::BlobOutOfOrder { received })
    }
}

/// Bytes of a blob read together with its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobSlice {
    /// The blob, as it stood when the bytes were read.
    pub record: BlobRecord,
    /// The bytes read.
    pub bytes: Vec<u8>,
}

/// One row of a blob range read from its chunks: the blob's record, where the chunk starts and
/// its part within the range (both `None` for a blob without bytes in the range).
pub(crate) struct BlobPiece {
    pub(crate) record: BlobRecord,
    pub(crate) start: Option<u64>,
    pub(crate) bytes: Option<Vec<u8>>,
}

/// Joins the pieces of a blob range, in order, read from `offset`: `None` without any (no such
/// blob). The pieces must follow one another without a gap.
pub(crate) fn join_blob_pieces(
    offset: u64,
    pieces: impl Iterator<Item = Result<BlobPiece, super::StoreError>>,
) -> Result<Option<BlobSlice>, super::StoreError> {
    let mut out: Option<BlobSlice> = None;
    for piece in pieces {
        let piece = piece?;
        let slice = out.get_or_insert_with(|| BlobSlice { record: piece.record, bytes: Vec::new() });
        let (Some(start), Some(bytes)) = (piece.start, piece.bytes) else { continue };
        if start.max(offset) != offset + slice.bytes.len() as u64 {
            return Err(super::StoreError::Corrupt("blob_chunks"));
        }
        if slice.bytes.is_empty() {
            slice.bytes = bytes;
        } else {
            slice.bytes.extend_from_slice(&bytes);
        }
    }
    Ok(out)
}

/// What `DeleteAccount` removed that lives outside the database or in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedAccount {
    /// Hashes of the account's sessions, to revoke on connections still bound to them.
    pub sessions: Vec<[u8; 32]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn chunk(offset: u64, len: usize, hash_checked: bool) -> BlobChunk {
        BlobChunk {
            id: [1; 32],
            total_size: 100,
            offset,
            data: vec![7; len],
            uploader: DeviceId([2; 16]),
            hash_checked,
            now_ms: 0,
            expires_ms: 0,
        }
    }

    fn stored(received: u64, complete: bool) -> BlobRecord {
        BlobRecord { id: [1; 32], total_size: 100, received, complete, expires_ms: 0 }
    }

    #[test]
    fn chunks_append_at_the_upload_offset_only() {
        let step = |c: &BlobChunk, s: &BlobRecord| c.step(s).map_err(|e| e.to_string());
        assert_eq!(
            step(&chunk(0, 40, false), &stored(0, false)),
            Ok(ChunkStep::Append { received: 40, complete: false })
        );
        assert_eq!(
            step(&chunk(40, 60, true), &stored(40, false)),
            Ok(ChunkStep::Append { received: 100, complete: true })
        );
        assert_eq!(step(&chunk(0, 40, false), &stored(40, false)), Ok(ChunkStep::Retry));
        assert_eq!(step(&chunk(10, 20, false), &stored(40, false)), Ok(ChunkStep::Retry));
        assert_eq!(step(&chunk(5, 99, true), &stored(100, true)), Ok(ChunkStep::Unchanged));
        assert!(matches!(
            chunk(30, 20, false).step(&stored(40, false)),
            Err(StoreError::BlobOutOfOrder { received: 40 })
        ));
        assert!(matches!(
            chunk(50, 10, false).step(&stored(40, false)),
            Err(StoreError::BlobOutOfOrder { received: 40 })
        ));
        assert!(matches!(
            chunk(40, 60, false).step(&stored(40, false)),
            Err(StoreError::BlobOutOfOrder { received: 40 })
        ));
        assert!(matches!(chunk(90, 11, true).step(&stored(90, false)), Err(StoreError::BlobChunkOutOfRange)));
        assert!(matches!(chunk(40, 0, false).step(&stored(40, false)), Err(StoreError::BlobChunkOutOfRange)));
        let other_size = BlobChunk { total_size: 99, ..chunk(0, 1, false) };
        assert!(matches!(
            other_size.step(&stored(0, false)),
            Err(StoreError::BlobSizeMismatch { given: 99, stored: 100 })
        ));
    }
}
