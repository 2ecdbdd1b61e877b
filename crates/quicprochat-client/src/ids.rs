//! Short message ids for humans: the first hex digits of a message id, resolved back to the
//! message by unique prefix within a conversation.

use anyhow::bail;
use quicprochat_sdk::{ConversationHandle, Message, MessageId};

/// Hex digits shown for a message id.
pub const SHORT_ID_LEN: usize = 6;

/// How many of a conversation's latest messages a short id is looked up in.
pub const LOOKUP_WINDOW: u32 = 5000;

/// All 32 hex digits of a message id.
pub fn full(id: &MessageId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The short id shown for a message.
pub fn short(id: &MessageId) -> String {
    let mut s = full(id);
    s.truncate(SHORT_ID_LEN);
    s
}

/// The shortest length (at least [`SHORT_ID_LEN`]) at which every message in `messages` has a
/// different prefix.
pub fn unique_len(messages: &[Message]) -> usize {
    let ids: Vec<String> = messages.iter().map(|m| full(&m.id)).collect();
    (SHORT_ID_LEN..32)
        .find(|&len| {
            let mut prefixes: Vec<&str> = ids.iter().map(|id| &id[..len]).collect();
            prefixes.sort_unstable();
            prefixes.windows(2).all(|w| w[0] != w[1])
        })
        .unwrap_or(32)
}

/// The message of `conversation` whose id starts with `prefix` (lowercase hex).
pub fn resolve(conversation: &ConversationHandle, prefix: &str) -> anyhow::Result<Message> {
    let messages = conversation.messages(LOOKUP_WINDOW)?;
    pick(messages, prefix, conversation.name())
}

fn pick(messages: Vec<Message>, prefix: &str, where_: &str) -> anyhow::Result<Message> {
    let mut found: Vec<Message> = messages.into_iter().filter(|m| full(&m.id).starts_with(prefix)).collect();
    match found.len() {
        0 => bail!("no message {prefix} in {where_} (/history shows message ids)"),
        1 => Ok(found.remove(0)),
        n => {
            let candidates: Vec<String> = found.iter().map(|m| full(&m.id)[..12].to_owned()).collect();
            bail!("{prefix} is ambiguous: {n} messages match ({}); give more digits", candidates.join(", "))
        }
    }
}

/// The latest message of `conversation` that is not deleted, preferring one from someone else.
pub fn latest(conversation: &ConversationHandle) -> anyhow::Result<Message> {
    let messages = conversation.messages(200)?;
    let live = || messages.iter().rev().filter(|m| m.deleted_at_ms.is_none());
    match live().find(|m| !m.outgoing).or_else(|| live().next()) {
        Some(m) => Ok(m.clone()),
        None => bail!("no message in {} yet", conversation.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_short_ids() {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xab;
        bytes[1] = 0x01;
        bytes[2] = 0xff;
        let id = MessageId(bytes);
        assert_eq!(full(&id).len(), 32);
        assert_eq!(short(&id), "ab01ff");
    }
}
