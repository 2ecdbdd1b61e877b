//! Events the client emits to its subscribers.

use crate::{ConversationId, Message};

/// Something that happened, delivered through [`crate::QpcClient::subscribe`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A message from another member arrived and was stored.
    MessageReceived {
        /// Where.
        conversation: ConversationId,
        /// The message.
        message: Message,
    },
    /// This device joined a conversation (by Welcome or by creating it).
    ConversationCreated {
        /// The conversation.
        conversation: ConversationId,
        /// Display name (the peer's username for a DM).
        name: String,
    },
    /// A device of `username` joined the conversation.
    MemberJoined {
        /// The conversation.
        conversation: ConversationId,
        /// Who joined.
        username: String,
    },
    /// A device of `username` left or was removed (possibly this device).
    MemberLeft {
        /// The conversation.
        conversation: ConversationId,
        /// Who left.
        username: String,
    },
    /// A conversation moved to a new MLS epoch.
    EpochChanged {
        /// The conversation.
        conversation: ConversationId,
        /// The new epoch.
        epoch: u64,
    },
    /// The server accepted a message and its signed delivery proof verified.
    DeliveryConfirmed {
        /// Where.
        conversation: ConversationId,
        /// Which message.
        message: crate::MessageId,
        /// The server's sequence number for it.
        seq: u64,
    },
    /// The server ended this session (expired or revoked); log in again.
    SessionExpired,
    /// The connection is back after `ConnectionLost`; waiting messages are being fetched.
    Reconnected,
    /// The push connection to the server ended.
    ConnectionLost {
        /// Why.
        reason: String,
    },
}
