//! The interactive REPL: lines become `Command`s for `execute`; SDK events are printed live
//! above the prompt.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use quicprochat_sdk::{ClientEvent, QpcClient};
use tokio::sync::{broadcast, mpsc};

use crate::command::{Command, parse_line};
use crate::complete::{Known, LineReader};
use crate::execute::{Reply, Session, acknowledge, execute};
use crate::style::Palette;
use crate::view::{event_line, reply_text};

/// Where live output goes: above the prompt of an interactive terminal, or plain stdout when
/// input is piped (scripts, tests).
enum Printer {
    Terminal(Box<dyn rustyline::ExternalPrinter + Send>),
    Plain,
}

impl Printer {
    fn print(&mut self, text: String) {
        match self {
            Printer::Terminal(p) => {
                if p.print(text.clone()).is_err() {
                    println!("{text}");
                }
            }
            Printer::Plain => println!("{text}"),
        }
    }
}

/// Runs the REPL until `/quit`, end of input, or the account's deletion. `history` is the file
/// that keeps command lines across runs (interactive terminals only).
pub async fn run(
    client: QpcClient,
    mut events: broadcast::Receiver<ClientEvent>,
    history: Option<PathBuf>,
) -> anyhow::Result<()> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let palette = Palette::detect();
    let known = Arc::new(RwLock::new(Known::default()));
    let (line_tx, mut lines) = mpsc::channel::<Option<String>>(16);
    let (prompt_tx, prompt_rx) = std::sync::mpsc::channel::<String>();
    let mut printer = if interactive {
        let reader = LineReader::new(Arc::clone(&known), history)?;
        Printer::Terminal(reader.spawn(line_tx, prompt_rx)?)
    } else {
        spawn_plain_reader(line_tx, prompt_rx);
        Printer::Plain
    };
    let me = client.whoami()?;
    refresh_known(&client, &known);
    let _ = prompt_tx.send(format!("{me}> "));

    println!("Logged in as {}. /dm <user> to start, /help for commands.", palette.me(&me));
    let mut session = Session::new();
    let mut confirming: Option<String> = None;
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(Some(line)) = line else { break };
                let command = match confirming.take() {
                    Some(username) if line.trim() == username => Ok(Some(Command::DeleteAccount { confirmed: true })),
                    Some(_) => {
                        println!("cancelled; the account is kept");
                        Ok(None)
                    }
                    None => parse_line(&line),
                };
                let reply = match command {
                    Ok(Some(command)) => match execute(&client, &mut session, command).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            println!("{}", palette.error(&format!("error: {e:#}")));
                            Reply::Done
                        }
                    },
                    Ok(None) => Reply::Done,
                    Err(usage) => {
                        println!("{usage}");
                        Reply::Done
                    }
                };
                if let Some(text) = reply_text(&reply, palette) {
                    println!("{text}");
                }
                match reply {
                    Reply::Quit | Reply::AccountDeleted => break,
                    Reply::ConfirmDeleteAccount { username } => confirming = Some(username),
                    _ => refresh_known(&client, &known),
                }
                let prompt = match (&confirming, &session.current) {
                    (Some(_), _) => "confirm> ".to_owned(),
                    (None, Some(c)) => format!("{me} → {}> ", c.name()),
                    (None, None) => format!("{me}> "),
                };
                let _ = prompt_tx.send(prompt);
            }
            event = events.recv() => match event {
                Ok(event) => {
                    let here = session.current.as_ref().map(|c| c.id());
                    if let Some(text) = event_line(&client, &event, here, session.show_typing, palette) {
                        printer.print(text);
                    }
                    match &event {
                        ClientEvent::MessageReceived { conversation, message } if Some(*conversation) == here => {
                            if let Some(c) = &session.current {
                                acknowledge(&client, c, message).await;
                            }
                        }
                        ClientEvent::ConversationCreated { .. }
                        | ClientEvent::MemberJoined { .. }
                        | ClientEvent::MemberLeft { .. } => refresh_known(&client, &known),
                        _ => {}
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    printer.print(format!("* {n} events skipped; /history shows the messages"));
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    // The reader thread ends at its next prompt or input; it is not joined, so a blocked
    // terminal read cannot hold the process open.
    drop(prompt_tx);
    Ok(())
}

/// Reads piped input on a thread of its own: one line per prompt it is sent. `None` marks the
/// end of input.
fn spawn_plain_reader(line_tx: mpsc::Sender<Option<String>>, prompts: std::sync::mpsc::Receiver<String>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        while prompts.recv().is_ok() {
            let mut line = String::new();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = line_tx.blocking_send(None);
                    break;
                }
                Ok(_) => {
                    if line_tx.blocking_send(Some(line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Updates what tab completion offers: members of this device's conversations and the
/// conversations themselves (`@peer`, `#group`).
fn refresh_known(client: &QpcClient, known: &RwLock<Known>) {
    let Ok(me) = client.whoami() else { return };
    let Ok(list) = client.conversations() else { return };
    let mut next = Known::default();
    for info in list {
        match &info.peer {
            Some(peer) => next.conversations.push(format!("@{peer}")),
            None => next.conversations.push(format!("#{}", info.name)),
        }
        if let Ok(Some(c)) = client.conversation(info.id) {
            next.users.extend(c.members().unwrap_or_default().into_iter().filter(|u| *u != me));
        }
    }
    next.users.sort();
    next.users.dedup();
    next.conversations.sort();
    next.conversations.dedup();
    if let Ok(mut known) = known.write() {
        *known = next;
    }
}
