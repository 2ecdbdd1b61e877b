//! `qpc playbook run FILE.yaml`: scripted conversations for CI and demos. Every step acts as one
//! named user: a REPL line (parsed by the REPL's parser and run by the one `execute`), or an
//! `expect` assertion on what that user received. The format is described in `docs/cli.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use quicprochat_sdk::{ClientEvent, ConversationId, MessageId, QpcClient};
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::cli::Cli;
use crate::command::{Command, format_timer, parse_line};
use crate::execute::{Reply, Session, execute};
use crate::exit::UsageError;
use crate::ids;
use crate::private_server::PrivateServer;
use crate::style::Palette;
use crate::view::reply_text;

/// Seconds an `expect` waits unless the playbook or the step says otherwise.
pub const DEFAULT_TIMEOUT_SECS: f64 = 20.0;

/// A playbook file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// What it shows.
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds an `expect` waits by default.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Passwords by username; users not listed get `<user>-playbook-password`.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

/// One step: `run` a REPL line, or `expect` something to arrive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Shown in the output and in a failure.
    #[serde(default)]
    pub name: Option<String>,
    /// The user acting.
    #[serde(rename = "as")]
    pub user: String,
    /// A REPL line: `/dm bob`, `hello`, `/react 👍 $last_received`.
    #[serde(default)]
    pub run: Option<String>,
    /// With `run`: the command's output must contain this.
    #[serde(default)]
    pub output: Option<String>,
    /// With `run`: the command must fail with an error containing this.
    #[serde(default)]
    pub fails: Option<String>,
    /// Something the user must receive.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// What an `expect` step waits for. Every field given must match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The kind of event (default `message`).
    #[serde(default)]
    pub event: Option<EventKind>,
    /// A message with exactly this text.
    #[serde(default)]
    pub message: Option<String>,
    /// Who did it: the sender, editor, reactor, reader, or the member who joined or left.
    #[serde(default)]
    pub from: Option<String>,
    /// The event's text contains this: message text, new text of an edit, emoji, timer,
    /// epoch, name of a joined conversation.
    #[serde(default)]
    pub text: Option<String>,
    /// In the conversation with this local name (a group name, or the peer of a DM).
    #[serde(default, rename = "in")]
    pub conversation: Option<String>,
    /// Seconds to wait.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// Event kinds an `expect` can name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Message,
    Edited,
    Deleted,
    Reaction,
    ReactionRemoved,
    Read,
    Typing,
    /// This user joined a conversation (created it, or was invited).
    Joined,
    /// A member told the group its name (what this user sees: a local rename wins).
    Renamed,
    MemberJoined,
    MemberLeft,
    Timer,
    Expired,
    Epoch,
}

impl EventKind {
    fn label(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Edited => "edited",
            EventKind::Deleted => "deleted",
            EventKind::Reaction => "reaction",
            EventKind::ReactionRemoved => "reaction_removed",
            EventKind::Read => "read",
            EventKind::Typing => "typing",
            EventKind::Joined => "joined",
            EventKind::Renamed => "renamed",
            EventKind::MemberJoined => "member_joined",
            EventKind::MemberLeft => "member_left",
            EventKind::Timer => "timer",
            EventKind::Expired => "expired",
            EventKind::Epoch => "epoch",
        }
    }
}

/// An event as `expect` compares it.
#[derive(Clone, Debug)]
struct Seen {
    kind: EventKind,
    conversation: ConversationId,
    actor: String,
    text: String,
    message: Option<MessageId>,
}

impl Seen {
    fn of(event: &ClientEvent) -> Option<Seen> {
        let seen = |kind, conversation: &ConversationId, actor: &str, text: String, message: Option<MessageId>| {
            Some(Seen { kind, conversation: *conversation, actor: actor.to_owned(), text, message })
        };
        match event {
            ClientEvent::MessageReceived { conversation, message } => {
                seen(EventKind::Message, conversation, &message.sender, message.text.clone(), Some(message.id))
            }
            ClientEvent::MessageEdited { conversation, message, by, text } => {
                seen(EventKind::Edited, conversation, by, text.clone(), Some(*message))
            }
            ClientEvent::MessageDeleted { conversation, message, by } => {
                seen(EventKind::Deleted, conversation, by, String::new(), Some(*message))
            }
            ClientEvent::ReactionAdded { conversation, message, user, emoji } => {
                seen(EventKind::Reaction, conversation, user, emoji.clone(), Some(*message))
            }
            ClientEvent::ReactionRemoved { conversation, message, user } => {
                seen(EventKind::ReactionRemoved, conversation, user, String::new(), Some(*message))
            }
            ClientEvent::ReadReceipt { conversation, messages, reader } => {
                seen(EventKind::Read, conversation, reader, String::new(), messages.last().copied())
            }
            ClientEvent::Typing { conversation, username, started: true } => {
                seen(EventKind::Typing, conversation, username, String::new(), None)
            }
            ClientEvent::DisappearingTimerChanged { conversation, by, ttl } => {
                let text = ttl.map(format_timer).unwrap_or_else(|| "off".into());
                seen(EventKind::Timer, conversation, by, text, None)
            }
            ClientEvent::MessageExpired { conversation, message } => {
                seen(EventKind::Expired, conversation, "", String::new(), Some(*message))
            }
            ClientEvent::ConversationCreated { conversation, name } => {
                seen(EventKind::Joined, conversation, "", name.clone(), None)
            }
            ClientEvent::ConversationRenamed { conversation, name, by } => {
                seen(EventKind::Renamed, conversation, by, name.clone(), None)
            }
            ClientEvent::MemberJoined { conversation, username } => {
                seen(EventKind::MemberJoined, conversation, username, String::new(), None)
            }
            ClientEvent::MemberLeft { conversation, username } => {
                seen(EventKind::MemberLeft, conversation, username, String::new(), None)
            }
            ClientEvent::EpochChanged { conversation, epoch } => {
                seen(EventKind::Epoch, conversation, "", epoch.to_string(), None)
            }
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let mut out = self.kind.label().to_owned();
        if !self.actor.is_empty() {
            out.push_str(&format!(" from {}", self.actor));
        }
        if !self.text.is_empty() {
            out.push_str(&format!(" {:?}", self.text));
        }
        out
    }
}

impl Expect {
    fn kind(&self) -> EventKind {
        self.event.unwrap_or(EventKind::Message)
    }

    fn matches(&self, seen: &Seen, conversation: Option<ConversationId>) -> bool {
        seen.kind == self.kind()
            && self.message.as_ref().is_none_or(|m| seen.text == *m)
            && self.text.as_ref().is_none_or(|t| seen.text.contains(t.as_str()))
            && self.from.as_ref().is_none_or(|f| seen.actor == f.to_lowercase())
            && conversation.is_none_or(|c| seen.conversation == c)
    }

    fn describe(&self) -> String {
        let mut out = self.kind().label().to_owned();
        if let Some(from) = &self.from {
            out.push_str(&format!(" from {from}"));
        }
        if let Some(m) = &self.message {
            out.push_str(&format!(" {m:?}"));
        }
        if let Some(t) = &self.text {
            out.push_str(&format!(" containing {t:?}"));
        }
        if let Some(c) = &self.conversation {
            out.push_str(&format!(" in {c}"));
        }
        out
    }
}

impl Step {
    fn label(&self, index: usize) -> String {
        match &self.name {
            Some(name) => format!("step {index} ({name})"),
            None => format!("step {index}"),
        }
    }
}

/// Reads and checks a playbook: YAML syntax, one action per step, REPL lines that parse.
pub fn parse(yaml: &str) -> Result<Playbook, UsageError> {
    let playbook: Playbook = serde_norway::from_str(yaml).map_err(|e| UsageError(format!("not a playbook: {e}")))?;
    if playbook.steps.is_empty() {
        return Err(UsageError("the playbook has no steps".into()));
    }
    for (i, step) in playbook.steps.iter().enumerate() {
        let label = step.label(i + 1);
        let bad = |why: &str| UsageError(format!("{label}: {why}"));
        if step.user.trim().is_empty() {
            return Err(bad("`as` names no user"));
        }
        match (&step.run, &step.expect) {
            (Some(line), None) => {
                // Variables are filled in at run time; any message id stands in for them here.
                let line = line.replace("$last_received", "0000").replace("$last", "0000");
                parse_line(&line).map_err(|e| bad(&e))?;
            }
            (None, Some(expect)) => {
                if step.output.is_some() || step.fails.is_some() {
                    return Err(bad("`output` and `fails` go with `run`, not `expect`"));
                }
                if expect.message.is_some() && expect.kind() != EventKind::Message {
                    return Err(bad("`message` expects a message; use `text` with other events"));
                }
            }
            _ => return Err(bad("give exactly one of `run` or `expect`")),
        }
    }
    Ok(playbook)
}

/// One user of the playbook, logged in.
struct Actor {
    name: String,
    client: QpcClient,
    session: Session,
    events: broadcast::Receiver<ClientEvent>,
    /// Events not yet matched by an `expect`, oldest first.
    backlog: Vec<Seen>,
    last_sent: Option<MessageId>,
    last_received: Option<MessageId>,
}

impl Actor {
    /// Fills in `$last` (this user's last sent message) and `$last_received` (the message the
    /// user's last matched `expect` was about).
    fn substitute(&self, line: &str) -> anyhow::Result<String> {
        let mut line = line.to_owned();
        for (var, id) in [("$last_received", self.last_received), ("$last", self.last_sent)] {
            if line.contains(var) {
                let id = id.ok_or_else(|| anyhow!("{var} is not set yet"))?;
                line = line.replace(var, &ids::full(&id));
            }
        }
        Ok(line)
    }

    fn take_pending(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(event) => self.backlog.extend(Seen::of(&event)),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    }

    fn find(&mut self, expect: &Expect, conversation: Option<ConversationId>) -> Option<Seen> {
        let i = self.backlog.iter().position(|s| expect.matches(s, conversation))?;
        Some(self.backlog.remove(i))
    }

    async fn expect(&mut self, expect: &Expect, timeout: Duration) -> anyhow::Result<Seen> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.take_pending();
            // The conversation is looked up each time: it may be the one just joined.
            let conversation = match &expect.conversation {
                Some(name) => self.client.find_conversation(name)?.map(|c| c.id()),
                None => None,
            };
            if (expect.conversation.is_none() || conversation.is_some())
                && let Some(seen) = self.find(expect, conversation)
            {
                return Ok(seen);
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) => self.backlog.extend(Seen::of(&event)),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    tracing::warn!(user = %self.name, skipped = n, "playbook events lagged");
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => bail!("{}'s connection closed", self.name),
                Err(_) => {
                    let mut got: Vec<String> = self.backlog.iter().map(Seen::describe).collect();
                    if got.is_empty() {
                        got.push("nothing".into());
                    }
                    bail!(
                        "{} received no {} within {} s; unmatched: {}",
                        self.name,
                        expect.describe(),
                        timeout.as_secs_f64(),
                        got.join("; ")
                    );
                }
            }
        }
    }
}

/// Runs `qpc playbook run FILE`: against `--server` (or the zero-config local server with
/// `zero_config`), else against a private server in a temp dir.
pub async fn run(cli: &Cli, file: &Path, zero_config: bool) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(file).map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?;
    let playbook = parse(&yaml).map_err(|e| UsageError(format!("{}: {e}", file.display())))?;
    let title = playbook.name.clone().unwrap_or_else(|| file.display().to_string());
    println!("▶ playbook {title}");

    let mut users: Vec<String> = playbook.users.keys().map(|u| u.to_lowercase()).collect();
    for step in &playbook.steps {
        let user = step.user.trim().to_lowercase();
        if !users.contains(&user) {
            users.push(user);
        }
    }

    let mut private = if cli.server.is_some() || zero_config { None } else { Some(PrivateServer::start().await?) };
    let states = tempfile::tempdir().context("creating a temp dir")?;
    if let Some(server) = &private {
        println!("  on a private server at {}", server.addr());
    }
    let mut actors = Vec::new();
    for user in &users {
        let password = playbook
            .users
            .iter()
            .find(|(u, _)| u.to_lowercase() == *user)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| format!("{user}-playbook-password"));
        let state_dir: PathBuf = states.path().join(user);
        let client = match &private {
            Some(server) => QpcClient::connect(server.client_config(user)).await.context("connecting")?,
            None => crate::commands::connect(cli, state_dir.clone()).await?,
        };
        let events = client.subscribe();
        crate::commands::sign_in(&client, user, &password, &state_dir)
            .await
            .with_context(|| format!("signing in {user}"))?;
        actors.push(Actor {
            name: user.clone(),
            client,
            session: Session::new(),
            events,
            backlog: Vec::new(),
            last_sent: None,
            last_received: None,
        });
    }
    println!("  users: {}", users.join(", "));

    let default_timeout = playbook.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let result = run_steps(&playbook, &mut actors, default_timeout).await;
    for actor in &actors {
        actor.client.close();
    }
    if let Some(server) = &mut private {
        server.stop().await?;
    }
    result?;
    println!("✔ playbook passed: {} steps", playbook.steps.len());
    Ok(())
}

async fn run_steps(playbook: &Playbook, actors: &mut [Actor], default_timeout: f64) -> anyhow::Result<()> {
    for (i, step) in playbook.steps.iter().enumerate() {
        let label = step.label(i + 1);
        let user = step.user.trim().to_lowercase();
        let actor = actors.iter_mut().find(|a| a.name == user).ok_or_else(|| anyhow!("{label}: no user {user}"))?;
        if let Some(name) = &step.name {
            println!("── {name}");
        }
        let outcome = match (&step.run, &step.expect) {
            (Some(line), _) => run_line(actor, step, line, i + 1).await,
            (None, Some(expect)) => {
                println!("[{}] {user} expects {}", i + 1, expect.describe());
                let timeout = expect.timeout.unwrap_or(default_timeout);
                let timeout = Duration::try_from_secs_f64(timeout)
                    .map_err(|_| UsageError(format!("{label}: timeout {timeout} is not a duration")))?;
                actor.expect(expect, timeout).await.map(|seen| {
                    if seen.kind == EventKind::Message {
                        actor.last_received = seen.message;
                    }
                    println!("  ✔ {}", seen.describe());
                })
            }
            (None, None) => Err(anyhow!("nothing to do")),
        };
        outcome.with_context(|| format!("{label} as {user} failed"))?;
    }
    Ok(())
}

async fn run_line(actor: &mut Actor, step: &Step, line: &str, index: usize) -> anyhow::Result<()> {
    println!("[{index}] {}> {line}", actor.name);
    let line = actor.substitute(line)?;
    let result = match parse_line(&line) {
        Ok(Some(Command::Quit)) => Ok(Reply::Note("(/quit ends nothing in a playbook)".into())),
        Ok(Some(command)) => execute(&actor.client, &mut actor.session, command).await,
        Ok(None) => Ok(Reply::Done),
        Err(usage) => Err(UsageError(usage).into()),
    };
    match (result, &step.fails) {
        (Ok(reply), None) => {
            if let Reply::Sent { id, .. } = &reply {
                actor.last_sent = Some(*id);
            }
            let text = reply_text(&reply, Palette::plain()).unwrap_or_default();
            for l in text.lines() {
                println!("  {l}");
            }
            if let Some(want) = &step.output
                && !text.contains(want.as_str())
            {
                bail!("the output does not contain {want:?}: {text:?}");
            }
            Ok(())
        }
        (Ok(_), Some(want)) => bail!("expected it to fail with {want:?}, but it succeeded"),
        (Err(e), Some(want)) => {
            let message = format!("{e:#}");
            if !message.contains(want.as_str()) {
                bail!("expected a failure containing {want:?}, got: {message}");
            }
            println!("  ✔ failed as expected: {message}");
            Ok(())
        }
        (Err(e), None) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_steps_and_rejects_mistakes() {
        let p = parse(
            "name: t\nsteps:\n  - as: alice\n    run: /dm bob\n  - name: bob sees it\n    as: bob\n    expect: {message: hi, from: alice, in: alice}\n  - as: bob\n    run: /react 👍 $last_received\n",
        )
        .unwrap();
        assert_eq!(p.steps.len(), 3);
        assert_eq!(p.steps[1].expect.as_ref().unwrap().kind(), EventKind::Message);
        assert_eq!(p.steps[1].label(2), "step 2 (bob sees it)");

        let err = |yaml: &str| parse(yaml).unwrap_err().0;
        assert!(err("steps: []").contains("no steps"));
        assert!(err("steps:\n  - as: a\n").contains("step 1: give exactly one of"));
        assert!(err("steps:\n  - as: a\n    run: /nope\n").contains("step 1: unknown command /nope"));
        assert!(err("steps:\n  - as: a\n    expect: {event: explode}\n").contains("not a playbook"));
        assert!(err("steps:\n  - as: a\n    expect: {event: reaction, message: x}\n").contains("use `text`"));
        assert!(err("steps:\n  - as: a\n    run: hi\n    bogus: 1\n").contains("unknown field"));
    }

    #[test]
    fn expectations_match_events() {
        let c = ConversationId([1; 16]);
        let seen =
            Seen {
                kind: EventKind::Reaction, conversation: c, actor: "bob".into(), text: "👍".into(), message: None
            };
        let e = Expect { event: Some(EventKind::Reaction), from: Some("Bob".into()), ..Expect::default() };
        assert!(e.matches(&seen, Some(c)));
        assert!(!e.matches(&seen, Some(ConversationId([2; 16]))));
        let text = Expect { event: Some(EventKind::Reaction), text: Some("🎉".into()), ..Expect::default() };
        assert!(!text.matches(&seen, None));
        assert!(!Expect { message: Some("👍".into()), ..Expect::default() }.matches(&seen, None));
    }
}
