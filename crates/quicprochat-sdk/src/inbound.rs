//! What a decrypted application message does on this device: a new message in the history, or
//! a reaction, receipt, edit, delete or timer change applied to what is stored, and the events
//! that tell subscribers. Typing indicators arrive here too, mostly as ephemeral pushes that
//! never touch the queue.

use quicprochat_core::mls::{Processed, StateChanges};
use quicprochat_proto::v1;

use crate::app_message::{self, Body, UNSUPPORTED_TEXT};
use crate::client::QpcClient;
use crate::error::Result;
use crate::store::{Change, Effect, LocalStore, MessageRow, Target, Unsupported};
use crate::{ClientEvent, ConversationId, MessageId};

/// A decrypted application message and where it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inbound<'a> {
    /// The conversation it arrived in.
    pub conversation: ConversationId,
    /// The sender's username, as MLS authenticated it.
    pub sender: &'a str,
    /// The decrypted `AppMessage` bytes.
    pub plaintext: &'a [u8],
    /// The sender's device, as MLS authenticated it.
    pub sender_device: [u8; 16],
}

/// Applies an application message from the queue: writes its effect together with the MLS
/// state and the queue cursor, in one transaction, and returns the events to emit. A reaction,
/// edit or delete whose target is not in this conversation, or an edit or delete by anyone but
/// the target's sender, is ignored (the ratchet and cursor still advance).
pub(crate) fn apply_application(
    store: &mut LocalStore,
    inbound: Inbound<'_>,
    mls: &StateChanges,
    cursor: u64,
    now_ms: u64,
) -> Result<Vec<ClientEvent>> {
    let Inbound { conversation, sender, plaintext, sender_device } = inbound;
    let decoded = app_message::decode(plaintext);
    let base = || Change { mls: Some(mls), cursor: Some(cursor), ..Default::default() };
    // A target that exists in this conversation (`None` otherwise).
    let target = |store: &LocalStore, id: &MessageId| -> Result<Option<Target>> {
        Ok(store.target(id)?.filter(|t| t.conversation == conversation))
    };
    let ignore = |store: &mut LocalStore, why: &str| -> Result<Vec<ClientEvent>> {
        tracing::debug!(reason = why, "ignoring an application message");
        store.apply(base())?;
        Ok(Vec::new())
    };

    let (text, attachment, unsupported) = match decoded.body {
        Body::Text(text) => (text, None, None),
        Body::File(f) => (crate::files::summary(&f.name, f.size), Some(prost::Message::encode_to_vec(&f)), None),
        Body::Unsupported { body_field } => {
            tracing::debug!(?body_field, "keeping an application message this version cannot interpret");
            (UNSUPPORTED_TEXT.to_owned(), None, Some(Unsupported { body_field, raw: plaintext }))
        }
        Body::Reaction { target: id, emoji } => {
            match target(store, &id)? {
                Some(t) if !t.deleted => {}
                Some(_) => return ignore(store, "reaction to a deleted message"),
                None => return ignore(store, "reaction to a message not in this conversation"),
            }
            let effect = Effect::React { message: id, user: sender, emoji: emoji.as_deref() };
            store.apply(Change { effect: Some(effect), ..base() })?;
            let user = sender.to_owned();
            return Ok(vec![match emoji {
                Some(emoji) => ClientEvent::ReactionAdded { conversation, message: id, user, emoji },
                None => ClientEvent::ReactionRemoved { conversation, message: id, user },
            }]);
        }
        Body::Receipt(ids) => {
            let mut read = Vec::with_capacity(ids.len());
            for id in ids {
                if target(store, &id)?.is_some() && !read.contains(&id) {
                    read.push(id);
                }
            }
            if read.is_empty() {
                return ignore(store, "receipt for no message stored here");
            }
            store.apply(Change { effect: Some(Effect::Read { messages: &read, reader: sender }), ..base() })?;
            return Ok(vec![ClientEvent::ReadReceipt { conversation, messages: read, reader: sender.to_owned() }]);
        }
        Body::Typing(started) => {
            store.apply(base())?;
            return Ok(vec![ClientEvent::Typing { conversation, username: sender.to_owned(), started }]);
        }
        Body::Edit { target: id, text } => {
            match target(store, &id)? {
                Some(t) if t.sender == sender && !t.deleted => {}
                Some(t) if t.sender != sender => return ignore(store, "edit by someone other than the sender"),
                Some(_) => return ignore(store, "edit of a deleted message"),
                None => return ignore(store, "edit of a message not in this conversation"),
            }
            store.apply(Change { effect: Some(Effect::Edit { message: id, text: &text }), ..base() })?;
            return Ok(vec![ClientEvent::MessageEdited { conversation, message: id, by: sender.to_owned(), text }]);
        }
        Body::Delete(id) => {
            match target(store, &id)? {
                Some(t) if t.sender == sender && !t.deleted => {}
                Some(t) if t.sender != sender => return ignore(store, "delete by someone other than the sender"),
                Some(_) => return ignore(store, "delete of a deleted message"),
                None => return ignore(store, "delete of a message not in this conversation"),
            }
            store.apply(Change { effect: Some(Effect::Delete { message: id }), ..base() })?;
            return Ok(vec![ClientEvent::MessageDeleted { conversation, message: id, by: sender.to_owned() }]);
        }
        Body::GroupName(name) => {
            match store.conversation(&conversation)? {
                Some(c) if c.peer.is_none() => {}
                _ => return ignore(store, "a group name for a DM"),
            }
            let effect = Effect::GroupName { conversation, name: &name };
            store.apply(Change { effect: Some(effect), ..base() })?;
            let Some(row) = store.conversation(&conversation)? else { return Ok(Vec::new()) };
            return Ok(vec![ClientEvent::ConversationRenamed { conversation, name: row.name, by: sender.to_owned() }]);
        }
        Body::Disappearing(secs) => {
            store.apply(Change { effect: Some(Effect::Disappearing { conversation, secs }), ..base() })?;
            return Ok(vec![ClientEvent::DisappearingTimerChanged {
                conversation,
                by: sender.to_owned(),
                ttl: secs.map(|s| std::time::Duration::from_secs(u64::from(s))),
            }]);
        }
    };

    // The sender's timer when it sent the message; the conversation's own as a fallback.
    let local_timer = store.conversation(&conversation)?.and_then(|c| c.disappearing_secs).unwrap_or(0);
    let timer = if decoded.expire_after_secs > 0 { decoded.expire_after_secs } else { local_timer };
    let fresh = store.apply(Change {
        message: Some(MessageRow {
            id: decoded.id,
            conversation,
            sender,
            text: &text,
            sent_at_ms: decoded.sent_at_ms,
            outgoing: false,
            attachment: attachment.as_deref(),
            expires_at_ms: (timer > 0).then(|| now_ms + u64::from(timer) * 1000),
            unsupported,
            sender_device: Some(sender_device),
        }),
        ..base()
    })?;
    if !fresh {
        return Ok(Vec::new());
    }
    let Some(message) = store.message(&decoded.id)? else { return Ok(Vec::new()) };
    Ok(vec![ClientEvent::MessageReceived { conversation, message }])
}

impl QpcClient {
    /// Handles an envelope pushed without a queue entry (sequence 0: the sender marked it
    /// ephemeral). Only typing indicators are accepted this way; nothing is stored but the
    /// advanced MLS ratchet. One that does not decrypt (an epoch this device has not reached)
    /// is dropped: it was only ever a hint.
    pub(crate) async fn receive_ephemeral(&self, queued: &v1::QueuedEnvelope) -> Result<()> {
        let Some(envelope) = &queued.envelope else { return Ok(()) };
        // Only an MLS PrivateMessage: its content type is checked before decryption, and a
        // handshake message (which would change the group outside the queue order) is refused.
        if envelope.kind != v1::EnvelopeKind::Application as i32 || !is_private_message(&envelope.payload) {
            return Ok(());
        }
        let Ok(group) = <[u8; 16]>::try_from(queued.channel_id.as_ref()) else { return Ok(()) };
        // In queue order with everything else this device processes (and never while its own
        // commit is in flight).
        let _guard = self.inner.sync_lock.lock().await;
        let account = self.account()?;
        let event = {
            let mut local = account.lock()?;
            if !local.mls.has_group(&group)? {
                return Ok(());
            }
            let processed = match local.mls.process(&group, &envelope.payload) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "dropping an ephemeral message that does not decrypt");
                    return Ok(());
                }
            };
            local.persist(Change::default())?;
            match processed {
                Processed::Application { sender, plaintext, .. } => match app_message::decode(&plaintext).body {
                    Body::Typing(started) => Some(ClientEvent::Typing {
                        conversation: ConversationId(group),
                        username: sender.username,
                        started,
                    }),
                    _ => {
                        tracing::debug!("ignoring an ephemeral message that is not a typing indicator");
                        None
                    }
                },
                _ => None,
            }
        };
        if let Some(event) = event {
            self.emit_inbound(event);
        }
        Ok(())
    }
}

/// Whether `payload` is a serialised MLS (version 1) `PrivateMessage` (RFC 9420 §6).
fn is_private_message(payload: &[u8]) -> bool {
    payload.starts_with(&[0x00, 0x01, 0x00, 0x02])
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message as _;
    use quicprochat_proto::v1::app_message::Body as WireBody;
    use zeroize::Zeroizing;

    use super::*;
    use crate::store::ConversationRow;

    const HERE: ConversationId = ConversationId([1; 16]);
    const ELSEWHERE: ConversationId = ConversationId([2; 16]);
    const ORIGINAL: MessageId = MessageId([3; 16]);

    /// A store holding alice's message "original" in `HERE`, and an empty `ELSEWHERE`.
    fn store(dir: &tempfile::TempDir) -> LocalStore {
        let mut store = LocalStore::open(&dir.path().join("state.db"), Zeroizing::new([7u8; 32])).unwrap();
        for id in [HERE, ELSEWHERE] {
            let row = ConversationRow::new(id, 2, "team".into(), None);
            store.apply(Change { conversation: Some(row), ..Default::default() }).unwrap();
        }
        let original = wire(ORIGINAL.0[0], WireBody::Text(v1::TextBody { text: "original".into() }));
        apply(&mut store, HERE, "alice", &original);
        store
    }

    fn wire(id: u8, body: WireBody) -> Vec<u8> {
        v1::AppMessage {
            message_id: Bytes::copy_from_slice(&[id; 16]),
            sent_at_ms: 5,
            body: Some(body),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn target() -> Bytes {
        Bytes::copy_from_slice(&ORIGINAL.0)
    }

    fn apply(store: &mut LocalStore, conversation: ConversationId, sender: &str, plaintext: &[u8]) -> Vec<ClientEvent> {
        let inbound = Inbound { conversation, sender, plaintext, sender_device: [9; 16] };
        apply_application(store, inbound, &StateChanges::default(), 1, 1_000).unwrap()
    }

    fn text(store: &LocalStore) -> String {
        store.message(&ORIGINAL).unwrap().unwrap().text
    }

    #[test]
    fn only_the_original_sender_edits_or_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir);
        assert_eq!(text(&store), "original");

        let forged = wire(2, WireBody::Edit(v1::EditBody { target_message_id: target(), text: "forged".into() }));
        assert!(apply(&mut store, HERE, "mallory", &forged).is_empty());
        assert_eq!(text(&store), "original", "an edit by someone else is ignored");
        let forged = wire(3, WireBody::Delete(v1::DeleteBody { target_message_id: target() }));
        assert!(apply(&mut store, HERE, "mallory", &forged).is_empty());
        assert!(store.message(&ORIGINAL).unwrap().unwrap().deleted_at_ms.is_none());

        // The sender's own edit, but sent into another conversation: the target is not there.
        let astray = wire(4, WireBody::Edit(v1::EditBody { target_message_id: target(), text: "astray".into() }));
        assert!(apply(&mut store, ELSEWHERE, "alice", &astray).is_empty());
        assert_eq!(text(&store), "original");

        let edit = wire(5, WireBody::Edit(v1::EditBody { target_message_id: target(), text: "edited".into() }));
        let events = apply(&mut store, HERE, "alice", &edit);
        assert!(matches!(&events[..], [ClientEvent::MessageEdited { message, text, .. }]
            if *message == ORIGINAL && text == "edited"));
        assert_eq!(text(&store), "edited");
        let delete = wire(6, WireBody::Delete(v1::DeleteBody { target_message_id: target() }));
        assert!(matches!(&apply(&mut store, HERE, "alice", &delete)[..], [ClientEvent::MessageDeleted { .. }]));
        assert_eq!(text(&store), "");
    }

    #[test]
    fn reactions_and_receipts_need_a_target_in_the_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir);
        let react = |remove| {
            wire(7, WireBody::Reaction(v1::ReactionBody { target_message_id: target(), emoji: "🔥".into(), remove }))
        };
        assert!(apply(&mut store, ELSEWHERE, "bob", &react(false)).is_empty());
        assert!(matches!(&apply(&mut store, HERE, "bob", &react(false))[..], [ClientEvent::ReactionAdded { .. }]));
        assert_eq!(store.message(&ORIGINAL).unwrap().unwrap().reactions.len(), 1);
        assert!(matches!(&apply(&mut store, HERE, "bob", &react(true))[..], [ClientEvent::ReactionRemoved { .. }]));
        assert!(store.message(&ORIGINAL).unwrap().unwrap().reactions.is_empty());

        let receipt = wire(8, WireBody::Receipt(v1::ReceiptBody { message_ids: vec![target(), target()] }));
        assert!(apply(&mut store, ELSEWHERE, "bob", &receipt).is_empty());
        let events = apply(&mut store, HERE, "bob", &receipt);
        assert!(matches!(&events[..], [ClientEvent::ReadReceipt { messages, .. }] if messages == &vec![ORIGINAL]));
        assert_eq!(store.message(&ORIGINAL).unwrap().unwrap().read_by, vec!["bob".to_owned()]);
    }

    #[test]
    fn the_senders_timer_or_the_conversations_sets_the_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir);
        let mut timed =
            v1::AppMessage::decode(wire(9, WireBody::Text(v1::TextBody { text: "t".into() })).as_slice()).unwrap();
        timed.expire_after_secs = 3;
        apply(&mut store, HERE, "alice", &timed.encode_to_vec());
        assert_eq!(store.message(&MessageId([9; 16])).unwrap().unwrap().expires_at_ms, Some(4_000));

        let change = wire(10, WireBody::Disappearing(v1::DisappearingBody { ttl_secs: 60 }));
        let events = apply(&mut store, HERE, "bob", &change);
        assert!(matches!(&events[..], [ClientEvent::DisappearingTimerChanged { ttl: Some(t), .. }]
            if t.as_secs() == 60));
        apply(&mut store, HERE, "alice", &wire(11, WireBody::Text(v1::TextBody { text: "u".into() })));
        assert_eq!(store.message(&MessageId([11; 16])).unwrap().unwrap().expires_at_ms, Some(61_000));
    }

    #[test]
    fn typing_is_an_event_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir);
        let typing = wire(12, WireBody::Typing(v1::TypingBody { started: true }));
        let events = apply(&mut store, HERE, "bob", &typing);
        assert!(matches!(&events[..], [ClientEvent::Typing { started: true, .. }]));
        assert!(store.message(&MessageId([12; 16])).unwrap().is_none());
        assert!(is_private_message(&[0, 1, 0, 2, 9]));
        assert!(!is_private_message(&[0, 1, 0, 1, 9]));
    }
}
