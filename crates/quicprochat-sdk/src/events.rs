//! Events the client emits to its subscribers.

use std::time::Duration;

use crate::{ConversationId, Message, MessageId};

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
    /// The sender of a stored message changed its text (the store already holds the new text).
    MessageEdited {
        /// Where.
        conversation: ConversationId,
        /// The edited message.
        message: MessageId,
        /// Who edited it (always its sender).
        by: String,
        /// The new text.
        text: String,
    },
    /// The sender of a stored message deleted it; the store keeps a tombstone.
    MessageDeleted {
        /// Where.
        conversation: ConversationId,
        /// The deleted message.
        message: MessageId,
        /// Who deleted it (always its sender).
        by: String,
    },
    /// A member reacted to a message (replacing their earlier reaction to it, if any).
    ReactionAdded {
        /// Where.
        conversation: ConversationId,
        /// The message reacted to.
        message: MessageId,
        /// Who reacted.
        user: String,
        /// The emoji.
        emoji: String,
    },
    /// A member withdrew their reaction to a message.
    ReactionRemoved {
        /// Where.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
        /// Who withdrew it.
        user: String,
    },
    /// A member read messages.
    ReadReceipt {
        /// Where.
        conversation: ConversationId,
        /// The messages read (those stored on this device).
        messages: Vec<MessageId>,
        /// Who read them.
        reader: String,
    },
    /// A member started or stopped typing. Never stored; only online devices see it.
    Typing {
        /// Where.
        conversation: ConversationId,
        /// Who.
        username: String,
        /// True when they started, false when they stopped.
        started: bool,
    },
    /// A member changed the conversation's disappearing-message timer.
    DisappearingTimerChanged {
        /// Where.
        conversation: ConversationId,
        /// Who changed it.
        by: String,
        /// The new timer; `None` = messages are kept.
        ttl: Option<Duration>,
    },
    /// A message's disappearing timer ran out and it was deleted from this device.
    MessageExpired {
        /// Where.
        conversation: ConversationId,
        /// The message, now gone.
        message: MessageId,
    },
    /// This device joined a conversation (by Welcome or by creating it).
    ConversationCreated {
        /// The conversation.
        conversation: ConversationId,
        /// Display name (the peer's username for a DM).
        name: String,
    },
    /// A member told the group its name (its creator's choice, sent when members are added).
    /// `name` is what this device shows now: its own rename, if it made one, wins.
    ConversationRenamed {
        /// The conversation.
        conversation: ConversationId,
        /// The display name now.
        name: String,
        /// Who sent the group's name.
        by: String,
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
    /// Messages of a conversation could not be read because this device's group state was lost,
    /// corrupt or behind; the device rejoins the conversation by itself (an `EpochChanged`
    /// follows) and reads everything sent after that.
    MessagesLost {
        /// Where.
        conversation: ConversationId,
        /// How many messages were skipped.
        count: u32,
    },
    /// A queued send was refused by the server for good (e.g. this device is no longer a
    /// member); it stays in the history marked [`crate::DeliveryState::Failed`].
    SendFailed {
        /// Where.
        conversation: ConversationId,
        /// Which message (or reaction, edit, …).
        message: crate::MessageId,
        /// Why.
        reason: String,
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
