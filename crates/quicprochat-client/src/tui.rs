//! `qpc tui`: the full-screen interface. [`App`] is plain state, changed only by its methods
//! (SDK events translated by the shell, keys); [`draw`] is a function of it. The shell in
//! [`run`] feeds terminal keys and SDK events in, and sends input lines through the REPL's
//! parser and the one `execute`.

use std::io::IsTerminal;

use anyhow::Context;
use quicprochat_sdk::{ClientEvent, ConversationHandle, ConversationId, QpcClient};
use ratatui::Frame;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, ListState, Paragraph};
use tokio::sync::{broadcast, mpsc};

use crate::command::{Command, parse_line};
use crate::execute::{Reply, Session, acknowledge, execute};
use crate::exit::UsageError;
use crate::ids;
use crate::style::Palette;
use crate::view::{event_line, message_line, reply_text};

/// Messages of the selected conversation kept for scrollback.
const HISTORY: u32 = 500;

/// A conversation in the sidebar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: ConversationId,
    pub name: String,
    pub unread: usize,
    pub epoch: u64,
}

/// What a key asked the shell to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Run this input line.
    Submit(String),
    /// Another conversation was selected.
    Selected(ConversationId),
    /// The user started typing into an empty input line.
    StartedTyping,
    Quit,
}

/// Everything the screen shows.
#[derive(Debug, Default)]
pub struct App {
    pub me: String,
    pub conversations: Vec<Entry>,
    pub selected: Option<ConversationId>,
    /// Lines of the selected conversation, oldest first.
    pub lines: Vec<String>,
    /// Lines scrolled up from the bottom.
    pub scroll: usize,
    /// Rows of the message pane at the last resize.
    pub page: usize,
    pub input: String,
    /// The last command's answer or error.
    pub status: String,
    /// Who is typing in which conversation.
    pub typing: Vec<(ConversationId, String)>,
}

impl App {
    /// An empty screen for `me`.
    pub fn new(me: &str) -> App {
        App { me: me.to_owned(), page: 10, ..App::default() }
    }

    /// Replaces the sidebar's conversations with their unread counts (as the SDK keeps them,
    /// across restarts), keeping the selection; the selected one is being read.
    pub fn set_conversations(&mut self, list: Vec<(ConversationId, String, u64, u32)>) {
        let selected = self.selected;
        self.conversations = list
            .into_iter()
            .map(|(id, name, epoch, unread)| {
                let unread = if Some(id) == selected { 0 } else { unread as usize };
                Entry { id, name, unread, epoch }
            })
            .collect();
        if self.selected.is_some_and(|s| !self.conversations.iter().any(|e| e.id == s)) {
            self.selected = None;
            self.lines.clear();
        }
    }

    /// Makes `id` the selected conversation, showing `lines`; its unread count resets.
    pub fn select(&mut self, id: ConversationId, lines: Vec<String>) {
        if self.selected != Some(id) {
            self.scroll = 0;
        }
        self.selected = Some(id);
        self.lines = lines;
        if let Some(e) = self.conversations.iter_mut().find(|e| e.id == id) {
            e.unread = 0;
        }
    }

    /// A message arrived: shown if its conversation is selected, counted unread otherwise.
    pub fn message(&mut self, conversation: ConversationId, sender: &str, line: String) {
        self.typing.retain(|(c, u)| !(*c == conversation && u == sender));
        if self.selected == Some(conversation) {
            self.lines.push(line);
        } else if let Some(e) = self.conversations.iter_mut().find(|e| e.id == conversation) {
            e.unread += 1;
        }
    }

    /// A notice about a conversation (or none): shown in the pane if it is the selected one.
    pub fn notice(&mut self, conversation: Option<ConversationId>, line: String) {
        if conversation.is_none() || conversation == self.selected {
            self.lines.push(line);
        }
    }

    /// Someone started or stopped typing.
    pub fn typing(&mut self, conversation: ConversationId, user: &str, started: bool) {
        self.typing.retain(|(c, u)| !(*c == conversation && u == user));
        if started {
            self.typing.push((conversation, user.to_owned()));
        }
    }

    /// A conversation's MLS epoch changed.
    pub fn epoch(&mut self, conversation: ConversationId, epoch: u64) {
        if let Some(e) = self.conversations.iter_mut().find(|e| e.id == conversation) {
            e.epoch = epoch;
        }
    }

    /// The message pane has `rows` rows now.
    pub fn resize(&mut self, rows: usize) {
        self.page = rows.max(1);
        self.scroll = self.scroll.min(self.lines.len().saturating_sub(1));
    }

    fn cycle(&mut self, forward: bool) -> Action {
        let n = self.conversations.len();
        if n == 0 {
            return Action::None;
        }
        let at = self.selected.and_then(|s| self.conversations.iter().position(|e| e.id == s));
        let next = match (at, forward) {
            (None, _) => 0,
            (Some(i), true) => (i + 1) % n,
            (Some(i), false) => (i + n - 1) % n,
        };
        Action::Selected(self.conversations[next].id)
    }

    /// A key press.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => Action::Quit,
            KeyCode::Char('n') if ctrl => self.cycle(true),
            KeyCode::Char('p') if ctrl => self.cycle(false),
            KeyCode::Tab => self.cycle(true),
            KeyCode::BackTab => self.cycle(false),
            KeyCode::PageUp => {
                let step = (self.page / 2).max(1);
                self.scroll = (self.scroll + step).min(self.lines.len().saturating_sub(1));
                Action::None
            }
            KeyCode::PageDown => {
                self.scroll = self.scroll.saturating_sub((self.page / 2).max(1));
                Action::None
            }
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                self.scroll = 0;
                if line.trim().is_empty() { Action::None } else { Action::Submit(line) }
            }
            KeyCode::Backspace => {
                self.input.pop();
                Action::None
            }
            KeyCode::Esc => {
                self.input.clear();
                Action::None
            }
            KeyCode::Char(c) if !ctrl => {
                let was_empty = self.input.is_empty();
                self.input.push(c);
                if was_empty && !self.input.starts_with('/') { Action::StartedTyping } else { Action::None }
            }
            _ => Action::None,
        }
    }

    fn selected_entry(&self) -> Option<&Entry> {
        self.selected.and_then(|s| self.conversations.iter().find(|e| e.id == s))
    }
}

/// Draws the whole screen: sidebar, message pane, status line and input bar.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [main, status, input] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1), Constraint::Length(3)]).areas(frame.area());
    let [sidebar, pane] = Layout::horizontal([Constraint::Length(24), Constraint::Min(10)]).areas(main);

    let items: Vec<ListItem<'_>> = app
        .conversations
        .iter()
        .map(|e| {
            let mut spans = vec![Span::raw(e.name.clone())];
            if e.unread > 0 {
                spans.push(Span::styled(format!(" ({})", e.unread), Style::new().add_modifier(Modifier::BOLD)));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut state = ListState::default()
        .with_selected(app.selected_entry().and_then(|s| app.conversations.iter().position(|e| e.id == s.id)));
    let list = List::new(items)
        .block(Block::new().borders(Borders::ALL).title(" Conversations "))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    frame.render_stateful_widget(list, sidebar, &mut state);

    let title = match app.selected_entry() {
        Some(e) => format!(" {} · epoch {} ", e.name, e.epoch),
        None => " no conversation: /dm <user>, /cg <name> <users…>, Tab to switch ".to_owned(),
    };
    let rows = usize::from(pane.height.saturating_sub(2));
    let end = app.lines.len().saturating_sub(app.scroll);
    let start = end.saturating_sub(rows);
    let visible: Vec<Line<'_>> = app.lines[start..end].iter().map(|l| Line::raw(l.as_str())).collect();
    let mut block = Block::new().borders(Borders::ALL).title(title);
    if app.scroll > 0 {
        block = block.title_bottom(format!(" ↑ {} more below (PgDn) ", app.scroll));
    }
    frame.render_widget(Paragraph::new(visible).block(block), pane);

    let typing: Vec<&str> =
        app.typing.iter().filter(|(c, _)| Some(*c) == app.selected).map(|(_, u)| u.as_str()).collect();
    let status_text = if typing.is_empty() {
        app.status.lines().last().unwrap_or_default().to_owned()
    } else {
        format!("{} typing…", typing.join(", "))
    };
    frame.render_widget(Paragraph::new(status_text).style(Style::new().fg(Color::Yellow)), status);

    let prompt = match app.selected_entry() {
        Some(e) => format!(" {} → {} ", app.me, e.name),
        None => format!(" {} ", app.me),
    };
    let shown = format!("{}█", app.input);
    frame.render_widget(Paragraph::new(shown).block(Block::new().borders(Borders::ALL).title(prompt)), input);
}

/// Runs the TUI until Ctrl-C or `/quit`.
pub async fn run(client: QpcClient, mut events: broadcast::Receiver<ClientEvent>) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(UsageError("qpc tui needs a terminal; use `qpc repl` for piped input".into()));
    }
    let me = client.whoami()?;
    let mut app = App::new(&me);
    let mut session = Session::new();
    // A progress bar would draw over the screen.
    session.progress = false;
    session.prompts = false;
    refresh(&client, &mut app);
    if let Some(first) = app.conversations.first().map(|e| e.id) {
        open(&client, &mut session, &mut app, first).await;
    }
    app.status = "Tab/Shift-Tab switch · PgUp/PgDn scroll · Enter send · /help · Ctrl-C quits".into();

    let (key_tx, mut keys) = mpsc::channel::<Event>(64);
    // Terminal reads block: they run on a thread of their own, which ends with the process.
    std::thread::spawn(move || {
        while let Ok(event) = ratatui::crossterm::event::read() {
            if key_tx.blocking_send(event).is_err() {
                break;
            }
        }
    });

    let mut terminal = ratatui::init();
    let result = async {
        loop {
            let size = terminal.size().context("reading the terminal size")?;
            app.resize(usize::from(size.height.saturating_sub(6)));
            terminal.draw(|f| draw(f, &app)).context("drawing")?;
            tokio::select! {
                key = keys.recv() => match key {
                    Some(Event::Key(key)) if key.kind == KeyEventKind::Press => {
                        match app.key(key) {
                            Action::Quit => break,
                            Action::Submit(line) => {
                                if submit(&client, &mut session, &mut app, &line).await {
                                    break;
                                }
                            }
                            Action::Selected(id) => open(&client, &mut session, &mut app, id).await,
                            Action::StartedTyping => {
                                if let Some(c) = session.current.clone() {
                                    tokio::spawn(async move {
                                        let _ = c.typing(true).await;
                                    });
                                }
                            }
                            Action::None => {}
                        }
                    }
                    Some(_) => {} // resizes redraw at the top of the loop
                    None => break,
                },
                event = events.recv() => match event {
                    Ok(event) => on_event(&client, &session, &mut app, event).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => reload(&client, &session, &mut app),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        anyhow::Ok(())
    }
    .await;
    ratatui::restore();
    result
}

/// Runs an input line; true when the TUI should end.
async fn submit(client: &QpcClient, session: &mut Session, app: &mut App, line: &str) -> bool {
    let command = match parse_line(line) {
        Ok(Some(Command::Quit)) => return true,
        Ok(Some(command)) => command,
        Ok(None) => return false,
        Err(usage) => {
            app.status = usage;
            return false;
        }
    };
    let before = session.current.as_ref().map(ConversationHandle::id);
    let reply = execute(client, session, command).await;
    refresh(client, app);
    match reply {
        Ok(Reply::Quit | Reply::AccountDeleted) => return true,
        Ok(Reply::ConfirmDeleteAccount { .. }) => {
            app.status = "deleting the account needs the REPL's confirmation: use `qpc repl`".into();
        }
        Ok(Reply::Opened { name, .. }) => app.status = format!("opened {name}"),
        Ok(
            reply @ (Reply::Messages(_)
            | Reply::Help(_)
            | Reply::Conversations(_)
            | Reply::GroupInfo(_)
            | Reply::Exported(_)
            | Reply::TranscriptVerified(_)),
        ) => {
            let text = reply_text(&reply, Palette::plain()).unwrap_or_default();
            app.lines.extend(text.lines().map(|l| format!("  {l}")));
            app.status = String::new();
        }
        Ok(reply) => app.status = reply_text(&reply, Palette::plain()).unwrap_or_default(),
        Err(e) => app.status = format!("error: {e:#}"),
    }
    let now = session.current.as_ref().map(ConversationHandle::id);
    if now != before
        && let Some(id) = now
    {
        app.select(id, history(session));
    } else if now.is_none() {
        app.selected = None;
        app.lines.clear();
    } else if line.trim_start().starts_with('/') {
        // Commands answered in the pane keep their output; others refresh the history.
    } else {
        app.lines = history(session);
    }
    false
}

/// Makes `id` current in the session and on screen, and marks it read (one receipt for the
/// messages that were unread).
async fn open(client: &QpcClient, session: &mut Session, app: &mut App, id: ConversationId) {
    let Ok(Some(c)) = client.conversation(id) else { return };
    if let Err(e) = c.mark_all_read().await {
        tracing::debug!(error = %e, "read receipt not sent");
    }
    session.current = Some(c);
    app.select(id, history(session));
}

/// The selected conversation's messages as lines.
fn history(session: &Session) -> Vec<String> {
    let Some(c) = &session.current else { return Vec::new() };
    let messages = c.messages(HISTORY).unwrap_or_default();
    let len = ids::unique_len(&messages);
    messages.iter().map(|m| message_line(m, len, Palette::plain())).collect()
}

/// The sidebar from the SDK's list of conversations.
fn refresh(client: &QpcClient, app: &mut App) {
    let Ok(list) = client.conversations() else { return };
    let entries = list
        .into_iter()
        .map(|info| {
            let epoch = client.conversation(info.id).ok().flatten().and_then(|c| c.epoch().ok()).unwrap_or(0);
            (info.id, info.name, epoch, info.unread)
        })
        .collect();
    app.set_conversations(entries);
}

fn reload(client: &QpcClient, session: &Session, app: &mut App) {
    refresh(client, app);
    if session.current.is_some() {
        app.lines = history(session);
    }
}

/// An SDK event, translated into `App` updates.
async fn on_event(client: &QpcClient, session: &Session, app: &mut App, event: ClientEvent) {
    let here = session.current.as_ref().map(ConversationHandle::id);
    match &event {
        ClientEvent::MessageReceived { conversation, message } => {
            let line = message_line(message, ids::SHORT_ID_LEN, Palette::plain());
            app.message(*conversation, &message.sender, line);
            if Some(*conversation) == here
                && let Some(c) = &session.current
            {
                acknowledge(client, c, message).await;
            }
        }
        ClientEvent::Typing { conversation, username, started } => app.typing(*conversation, username, *started),
        ClientEvent::EpochChanged { conversation, epoch } => app.epoch(*conversation, *epoch),
        ClientEvent::MessageEdited { conversation, .. }
        | ClientEvent::MessageDeleted { conversation, .. }
        | ClientEvent::ReactionAdded { conversation, .. }
        | ClientEvent::ReactionRemoved { conversation, .. }
        | ClientEvent::ReadReceipt { conversation, .. }
        | ClientEvent::MessageExpired { conversation, .. }
            if Some(*conversation) == here =>
        {
            // The stored history already shows the change.
            app.lines = history(session);
        }
        ClientEvent::ConversationCreated { .. }
        | ClientEvent::ConversationRenamed { .. }
        | ClientEvent::MemberJoined { .. }
        | ClientEvent::MemberLeft { .. } => {
            refresh(client, app);
            let about = match &event {
                ClientEvent::MemberJoined { conversation, .. } | ClientEvent::MemberLeft { conversation, .. } => {
                    Some(*conversation)
                }
                _ => None,
            };
            if let Some(line) = event_line(client, &event, here, true, Palette::plain()) {
                if about.is_some() && about == here { app.notice(about, line) } else { app.status = line }
            }
        }
        _ => {
            if let Some(line) = event_line(client, &event, here, true, Palette::plain()) {
                app.status = line;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::KeyEvent;

    use super::*;

    fn screen(app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 16)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn press(app: &mut App, code: KeyCode) -> Action {
        app.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    const BOB: ConversationId = ConversationId([1; 16]);
    const TEAM: ConversationId = ConversationId([2; 16]);

    fn app() -> App {
        let mut app = App::new("alice");
        app.set_conversations(vec![(BOB, "bob".into(), 1, 0), (TEAM, "team".into(), 4, 0)]);
        app.select(BOB, vec!["a1b2c3 [alice] hi bob".into()]);
        app
    }

    #[test]
    fn renders_sidebar_unread_counts_and_received_messages() {
        let mut app = app();
        app.message(BOB, "bob", "d4e5f6 [bob] hello alice".into());
        app.message(TEAM, "carol", "0a0b0c [carol] team news".into());
        app.message(TEAM, "carol", "0a0b0d [carol] more news".into());
        app.typing(BOB, "bob", true);
        let s = screen(&app);
        assert!(s.contains("Conversations"), "{s}");
        assert!(s.contains("> bob"), "{s}");
        assert!(s.contains("team (2)"), "{s}");
        assert!(s.contains("d4e5f6 [bob] hello alice"), "{s}");
        assert!(!s.contains("team news"), "{s}");
        assert!(s.contains("bob · epoch 1"), "{s}");
        assert!(s.contains("bob typing…"), "{s}");
        assert!(s.contains("alice → bob"), "{s}");

        // A message from bob ends his typing indicator; the epoch indicator follows events.
        app.message(BOB, "bob", "d4e5f7 [bob] done".into());
        app.epoch(BOB, 2);
        let s = screen(&app);
        assert!(!s.contains("typing…"), "{s}");
        assert!(s.contains("bob · epoch 2"), "{s}");

        // Switching reads the other conversation: its unread count is gone.
        assert_eq!(press(&mut app, KeyCode::Tab), Action::Selected(TEAM));
        app.select(TEAM, vec!["0a0b0c [carol] team news".into()]);
        let s = screen(&app);
        assert!(s.contains("> team") && !s.contains("(2)"), "{s}");
        assert!(s.contains("team · epoch 4") && s.contains("team news"), "{s}");
    }

    #[test]
    fn keys_edit_submit_cycle_scroll_and_quit() {
        let mut app = app();
        assert_eq!(press(&mut app, KeyCode::Char('h')), Action::StartedTyping);
        assert_eq!(press(&mut app, KeyCode::Char('i')), Action::None);
        assert!(screen(&app).contains("hi█"));
        assert_eq!(press(&mut app, KeyCode::Enter), Action::Submit("hi".into()));
        assert_eq!(app.input, "");
        assert_eq!(press(&mut app, KeyCode::Enter), Action::None);
        // Commands are not typing.
        assert_eq!(press(&mut app, KeyCode::Char('/')), Action::None);
        press(&mut app, KeyCode::Backspace);

        assert_eq!(press(&mut app, KeyCode::BackTab), Action::Selected(TEAM));
        assert_eq!(app.key(KeyEvent::new(KeyCode::Char('n'), KeyModifiers::CONTROL)), Action::Selected(TEAM));
        assert_eq!(app.key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::CONTROL)), Action::Selected(TEAM));
        assert_eq!(app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);

        app.lines = (0..100).map(|i| format!("line {i}")).collect();
        app.resize(10);
        press(&mut app, KeyCode::PageUp);
        assert_eq!(app.scroll, 5);
        let s = screen(&app);
        assert!(s.contains("line 94") && !s.contains("line 99"), "{s}");
        assert!(s.contains("more below"), "{s}");
        press(&mut app, KeyCode::PageDown);
        assert_eq!(app.scroll, 0);
        assert!(screen(&app).contains("line 99"));
    }

    #[test]
    fn unread_counts_come_from_the_sdk_and_the_selected_one_is_read() {
        let mut app = app();
        app.set_conversations(vec![(BOB, "bob".into(), 1, 5), (TEAM, "team".into(), 4, 3)]);
        let s = screen(&app);
        assert!(s.contains("team (3)"), "{s}");
        assert!(!s.contains("bob (5)"), "the selected conversation is being read: {s}");
    }

    #[test]
    fn conversations_that_vanish_are_deselected() {
        let mut app = app();
        app.set_conversations(vec![(TEAM, "team".into(), 4, 2)]);
        assert_eq!(app.selected, None);
        assert!(app.lines.is_empty());
        assert!(screen(&app).contains("no conversation"));
    }
}
