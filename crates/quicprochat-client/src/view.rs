//! How replies, messages and events look: text lines (with colours) and JSON objects with
//! stable field names (documented in `docs/cli.md`).

use std::path::Path;

use quicprochat_sdk::{
    ClientEvent, ConversationId, ConversationInfo, ExportSummary, Message, MessageKind, QpcClient, VerifiedTranscript,
};
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

/// A transcript archive written by `export`.
#[derive(Clone, Debug, Serialize)]
pub struct ExportView {
    /// The archive file.
    pub path: String,
    /// Messages in it.
    pub records: u64,
    /// Conversations they come from.
    pub conversations: usize,
    /// 64 hex digits: the SHA-256 chain's last link, the same for the same transcript.
    pub head_hash: String,
}

impl ExportView {
    /// From what the SDK wrote.
    pub fn new(summary: &ExportSummary) -> ExportView {
        ExportView {
            path: summary.path.display().to_string(),
            records: summary.records,
            conversations: summary.conversations,
            head_hash: hex(&summary.head_hash),
        }
    }
}

/// A transcript archive that `export verify` found intact.
#[derive(Clone, Debug, Serialize)]
pub struct TranscriptView {
    /// The archive file.
    pub path: String,
    /// Messages in it.
    pub records: u64,
    /// 64 hex digits.
    pub head_hash: String,
    /// The messages, oldest first.
    pub messages: Vec<RecordView>,
}

/// One message of a verified transcript.
#[derive(Clone, Debug, Serialize)]
pub struct RecordView {
    /// Sender's clock, Unix ms.
    pub timestamp_ms: u64,
    /// All 32 hex digits of the conversation id.
    pub conversation: String,
    pub sender: String,
    /// 32 hex digits; null when the exporting device did not know it.
    pub sender_device: Option<String>,
    pub text: String,
}

impl TranscriptView {
    /// From what the SDK verified.
    pub fn new(path: &Path, verified: &VerifiedTranscript) -> TranscriptView {
        TranscriptView {
            path: path.display().to_string(),
            records: verified.record_count(),
            head_hash: hex(&verified.head_hash),
            messages: verified
                .records
                .iter()
                .map(|r| RecordView {
                    timestamp_ms: r.timestamp_ms,
                    conversation: conversation_hex(&r.conversation),
                    sender: r.sender.clone(),
                    sender_device: r.sender_device.map(|d| hex(&d)),
                    text: r.text.clone(),
                })
                .collect(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `1 message`, `2 messages`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM:SSZ` (UTC, the proleptic Gregorian calendar).
pub fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (day, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm), in a 400-year era from 0000-03-01.
    let z = i128::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i128::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
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
        Reply::Exported(e) => format!(
            "exported {} from {} to {}\nhead hash {}",
            count(e.records, "message"),
            count(e.conversations as u64, "conversation"),
            e.path,
            e.head_hash
        ),
        Reply::TranscriptVerified(t) => {
            let mut out = vec![
                format!("{}: intact, {}", t.path, count(t.records, "message")),
                format!("head hash {}", t.head_hash),
            ];
            out.extend(t.messages.iter().map(|r| {
                format!(
                    "{} {} [{}] {}",
                    palette.dim(&utc_time(r.timestamp_ms)),
                    palette.dim(&r.conversation[..8]),
                    palette.user(&r.sender),
                    r.text
                )
            }));
            out.join("\n")
        }
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
        ClientEvent::ConversationRenamed { name, by, .. } => notice(format!("{by} told the group its name: {name}")),
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
    fn utc_times_are_civil_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(1_700_000_000_123), "2023-11-14 22:13:20Z");
        assert_eq!(utc_time(4_107_542_399_000), "2100-02-28 23:59:59Z");
    }

    #[test]
    fn transcript_json_field_names_are_stable() {
        let view = TranscriptView {
            path: "a.qpca".into(),
            records: 1,
            head_hash: "00".repeat(32),
            messages: vec![RecordView {
                timestamp_ms: 5,
                conversation: "11".repeat(16),
                sender: "alice".into(),
                sender_device: None,
                text: "hi".into(),
            }],
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["records"], 1);
        assert_eq!(json["messages"][0]["sender"], "alice");
        assert!(json["messages"][0]["sender_device"].is_null());
        assert_eq!(json["messages"][0]["timestamp_ms"], 5);
        let text = reply_text(&Reply::TranscriptVerified(view), Palette::plain()).unwrap();
        assert!(text.starts_with("a.qpca: intact, 1 message\nhead hash 0000"), "{text}");
        assert!(text.ends_with("1970-01-01 00:00:00Z 11111111 [alice] hi"), "{text}");
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
