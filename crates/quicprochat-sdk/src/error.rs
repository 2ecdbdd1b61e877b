//! The SDK's error type.

use quicprochat_core::CoreError;

/// What an SDK call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// Could not reach or talk to the server.
    #[error("connection: {0}")]
    Transport(#[source] quicprochat_rpc::Error),
    /// Rejoining a conversation kept losing the race against other commits; try again later.
    #[error("the conversation kept changing while rejoining it; try again")]
    RejoinRaced,
    /// The server refused the request.
    #[error("server refused: {status}: {message}")]
    Server {
        /// Wire status name, e.g. `CONFLICT`.
        status: &'static str,
        /// The server's explanation.
        message: String,
        /// For RATE_LIMITED and QUEUE_FULL: how long to wait before trying again, ms.
        retry_after_ms: u64,
    },
    /// Wrong username or password.
    #[error("wrong username or password")]
    InvalidCredentials,
    /// The account file in this state dir does not open with the given password.
    #[error("the account in {0} is sealed with a different password")]
    LocalAccountLocked(std::path::PathBuf),
    /// The username is already registered.
    #[error("username already taken")]
    UsernameTaken,
    /// No conversation with this user exists on this device, so there is no key to compare.
    #[error("no conversation with {0} yet: open one first (/dm)")]
    NoSharedConversation(String),
    /// The user has no device in this conversation.
    #[error("{0} is not a member of this conversation")]
    NotAMember(String),
    /// No such user on the server.
    #[error("no such user: {0}")]
    UnknownUser(String),
    /// The operation needs a logged-in client.
    #[error("not logged in")]
    NotLoggedIn,
    /// The local state belongs to another account.
    #[error("state dir holds the account {found}, not {expected}")]
    StateMismatch {
        /// Username in the state dir.
        found: String,
        /// Username asked for.
        expected: String,
    },
    /// The peer has no devices with key packages, so no conversation can be created yet.
    #[error("{0} has no device that can be invited yet (no key packages)")]
    NoKeyPackages(String),
    /// The peer created this DM first; its invitation has not arrived yet.
    #[error("waiting for {0}'s invitation to the conversation; try again shortly")]
    AwaitingInvitation(String),
    /// The server's delivery proof for a sent message does not verify (the message was sent and
    /// is stored locally, but the server's receipt cannot be trusted).
    #[error("the server's delivery proof does not verify")]
    InvalidDeliveryProof,
    /// The file is larger than a blob may be.
    #[error("file of {size} bytes is larger than the limit of {max}")]
    FileTooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The message shares no file.
    #[error("this message has no file")]
    NoAttachment,
    /// A downloaded file does not match the hash its message announced.
    #[error("the downloaded file does not match its hash")]
    FileHashMismatch,
    /// No message with this id in the conversation (never stored here, or already expired).
    #[error("no message {0} in this conversation")]
    UnknownMessage(crate::MessageId),
    /// Only a message's sender may edit or delete it.
    #[error("message {0} was sent by someone else: only its sender may edit or delete it")]
    NotOwnMessage(crate::MessageId),
    /// The message was deleted; it can no longer be edited or reacted to.
    #[error("message {0} was deleted")]
    MessageDeleted(crate::MessageId),
    /// A reaction must be a non-empty emoji of bounded size.
    #[error("a reaction must be a non-empty emoji of at most {max} bytes, not {len}")]
    InvalidReaction {
        /// Its size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The disappearing timer asked for is longer than allowed.
    #[error("a disappearing timer of {requested:?} is longer than the limit of {max:?}")]
    DisappearingTimerTooLong {
        /// The timer asked for.
        requested: std::time::Duration,
        /// The limit.
        max: std::time::Duration,
    },
    /// A conversation name must contain something other than white space.
    #[error("a conversation name cannot be empty")]
    EmptyConversationName,
    /// A group name is limited in length.
    #[error("a group name may be at most {max} bytes, this one has {len}")]
    ConversationNameTooLong {
        /// Its length, bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The local database is encrypted and this build cannot open encrypted databases.
    #[error("the local database is encrypted: use a build of quicprochat with the `sqlcipher` feature")]
    LocalStoreEncrypted,
    /// The local database does not open with this account's key (it belongs to another account,
    /// or it is damaged).
    #[error("the local database does not open with this account's key")]
    LocalStoreUnreadable,
    /// The local database opened, but what it holds is damaged (e.g. part of the MLS state is
    /// missing).
    #[error("the local database is damaged: {0}")]
    LocalStoreDamaged(&'static str),
    /// This device left the conversation (or was removed from it); its history stays readable.
    #[error("you are no longer a member of this conversation")]
    LeftConversation,
    /// Cryptographic failure.
    #[error("crypto: {0}")]
    Crypto(#[from] CoreError),
    /// The local database failed.
    #[error("local store: {0}")]
    LocalStore(#[from] rusqlite::Error),
    /// Local file I/O failed.
    #[error("local state ({path})", path = path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server sent something that does not parse.
    #[error("malformed data from the server: {0}")]
    Protocol(&'static str),
    /// The server did not answer in time.
    #[error("timed out")]
    Timeout,
    /// An internal lock was poisoned by a panic elsewhere.
    #[error("internal state poisoned")]
    Poisoned,
    /// No conversation with this id on this device.
    #[error("no conversation {0} on this device")]
    UnknownConversation(crate::ConversationId),
    /// A transcript archive file (or the temporary file it is written through) could not be
    /// read or written.
    #[error("archive file {}", path.display())]
    ArchiveFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The transcript archive does not open with this password. A modified header or first
    /// record looks exactly the same: the two cannot be told apart.
    #[error("the archive does not open with this password (or its beginning was modified)")]
    ArchiveWrongPassword,
    /// A record of the transcript archive was modified after it was written.
    #[error("the archive was modified: record {record} fails authentication")]
    ArchiveTampered {
        /// The record's position, from 0.
        record: u64,
    },
    /// Records of the transcript archive were removed, repeated or reordered.
    #[error("the archive's chain is broken at record {record}: records were removed, repeated or reordered")]
    ArchiveChainBroken {
        /// The first record that does not follow the one before it, from 0.
        record: u64,
    },
    /// The transcript archive is cut off: it ends before its end record.
    #[error("the archive is truncated: it ends before its end record")]
    ArchiveTruncated,
    /// The file is not a transcript archive.
    #[error("not a quicprochat transcript archive")]
    NotAnArchive,
    /// The transcript archive has a format version this build does not read.
    #[error("transcript archive version {0} is not supported by this version of quicprochat")]
    ArchiveUnsupportedVersion(u8),
    /// The transcript archive is malformed (its fields or parameters are out of bounds).
    #[error("malformed transcript archive: {0}")]
    ArchiveMalformed(&'static str),
}

impl SdkError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SdkError::Transport(e) => e.is_retryable(),
            SdkError::Timeout | SdkError::AwaitingInvitation(_) | SdkError::RejoinRaced => true,
            SdkError::Server { status, .. } => matches!(*status, "RATE_LIMITED" | "UNAVAILABLE" | "QUEUE_FULL"),
            _ => false,
        }
    }

    /// Whether a transcript archive failed verification: modified, cut off, malformed or not an
    /// archive at all. A wrong password ([`SdkError::ArchiveWrongPassword`]) is not counted here.
    pub fn is_invalid_archive(&self) -> bool {
        matches!(
            self,
            SdkError::ArchiveTampered { .. }
                | SdkError::ArchiveChainBroken { .. }
                | SdkError::ArchiveTruncated
                | SdkError::NotAnArchive
                | SdkError::ArchiveUnsupportedVersion(_)
                | SdkError::ArchiveMalformed(_)
        )
    }
}

impl From<quicprochat_rpc::Error> for SdkError {
    fn from(e: quicprochat_rpc::Error) -> Self {
        match e {
            quicprochat_rpc::Error::Rpc(r) => {
                SdkError::Server { status: r.status.name(), message: r.message, retry_after_ms: r.retry_after_ms }
            }
            other => SdkError::Transport(other),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, SdkError>;
