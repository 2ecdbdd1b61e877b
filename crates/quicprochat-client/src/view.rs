//! How replies, messages and events look: text lines (with colours) and JSON objects with
//! stable field names (documented in `docs/cli.md`).

use quicprochat_sdk::{ClientEvent, ConversationId, ConversationInfo, Message, MessageKind, QpcClient};
use serde::Serialize;

use crate::command::format_timer;
use crate::execute::Reply;
use crate::ids;
use crate::style::Palette;

/// A conversation, as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConversationView {
    /// All 32 hex digits of the conversation id.
    pub id: String,
    /// Local display name.
    pub name: String,
    /// `dm` or `group`.
    pub kind: &'static str,
    /// The other user of a DM.
    pub peer: Option<String>,
    /// Usernames of the members, sorted.
    pub members: Vec<String>,
    /// The disappearing-message timer, seconds.
    pub disappearing_secs: Option<u64>,
}

impl ConversationView {
    /// From what the SDK lists.
    pub fn new(info: &ConversationInfo, members: Vec<String>) -> ConversationView {
        ConversationView {
            id: conversation_hex(&info.id),
            name: info.name.clone(),
            kind: if info.peer.is_some() { "dm" } else { "group" },
            peer: info.peer.clone(),
            members,
            disappearing_secs: info.disappearing.map(|d| d.as_secs()),
        }
    }
}

/// Details of one conversation (`/group-info`).
#[derive(Clone, Debug, Serialize)]
pub struct GroupInfoView {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub peer: Option<String>,
    pub members: Vec<String>,
    pub epoch: u64,
    pub disappearing_secs: Option<u64>,
}

/// The logged-in account (`whoami`).
#[derive(Clone, Debug, Serialize)]
pub struct IdentityView {
    pub username: String,
    /// 32 hex digits.
    pub user_id: String,
    /// 32 hex digits.
    pub device_id: String,
}

/// A message, as `recv --json` prints it (one object per line).
#[derive(Clone, Debug, Serialize)]
pub struct MessageView {
    /// All 32 hex digits of the message id.
    pub id: String,
    /// The short id the REPL shows.
    pub short_id: String,
    /// All 32 hex digits of the conversation id.
    pub conversation: String,
    /// The conversation's local name.
    pub conversation_name: String,
    pub sender: String,
    pub text: String,
    /// `text`, `file` or `unsupported`.
    pub kind: &'static str,
    /// Sender's clock, Unix ms.
    pub sent_at_ms: u64,
    pub outgoing: bool,
    pub edited: bool,
    pub deleted: bool,
    pub attachment: Option<AttachmentView>,
    pub reactions: Vec<ReactionView>,
    pub read_by: Vec<String>,
    /// When it disappears from this device, Unix ms.
    pub expires_at_ms: Option<u64>,
}

/// A file shared by a message.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentView {
    pub name: String,
    pub size: u64,
}

/// One user's reaction.
#[derive(Clone, Debug, Serialize)]
pub struct ReactionView {
    pub user: String,
    pub emoji: String,
}

impl MessageView {
    /// From a stored message.
    pub fn new(m: &Message, conversation_name: &str) -> MessageView {
        MessageView {
            id: ids::full(&m.id),
            short_id: ids::short(&m.id),
            conversation: conversation_hex(&m.conversation),
            conversation_name: conversation_name.to_owned(),
            sender: m.sender.clone(),
            text: m.text.clone(),
            kind: match m.kind {
                MessageKind::Text => "text",
                MessageKind::File => "file",
                _ => "unsupported",
            },
            sent_at_ms: m.sent_at_ms,
            outgoing: m.outgoing,
            edited: m.edited_at_ms.is_some(),
            deleted: m.deleted_at_ms.is_some(),
            attachment: m.attachment.as_ref().map(|a| AttachmentView { name: a.name.clone(), size: a.size }),
            reactions: m
                .reactions
                .iter()
                .map(|r| ReactionView { user: r.user.clone(), emoji: r.emoji.clone() })
                .collect(),
            read_by: m.read_by.clone(),
            expires_at_ms: m.expires_at_ms,
        }
    }
}

/// All 32 hex digits of a conversation id.
pub fn conversation_hex(id: &ConversationId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// One message as a line: `a1b2c3 [bob] hello (edited) [👍 alice] ✓ read by alice`.
pub fn message_line(m: &Message, id_len: usize, palette: Palette) -> String {
    let mut id = ids::full(&m.id);
    id.truncate(id_len);
    let sender = if m.outgoing { palette.me(&m.sender) } else { palette.user(&m.sender) };
    let mut line = format!("{} [{sender}] ", palette.dim(&id));
    if m.deleted_at_ms.is_some() {
        line.push_str(&palette.dim("(deleted)"));
        return line;
    }
    line.push_str(&m.text);
    if let Some(a) = &m.attachment {
        line.push_str(&format!(" 📎 {} ({} bytes; /download {id})", a.name, a.size));
    }
    if m.edited_at_ms.is_some() {
        line.push_str(&palette.dim(" (edited)"));
    }
    if !m.reactions.is_empty() {
        let reactions: Vec<String> = m.reactions.iter().map(|r| format!("{} {}", r.emoji, r.user)).collect();
        line.push_str(&format!(" [{}]", reactions.join(", ")));
    }
    if m.outgoing && !m.read_by.is_empty() {
        line.push_str(&palette.dim(&format!(" ✓ read by {}", m.read_by.join(", "))));
    }
    if m.expires_at_ms.is_some() {
        line.push_str(&palette.dim(" ⏳"));
    }
    line
}

/// A reply as text; `None` when there is nothing to show.
pub fn reply_text(reply: &Reply, palette: Palette) -> Option<String> {
    let lines = match reply {
        Reply::Done | Reply::Quit => return None,
        Reply::Note(text) => text.clone(),
        Reply::Sent { id, to } => format!("sent {} to {to}", ids::short(id)),
        Reply::Opened { name, recent } => {
            let mut out = vec![palette.heading(&format!("── {name} ──"))];
            let len = ids::unique_len(recent);
            out.extend(recent.iter().map(|m| message_line(m, len, palette)));
            out.join("\n")
        }
        Reply::Conversations(list) if list.is_empty() => "no conversations yet; /dm <user> or /create-group".into(),
        Reply::Conversations(list) => list
            .iter()
            .map(|c| {
                let what = match &c.peer {
                    Some(peer) => format!("dm with {peer}"),
                    None => format!("group of {}", c.members.len()),
                };
                let timer = c.disappearing_secs.map(|s| format!(", disappearing {}", timer(s))).unwrap_or_default();
                format!("  {}  {}  ({what}{timer})", palette.dim(&c.id[..12]), c.name)
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Reply::Messages(list) if list.is_empty() => "no messages yet".into(),
        Reply::Messages(list) => {
            let len = ids::unique_len(list);
            list.iter().map(|m| message_line(m, len, palette)).collect::<Vec<_>>().join("\n")
        }
        Reply::Members(members) => members.join(", "),
        Reply::GroupInfo(g) => {
            let mut out = vec![
                format!("{} ({})", palette.heading(&g.name), g.kind),
                format!("  id:          {}", g.id),
                format!("  members:     {}", g.members.join(", ")),
                format!("  epoch:       {}", g.epoch),
                format!("  disappear:   {}", g.disappearing_secs.map(timer).unwrap_or_else(|| "off".into())),
            ];
            if let Some(peer) = &g.peer {
                out.insert(1, format!("  with:        {peer}"));
            }
            out.join("\n")
        }
        Reply::SafetyNumber { user, number } => {
            format!("safety number with {user}:\n  {number}\ncompare it with {user} in person or by phone")
        }
        Reply::Whoami(me) => {
            format!("{}\n  user id:   {}\n  device id: {}", palette.me(&me.username), me.user_id, me.device_id)
        }
        Reply::Help(text) => text.clone(),
        Reply::ConfirmDeleteAccount { username } => format!(
            "This deletes the account {username} on the server and all of its data on this device. \
             It cannot be undone.\nType the username ({username}) to confirm, anything else to cancel:"
        ),
        Reply::AccountDeleted => "account deleted; goodbye".into(),
    };
    Some(lines)
}

fn timer(secs: u64) -> String {
    format_timer(std::time::Duration::from_secs(secs))
}

/// A live event as a line for the REPL; `None` for events it does not show.
pub fn event_line(
    client: &QpcClient,
    event: &ClientEvent,
    current: Option<ConversationId>,
    show_typing: bool,
    palette: Palette,
) -> Option<String> {
    let place = |c: &ConversationId| -> String {
        if Some(*c) == current {
            String::new()
        } else {
            let name = client.conversation(*c).ok().flatten().map(|h| h.name().to_owned());
            format!(" in {}", name.unwrap_or_else(|| c.to_string()))
        }
    };
    let notice = |text: String| Some(palette.notice(&format!("* {text}")));
    match event {
        ClientEvent::MessageReceived { conversation, message } => {
            let line = message_line(message, ids::SHORT_ID_LEN, palette);
            let place = place(conversation);
            Some(if place.is_empty() { line } else { format!("{line}{}", palette.dim(&place)) })
        }
        ClientEvent::MessageEdited { conversation, message, by, text } => {
            notice(format!("{by} edited {}{}: {text}", ids::short(message), place(conversation)))
        }
        ClientEvent::MessageDeleted { conversation, message, by } => {
            notice(format!("{by} deleted {}{}", ids::short(message), place(conversation)))
        }
        ClientEvent::ReactionAdded { conversation, message, user, emoji } => {
            notice(format!("{user} reacted {emoji} to {}{}", ids::short(message), place(conversation)))
        }
        ClientEvent::ReactionRemoved { conversation, message, user } => {
            notice(format!("{user} withdrew their reaction to {}{}", ids::short(message), place(conversation)))
        }
        ClientEvent::ReadReceipt { conversation, messages, reader } => {
            let list: Vec<String> = messages.iter().map(ids::short).collect();
            notice(format!("{reader} read {}{}", list.join(", "), place(conversation)))
        }
        ClientEvent::Typing { conversation, username, started } if show_typing => {
            let what = if *started { "is typing…" } else { "stopped typing" };
            notice(format!("{username} {what}{}", place(conversation)))
        }
        ClientEvent::DisappearingTimerChanged { conversation, by, ttl } => notice(match ttl {
            Some(d) => format!("{by} set disappearing messages to {}{}", format_timer(*d), place(conversation)),
            None => format!("{by} turned disappearing messages off{}", place(conversation)),
        }),
        ClientEvent::MessageExpired { conversation, message } => {
            notice(format!("message {} disappeared{}", ids::short(message), place(conversation)))
        }
        ClientEvent::ConversationCreated { name, .. } => notice(format!("joined conversation {name}")),
        ClientEvent::MemberJoined { conversation, username } => {
            notice(format!("{username} joined{}", place_always(client, conversation)))
        }
        ClientEvent::MemberLeft { conversation, username } => {
            notice(format!("{username} left{}", place_always(client, conversation)))
        }
        ClientEvent::ConnectionLost { reason } => notice(format!("connection lost: {reason}; reconnecting")),
        ClientEvent::Reconnected => notice("reconnected".into()),
        ClientEvent::SessionExpired => Some(palette.error("* the session expired; restart qpc to log in again")),
        _ => None,
    }
}

fn place_always(client: &QpcClient, c: &ConversationId) -> String {
    let name = client.conversation(*c).ok().flatten().map(|h| h.name().to_owned());
    format!(" {}", name.unwrap_or_else(|| c.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_show_their_unit() {
        assert_eq!(timer(3600), "1h");
        assert_eq!(timer(1800), "30m");
    }

    #[test]
    fn json_field_names_are_stable() {
        let v = IdentityView { username: "alice".into(), user_id: "00".into(), device_id: "11".into() };
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["username"], "alice");
        assert_eq!(json["user_id"], "00");
        assert_eq!(json["device_id"], "11");
    }
}
