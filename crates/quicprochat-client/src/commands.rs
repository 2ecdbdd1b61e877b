//! One `run` for every command: build the config, connect, log in, execute.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use quicprochat_sdk::{ClientConfig, ClientEvent, QpcClient, SdkError, Trust};

use crate::cli::{Cli, Command, resolve_server};
use crate::local_server;

/// Runs the parsed command line.
pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.take().unwrap_or(Command::Repl);
    if let Command::Demo = command {
        return crate::demo::run().await;
    }
    let username = match &cli.username {
        Some(u) => u.trim().to_lowercase(),
        None => prompt("username: ")?,
    };
    let password = match &cli.password {
        Some(p) => p.clone(),
        None => rpassword::prompt_password(format!("password for {username}: ")).context("reading the password")?,
    };
    let state_dir = cli.state_dir.clone().unwrap_or_else(|| local_server::data_root().join(&username));

    let (client, _) = connect(&cli, state_dir.clone()).await?;
    let mut events = client.subscribe();
    match command {
        Command::Register => {
            client.register(&username, password.as_bytes()).await.map_err(explain)?;
            println!("registered {username}");
        }
        Command::Login => {
            client.login(&username, password.as_bytes()).await.map_err(explain)?;
            println!("logged in as {username}");
        }
        Command::Send { to, group, text } => {
            sign_in(&client, &username, &password, &state_dir).await?;
            let conversation = match (to, group) {
                (Some(to), _) => open_dm(&client, &to).await?,
                (None, Some(group)) => client
                    .find_conversation(&group)
                    .map_err(explain)?
                    .ok_or_else(|| anyhow::anyhow!("no group named {group} on this device"))?,
                (None, None) => bail!("--to USER or --group NAME is required"),
            };
            let id = conversation.send_text(&text).await.map_err(explain)?;
            println!("sent {id} to {}", conversation.name());
        }
        Command::Recv { wait } => {
            sign_in(&client, &username, &password, &state_dir).await?;
            recv(&client, &mut events, Duration::from_secs(wait)).await?;
        }
        Command::Repl => {
            sign_in(&client, &username, &password, &state_dir).await?;
            crate::repl::run(client.clone(), events).await?;
        }
        Command::Demo => unreachable_demo()?,
    }
    client.close();
    Ok(())
}

fn unreachable_demo() -> anyhow::Result<()> {
    bail!("demo is handled before connecting")
}

fn prompt(label: &str) -> anyhow::Result<String> {
    use std::io::Write;
    print!("{label}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let v = line.trim().to_lowercase();
    if v.is_empty() {
        bail!("a username is required (--username or QPC_USERNAME)");
    }
    Ok(v)
}

/// Connects as the command line says; without `--server`, zero-config.
async fn connect(cli: &Cli, state_dir: PathBuf) -> anyhow::Result<(QpcClient, bool)> {
    let pinned_local = || std::fs::read(local_server::server_dir().join(quicprochat_server::files::DEV_CERT)).ok();
    match &cli.server {
        Some(server) => {
            let (addr, host) = resolve_server(server)?;
            let trust = match &cli.ca_cert {
                Some(path) => Trust::CaCertificates(read_certs(path)?),
                None => match pinned_local() {
                    Some(cert) => Trust::PinnedCertificate(cert),
                    None => {
                        bail!("--ca-cert is required to trust {server} (for a dev server: DATA_DIR/server-cert.der)")
                    }
                },
            };
            let mut config = ClientConfig::new(addr, trust, state_dir);
            config.server_name = host;
            let client = QpcClient::connect(config).await.map_err(|e| {
                anyhow::anyhow!("cannot reach {server}: {e} (is qpc-server running, and is the certificate right?)")
            })?;
            Ok((client, false))
        }
        None => {
            let (addr, _) = resolve_server(local_server::DEFAULT_ADDR)?;
            let config = ClientConfig::new(addr, Trust::PinnedCertificate(Vec::new()), state_dir);
            Ok((local_server::connect_or_start(config).await?, true))
        }
    }
}

/// Reads one or more certificates from a DER or PEM file.
fn read_certs(path: &PathBuf) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = quicprochat_sdk::parse_certificates(&bytes);
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Logs in, or registers first if this state dir has never held the account.
async fn sign_in(
    client: &QpcClient,
    username: &str,
    password: &str,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if quicprochat_sdk::has_local_account(state_dir) {
        return client.login(username, password.as_bytes()).await.map_err(explain);
    }
    match client.register(username, password.as_bytes()).await {
        Ok(()) => {
            eprintln!("qpc: registered new account {username}");
            Ok(())
        }
        Err(SdkError::UsernameTaken) => client.login(username, password.as_bytes()).await.map_err(explain),
        Err(e) => Err(explain(e)),
    }
}

/// Opens the DM, waiting briefly for the peer's invitation if the peer created it first.
pub async fn open_dm(client: &QpcClient, peer: &str) -> anyhow::Result<quicprochat_sdk::ConversationHandle> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.dm(peer).await {
            Ok(dm) => return Ok(dm),
            Err(SdkError::AwaitingInvitation(_)) if tokio::time::Instant::now() < deadline => {
                let _ = tokio::time::timeout(Duration::from_millis(500), client.sync()).await;
            }
            Err(e) => return Err(explain(e)),
        }
    }
}

fn explain(e: SdkError) -> anyhow::Error {
    anyhow::Error::new(e)
}

/// Prints every message that arrives: waits up to `wait` for the first, then for stragglers
/// already on their way.
async fn recv(
    client: &QpcClient,
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    wait: Duration,
) -> anyhow::Result<()> {
    let mut printed = 0usize;
    let mut deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(ClientEvent::MessageReceived { message, .. })) => {
                println!("[{}] {}", message.sender, message.text);
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
    client.sync().await.map_err(explain)?;
    while let Ok(event) = events.try_recv() {
        if let ClientEvent::MessageReceived { message, .. } = event {
            println!("[{}] {}", message.sender, message.text);
        }
    }
    Ok(())
}
