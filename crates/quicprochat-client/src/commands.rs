//! One `run` for the command line: build the config, connect, log in, execute.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use quicprochat_sdk::{ClientConfig, ClientEvent, Message, QpcClient, SdkError, Trust};

use crate::cli::{Cli, Command as CliCommand, ExportAction, GroupAction, PlaybookAction, resolve_server};
use crate::command::{Command, Target};
use crate::execute::{Reply, Session, execute};
use crate::exit::{NetworkError, UsageError};
use crate::local_server;
use crate::style::Palette;
use crate::view::{MessageView, reply_text};

/// File in the account's state dir that keeps REPL command lines across runs.
pub const HISTORY_FILE: &str = "repl_history";

/// Runs the parsed command line.
pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.take().unwrap_or(CliCommand::Repl);
    match &command {
        CliCommand::Demo => return crate::demo::run().await,
        CliCommand::Playbook { action: PlaybookAction::Run { file, zero_config } } => {
            return crate::playbook::run(&cli, file, *zero_config).await;
        }
        // Needs only the archive and its password: no account, no server.
        CliCommand::Export { action: Some(ExportAction::Verify { file }), .. } => {
            let verified = crate::execute::verify_export(&Session::new(), file).await?;
            return print_reply(&Reply::TranscriptVerified(verified), cli.json);
        }
        _ => {}
    }
    let username = match &cli.username {
        Some(u) => u.trim().to_lowercase(),
        None => prompt_username()?,
    };
    let password = match &cli.password {
        Some(p) => p.clone(),
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            rpassword::prompt_password(format!("password for {username}: ")).context("reading the password")?
        }
        None => bail!(UsageError("a password is required: QPC_PASSWORD, --password or a terminal prompt".into())),
    };
    let state_dir = cli.state_dir.clone().unwrap_or_else(|| local_server::data_root().join(&username));

    let spinner = crate::progress::spinner("connecting…");
    let client = connect(&cli, state_dir.clone()).await;
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    let client = client?;
    let mut events = client.subscribe();
    let shared = match command {
        CliCommand::Register => {
            client.register(&username, password.as_bytes()).await.context("registering")?;
            println!("registered {username}");
            None
        }
        CliCommand::Login => {
            client.login(&username, password.as_bytes()).await.context("logging in")?;
            println!("logged in as {username}");
            None
        }
        CliCommand::Recv { wait } => {
            sign_in(&client, &username, &password, &state_dir).await?;
            recv(&client, &mut events, Duration::from_secs(wait), cli.json).await?;
            None
        }
        CliCommand::Repl => {
            sign_in(&client, &username, &password, &state_dir).await?;
            crate::repl::run(client.clone(), events, Some(state_dir.join(HISTORY_FILE))).await?;
            None
        }
        CliCommand::Tui => {
            sign_in(&client, &username, &password, &state_dir).await?;
            crate::tui::run(client.clone(), events).await?;
            None
        }
        CliCommand::Demo | CliCommand::Playbook { .. } | CliCommand::Export { action: Some(_), .. } => {
            bail!("handled before connecting")
        }
        CliCommand::Export { action: None, conversation, out } => {
            let out = out.ok_or_else(|| UsageError("--out FILE is required".into()))?;
            Some(Command::Export {
                conversation: conversation.map(|c| c.trim_start_matches(['@', '#']).to_owned()),
                out,
            })
        }
        CliCommand::Send { to, group, text } => {
            let to = match (to, group) {
                (Some(user), _) => Target::Dm(user.to_lowercase()),
                (None, Some(group)) => Target::Named(group),
                (None, None) => bail!(UsageError("--to USER or --group NAME is required".into())),
            };
            Some(Command::Send { to, text })
        }
        CliCommand::Dm { user } => Some(Command::Dm(user.to_lowercase())),
        CliCommand::Group { action } => Some(match action {
            GroupAction::Create { name, users } => {
                Command::CreateGroup { name, members: users.iter().map(|u| u.to_lowercase()).collect() }
            }
            GroupAction::Invite { name, user } => {
                Command::Invite { to: Target::Named(name), user: user.to_lowercase() }
            }
            GroupAction::Remove { name, user } => {
                Command::Remove { from: Target::Named(name), user: user.to_lowercase() }
            }
            GroupAction::Leave { name } => Command::Leave(Target::Named(name)),
        }),
        CliCommand::Whoami => Some(Command::Whoami),
        CliCommand::Verify { user } => Some(Command::Verify(user.to_lowercase())),
        CliCommand::List => Some(Command::List),
    };
    if let Some(command) = shared {
        sign_in(&client, &username, &password, &state_dir).await?;
        let reply = execute(&client, &mut Session::new(), command).await?;
        print_reply(&reply, cli.json)?;
    }
    client.close();
    Ok(())
}

/// Prints a one-shot reply: JSON for `whoami`, `list`, `export` and `export verify` with
/// `--json`, text otherwise.
fn print_reply(reply: &Reply, json: bool) -> anyhow::Result<()> {
    let value = match reply {
        Reply::Whoami(me) if json => serde_json::to_string(me)?,
        Reply::Conversations(list) if json => serde_json::to_string(list)?,
        Reply::Exported(summary) if json => serde_json::to_string(summary)?,
        Reply::TranscriptVerified(transcript) if json => serde_json::to_string(transcript)?,
        _ => match reply_text(reply, Palette::detect()) {
            Some(text) => text,
            None => return Ok(()),
        },
    };
    println!("{value}");
    Ok(())
}

fn prompt_username() -> anyhow::Result<String> {
    use std::io::Write;
    let missing = || UsageError("a username is required (--username or QPC_USERNAME)".into());
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(missing());
    }
    print!("username: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let v = line.trim().to_lowercase();
    if v.is_empty() {
        bail!(missing());
    }
    Ok(v)
}

/// Connects as the command line says; without `--server`, zero-config.
pub(crate) async fn connect(cli: &Cli, state_dir: PathBuf) -> anyhow::Result<QpcClient> {
    let pinned_local = || std::fs::read(local_server::server_dir().join(quicprochat_server::files::DEV_CERT)).ok();
    let Some(server) = &cli.server else {
        let (addr, _) = resolve_server(local_server::DEFAULT_ADDR)?;
        let config = ClientConfig::new(addr, Trust::PinnedCertificate(Vec::new()), state_dir);
        return local_server::connect_or_start(config).await;
    };
    let (addr, host) = resolve_server(server)?;
    let trust = match &cli.ca_cert {
        Some(path) => Trust::CaCertificates(read_certs(path)?),
        None => match pinned_local() {
            Some(cert) => Trust::PinnedCertificate(cert),
            None => bail!(UsageError(format!(
                "--ca-cert is required to trust {server} (for a dev server: DATA_DIR/server-cert.der)"
            ))),
        },
    };
    let mut config = ClientConfig::new(addr, trust, state_dir);
    config.server_name = host;
    let timeout = Duration::from_secs(cli.connect_timeout.max(1));
    match tokio::time::timeout(timeout, QpcClient::connect(config)).await {
        Ok(connected) => connected
            .with_context(|| format!("cannot reach {server} (is qpc-server running, and is the certificate right?)")),
        Err(_) => bail!(NetworkError(format!("cannot reach {server}: no answer within {} s", timeout.as_secs()))),
    }
}

/// Reads one or more certificates from a DER or PEM file.
fn read_certs(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).map_err(|e| UsageError(format!("cannot read {}: {e}", path.display())))?;
    let certs = quicprochat_sdk::parse_certificates(&bytes);
    if certs.is_empty() {
        bail!(UsageError(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

/// Logs in, or registers first if this state dir has never held the account.
pub(crate) async fn sign_in(
    client: &QpcClient,
    username: &str,
    password: &str,
    state_dir: &Path,
) -> anyhow::Result<()> {
    if quicprochat_sdk::has_local_account(state_dir) {
        return client.login(username, password.as_bytes()).await.context("logging in");
    }
    match client.register(username, password.as_bytes()).await {
        Ok(()) => {
            eprintln!("qpc: registered new account {username}");
            Ok(())
        }
        Err(SdkError::UsernameTaken) => client.login(username, password.as_bytes()).await.context("logging in"),
        Err(e) => Err(e).context("registering"),
    }
}

/// Prints every message that arrives: waits up to `wait` for the first, then for stragglers
/// already on their way. With `json`, one JSON object per line.
async fn recv(
    client: &QpcClient,
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    wait: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let mut printed = 0usize;
    let mut deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ClientEvent::MessageReceived { message, .. })) => {
                print_message(client, &message, json)?;
                if printed == 0 {
                    // After the first message, only drain what is already arriving.
                    deadline = tokio::time::Instant::now() + Duration::from_millis(500);
                }
                printed += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                eprintln!("qpc: {n} events were dropped; see the conversation history");
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => break,
        }
    }
    // Anything that arrived in between is fetched once more before leaving.
    client.sync().await.context("fetching waiting messages")?;
    while let Ok(event) = events.try_recv() {
        if let ClientEvent::MessageReceived { message, .. } = event {
            print_message(client, &message, json)?;
        }
    }
    Ok(())
}

fn print_message(client: &QpcClient, message: &Message, json: bool) -> anyhow::Result<()> {
    if json {
        let name = client.conversation(message.conversation)?.map(|c| c.name().to_owned()).unwrap_or_default();
        println!("{}", serde_json::to_string(&MessageView::new(message, &name))?);
    } else {
        println!("[{}] {}", message.sender, message.text);
    }
    Ok(())
}
