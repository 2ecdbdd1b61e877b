//! The quicprochat client SDK.
//!
//! ```no_run
//! # async fn demo(config: quicprochat_sdk::ClientConfig) -> Result<(), quicprochat_sdk::SdkError> {
//! use quicprochat_sdk::QpcClient;
//! let client = QpcClient::connect(config).await?;
//! client.register("alice", b"correct horse").await?;
//! let dm = client.dm("bob").await?;
//! dm.send_text("hello").await?;
//! let mut events = client.subscribe();
//! # let _ = events.recv().await;
//! # Ok(()) }
//! ```
//!
//! `QpcClient` is a cheap, cloneable handle; all state (session, identity, MLS groups, local
//! database) belongs to it — there is no global state. All client business logic lives here;
//! front ends (`qpc`, bots) are thin shells.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod account;
mod app_message;
mod client;
mod config;
mod conversation;
mod error;
mod events;
mod expiry;
mod export;
mod files;
mod heal;
mod inbound;
mod outbox;
mod rich;
mod store;
mod sync;
mod typing;

use std::fmt;
use std::time::Duration;

pub use app_message::MAX_DISAPPEARING;
pub use client::QpcClient;
pub use config::{ClientConfig, KdfStrength, Trust};
pub use conversation::ConversationHandle;
pub use error::SdkError;
pub use events::ClientEvent;
pub use export::{ExportSummary, TranscriptRecord, VerifiedTranscript, verify_transcript};
pub use files::MAX_FILE_BYTES;
pub use store::DATABASE_ENCRYPTION;
pub use sync::{ACK_COALESCE, ack_delay};
pub use typing::TYPING_TIMEOUT;

/// Identifies a conversation (equal to its channel and MLS group id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub [u8; 16]);

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationId({self})")
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

/// Identifies a message (chosen by its sender; receivers deduplicate on it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl fmt::Display for MessageId {
    /// A short id for humans: the first 4 bytes in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..4]))
    }
}

/// A stored message, with what later messages did to it (edits, deletion, reactions, receipts).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Id.
    pub id: MessageId,
    /// Conversation.
    pub conversation: ConversationId,
    /// Sender's username.
    pub sender: String,
    /// Text (the latest edit; empty once deleted).
    pub text: String,
    /// Sender's clock, Unix ms.
    pub sent_at_ms: u64,
    /// When this device stored it, Unix ms.
    pub stored_at_ms: u64,
    /// Sent by this account.
    pub outgoing: bool,
    /// The file this message shares, if any (download it with
    /// [`QpcClient::download_file`]).
    pub attachment: Option<Attachment>,
    /// What kind of message it is.
    pub kind: MessageKind,
    /// When this device applied the sender's latest edit, Unix ms.
    pub edited_at_ms: Option<u64>,
    /// When this device applied the sender's delete, Unix ms. A deleted message is a tombstone:
    /// its text is empty and its attachment and reactions are gone.
    pub deleted_at_ms: Option<u64>,
    /// Reactions, at most one per user.
    pub reactions: Vec<Reaction>,
    /// Users who sent a read receipt for it.
    pub read_by: Vec<String>,
    /// When it disappears from this device (the conversation's disappearing timer), Unix ms.
    pub expires_at_ms: Option<u64>,
    /// Where an outgoing message is on its way; [`DeliveryState::Received`] for incoming ones.
    pub delivery: DeliveryState,
}

/// Where a message is on its way to the other members.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// In the outbox: not yet accepted by the server (offline, or being retried). It is sent
    /// with the same idempotency key when the connection allows, also after a restart.
    Queued,
    /// Accepted by the server.
    Sent,
    /// Accepted, with the server's signed delivery proof verified and kept.
    Confirmed,
    /// Given up: the server refused it for good (e.g. this device is no longer a member).
    Failed {
        /// Why.
        reason: String,
    },
    /// A message from another member.
    Received,
}

/// What kind of message a [`Message`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKind {
    /// Text.
    Text,
    /// A shared file (see [`Message::attachment`]).
    File,
    /// A kind this version of quicprochat cannot show (sent by a newer version, or malformed).
    /// It is kept, with its raw payload, rather than dropped; its text says so.
    Unsupported {
        /// The payload's unknown body field number, when one was found.
        body_field: Option<u32>,
    },
}

/// One user's reaction to a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    /// Who reacted.
    pub user: String,
    /// The emoji.
    pub emoji: String,
}

/// A file shared in a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// File name as the sender gave it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// A conversation as listed by [`QpcClient::conversations`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Id.
    pub id: ConversationId,
    /// Display name (the peer for a DM).
    pub name: String,
    /// The peer's username, for a DM.
    pub peer: Option<String>,
    /// The disappearing-message timer, if one is set.
    pub disappearing: Option<Duration>,
    /// Incoming messages not read yet on this device (see [`ConversationHandle::unread`]).
    pub unread: u32,
}

/// Whether `state_dir` already holds an account for this device (so `login`, not `register`).
pub fn has_local_account(state_dir: &std::path::Path) -> bool {
    state_dir.join(account::ACCOUNT_FILE).exists()
}

/// Reads certificates from DER or PEM bytes (for [`Trust`]); empty if none parse.
pub fn parse_certificates(bytes: &[u8]) -> Vec<Vec<u8>> {
    quicprochat_rpc::tls::parse_certificates(bytes)
}
