//! A minimal bot built on the SDK's public API only: it logs in (registering on first run) and
//! answers every text message sent to it, in a DM or a group, with `echo: <text>`.
//!
//! ```sh
//! qpc-server --data-dir ./data &           # dev mode: writes ./data/server-cert.der
//! QPC_PASSWORD=… cargo run -p quicprochat-sdk --example echo_bot -- \
//!     --server 127.0.0.1:7000 --cert ./data/server-cert.der --state-dir ./echo-bot --username echo
//! ```
//! Then, from `qpc`: `/dm echo` and say something.

use std::net::SocketAddr;
use std::path::PathBuf;

use quicprochat_sdk::{ClientConfig, ClientEvent, MessageKind, QpcClient, SdkError, Trust};
use tokio::sync::broadcast;

/// Answers text messages until the session ends or the event stream closes. `events` must be
/// subscribed before the bot is reachable, so no message slips by.
pub async fn serve(client: &QpcClient, mut events: broadcast::Receiver<ClientEvent>) -> Result<(), SdkError> {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // Too slow to keep up: some events were dropped, the messages are in the history.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                eprintln!("echo_bot: missed {missed} events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        match event {
            ClientEvent::MessageReceived { conversation, message }
                if !message.outgoing && message.kind == MessageKind::Text =>
            {
                let Some(chat) = client.conversation(conversation)? else { continue };
                chat.send_text(&format!("echo: {}", message.text)).await?;
            }
            ClientEvent::SessionExpired => return Ok(()),
            _ => {}
        }
    }
}

struct Args {
    server: SocketAddr,
    cert: PathBuf,
    state_dir: PathBuf,
    username: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut server, mut cert, mut state_dir, mut username) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => server = Some(value.parse().map_err(|_| format!("{value:?} is not IP:PORT"))?),
            "--cert" => cert = Some(PathBuf::from(value)),
            "--state-dir" => state_dir = Some(PathBuf::from(value)),
            "--username" => username = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Args {
        server: server.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7000))),
        cert: cert.ok_or("--cert DATA_DIR/server-cert.der is required")?,
        state_dir: state_dir.unwrap_or_else(|| PathBuf::from("./echo-bot")),
        username: username.unwrap_or_else(|| "echo".into()),
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(problem) => {
            eprintln!("echo_bot: {problem}");
            return std::process::ExitCode::from(2);
        }
    };
    let Ok(password) = std::env::var("QPC_PASSWORD") else {
        eprintln!("echo_bot: set QPC_PASSWORD");
        return std::process::ExitCode::from(2);
    };
    match run(args, password.as_bytes()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_bot: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, password: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let cert = std::fs::read(&args.cert)?;
    let client =
        QpcClient::connect(ClientConfig::new(args.server, Trust::PinnedCertificate(cert), args.state_dir)).await?;
    let events = client.subscribe();
    match client.login(&args.username, password).await {
        Ok(()) => {}
        // First run: no account on the server yet.
        Err(SdkError::InvalidCredentials) => client.register(&args.username, password).await?,
        Err(e) => return Err(e.into()),
    }
    println!("echo_bot: {} is listening", args.username);
    serve(&client, events).await?;
    Ok(())
}
