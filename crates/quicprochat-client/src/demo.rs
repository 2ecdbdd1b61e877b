//! `qpc demo`: a private server in a temp dir; alice, bob and carol; a DM both ways, a group of
//! three with a reaction, a file and a removal; and a check that the server's files hold none
//! of the plaintexts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use quicprochat_sdk::{ClientEvent, ConversationHandle, QpcClient};
use tokio::sync::broadcast::Receiver;

use crate::private_server::PrivateServer;

const LINES: [(&str, &str); 4] = [
    ("alice", "Hi Bob! This message is end-to-end encrypted with post-quantum MLS."),
    ("bob", "Hi Alice. The server only ever sees ciphertext."),
    ("alice", "And it never saw our passwords either: OPAQUE."),
    ("bob", "See you in the group chat."),
];
const GROUP_HELLO: &str = "Welcome to the team, Bob and Carol: three members, one MLS group.";
const CAROL_REPLY: &str = "Thanks Alice, Carol here, reading you in the team.";
const FILE_TEXT: &str = "Team plan, top secret: ship the encrypted file transfer on Friday.\n";
const AFTER_REMOVAL: &str = "Carol has left; from this epoch on she cannot read the team.";
const WAITING: &str = "Bob, this one waits for you on the server, encrypted.";
const PASSWORDS: [&str; 3] = ["alice demo password", "bob demo password", "carol demo password"];

/// Runs the tour; an error means something did not work as promised.
pub async fn run() -> anyhow::Result<()> {
    let mut server = PrivateServer::start().await?;
    println!("▶ starting a private qpc-server in {}", server.server_dir().display());
    println!("  listening on {} (QUIC, TLS 1.3, self-signed certificate pinned by the clients)", server.addr());

    let alice = QpcClient::connect(server.client_config("alice")).await?;
    let bob = QpcClient::connect(server.client_config("bob")).await?;
    let carol = QpcClient::connect(server.client_config("carol")).await?;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    let mut carol_events = carol.subscribe();

    println!("▶ registering alice, bob and carol with OPAQUE (the server never sees a password)");
    for ((client, name), password) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")].into_iter().zip(PASSWORDS) {
        client.register(name, password.as_bytes()).await?;
    }

    println!("▶ alice opens a DM with bob (an MLS group, ciphersuite MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519)");
    let alice_dm = alice.dm("bob").await?;
    wait_for(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await?;
    let bob_dm = bob.dm("alice").await?;

    for (from, text) in LINES {
        let (dm, peer_events) =
            if from == "alice" { (&alice_dm, &mut bob_events) } else { (&bob_dm, &mut alice_events) };
        dm.send_text(text).await?;
        let got = received(peer_events).await?;
        ensure!(got == text, "received text differs from what was sent");
        println!("  [{from} → {}] {got}", if from == "alice" { "bob" } else { "alice" });
    }

    println!("▶ alice creates the group #team with bob and carol (one commit, one Welcome each)");
    let team = alice.create_group("team", &["bob", "carol"]).await?;
    let bob_team = joined(&bob, &mut bob_events).await?;
    let carol_team = joined(&carol, &mut carol_events).await?;
    println!("  members: {} (MLS epoch {})", team.members()?.join(", "), team.epoch()?);
    team.send_text(GROUP_HELLO).await?;
    for (name, events) in [("bob", &mut bob_events), ("carol", &mut carol_events)] {
        ensure!(received(events).await? == GROUP_HELLO, "{name} received another text");
    }
    println!("  [alice → #team] {GROUP_HELLO}");
    carol_team.send_text(CAROL_REPLY).await?;
    ensure!(received(&mut alice_events).await? == CAROL_REPLY, "alice received another text");
    ensure!(received(&mut bob_events).await? == CAROL_REPLY, "bob received another text");
    println!("  [carol → #team] {CAROL_REPLY}");

    println!("▶ bob reacts to alice's message (the reaction is an encrypted message too)");
    let hello = bob_team.messages(10)?.into_iter().find(|m| m.text == GROUP_HELLO).context("the greeting")?;
    bob_team.react(hello.id, "👍").await?;
    wait_for(&mut alice_events, |e| matches!(e, ClientEvent::ReactionAdded { emoji, .. } if emoji == "👍")).await?;
    println!("  alice sees: bob reacted 👍");

    println!("▶ alice shares a file with the team: encrypted on her device, stored as an opaque blob");
    let plan = server.root().join("team-plan.txt");
    std::fs::write(&plan, FILE_TEXT).context("writing the demo file")?;
    team.send_file(&plan, |_, _| {}).await?;
    let file_message = wait_for(
        &mut bob_events,
        |e| matches!(e, ClientEvent::MessageReceived { message, .. } if message.attachment.is_some()),
    )
    .await?;
    let ClientEvent::MessageReceived { message, .. } = file_message else { bail!("not a message") };
    let downloads = server.root().join("bob-downloads");
    std::fs::create_dir_all(&downloads)?;
    let saved = bob.download_file(message.id, &downloads, |_, _| {}).await?;
    ensure!(std::fs::read_to_string(&saved)? == FILE_TEXT, "the downloaded file differs");
    let name = message.attachment.map(|a| a.name).unwrap_or_default();
    println!("  bob downloaded and decrypted {name} ({} bytes), identical ✔", FILE_TEXT.len());

    println!("▶ alice removes carol: a new epoch, new keys carol does not have");
    team.remove("carol").await?;
    wait_for(&mut bob_events, |e| matches!(e, ClientEvent::MemberLeft { username, .. } if username == "carol")).await?;
    wait_for(&mut carol_events, |e| matches!(e, ClientEvent::MemberLeft { username, .. } if username == "carol"))
        .await?;
    println!("  members: {} (MLS epoch {})", team.members()?.join(", "), team.epoch()?);
    team.send_text(AFTER_REMOVAL).await?;
    ensure!(received(&mut bob_events).await? == AFTER_REMOVAL, "bob received another text");
    println!("  [alice → #team] {AFTER_REMOVAL}");
    ensure!(
        !carol_team.messages(50)?.iter().any(|m| m.text == AFTER_REMOVAL),
        "carol should not be able to read the team after her removal"
    );
    println!("  carol did not receive it ✔");

    println!("▶ bob goes offline; alice sends one more, which waits on the server");
    bob.close();
    carol.close();
    alice_dm.send_text(WAITING).await?;
    alice.close();
    server.stop().await?;

    let server_dir = server.server_dir();
    let (rows, bytes) = queued_envelopes(&server_dir.join(quicprochat_server::files::DATABASE))?;
    ensure!(rows >= 1, "the message for offline bob should be queued on the server");
    println!("  the server holds {rows} queued envelope(s), {bytes} bytes of MLS ciphertext");

    println!("▶ scanning every file of the server (its database holds the blobs too) for the plaintexts");
    let mut secrets: Vec<&[u8]> = LINES.iter().map(|(_, t)| t.as_bytes()).collect();
    secrets.extend([GROUP_HELLO, CAROL_REPLY, FILE_TEXT, AFTER_REMOVAL, WAITING].map(str::as_bytes));
    secrets.extend(PASSWORDS.map(str::as_bytes));
    let scanned = scan(&server_dir, &secrets)?;
    ensure!(scanned > 0, "no server file found to scan");
    println!("  {scanned} bytes scanned: no plaintext message, file or password on the server ✔");
    println!("demo complete");
    Ok(())
}

/// Scans every file under `dir` for the secrets; the bytes scanned.
fn scan(dir: &Path, secrets: &[&[u8]]) -> anyhow::Result<usize> {
    let mut scanned = 0usize;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            scanned += scan(&path, secrets)?;
            continue;
        }
        let bytes = std::fs::read(&path)?;
        scanned += bytes.len();
        if secrets.iter().any(|s| contains(&bytes, s)) {
            bail!("a plaintext or password was found in {}", path.display());
        }
    }
    Ok(scanned)
}

/// Counts the envelopes the server stores and their payload bytes.
fn queued_envelopes(db: &Path) -> anyhow::Result<(u64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (rows, bytes): (i64, i64) =
        conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM envelopes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((u64::try_from(rows)?, u64::try_from(bytes)?))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The text of the next message received.
async fn received(events: &mut Receiver<ClientEvent>) -> anyhow::Result<String> {
    match wait_for(events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await? {
        ClientEvent::MessageReceived { message, .. } => Ok(message.text),
        _ => bail!("not a message"),
    }
}

/// The conversation this client joins next.
async fn joined(client: &QpcClient, events: &mut Receiver<ClientEvent>) -> anyhow::Result<ConversationHandle> {
    match wait_for(events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await? {
        ClientEvent::ConversationCreated { conversation, .. } => {
            client.conversation(conversation)?.context("the joined conversation")
        }
        _ => bail!("not a conversation"),
    }
}

async fn wait_for(
    events: &mut Receiver<ClientEvent>,
    pred: impl Fn(&ClientEvent) -> bool,
) -> anyhow::Result<ClientEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if pred(&e) => return Ok(e),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("event stream failed: {e}"),
            Err(_) => bail!("timed out waiting for delivery"),
        }
    }
}
