//! The interactive REPL: `/dm USER` picks a conversation, plain text is sent to it, incoming
//! messages are printed live above the prompt.

use anyhow::Context;
use quicprochat_sdk::{ClientEvent, ConversationHandle, QpcClient};
use rustyline::error::ReadlineError;
use tokio::sync::{broadcast, mpsc};

/// One parsed REPL line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `/dm USER`
    Dm(String),
    /// `/list`
    List,
    /// `/create-group <name> [users…]`
    CreateGroup(String, Vec<String>),
    /// `/invite <user>`
    Invite(String),
    /// `/switch @user|#group|name`
    Switch(String),
    /// `/members`
    Members,
    /// `/remove <user>`
    Remove(String),
    /// `/verify <user>`
    Verify(String),
    /// `/whoami`
    Whoami,
    /// `/update-key`, `/rotate-key`
    RotateKey,
    /// `/history [n]`
    History(u32),
    /// `/send-file <path>`, `/sf`
    SendFile(String),
    /// `/download <id>`, `/dl`
    Download(String),
    /// `/leave`
    Leave,
    /// `/help`
    Help,
    /// `/quit`
    Quit,
    /// Plain text to send.
    Text(String),
    /// Nothing to do.
    Empty,
    /// A mistake, with the message to show.
    Usage(String),
}

/// Parses one input line.
pub fn parse(line: &str) -> Line {
    let line = line.trim();
    if line.is_empty() {
        return Line::Empty;
    }
    let Some(rest) = line.strip_prefix('/') else { return Line::Text(line.to_owned()) };
    let mut parts = rest.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some("dm"), Some(user), None) => Line::Dm(user.to_lowercase()),
        (Some("dm"), _, _) => Line::Usage("usage: /dm <user>".into()),
        (Some("list" | "ls"), None, None) => Line::List,
        (Some("create-group" | "cg"), Some(name), third) => {
            let users = third.into_iter().chain(parts).map(str::to_lowercase).collect();
            Line::CreateGroup(name.to_owned(), users)
        }
        (Some("create-group" | "cg"), None, _) => Line::Usage("usage: /create-group <name> [users…]".into()),
        (Some("invite"), Some(user), None) => Line::Invite(user.to_lowercase()),
        (Some("invite"), _, _) => Line::Usage("usage: /invite <user>".into()),
        (Some("switch" | "sw"), Some(target), None) => Line::Switch(target.trim_start_matches(['@', '#']).to_owned()),
        (Some("switch" | "sw"), _, _) => Line::Usage("usage: /switch @user|#group".into()),
        (Some("members"), None, None) => Line::Members,
        (Some("remove"), Some(user), None) => Line::Remove(user.to_lowercase()),
        (Some("remove"), _, _) => Line::Usage("usage: /remove <user>".into()),
        (Some("leave"), None, None) => Line::Leave,
        (Some("verify"), Some(user), None) => Line::Verify(user.to_lowercase()),
        (Some("verify"), _, _) => Line::Usage("usage: /verify <user>".into()),
        (Some("whoami"), None, None) => Line::Whoami,
        (Some("send-file" | "sf"), Some(path), None) => Line::SendFile(path.to_owned()),
        (Some("send-file" | "sf"), _, _) => Line::Usage("usage: /send-file <path>".into()),
        (Some("download" | "dl"), Some(id), None) => Line::Download(id.to_lowercase()),
        (Some("download" | "dl"), _, _) => Line::Usage("usage: /download <message id>".into()),
        (Some("update-key" | "rotate-key"), None, None) => Line::RotateKey,
        (Some("history" | "hist"), None, None) => Line::History(20),
        (Some("history" | "hist"), Some(n), None) => match n.parse() {
            Ok(n) => Line::History(n),
            Err(_) => Line::Usage("usage: /history [n]".into()),
        },
        (Some("help" | "h"), _, _) => Line::Help,
        (Some("quit" | "q" | "exit"), None, None) => Line::Quit,
        (Some(other), _, _) => Line::Usage(format!("unknown command /{other}; try /help")),
        (None, _, _) => Line::Usage("empty command; try /help".into()),
    }
}

const HELP: &str = "\
Chat:
  /dm <user>               open (or create) the direct conversation with <user>
  <text>                   send text to the current conversation
  /list, /ls               list conversations
  /switch @user|#group     make another conversation current
  /send-file, /sf <path>   encrypt and send a file
  /download, /dl <id>      save the file of message <id> (see /history) here
Groups:
  /create-group, /cg <name> [users…]   create a group with these members
  /invite <user>           add <user> to the current conversation
  /remove <user>           remove <user> from the current group
  /leave                   leave the current group
  /members                 members of the current conversation
Security:
  /verify <user>           safety number to compare with <user> out of band
  /update-key, /rotate-key rotate your keys in the current conversation
System:
  /history, /hist [n]      last n messages of the current conversation
  /whoami                  who you are logged in as
  /help                    this help
  /quit                    leave";

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

/// Reads lines on a thread of its own (terminal reads block): one line per prompt it is sent.
/// `None` marks the end of input.
fn spawn_reader(
    interactive: bool,
    line_tx: mpsc::Sender<Option<String>>,
    prompts: std::sync::mpsc::Receiver<String>,
) -> anyhow::Result<Printer> {
    if !interactive {
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
        return Ok(Printer::Plain);
    }
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let printer = editor.create_external_printer().context("starting the line editor")?;
    std::thread::spawn(move || {
        while let Ok(prompt) = prompts.recv() {
            match editor.readline(&prompt) {
                Ok(line) => {
                    let _ = editor.add_history_entry(line.as_str());
                    if line_tx.blocking_send(Some(line)).is_err() {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                    let _ = line_tx.blocking_send(None);
                    break;
                }
                Err(e) => {
                    eprintln!("qpc: input error: {e}");
                    let _ = line_tx.blocking_send(None);
                    break;
                }
            }
        }
    });
    Ok(Printer::Terminal(Box::new(printer)))
}

/// Runs the REPL until `/quit` or end of input.
pub async fn run(client: QpcClient, mut events: broadcast::Receiver<ClientEvent>) -> anyhow::Result<()> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let (line_tx, mut lines) = mpsc::channel::<Option<String>>(16);
    let (prompt_tx, prompt_rx) = std::sync::mpsc::channel::<String>();
    let mut printer = spawn_reader(interactive, line_tx, prompt_rx)?;
    let me = client.whoami()?;
    let _ = prompt_tx.send(format!("{me}> "));

    println!("Logged in as {me}. /dm <user> to start, /help for commands.");
    let mut current: Option<ConversationHandle> = None;
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(Some(line)) = line else { break };
                let keep_going = handle(&client, &mut current, parse(&line)).await;
                if !keep_going {
                    break;
                }
                let prompt = match &current {
                    Some(c) => format!("{me} → {}> ", c.name()),
                    None => format!("{me}> "),
                };
                let _ = prompt_tx.send(prompt);
            }
            event = events.recv() => match event {
                Ok(ClientEvent::MessageReceived { message, conversation }) => {
                    let here = current.as_ref().is_some_and(|c| c.id() == conversation);
                    let text = if here {
                        format!("[{}] {}", message.sender, message.text)
                    } else {
                        format!("[{} in {}] {}", message.sender, conversation, message.text)
                    };
                    printer.print(text);
                }
                Ok(ClientEvent::ConversationCreated { name, .. }) => {
                    printer.print(format!("* joined conversation with {name}"));
                }
                Ok(ClientEvent::ConnectionLost { reason }) => {
                    printer.print(format!("* connection lost: {reason}"));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    printer.print(format!("* {n} events skipped"));
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

/// Executes one line; returns false to quit.
async fn handle(client: &QpcClient, current: &mut Option<ConversationHandle>, line: Line) -> bool {
    match line {
        Line::Quit => return false,
        Line::Empty => {}
        Line::Help => println!("{HELP}"),
        Line::Usage(msg) => println!("{msg}"),
        Line::List => match client.conversations() {
            Ok(list) if list.is_empty() => println!("no conversations yet; /dm <user>"),
            Ok(list) => list.iter().for_each(|c| println!("  {}  {}", c.id, c.name)),
            Err(e) => println!("error: {e}"),
        },
        Line::Dm(user) => match crate::commands::open_dm(client, &user).await {
            Ok(dm) => {
                if let Ok(history) = dm.messages(10) {
                    for m in history {
                        println!("[{}] {}", m.sender, m.text);
                    }
                }
                *current = Some(dm);
            }
            Err(e) => println!("error: {e:#}"),
        },
        Line::CreateGroup(name, users) => {
            let refs: Vec<&str> = users.iter().map(String::as_str).collect();
            match client.create_group(&name, &refs).await {
                Ok(group) => {
                    println!("created #{name}");
                    *current = Some(group);
                }
                Err(e) => println!("error: {e}"),
            }
        }
        Line::Invite(user) => match current {
            Some(c) => match c.invite(&user).await {
                Ok(()) => println!("invited {user}"),
                Err(e) => println!("error: {e}"),
            },
            None => println!("no conversation selected"),
        },
        Line::Switch(target) => match client.find_conversation(&target) {
            Ok(Some(c)) => *current = Some(c),
            Ok(None) => println!("no conversation named {target}; /list shows them"),
            Err(e) => println!("error: {e}"),
        },
        Line::Remove(user) => match current {
            Some(c) => match c.remove(&user).await {
                Ok(()) => println!("removed {user}"),
                Err(e) => println!("error: {e}"),
            },
            None => println!("no conversation selected"),
        },
        Line::Leave => match current.take() {
            Some(c) => match c.leave().await {
                Ok(()) => println!("left {}", c.name()),
                Err(e) => {
                    println!("error: {e}");
                    *current = Some(c);
                }
            },
            None => println!("no conversation selected"),
        },
        Line::Verify(user) => match client.safety_number(&user) {
            Ok(number) => {
                println!("safety number with {user}:\n  {number}\ncompare it with {user} in person or by phone")
            }
            Err(e) => println!("error: {e}"),
        },
        Line::Whoami => match client.whoami() {
            Ok(me) => println!("{me}"),
            Err(e) => println!("error: {e}"),
        },
        Line::RotateKey => match current {
            Some(c) => match c.rotate_key().await {
                Ok(epoch) => println!("keys rotated; now at epoch {epoch}"),
                Err(e) => println!("error: {e}"),
            },
            None => println!("no conversation selected"),
        },
        Line::History(n) => match current {
            Some(c) => match c.messages(n) {
                Ok(messages) => messages.iter().for_each(|m| println!("{} [{}] {}", m.id, m.sender, m.text)),
                Err(e) => println!("error: {e}"),
            },
            None => println!("no conversation selected"),
        },
        Line::SendFile(path) => match current {
            Some(c) => {
                let bar = |sent: u64, total: u64| {
                    let pct = (sent * 100).checked_div(total).unwrap_or(100);
                    eprint!("\r  uploading {pct:>3}% ({sent}/{total} bytes)");
                };
                match c.send_file(std::path::Path::new(&path), bar).await {
                    Ok(id) => println!("\nsent {id}"),
                    Err(e) => println!("\nerror: {e}"),
                }
            }
            None => println!("no conversation selected"),
        },
        Line::Download(short) => match current {
            Some(c) => {
                let found = c
                    .messages(1000)
                    .ok()
                    .and_then(|list| list.into_iter().rev().find(|m| m.id.to_string().starts_with(&short)));
                match found {
                    Some(m) => {
                        let bar = |got: u64, total: u64| {
                            let pct = (got * 100).checked_div(total).unwrap_or(100);
                            eprint!("\r  downloading {pct:>3}%");
                        };
                        match client.download_file(m.id, std::path::Path::new("."), bar).await {
                            Ok(path) => println!("\nsaved {}", path.display()),
                            Err(e) => println!("\nerror: {e}"),
                        }
                    }
                    None => println!("no message {short} in this conversation"),
                }
            }
            None => println!("no conversation selected"),
        },
        Line::Members => match current {
            Some(c) => match c.members() {
                Ok(m) => println!("{}", m.join(", ")),
                Err(e) => println!("error: {e}"),
            },
            None => println!("no conversation selected"),
        },
        Line::Text(text) => match current {
            Some(dm) => {
                if let Err(e) = dm.send_text(&text).await {
                    println!("error: {e}");
                }
            }
            None => println!("no conversation selected: /dm <user> first"),
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_text() {
        assert_eq!(parse("/dm Bob"), Line::Dm("bob".into()));
        assert_eq!(parse("hello there"), Line::Text("hello there".into()));
        assert_eq!(parse("  "), Line::Empty);
        assert_eq!(parse("/quit"), Line::Quit);
        assert_eq!(parse("/ls"), Line::List);
        assert!(matches!(parse("/dm"), Line::Usage(_)));
        assert!(matches!(parse("/nope"), Line::Usage(_)));
        assert_eq!(parse("/cg team Bob carol"), Line::CreateGroup("team".into(), vec!["bob".into(), "carol".into()]));
        assert!(matches!(parse("/cg"), Line::Usage(_)));
        assert_eq!(parse("/invite Dave"), Line::Invite("dave".into()));
        assert_eq!(parse("/switch #team"), Line::Switch("team".into()));
        assert_eq!(parse("/members"), Line::Members);
        assert_eq!(parse("/remove Carol"), Line::Remove("carol".into()));
        assert_eq!(parse("/leave"), Line::Leave);
        assert_eq!(parse("/verify Bob"), Line::Verify("bob".into()));
        assert_eq!(parse("/rotate-key"), Line::RotateKey);
        assert_eq!(parse("/hist 5"), Line::History(5));
        assert_eq!(parse("/sf ./a.txt"), Line::SendFile("./a.txt".into()));
        assert_eq!(parse("/dl AB12"), Line::Download("ab12".into()));
        assert!(matches!(parse("/hist x"), Line::Usage(_)));
        assert!(matches!(parse("/remove"), Line::Usage(_)));
    }
}
