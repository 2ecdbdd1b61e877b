//! Transcript export: alice exports what she and bob said, the archive verifies on its own, and
//! a flipped byte, a cut, a removed record or a wrong password each fail with their own error.

use std::path::Path;

use quicprochat_sdk::{ClientEvent, ConversationId, SdkError, verify_transcript};

use crate::{client, next_event, received_text, start_server};

const ARCHIVE_PASSWORD: &[u8] = b"archive password";

fn is_message(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::MessageReceived { .. })
}

/// Byte offsets where each sealed record (its length prefix) starts, after the 33-byte header.
fn record_offsets(archive: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 33;
    while at < archive.len() {
        offsets.push(at);
        let len = u32::from_be_bytes(archive[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    assert_eq!(at, archive.len(), "records fill the archive exactly");
    offsets
}

fn verify_bytes(dir: &Path, name: &str, bytes: &[u8], password: &[u8]) -> Result<u64, SdkError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    verify_transcript(&path, password).map(|v| v.record_count())
}

#[tokio::test]
async fn export_then_verify_and_every_kind_of_damage_is_named() {
    let server_dir = tempfile::tempdir().unwrap();
    let alice_dir = tempfile::tempdir().unwrap();
    let bob_dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let server = start_server(server_dir.path()).await;
    let alice = client(&server, alice_dir.path()).await;
    let bob = client(&server, bob_dir.path()).await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    alice.register("alice", b"alice pw").await.unwrap();
    bob.register("bob", b"bob pw").await.unwrap();

    let alice_dm = alice.dm("bob").await.unwrap();
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await;
    let bob_dm = bob.dm("alice").await.unwrap();
    alice_dm.send_text("hello bob").await.unwrap();
    assert_eq!(received_text(&next_event(&mut bob_events, is_message).await), Some(("alice", "hello bob")));
    bob_dm.send_text("hello alice").await.unwrap();
    assert_eq!(received_text(&next_event(&mut alice_events, is_message).await), Some(("bob", "hello alice")));
    let edited = alice_dm.send_text("see you at 5").await.unwrap();
    alice_dm.edit(edited, "see you at 6").await.unwrap();
    let notes = out.path().join("notes.txt");
    std::fs::write(&notes, b"the plan").unwrap();
    alice_dm.send_file(&notes, |_, _| {}).await.unwrap();
    let team = alice.create_group("team", &["bob"]).await.unwrap();
    team.send_text("to the team").await.unwrap();

    // One conversation.
    let dm_path = out.path().join("dm.qpca");
    let summary = alice.export_transcript(Some(alice_dm.id()), &dm_path, ARCHIVE_PASSWORD).await.unwrap();
    assert_eq!((summary.records, summary.conversations), (4, 1));
    assert_eq!(summary.path, dm_path);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dm_path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let verified = verify_transcript(&dm_path, ARCHIVE_PASSWORD).unwrap();
    assert_eq!(verified.record_count(), 4);
    assert_eq!(verified.head_hash, summary.head_hash);
    let said: Vec<(&str, &str)> = verified.records.iter().map(|r| (r.sender.as_str(), r.text.as_str())).collect();
    assert_eq!(&said[..3], &[("alice", "hello bob"), ("bob", "hello alice"), ("alice", "see you at 6 (edited)")]);
    let file = &verified.records[3].text;
    assert!(file.starts_with("[file] notes.txt (8 bytes, encrypted blob SHA-256 "), "{file}");
    assert_eq!(file.rsplit(' ').next().unwrap().trim_end_matches(')').len(), 64, "{file}");
    let (alice_device, bob_device) = (alice.device_id().unwrap(), bob.device_id().unwrap());
    for r in &verified.records {
        assert_eq!(r.conversation, alice_dm.id());
        assert!(r.timestamp_ms > 0);
        let device = if r.sender == "alice" { alice_device } else { bob_device };
        assert_eq!(r.sender_device, Some(device), "each record names the device MLS authenticated");
    }
    assert!(verified.records.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms), "oldest first");
    // The same transcript has the same head hash under another password and salt.
    let again = out.path().join("again.qpca");
    let other = alice.export_transcript(Some(alice_dm.id()), &again, b"another password").await.unwrap();
    assert_eq!(other.head_hash, summary.head_hash);
    assert_ne!(std::fs::read(&again).unwrap(), std::fs::read(&dm_path).unwrap());

    // Every conversation, also after the DM; and bob's own view verifies with his count.
    let all_path = out.path().join("all.qpca");
    let all = alice.export_transcript(None, &all_path, ARCHIVE_PASSWORD).await.unwrap();
    assert_eq!((all.records, all.conversations), (5, 2));
    let everything = verify_transcript(&all_path, ARCHIVE_PASSWORD).unwrap();
    let last = everything.records.last().unwrap();
    assert_eq!((last.conversation, last.text.as_str()), (team.id(), "to the team"));
    next_event(&mut bob_events, |e| matches!(e, ClientEvent::MessageEdited { .. })).await;
    next_event(
        &mut bob_events,
        |e| matches!(e, ClientEvent::MessageReceived { message, .. } if message.attachment.is_some()),
    )
    .await;
    let bob_path = out.path().join("bob.qpca");
    assert_eq!(bob.export_transcript(Some(bob_dm.id()), &bob_path, ARCHIVE_PASSWORD).await.unwrap().records, 4);
    let bobs = verify_transcript(&bob_path, ARCHIVE_PASSWORD).unwrap();
    let texts = |v: &quicprochat_sdk::VerifiedTranscript| v.records.iter().map(|r| r.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&bobs), texts(&verified), "bob's copy of the conversation says the same");
    assert_eq!(bobs.records[1].sender_device, Some(bob.device_id().unwrap()));

    let unknown = alice.export_transcript(Some(ConversationId([7; 16])), &out.path().join("x"), ARCHIVE_PASSWORD).await;
    assert!(matches!(unknown, Err(SdkError::UnknownConversation(_))), "{unknown:?}");
    assert!(!out.path().join("x").exists());

    // Damage, each named by its own error.
    let bytes = std::fs::read(&dm_path).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 5, "four messages and the end record");
    let dir = out.path();
    assert!(matches!(verify_bytes(dir, "ok", &bytes, ARCHIVE_PASSWORD), Ok(4)));

    let mut flipped = bytes.clone();
    flipped[offsets[2] + 4 + 20] ^= 0x01;
    let e = verify_bytes(dir, "flipped", &flipped, ARCHIVE_PASSWORD).unwrap_err();
    assert!(matches!(e, SdkError::ArchiveTampered { record: 2 }), "{e:?}");
    assert!(e.is_invalid_archive());

    let e = verify_bytes(dir, "cut", &bytes[..bytes.len() - 10], ARCHIVE_PASSWORD).unwrap_err();
    assert!(matches!(e, SdkError::ArchiveTruncated), "{e:?}");
    let e = verify_bytes(dir, "no-end", &bytes[..offsets[4]], ARCHIVE_PASSWORD).unwrap_err();
    assert!(matches!(e, SdkError::ArchiveTruncated), "a cut at a record boundary too: {e:?}");

    let mut removed = bytes[..offsets[1]].to_vec();
    removed.extend_from_slice(&bytes[offsets[2]..]);
    let e = verify_bytes(dir, "removed", &removed, ARCHIVE_PASSWORD).unwrap_err();
    assert!(matches!(e, SdkError::ArchiveChainBroken { record: 1 }), "{e:?}");

    let e = verify_bytes(dir, "wrong", &bytes, b"not the password").unwrap_err();
    assert!(matches!(e, SdkError::ArchiveWrongPassword), "{e:?}");
    assert!(!e.is_invalid_archive());
    let e = verify_bytes(dir, "plain", b"just some text, not an archive", ARCHIVE_PASSWORD).unwrap_err();
    assert!(matches!(e, SdkError::NotAnArchive), "{e:?}");
    let e = verify_transcript(&dir.join("missing"), ARCHIVE_PASSWORD).unwrap_err();
    assert!(matches!(e, SdkError::ArchiveFile { .. }), "{e:?}");

    alice.close();
    bob.close();
    server.shutdown().await.unwrap();
}
