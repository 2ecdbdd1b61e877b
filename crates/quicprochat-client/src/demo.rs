//! `qpc demo`: a private server in a temp dir, alice and bob, a DM both ways, and a check that
//! the server's database holds none of the plaintexts.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use quicprochat_sdk::{ClientConfig, ClientEvent, KdfStrength, QpcClient, Trust};

const LINES: [(&str, &str); 4] = [
    ("alice", "Hi Bob! This message is end-to-end encrypted with post-quantum MLS."),
    ("bob", "Hi Alice. The server only ever sees ciphertext."),
    ("alice", "And it never saw our passwords either: OPAQUE."),
    ("bob", "See you in the group chat."),
];

/// Runs the tour; an error means something did not work as promised.
pub async fn run() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let server_dir = tmp.path().join("server");
    println!("▶ starting a private qpc-server in {}", server_dir.display());
    let config = quicprochat_server::ServerConfig::new("127.0.0.1:0".parse()?, &server_dir);
    let server = quicprochat_server::start(config).await.context("starting the server")?;
    let cert = server.certificate_der().to_vec();
    println!("  listening on {} (QUIC, TLS 1.3, self-signed certificate pinned by the clients)", server.local_addr());

    let client = |name: &str| {
        let mut c =
            ClientConfig::new(server.local_addr(), Trust::PinnedCertificate(cert.clone()), tmp.path().join(name));
        // The demo runs in debug builds too; real accounts use the default (production) cost.
        c.kdf = KdfStrength::InsecureTestOnly;
        c
    };
    let alice = QpcClient::connect(client("alice")).await?;
    let bob = QpcClient::connect(client("bob")).await?;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();

    println!("▶ registering alice and bob with OPAQUE (the server never sees a password)");
    alice.register("alice", b"alice demo password").await?;
    bob.register("bob", b"bob demo password").await?;

    println!("▶ alice opens a DM with bob (an MLS group, ciphersuite MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519)");
    let alice_dm = alice.dm("bob").await?;
    wait_for(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await?;
    let bob_dm = bob.dm("alice").await?;

    for (from, text) in LINES {
        let (dm, peer_events) =
            if from == "alice" { (&alice_dm, &mut bob_events) } else { (&bob_dm, &mut alice_events) };
        dm.send_text(text).await?;
        let got = wait_for(peer_events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await?;
        if let ClientEvent::MessageReceived { message, .. } = got {
            ensure!(message.text == text, "received text differs from what was sent");
            println!("  [{from} → {}] {}", message_peer(from), message.text);
        }
    }

    println!("▶ bob goes offline; alice sends one more, which waits on the server");
    bob.close();
    alice_dm.send_text(WAITING).await?;
    alice.close();
    server.shutdown().await?;

    let (rows, bytes) = queued_envelopes(&server_dir.join(quicprochat_server::files::DATABASE))?;
    ensure!(rows >= 1, "the message for offline bob should be queued on the server");
    println!("  the server holds {rows} queued envelope(s), {bytes} bytes of MLS ciphertext");

    println!("▶ scanning the server's database files for the plaintexts");
    let mut scanned = 0usize;
    for entry in std::fs::read_dir(&server_dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.starts_with(quicprochat_server::files::DATABASE) {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        scanned += bytes.len();
        for text in LINES.iter().map(|(_, t)| *t).chain([WAITING]) {
            if contains(&bytes, text.as_bytes()) {
                bail!("plaintext found in {}: {text:?}", path.display());
            }
        }
        for secret in [&b"alice demo password"[..], b"bob demo password"] {
            if contains(&bytes, secret) {
                bail!("a password was found in {}", path.display());
            }
        }
    }
    ensure!(scanned > 0, "no database file found to scan");
    println!("  {scanned} bytes scanned: no plaintext message and no password on the server ✔");
    println!("demo complete");
    Ok(())
}

const WAITING: &str = "Bob, this one waits for you on the server, encrypted.";

/// Counts the envelopes the server stores and their payload bytes.
fn queued_envelopes(db: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (rows, bytes): (i64, i64) =
        conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM envelopes", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok((u64::try_from(rows)?, u64::try_from(bytes)?))
}

fn message_peer(from: &str) -> &'static str {
    if from == "alice" { "bob" } else { "alice" }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn wait_for(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
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
