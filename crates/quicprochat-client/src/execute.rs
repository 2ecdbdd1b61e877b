//! One `execute` for every front end: each command is a thin call into the SDK, and its result
//! is a `Reply` the front end renders (text, colours or JSON).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use quicprochat_sdk::{ConversationHandle, Message, MessageId, QpcClient, SdkError};
use zeroize::Zeroizing;

use crate::command::{Command, Target, format_timer, help, help_for};
use crate::exit::UsageError;
use crate::ids;
use crate::progress::Transfer;
use crate::view::{ConversationView, ExportView, GroupInfoView, IdentityView, TranscriptView};

/// The environment variable that holds the password of transcript archives (`export`).
pub const EXPORT_PASSWORD_ENV: &str = "QPC_EXPORT_PASSWORD";

/// What a front end keeps between commands.
#[derive(Debug)]
pub struct Session {
    /// The conversation plain text goes to.
    pub current: Option<ConversationHandle>,
    /// Whether others' typing indicators are shown.
    pub show_typing: bool,
    /// Whether file transfers draw a progress bar (on a terminal; never under the TUI).
    pub progress: bool,
    /// Whether a secret (an archive password) may be asked for on the terminal (never under
    /// the TUI, whose screen owns it).
    pub prompts: bool,
}

impl Session {
    /// No conversation selected; typing indicators shown.
    pub fn new() -> Session {
        Session { current: None, show_typing: true, progress: true, prompts: true }
    }
}

impl Default for Session {
    fn default() -> Session {
        Session::new()
    }
}

/// What a command produced.
#[derive(Debug)]
pub enum Reply {
    /// Nothing to show.
    Done,
    /// One line of confirmation.
    Note(String),
    /// A message was sent.
    Sent { id: MessageId, to: String },
    /// A conversation became current; its latest messages.
    Opened { name: String, recent: Vec<Message> },
    /// The conversations of this device.
    Conversations(Vec<ConversationView>),
    /// Messages, oldest first.
    Messages(Vec<Message>),
    /// Members of a conversation.
    Members(Vec<String>),
    /// Details of a conversation.
    GroupInfo(GroupInfoView),
    /// A safety number.
    SafetyNumber { user: String, number: String },
    /// Who is logged in.
    Whoami(IdentityView),
    /// A transcript archive was written.
    Exported(ExportView),
    /// A transcript archive verified; its messages.
    TranscriptVerified(TranscriptView),
    /// Help text.
    Help(String),
    /// The account is deleted only after the user confirms.
    ConfirmDeleteAccount { username: String },
    /// The account is gone; the session is over.
    AccountDeleted,
    /// Leave the REPL.
    Quit,
}

/// Runs one command.
pub async fn execute(client: &QpcClient, session: &mut Session, command: Command) -> anyhow::Result<Reply> {
    Ok(match command {
        Command::Dm(user) => {
            let dm = open_dm(client, &user).await?;
            open(client, session, dm).await
        }
        Command::Switch(name) => match client.find_conversation(&name)? {
            Some(c) => open(client, session, c).await,
            None => bail!("no conversation named {name}; /list shows them"),
        },
        Command::Send { to, text } => {
            let conversation = conversation(client, session, &to).await?;
            let id = conversation.send_text(&text).await?;
            Reply::Sent { id, to: conversation.name().to_owned() }
        }
        Command::List => Reply::Conversations(list(client)?),
        Command::History(n) => Reply::Messages(current(session)?.messages(n)?),
        Command::React { emoji, message } => {
            let c = current(session)?;
            let target = message_or_latest(c, message.as_deref())?;
            c.react(target.id, &emoji).await?;
            Reply::Note(format!("reacted {emoji} to {}", ids::short(&target.id)))
        }
        Command::Unreact { message } => {
            let c = current(session)?;
            let target = message_or_latest(c, message.as_deref())?;
            c.remove_reaction(target.id).await?;
            Reply::Note(format!("withdrew your reaction to {}", ids::short(&target.id)))
        }
        Command::Typing => {
            let c = current(session)?;
            c.typing(true).await?;
            Reply::Note(format!("told {} that you are typing", c.name()))
        }
        Command::TypingNotify(on) => {
            session.show_typing = on;
            Reply::Note(format!("typing indicators {}", if on { "on" } else { "off" }))
        }
        Command::Edit { message, text } => {
            let c = current(session)?;
            let target = ids::resolve(c, &message)?;
            c.edit(target.id, &text).await?;
            Reply::Note(format!("edited {}", ids::short(&target.id)))
        }
        Command::Delete { message } => {
            let c = current(session)?;
            let target = ids::resolve(c, &message)?;
            c.delete(target.id).await?;
            Reply::Note(format!("deleted {}", ids::short(&target.id)))
        }
        Command::SendFile(path) => {
            let c = current(session)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bar = Transfer::new(&format!("uploading {name}"), session.progress);
            let sent = c.send_file(&path, |done, total| bar.update(done, total)).await;
            bar.finish();
            Reply::Sent { id: sent?, to: c.name().to_owned() }
        }
        Command::Download(message) => {
            let target = ids::resolve(current(session)?, &message)?;
            let name = target.attachment.as_ref().map(|a| a.name.clone()).unwrap_or_default();
            let bar = Transfer::new(&format!("downloading {name}"), session.progress);
            let saved = client.download_file(target.id, Path::new("."), |done, total| bar.update(done, total)).await;
            bar.finish();
            Reply::Note(format!("saved {}", saved?.display()))
        }
        Command::Disappear(ttl) => {
            let c = current(session)?;
            c.set_disappearing(ttl).await?;
            Reply::Note(match ttl {
                Some(d) => format!("new messages in {} disappear {} after arriving", c.name(), format_timer(d)),
                None => format!("disappearing messages off in {}", c.name()),
            })
        }
        Command::CreateGroup { name, members } => {
            let refs: Vec<&str> = members.iter().map(String::as_str).collect();
            let group = client.create_group(&name, &refs).await?;
            session.current = Some(group);
            Reply::Note(format!("created #{name}"))
        }
        Command::Invite { to, user } => {
            let c = conversation(client, session, &to).await?;
            c.invite(&user).await?;
            Reply::Note(format!("invited {user} to {}", c.name()))
        }
        Command::Remove { from, user } => {
            let c = conversation(client, session, &from).await?;
            c.remove(&user).await?;
            Reply::Note(format!("removed {user} from {}", c.name()))
        }
        Command::Leave(target) => {
            let c = conversation(client, session, &target).await?;
            c.leave().await?;
            if session.current.as_ref().is_some_and(|cur| cur.id() == c.id()) {
                session.current = None;
            }
            Reply::Note(format!("left {}", c.name()))
        }
        Command::Join => {
            let before = client.conversations()?.len();
            client.sync().await?;
            let joined = client.conversations()?.len().saturating_sub(before);
            Reply::Note(format!(
                "invitations are accepted as they arrive; fetched what was waiting: {joined} new conversation(s). \
                 /list shows them, /switch opens one"
            ))
        }
        Command::Members => Reply::Members(members(current(session)?)?),
        Command::GroupInfo => Reply::GroupInfo(group_info(client, current(session)?)?),
        Command::Rename(name) => {
            let c = session.current.as_mut().ok_or_else(no_conversation)?;
            c.rename(&name)?;
            Reply::Note(format!("renamed to {} (on this device only)", c.name()))
        }
        Command::Verify(user) => {
            let number = client.safety_number(&user)?;
            Reply::SafetyNumber { user, number }
        }
        Command::RotateKey => {
            let epoch = current(session)?.rotate_key().await?;
            Reply::Note(format!("keys rotated; now at epoch {epoch}"))
        }
        Command::Export { conversation, out } => {
            let id = match &conversation {
                Some(name) => match client.find_conversation(name)? {
                    Some(c) => Some(c.id()),
                    None => bail!("no conversation named {name} on this device; /list shows them"),
                },
                None => None,
            };
            let password = archive_password(session, true).await?;
            let summary = client
                .export_transcript(id, &out, password.as_bytes())
                .await
                .with_context(|| format!("exporting to {}", out.display()))?;
            Reply::Exported(ExportView::new(&summary))
        }
        Command::VerifyExport(path) => Reply::TranscriptVerified(verify_export(session, &path).await?),
        Command::DeleteAccount { confirmed: false } => Reply::ConfirmDeleteAccount { username: client.whoami()? },
        Command::DeleteAccount { confirmed: true } => {
            client.delete_account().await?;
            session.current = None;
            Reply::AccountDeleted
        }
        Command::Whoami => Reply::Whoami(whoami(client)?),
        Command::Help(None) => Reply::Help(help()),
        Command::Help(Some(topic)) => match help_for(&topic) {
            Some(text) => Reply::Help(text),
            None => return Err(UsageError(format!("no command /{topic}; /help lists them")).into()),
        },
        Command::Quit => Reply::Quit,
    })
}

/// Decrypts the transcript archive at `path` and checks its chain. Needs no account or server,
/// so `qpc export verify` runs it without connecting.
pub async fn verify_export(session: &Session, path: &Path) -> anyhow::Result<TranscriptView> {
    let password = archive_password(session, false).await?;
    let file = path.to_path_buf();
    let verified = tokio::task::spawn_blocking(move || quicprochat_sdk::verify_transcript(&file, password.as_bytes()))
        .await
        .context("verifying the archive")?
        .with_context(|| format!("verifying {}", path.display()))?;
    Ok(TranscriptView::new(path, &verified))
}

/// The archive password: [`EXPORT_PASSWORD_ENV`], else a hidden prompt (twice when it seals a
/// new archive, so a typo cannot lock it).
async fn archive_password(session: &Session, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(password) = std::env::var(EXPORT_PASSWORD_ENV)
        && !password.is_empty()
    {
        return Ok(Zeroizing::new(password));
    }
    if !session.prompts || !std::io::stdin().is_terminal() {
        bail!(UsageError(format!("an archive password is required: {EXPORT_PASSWORD_ENV} or a terminal prompt")));
    }
    tokio::task::spawn_blocking(move || prompt_archive_password(confirm))
        .await
        .context("reading the archive password")?
}

fn prompt_archive_password(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    let read = |prompt: &str| -> anyhow::Result<Zeroizing<String>> {
        Ok(Zeroizing::new(rpassword::prompt_password(prompt).context("reading the archive password")?))
    };
    let password = read("archive password: ")?;
    if password.is_empty() {
        bail!(UsageError("the archive password cannot be empty".into()));
    }
    if confirm && *read("archive password again: ")? != *password {
        bail!(UsageError("the two archive passwords differ; nothing was written".into()));
    }
    Ok(password)
}

/// Makes `c` current, marks its latest incoming message read, and shows its recent messages.
async fn open(client: &QpcClient, session: &mut Session, c: ConversationHandle) -> Reply {
    let recent = c.messages(10).unwrap_or_default();
    if let Some(last) = recent.last() {
        acknowledge(client, &c, last).await;
    }
    let name = c.name().to_owned();
    session.current = Some(c);
    Reply::Opened { name, recent }
}

/// Sends a read receipt for an incoming message this user has not marked read yet. A receipt
/// that cannot be sent is not worth an error: it is only logged.
pub async fn acknowledge(client: &QpcClient, c: &ConversationHandle, message: &Message) {
    let Ok(me) = client.whoami() else { return };
    if message.outgoing || message.deleted_at_ms.is_some() || message.read_by.contains(&me) {
        return;
    }
    if let Err(e) = c.mark_read(message.id).await {
        tracing::debug!(error = %e, "read receipt not sent");
    }
}

fn no_conversation() -> anyhow::Error {
    UsageError("no conversation selected: /dm <user>, /switch or /create-group first".into()).into()
}

fn current(session: &Session) -> anyhow::Result<&ConversationHandle> {
    session.current.as_ref().ok_or_else(no_conversation)
}

async fn conversation(client: &QpcClient, session: &Session, target: &Target) -> anyhow::Result<ConversationHandle> {
    match target {
        Target::Current => Ok(current(session)?.clone()),
        Target::Dm(user) => open_dm(client, user).await,
        Target::Named(name) => client
            .find_conversation(name)?
            .ok_or_else(|| anyhow::anyhow!("no conversation named {name} on this device")),
    }
}

fn message_or_latest(c: &ConversationHandle, message: Option<&str>) -> anyhow::Result<Message> {
    match message {
        Some(prefix) => ids::resolve(c, prefix),
        None => ids::latest(c),
    }
}

/// Opens the DM, waiting briefly for the peer's invitation if the peer created it first.
pub async fn open_dm(client: &QpcClient, peer: &str) -> anyhow::Result<ConversationHandle> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.dm(peer).await {
            Ok(dm) => return Ok(dm),
            Err(SdkError::AwaitingInvitation(_)) if tokio::time::Instant::now() < deadline => {
                let _ = tokio::time::timeout(Duration::from_millis(500), client.sync()).await;
            }
            Err(e) => return Err(e).with_context(|| format!("opening the conversation with {peer}")),
        }
    }
}

/// Members, one entry per user.
fn members(c: &ConversationHandle) -> anyhow::Result<Vec<String>> {
    let mut members = c.members()?;
    members.sort();
    members.dedup();
    Ok(members)
}

/// The conversations of this device, with their members.
pub fn list(client: &QpcClient) -> anyhow::Result<Vec<ConversationView>> {
    let mut out = Vec::new();
    for info in client.conversations()? {
        let members = match client.conversation(info.id)? {
            Some(c) => members(&c)?,
            None => Vec::new(),
        };
        out.push(ConversationView::new(&info, members));
    }
    Ok(out)
}

fn group_info(client: &QpcClient, c: &ConversationHandle) -> anyhow::Result<GroupInfoView> {
    let peer = client.conversations()?.into_iter().find(|i| i.id == c.id()).and_then(|i| i.peer);
    Ok(GroupInfoView {
        id: crate::view::conversation_hex(&c.id()),
        name: c.name().to_owned(),
        kind: if peer.is_some() { "dm" } else { "group" },
        peer,
        members: members(c)?,
        epoch: c.epoch()?,
        disappearing_secs: c.disappearing()?.map(|d| d.as_secs()),
    })
}

/// Who is logged in.
pub fn whoami(client: &QpcClient) -> anyhow::Result<IdentityView> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok(IdentityView {
        username: client.whoami()?,
        user_id: hex(&client.user_id()?),
        device_id: hex(&client.device_id()?),
    })
}
