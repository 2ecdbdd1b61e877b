//! Rich messaging on a conversation: reactions, read receipts, typing indicators, editing and
//! deleting one's own messages, the disappearing-message timer, and a local name.
//!
//! Each is an `AppMessage` inside MLS (see `proto/qpc/v1/app.proto`) that this device applies
//! to its own store in the same transaction as the ratchet it advances; members apply it when
//! it arrives (`inbound.rs`). This device's own actions emit no events: the caller knows.

use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::v1;
use quicprochat_proto::v1::app_message::Body;

use crate::app_message::{MAX_RECEIPT_IDS, check_emoji, timer_secs};
use crate::conversation::{ConversationHandle, LocalEcho};
use crate::error::Result;
use crate::store::{Effect, Target};
use crate::{MessageId, SdkError};

impl ConversationHandle {
    /// Reacts to `message` with `emoji`, replacing this user's earlier reaction to it.
    pub async fn react(&self, message: MessageId, emoji: &str) -> Result<()> {
        check_emoji(emoji)?;
        self.live_target(message)?;
        let user = self.client().whoami()?;
        let body = Body::Reaction(v1::ReactionBody {
            target_message_id: Bytes::copy_from_slice(&message.0),
            emoji: emoji.to_owned(),
            remove: false,
        });
        let effect = Effect::React { message, user: &user, emoji: Some(emoji) };
        self.send_app(body, LocalEcho::Effect(effect)).await?;
        Ok(())
    }

    /// Withdraws this user's reaction to `message`.
    pub async fn remove_reaction(&self, message: MessageId) -> Result<()> {
        self.live_target(message)?;
        let user = self.client().whoami()?;
        let body = Body::Reaction(v1::ReactionBody {
            target_message_id: Bytes::copy_from_slice(&message.0),
            emoji: String::new(),
            remove: true,
        });
        self.send_app(body, LocalEcho::Effect(Effect::React { message, user: &user, emoji: None })).await?;
        Ok(())
    }

    /// Marks `message` and everything before it as read on this device (see
    /// [`ConversationHandle::unread`]) and sends a read receipt for it to the conversation.
    pub async fn mark_read(&self, message: MessageId) -> Result<()> {
        self.target(message)?;
        let user = self.client().whoami()?;
        self.client().account()?.lock()?.store.mark_read_through(&self.id(), Some(&message), 0)?;
        let body = Body::Receipt(v1::ReceiptBody { message_ids: vec![Bytes::copy_from_slice(&message.0)] });
        let messages = [message];
        self.send_app(body, LocalEcho::Effect(Effect::Read { messages: &messages, reader: &user })).await?;
        Ok(())
    }

    /// Marks the whole conversation as read on this device and sends one read receipt for the
    /// incoming messages that were unread (the newest 1000 at most); returns how many it named.
    pub async fn mark_all_read(&self) -> Result<usize> {
        let user = self.client().whoami()?;
        let read = self.client().account()?.lock()?.store.mark_read_through(
            &self.id(),
            None,
            u32::try_from(MAX_RECEIPT_IDS).unwrap_or(u32::MAX),
        )?;
        if read.is_empty() {
            return Ok(0);
        }
        let body =
            Body::Receipt(v1::ReceiptBody { message_ids: read.iter().map(|m| Bytes::copy_from_slice(&m.0)).collect() });
        self.send_app(body, LocalEcho::Effect(Effect::Read { messages: &read, reader: &user })).await?;
        Ok(read.len())
    }

    /// Tells the members who are online that this user started (`true`) or stopped typing.
    /// Sent as an ephemeral envelope: the server pushes it and never stores it, so members who
    /// are offline never see it. Receivers end an indicator by themselves after
    /// [`crate::TYPING_TIMEOUT`], so while the user keeps typing, send `true` again every few
    /// seconds (half the timeout is a good rhythm).
    pub async fn typing(&self, started: bool) -> Result<()> {
        self.send_app(Body::Typing(v1::TypingBody { started }), LocalEcho::Nothing).await?;
        Ok(())
    }

    /// Replaces the text of one of this user's own messages, here and for every member.
    pub async fn edit(&self, message: MessageId, text: &str) -> Result<()> {
        self.own_target(message)?;
        let body =
            Body::Edit(v1::EditBody { target_message_id: Bytes::copy_from_slice(&message.0), text: text.to_owned() });
        self.send_app(body, LocalEcho::Effect(Effect::Edit { message, text })).await?;
        Ok(())
    }

    /// Deletes one of this user's own messages for everyone: every device keeps a tombstone
    /// (the id, sender and time) without the text, attachment or reactions.
    pub async fn delete(&self, message: MessageId) -> Result<()> {
        self.own_target(message)?;
        let body = Body::Delete(v1::DeleteBody { target_message_id: Bytes::copy_from_slice(&message.0) });
        self.send_app(body, LocalEcho::Effect(Effect::Delete { message })).await?;
        Ok(())
    }

    /// Sets (or with `None` turns off) the conversation's disappearing-message timer, for every
    /// member. Messages sent afterwards disappear this long after they are stored: the server
    /// drops them unread, and each device deletes its copy. Rounded up to whole seconds, at most
    /// [`crate::MAX_DISAPPEARING`]; messages already sent keep the timer they had.
    pub async fn set_disappearing(&self, ttl: Option<Duration>) -> Result<()> {
        let secs = timer_secs(ttl)?;
        let body = Body::Disappearing(v1::DisappearingBody { ttl_secs: secs.unwrap_or(0) });
        self.send_app(body, LocalEcho::Effect(Effect::Disappearing { conversation: self.id(), secs })).await?;
        Ok(())
    }

    /// The conversation's disappearing-message timer, if one is set.
    pub fn disappearing(&self) -> Result<Option<Duration>> {
        Ok(self.disappearing_secs()?.map(|s| Duration::from_secs(u64::from(s))))
    }

    /// Renames the conversation on this device only (members are not told); this handle takes
    /// the new name, and so do handles made from now on.
    pub fn rename(&mut self, name: &str) -> Result<()> {
        let name = name.trim();
        if name.is_empty() {
            return Err(SdkError::EmptyConversationName);
        }
        let account = self.client().account()?;
        account.lock()?.store.rename_conversation(&self.id(), name)?;
        self.set_name(name.to_owned());
        Ok(())
    }

    /// The stored message `id`, if it is in this conversation.
    fn target(&self, id: MessageId) -> Result<Target> {
        let account = self.client().account()?;
        let target = account.lock()?.store.target(&id)?;
        target.filter(|t| t.conversation == self.id()).ok_or(SdkError::UnknownMessage(id))
    }

    /// A message of this conversation that is not deleted.
    fn live_target(&self, id: MessageId) -> Result<Target> {
        let target = self.target(id)?;
        if target.deleted {
            return Err(SdkError::MessageDeleted(id));
        }
        Ok(target)
    }

    /// A message of this conversation, not deleted, sent by this user.
    fn own_target(&self, id: MessageId) -> Result<Target> {
        let target = self.live_target(id)?;
        if target.sender != self.client().whoami()? {
            return Err(SdkError::NotOwnMessage(id));
        }
        Ok(target)
    }
}
