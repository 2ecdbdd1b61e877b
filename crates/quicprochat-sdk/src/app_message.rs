//! Application payloads: the protobuf `AppMessage` carried inside MLS, decoded into what the
//! SDK acts on. Pure: no I/O, no clock, no randomness.
//!
//! Decoding never fails. Anything this version cannot interpret — a body kind added by a later
//! version, or a known kind that is malformed — becomes [`Body::Unsupported`], which the caller
//! stores with the raw bytes, so no message is ever lost to a decode error.

use std::time::Duration;

use prost::Message as _;
use quicprochat_proto::v1;
use quicprochat_proto::v1::app_message::Body as WireBody;

use crate::MessageId;
use crate::error::{Result, SdkError};

/// Longest reaction (an emoji, possibly a ZWJ sequence with modifiers), in UTF-8 bytes.
pub(crate) const MAX_EMOJI_BYTES: usize = 64;
/// Most message ids in one read receipt.
pub(crate) const MAX_RECEIPT_IDS: usize = 1000;
/// Longest disappearing timer: one year.
pub const MAX_DISAPPEARING: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Longest group name, in UTF-8 bytes.
pub(crate) const MAX_GROUP_NAME_BYTES: usize = 128;
/// What the history shows for a message this version cannot interpret.
pub(crate) const UNSUPPORTED_TEXT: &str = "[unsupported message: a newer version of quicprochat can show it]";

/// `AppMessage` field numbers from here on are body kinds (see `app.proto`).
const FIRST_BODY_FIELD: u32 = 10;
/// The body kinds this version knows.
const KNOWN_BODY_FIELDS: std::ops::RangeInclusive<u32> = 10..=18;

/// A decoded application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// The sender's id for it; for an undecodable payload, derived from its hash so a
    /// re-delivery still deduplicates.
    pub id: MessageId,
    /// Sender's clock, Unix ms (0 when unknown).
    pub sent_at_ms: u64,
    /// The sender's disappearing timer when it was sent, seconds (0 = keep).
    pub expire_after_secs: u32,
    /// What it says.
    pub body: Body,
}

/// What an application message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// A text message.
    Text(String),
    /// A shared file.
    File(v1::FileBody),
    /// Sets (`Some`) or withdraws (`None`) the sender's reaction to `target`.
    Reaction { target: MessageId, emoji: Option<String> },
    /// The sender read these messages.
    Receipt(Vec<MessageId>),
    /// The sender started (true) or stopped typing.
    Typing(bool),
    /// Replaces the text of the sender's own message `target`.
    Edit { target: MessageId, text: String },
    /// Deletes the sender's own message `target`.
    Delete(MessageId),
    /// Sets the conversation's disappearing timer, seconds (`None` = off).
    Disappearing(Option<u32>),
    /// The group's name, as its creator chose it.
    GroupName(String),
    /// Not interpretable by this version: `body_field` is the unknown body's field number, when
    /// one could be found.
    Unsupported { body_field: Option<u32> },
}

/// Decodes a decrypted MLS application payload.
pub(crate) fn decode(plaintext: &[u8]) -> Decoded {
    let unsupported = |sent_at_ms, expire_after_secs| Decoded {
        id: derived_id(plaintext),
        sent_at_ms,
        expire_after_secs,
        body: Body::Unsupported { body_field: first_unknown_body_field(plaintext) },
    };
    let Ok(app) = v1::AppMessage::decode(plaintext) else { return unsupported(0, 0) };
    let Some(id) = message_id(&app.message_id) else { return unsupported(app.sent_at_ms, app.expire_after_secs) };
    let body = match app.body {
        Some(body) => interpret(body).unwrap_or_else(|field| Body::Unsupported { body_field: Some(field) }),
        None => Body::Unsupported { body_field: first_unknown_body_field(plaintext) },
    };
    Decoded { id, sent_at_ms: app.sent_at_ms, expire_after_secs: app.expire_after_secs, body }
}

/// Checks a known body; a malformed one is reported by its field number.
fn interpret(body: WireBody) -> std::result::Result<Body, u32> {
    Ok(match body {
        WireBody::Text(t) => Body::Text(t.text),
        WireBody::File(f) => Body::File(f),
        WireBody::Reaction(r) => {
            let target = message_id(&r.target_message_id).ok_or(12u32)?;
            if r.remove {
                Body::Reaction { target, emoji: None }
            } else {
                check_emoji(&r.emoji).map_err(|_| 12u32)?;
                Body::Reaction { target, emoji: Some(r.emoji) }
            }
        }
        WireBody::Receipt(r) => {
            if r.message_ids.is_empty() || r.message_ids.len() > MAX_RECEIPT_IDS {
                return Err(13);
            }
            Body::Receipt(r.message_ids.iter().map(|id| message_id(id)).collect::<Option<_>>().ok_or(13u32)?)
        }
        WireBody::Typing(t) => Body::Typing(t.started),
        WireBody::Edit(e) => Body::Edit { target: message_id(&e.target_message_id).ok_or(15u32)?, text: e.text },
        WireBody::Delete(d) => Body::Delete(message_id(&d.target_message_id).ok_or(16u32)?),
        WireBody::Disappearing(d) => Body::Disappearing((d.ttl_secs > 0).then_some(d.ttl_secs)),
        WireBody::GroupName(g) => Body::GroupName(check_group_name(&g.name).map_err(|_| 18u32)?),
    })
}

/// Refuses an empty or oversized reaction.
pub(crate) fn check_emoji(emoji: &str) -> Result<()> {
    if emoji.trim().is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err(SdkError::InvalidReaction { len: emoji.len(), max: MAX_EMOJI_BYTES });
    }
    Ok(())
}

/// A group name trimmed, refused when empty or longer than [`MAX_GROUP_NAME_BYTES`].
pub(crate) fn check_group_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(SdkError::EmptyConversationName);
    }
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(SdkError::ConversationNameTooLong { len: name.len(), max: MAX_GROUP_NAME_BYTES });
    }
    Ok(name.to_owned())
}

/// A disappearing timer as whole seconds on the wire (rounded up; `None` or zero = off).
pub(crate) fn timer_secs(ttl: Option<Duration>) -> Result<Option<u32>> {
    let Some(ttl) = ttl.filter(|d| !d.is_zero()) else { return Ok(None) };
    if ttl > MAX_DISAPPEARING {
        return Err(SdkError::DisappearingTimerTooLong { requested: ttl, max: MAX_DISAPPEARING });
    }
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Ok(Some(
        u32::try_from(secs)
            .map_err(|_| SdkError::DisappearingTimerTooLong { requested: ttl, max: MAX_DISAPPEARING })?,
    ))
}

fn message_id(bytes: &[u8]) -> Option<MessageId> {
    <[u8; 16]>::try_from(bytes).ok().map(MessageId)
}

/// A stable id for a payload without a usable one: the first 16 bytes of its SHA-256.
fn derived_id(plaintext: &[u8]) -> MessageId {
    let digest = quicprochat_core::ids::blob_id(plaintext);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    MessageId(id)
}

/// Walks the top-level protobuf fields and returns the first body-range field number this
/// version does not know. Stops (with `None`) at the first malformed byte.
fn first_unknown_body_field(mut buf: &[u8]) -> Option<u32> {
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let field = u32::try_from(key >> 3).ok()?;
        if field >= FIRST_BODY_FIELD && !KNOWN_BODY_FIELDS.contains(&field) {
            return Some(field);
        }
        buf = match key & 7 {
            0 => {
                read_varint(&mut buf)?;
                buf
            }
            1 => buf.get(8..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                buf.get(len..)?
            }
            5 => buf.get(4..)?,
            // Groups (3, 4) do not exist in proto3; anything else is not protobuf.
            _ => return None,
        };
    }
    None
}

/// Reads one base-128 varint (at most 10 bytes).
fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const ID: [u8; 16] = [7; 16];
    const TARGET: [u8; 16] = [9; 16];

    /// A protobuf field key as a varint.
    fn key(field: u64, wire_type: u64) -> Vec<u8> {
        let mut v = field << 3 | wire_type;
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    fn encode(body: WireBody) -> Vec<u8> {
        v1::AppMessage {
            message_id: Bytes::copy_from_slice(&ID),
            sent_at_ms: 42,
            expire_after_secs: 5,
            body: Some(body),
        }
        .encode_to_vec()
    }

    #[test]
    fn every_known_body_round_trips() {
        let target = Bytes::copy_from_slice(&TARGET);
        let cases = [
            (WireBody::Text(v1::TextBody { text: "hi".into() }), Body::Text("hi".into())),
            (
                WireBody::Reaction(v1::ReactionBody {
                    target_message_id: target.clone(),
                    emoji: "👍".into(),
                    remove: false,
                }),
                Body::Reaction { target: MessageId(TARGET), emoji: Some("👍".into()) },
            ),
            (
                WireBody::Reaction(v1::ReactionBody {
                    target_message_id: target.clone(),
                    emoji: String::new(),
                    remove: true,
                }),
                Body::Reaction { target: MessageId(TARGET), emoji: None },
            ),
            (
                WireBody::Receipt(v1::ReceiptBody { message_ids: vec![target.clone()] }),
                Body::Receipt(vec![MessageId(TARGET)]),
            ),
            (WireBody::Typing(v1::TypingBody { started: true }), Body::Typing(true)),
            (
                WireBody::Edit(v1::EditBody { target_message_id: target.clone(), text: "fixed".into() }),
                Body::Edit { target: MessageId(TARGET), text: "fixed".into() },
            ),
            (WireBody::Delete(v1::DeleteBody { target_message_id: target }), Body::Delete(MessageId(TARGET))),
            (WireBody::Disappearing(v1::DisappearingBody { ttl_secs: 30 }), Body::Disappearing(Some(30))),
            (WireBody::Disappearing(v1::DisappearingBody { ttl_secs: 0 }), Body::Disappearing(None)),
            (WireBody::GroupName(v1::GroupNameBody { name: " team ".into() }), Body::GroupName("team".into())),
        ];
        for (wire, expected) in cases {
            let decoded = decode(&encode(wire));
            assert_eq!(decoded, Decoded { id: MessageId(ID), sent_at_ms: 42, expire_after_secs: 5, body: expected });
        }
    }

    #[test]
    fn an_unknown_body_kind_is_kept_with_its_field_number() {
        let mut bytes = v1::AppMessage { message_id: Bytes::copy_from_slice(&ID), sent_at_ms: 1, ..Default::default() }
            .encode_to_vec();
        // Field 42, length-delimited, 3 bytes: a body kind from the future.
        bytes.extend_from_slice(&key(42, 2));
        bytes.extend_from_slice(&[3, 1, 2, 3]);
        let decoded = decode(&bytes);
        assert_eq!(decoded.id, MessageId(ID));
        assert_eq!(decoded.body, Body::Unsupported { body_field: Some(42) });
    }

    #[test]
    fn malformed_bodies_and_payloads_are_unsupported_not_errors() {
        let short = Bytes::from_static(b"short");
        let decoded = decode(&encode(WireBody::Edit(v1::EditBody { target_message_id: short, text: "x".into() })));
        assert_eq!(decoded.body, Body::Unsupported { body_field: Some(15) });
        let long_emoji = "x".repeat(MAX_EMOJI_BYTES + 1);
        let target = Bytes::copy_from_slice(&TARGET);
        let decoded = decode(&encode(WireBody::Reaction(v1::ReactionBody {
            target_message_id: target,
            emoji: long_emoji,
            remove: false,
        })));
        assert_eq!(decoded.body, Body::Unsupported { body_field: Some(12) });
        let decoded = decode(&encode(WireBody::Receipt(v1::ReceiptBody { message_ids: vec![] })));
        assert_eq!(decoded.body, Body::Unsupported { body_field: Some(13) });

        // Not protobuf at all: still a message, with an id stable across re-deliveries.
        let garbage = [0xff, 0xff, 0xff];
        let a = decode(&garbage);
        assert_eq!(a.body, Body::Unsupported { body_field: None });
        assert_eq!(a.id, decode(&garbage).id);
        // A message without an id gets one derived from its bytes.
        let no_id =
            v1::AppMessage { body: Some(WireBody::Text(v1::TextBody { text: "x".into() })), ..Default::default() }
                .encode_to_vec();
        assert!(matches!(decode(&no_id).body, Body::Unsupported { .. }));
    }

    #[test]
    fn varints_and_field_walks_stop_at_truncation() {
        let mut buf: &[u8] = &[0xac, 0x02, 0x05];
        assert_eq!(read_varint(&mut buf), Some(300));
        assert_eq!(buf, &[0x05]);
        let mut truncated: &[u8] = &[0x80, 0x80];
        assert_eq!(read_varint(&mut truncated), None);
        // Field 50, length 10, but only 2 bytes follow: the walk finds field 50 before reading.
        let mut bytes = key(50, 2);
        bytes.extend_from_slice(&[10, 1, 2]);
        assert_eq!(first_unknown_body_field(&bytes), Some(50));
        // A known field whose length runs past the end yields nothing.
        assert_eq!(first_unknown_body_field(&[(1 << 3) | 2, 10, 1]), None);
    }

    #[test]
    fn timers_round_up_to_whole_seconds_and_are_bounded() {
        assert_eq!(timer_secs(None).unwrap(), None);
        assert_eq!(timer_secs(Some(Duration::ZERO)).unwrap(), None);
        assert_eq!(timer_secs(Some(Duration::from_millis(1500))).unwrap(), Some(2));
        assert_eq!(timer_secs(Some(Duration::from_secs(2))).unwrap(), Some(2));
        assert_eq!(timer_secs(Some(MAX_DISAPPEARING)).unwrap(), Some(365 * 24 * 3600));
        assert!(matches!(
            timer_secs(Some(MAX_DISAPPEARING + Duration::from_secs(1))),
            Err(SdkError::DisappearingTimerTooLong { .. })
        ));
    }

    #[test]
    fn reactions_must_be_short_and_non_empty() {
        assert!(check_emoji("🎉").is_ok());
        assert!(matches!(check_emoji(" "), Err(SdkError::InvalidReaction { .. })));
        assert!(matches!(check_emoji(&"a".repeat(65)), Err(SdkError::InvalidReaction { .. })));
    }
}
