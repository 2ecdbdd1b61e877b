//! The one error type of this crate.
//!
//! Variants are precise and keep their cause: callers match on what happened
//! (`WrongEpoch`, `InvalidLogin`, `WrongPassword`, …) and `source()` leads to
//! the underlying library error where there is one. openmls errors are boxed
//! to keep `Result<_, CoreError>` small.

use openmls::framing::errors::MlsMessageError;
use openmls::prelude::{
    AddMembersError, CommitToPendingProposalsError, CreateCommitError, CreateMessageError, ExportGroupInfoError,
    ExternalCommitBuilderError, ExternalCommitBuilderFinalizeError, KeyPackageNewError, KeyPackageVerifyError,
    LeaveGroupError, MergeCommitError, MergePendingCommitError, NewGroupError, ProcessMessageError, RemoveMembersError,
    SelfUpdateError, WelcomeError, WireFormat,
};
// Channel tracking (`public_group`).
use openmls::prelude::{CreationFromExternalError, PublicProcessMessageError};
use openmls_memory_storage::MemoryStorageError;
use thiserror::Error;

use crate::mls::CredentialError;
use crate::public_group::TrackerStorageError;

/// Storage error type of the openmls provider this crate uses.
type StorageError = MemoryStorageError;

/// Everything that can go wrong in `quicprochat-core`.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CoreError {
    // ----- identities and ids -------------------------------------------
    /// A public key had the wrong length.
    #[error("public key must be {expected} bytes, got {actual}")]
    InvalidKeyLength {
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A signature had the wrong length.
    #[error("signature must be {expected} bytes, got {actual}")]
    InvalidSignatureLength {
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// The bytes are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey(#[source] ed25519_dalek::SignatureError),
    /// The signature does not verify under the given key and message.
    #[error("signature verification failed")]
    InvalidSignature(#[source] ed25519_dalek::SignatureError),
    /// An identifier had the wrong length.
    #[error("identifier must be {expected} bytes, got {actual}")]
    InvalidIdLength {
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// An identifier's text form was not valid hex.
    #[error("identifier is not valid hex")]
    InvalidHex(#[source] hex::FromHexError),

    // ----- MLS: local state ---------------------------------------------
    /// The libcrux crypto provider could not be initialised.
    #[error("MLS crypto provider unavailable")]
    MlsCryptoProvider(#[source] openmls_traits::types::CryptoError),
    /// The in-memory MLS storage failed.
    #[error("MLS storage failed")]
    MlsStorage(#[source] StorageError),
    /// A thread panicked while holding the MLS storage lock.
    #[error("MLS storage lock poisoned")]
    StorageLockPoisoned,
    /// An exported MLS state snapshot is malformed.
    #[error("malformed MLS state snapshot: {reason}")]
    MalformedState {
        /// What was wrong.
        reason: &'static str,
    },
    /// An MLS state snapshot belongs to a different identity key.
    #[error("MLS state snapshot belongs to another identity")]
    StateIdentityMismatch,
    /// No group with this id is stored.
    #[error("unknown MLS group")]
    UnknownGroup,
    /// A group with this id already exists.
    #[error("MLS group already exists")]
    GroupExists,
    /// The operation needs the group to have no pending commit.
    #[error("the group has a pending commit; merge or clear it first")]
    PendingCommit,
    /// `merge_pending_commit` was called with no pending commit.
    #[error("the group has no pending commit")]
    NoPendingCommit,
    /// Received proposals must be committed before sending.
    #[error("the group has pending proposals; commit them first")]
    PendingProposals,
    /// This client is no longer a member of the group.
    #[error("no longer a member of this group")]
    NotAMember,
    /// No member of the group has this device id.
    #[error("no member with device id {0}")]
    UnknownMember(crate::ids::DeviceId),
    /// A message came from a leaf that is not (or no longer) in the tree.
    #[error("sender at leaf {leaf_index} is not a current member")]
    UnknownSender {
        /// The sender's leaf index.
        leaf_index: u32,
    },

    // ----- MLS: messages --------------------------------------------------
    /// Bytes that should be an MLS message could not be decoded.
    #[error("malformed MLS message")]
    MlsDecode(#[source] openmls::prelude::tls_codec::Error),
    /// An MLS message could not be encoded.
    #[error("could not encode MLS message")]
    MlsEncode(#[source] MlsMessageError),
    /// An MLS message of another kind was expected.
    #[error("expected an MLS {expected}, got {found:?}")]
    UnexpectedMessage {
        /// What the call needs.
        expected: &'static str,
        /// What was received.
        found: WireFormat,
    },
    /// A message addressed to another group.
    #[error("message belongs to another MLS group")]
    WrongGroup,
    /// A message for an epoch this client cannot process: a handshake message
    /// not for the current epoch, an application message from the future, or
    /// one from a past epoch whose secrets are gone.
    #[error("message is for epoch {message_epoch}, group is at epoch {group_epoch}")]
    WrongEpoch {
        /// The epoch the message was made in.
        message_epoch: u64,
        /// The group's current epoch.
        group_epoch: u64,
    },
    /// A credential does not follow the quicprochat encoding or does not
    /// match its signature key.
    #[error("invalid member credential")]
    InvalidCredential(#[from] CredentialError),
    /// A key package failed validation (signature, lifetime, version, …).
    #[error("invalid key package")]
    InvalidKeyPackage(#[source] KeyPackageVerifyError),
    /// A key package uses a different ciphersuite than the group.
    #[error("key package ciphersuite {found:#06x} does not match the group's {expected:#06x}")]
    CiphersuiteMismatch {
        /// The group's ciphersuite id.
        expected: u16,
        /// The key package's ciphersuite id.
        found: u16,
    },
    /// An application message's padding is malformed.
    #[error("malformed application message padding")]
    InvalidPadding,
    /// A proposal from outside the group (an external join proposal); such
    /// proposals are not accepted.
    #[error("proposals from outside the group are not accepted")]
    ExternalProposal,
    /// An external commit that is not a rejoin: it does not replace a leaf of
    /// the same device. Refused, since joining needs a member's add.
    #[error("external commit is not a rejoin of an existing member")]
    UnauthorizedExternalJoin,
    /// The Welcome was not encrypted to any key package of this client.
    #[error("no key package of this client matches the Welcome")]
    NoMatchingKeyPackage,

    // ----- MLS: library failures per operation ----------------------------
    /// Creating a key package failed.
    #[error("creating a key package failed")]
    KeyPackageCreation(#[source] KeyPackageNewError),
    /// Creating a group failed.
    #[error("creating the MLS group failed")]
    MlsCreateGroup(#[source] Box<NewGroupError<StorageError>>),
    /// Building an add commit failed.
    #[error("adding members failed")]
    MlsAddMembers(#[source] Box<AddMembersError<StorageError>>),
    /// Building a remove commit failed.
    #[error("removing members failed")]
    MlsRemoveMembers(#[source] Box<RemoveMembersError<StorageError>>),
    /// Building a self-update commit failed.
    #[error("self-update failed")]
    MlsSelfUpdate(#[source] Box<SelfUpdateError<StorageError>>),
    /// Committing pending proposals failed.
    #[error("committing pending proposals failed")]
    MlsCommitProposals(#[source] Box<CommitToPendingProposalsError<StorageError>>),
    /// Creating a leave proposal failed.
    #[error("leaving the group failed")]
    MlsLeave(#[source] Box<LeaveGroupError<StorageError>>),
    /// Merging our pending commit failed.
    #[error("merging the pending commit failed")]
    MlsMergePending(#[source] Box<MergePendingCommitError<StorageError>>),
    /// Merging a received commit failed.
    #[error("merging a received commit failed")]
    MlsMergeStaged(#[source] Box<MergeCommitError<StorageError>>),
    /// Joining from a Welcome failed.
    #[error("joining from the Welcome failed")]
    MlsWelcome(#[source] Box<WelcomeError<StorageError>>),
    /// Encrypting an application message failed.
    #[error("encrypting the application message failed")]
    MlsCreateMessage(#[source] Box<CreateMessageError>),
    /// Processing an incoming message failed (bad signature, bad commit, …).
    #[error("processing the MLS message failed")]
    MlsProcess(#[source] Box<ProcessMessageError<StorageError>>),
    /// Preparing an external commit from a GroupInfo failed.
    #[error("joining by external commit failed")]
    MlsExternalJoin(#[source] Box<ExternalCommitBuilderError<StorageError>>),
    /// Building the external commit failed.
    #[error("building the external commit failed")]
    MlsExternalCommit(#[source] Box<CreateCommitError>),
    /// Finalising (storing and merging) the external commit failed.
    #[error("finalising the external commit failed")]
    MlsExternalFinalize(#[source] Box<ExternalCommitBuilderFinalizeError<StorageError>>),
    /// Exporting the GroupInfo failed.
    #[error("exporting the group info failed")]
    MlsExportGroupInfo(#[source] Box<ExportGroupInfoError>),

    // ----- OPAQUE ---------------------------------------------------------
    /// Wrong password or unknown user: the login did not verify.
    #[error("invalid login")]
    InvalidLogin,
    /// A peer's OPAQUE message (or a stored OPAQUE record) could not be parsed.
    #[error("malformed OPAQUE {message}")]
    OpaqueDecode {
        /// Which message.
        message: &'static str,
        /// The parser's error.
        #[source]
        source: opaque_ke::errors::ProtocolError,
    },
    /// Any other OPAQUE protocol failure.
    #[error("OPAQUE protocol failure")]
    OpaqueProtocol(#[source] opaque_ke::errors::ProtocolError),

    // ----- key derivation and sealed blobs ----------------------------------
    /// Argon2 parameters beyond this crate's bounds.
    #[error("argon2 parameters out of bounds (m={m_cost_kib} KiB, t={t_cost}, p={p_cost})")]
    KdfParamsOutOfBounds {
        /// Memory cost in KiB.
        m_cost_kib: u32,
        /// Iterations.
        t_cost: u32,
        /// Parallelism.
        p_cost: u32,
    },
    /// Argon2 rejected the parameters.
    #[error("invalid argon2 parameters")]
    InvalidKdfParams(#[source] argon2::Error),
    /// Argon2 failed while deriving a key.
    #[error("key derivation failed")]
    KeyDerivation(#[source] argon2::Error),
    /// The blob does not start with the expected magic bytes.
    #[error("not a {format}")]
    BadMagic {
        /// The format that was expected.
        format: &'static str,
    },
    /// The blob ends before its header or tag does.
    #[error("truncated {format}")]
    Truncated {
        /// The format that was expected.
        format: &'static str,
    },
    /// The blob has a version this build does not know.
    #[error("unsupported {format} version {version}")]
    UnsupportedVersion {
        /// The format.
        format: &'static str,
        /// The version found.
        version: u8,
    },
    /// Wrong password, or the password-sealed blob was modified.
    #[error("wrong password or corrupted data")]
    WrongPassword,
    /// Wrong key or associated data, or the key-sealed blob was modified.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The AEAD refused to encrypt (plaintext too long).
    #[error("encryption failed")]
    EncryptionFailed,

    // ----- transcript archives ---------------------------------------------
    /// A transcript archive field is longer than the format allows.
    #[error("archive {field} is {len} bytes, at most {max} allowed")]
    ArchiveFieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transcript archive is malformed (after authentication: a broken
    /// writer, not an attacker).
    #[error("malformed transcript archive: {reason}")]
    MalformedArchive {
        /// What was wrong.
        reason: &'static str,
    },
    /// A transcript archive record failed authentication: it was modified.
    #[error("transcript archive record {index} was modified")]
    ArchiveRecordCorrupt {
        /// The record's position, from 0.
        index: u64,
    },
    /// A transcript archive record does not follow the one before it:
    /// records were removed, repeated or reordered.
    #[error("transcript archive record {index} does not follow the previous record")]
    ArchiveChainBroken {
        /// The record's position, from 0.
        index: u64,
    },

    // ----- channel tracking (MLS public state) -------------------------------
    /// A group uses a ciphersuite quicprochat does not speak.
    #[error("unsupported MLS ciphersuite {0:#06x}")]
    UnsupportedCiphersuite(u16),
    /// A GroupInfo lacks the ratchet tree extension.
    #[error("the GroupInfo carries no ratchet tree")]
    MissingRatchetTree,
    /// A GroupInfo and its ratchet tree do not describe a valid group (bad
    /// signature, tree hash mismatch, invalid leaves, …).
    #[error("the GroupInfo does not describe a valid MLS group")]
    InvalidGroupInfo(#[source] Box<CreationFromExternalError<TrackerStorageError>>),
    /// The channel tracker's storage failed, or a tracker snapshot holds a
    /// value that does not decode.
    #[error("channel tracker storage failed")]
    TrackerStorage(#[source] TrackerStorageError),
    /// Merging a validated commit into a channel tracker failed.
    #[error("merging a commit into the channel tracker failed")]
    TrackerMerge(#[source] Box<MergeCommitError<TrackerStorageError>>),
    /// A GroupInfo is valid but does not describe the tracked epoch of its
    /// group.
    #[error("the GroupInfo does not match the tracked group state")]
    GroupInfoMismatch,
    /// The signature on an MLS message or GroupInfo does not verify under
    /// the key of the member it names as sender.
    #[error("MLS signature does not verify under the sender's key")]
    InvalidMessageSignature,
    /// The channel tracker refused a handshake message (invalid commit or
    /// proposal).
    #[error("the channel tracker refused the handshake message")]
    TrackerRefused(#[source] Box<PublicProcessMessageError>),

    // ----- hybrid envelopes --------------------------------------------------
    /// An envelope, or a plaintext to seal in one, exceeds the size cap.
    #[error("envelope of {len} bytes exceeds the limit of {max}")]
    EnvelopeTooLarge {
        /// Length received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An envelope names another HPKE suite than the one its version
    /// allows: refused, since accepting it would allow a downgrade.
    #[error("unsupported envelope suite (kem {kem:#06x}, kdf {kdf:#06x}, aead {aead:#06x})")]
    UnsupportedEnvelopeSuite {
        /// HPKE KEM id found.
        kem: u16,
        /// HPKE KDF id found.
        kdf: u16,
        /// HPKE AEAD id found.
        aead: u16,
    },
    /// The bytes are not a usable X-Wing public key.
    #[error("not a valid X-Wing public key")]
    InvalidHybridPublicKey,
    /// The HPKE library failed while sealing.
    #[error("HPKE operation failed")]
    Hpke(#[source] hpke_rs::HpkeError),

    // ----- sealed sender ----------------------------------------------------
    /// An Ed25519 public key of small order, under which anyone can forge
    /// signatures.
    #[error("weak (small-order) public key")]
    WeakPublicKey,
    /// A fixed-size encoding had the wrong length.
    #[error("{format} must be {expected} bytes, got {actual}")]
    WrongLength {
        /// The format.
        format: &'static str,
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A sender proof was made for another epoch than the key it is
    /// checked against.
    #[error("sender proof is for epoch {proof_epoch}, key is for epoch {key_epoch}")]
    SenderProofWrongEpoch {
        /// The epoch named in the proof.
        proof_epoch: u64,
        /// The epoch of the verifying key.
        key_epoch: u64,
    },
    /// A sender proof is older than the freshness window allows.
    #[error("sender proof expired (made at {timestamp_ms} ms, now {now_ms} ms)")]
    SenderProofExpired {
        /// When the proof says it was made, in ms since the Unix epoch.
        timestamp_ms: u64,
        /// The verifier's time.
        now_ms: u64,
    },
    /// A sender proof is dated further in the future than the allowed
    /// clock skew.
    #[error("sender proof from the future (made at {timestamp_ms} ms, now {now_ms} ms)")]
    SenderProofFromFuture {
        /// When the proof says it was made, in ms since the Unix epoch.
        timestamp_ms: u64,
        /// The verifier's time.
        now_ms: u64,
    },
    /// A sender proof's nonce was already used in this channel.
    #[error("sender proof replayed")]
    SenderProofReplayed,
    /// The replay cache is full of unexpired entries; retry later.
    #[error("sender proof replay cache is full ({capacity} entries)")]
    ReplayCacheFull {
        /// The cache's capacity.
        capacity: usize,
    },
    /// Exporting a secret from the MLS key schedule failed.
    #[error("exporting an MLS secret failed")]
    MlsExportSecret(#[source] Box<openmls::prelude::ExportSecretError>),

    // ----- bugs -------------------------------------------------------------
    /// An invariant of this crate or of openmls did not hold. A bug: please
    /// report it.
    #[error("internal error: {0}")]
    Internal(&'static str),
}
