//! Writes a seed corpus for every fuzz target into `fuzz/corpus/<target>/`:
//! well-formed frames, envelopes, archives, sealed blobs and MLS messages,
//! so the fuzzer starts from inputs that get past the first checks.
//!
//! `cargo run --release --example seeds` (from `fuzz/`). Envelopes,
//! archives and sealed blobs are made with the targets' fixed keys and
//! password, so they open; MLS messages come from a group like the targets'
//! (same identities and group id) but with other HPKE keys, so they parse
//! and then fail signature or decryption checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;

use quicprochat_core::archive::{ArchiveRecord, ArchiveWriter, archive_genesis_hash};
use quicprochat_core::{ChannelId, ChannelTracker, DeviceId, KdfParams, MlsClient, MlsSuite, envelope, keystore};
use quicprochat_fuzz::{AAD, FixedRng, GROUP, KEYSTORE_KEY, PASSWORD, hybrid_key_pair, identity, mls_fixture};
use quicprochat_rpc::frame;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "corpus", target].iter().collect();
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn frames() {
    let max = frame::DEFAULT_MAX_PAYLOAD;
    for (name, payload) in [("empty", &b""[..]), ("small", b"hello"), ("large", &[0x61; 100])] {
        write("frame_request", name, &frame::encode_request(800, 42, payload, max).unwrap());
        write("frame_response", name, &frame::encode_response(0, 42, payload, max).unwrap());
        write("frame_push", name, &frame::encode_push(4, payload, max).unwrap());
    }
}

fn envelopes(rng: &mut FixedRng) {
    let recipient = hybrid_key_pair();
    for (name, plaintext) in [("empty", &b""[..]), ("hello", b"hello"), ("1KiB", &[0x61; 1024])] {
        write("hybrid_envelope_open", name, &envelope::seal(rng, recipient.public_key(), AAD, plaintext).unwrap());
    }
    write("hybrid_envelope_open", "public-key", recipient.public_key().as_bytes());
}

fn archives(rng: &mut FixedRng) {
    let record = |body: &[u8]| ArchiveRecord {
        timestamp_ms: 1_700_000_000_000,
        channel_id: ChannelId([7; 16]),
        sender_device: DeviceId([9; 16]),
        sender: "alice".to_owned(),
        body: body.to_vec(),
    };
    let empty = ArchiveWriter::new(rng, PASSWORD, &KdfParams::light()).unwrap();
    write("archive_verify", "empty", &empty.finish(rng).unwrap());
    let mut writer = ArchiveWriter::new(rng, PASSWORD, &KdfParams::light()).unwrap();
    writer.append(rng, &record(b"hi")).unwrap();
    writer.append(rng, &record(b"second message")).unwrap();
    write("archive_verify", "two-records", &writer.finish(rng).unwrap());

    // Sealed mode (first byte 0): one message record and the end record,
    // each with flags = 1 so the harness fills in the previous hash.
    let mut message = vec![0u8]; // kind
    message.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    message.extend_from_slice(&[7; 16]);
    message.extend_from_slice(&[9; 16]);
    message.push(5);
    message.extend_from_slice(b"alice");
    message.extend_from_slice(&2u32.to_be_bytes());
    message.extend_from_slice(b"hi");
    let mut end = vec![1u8]; // kind
    end.extend_from_slice(&1u64.to_be_bytes());
    let mut script = vec![0u8];
    for body in [&message, &end] {
        script.push(1);
        script.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        script.extend_from_slice(body);
    }
    write("archive_verify", "sealed-mode", &script);
    // The same without the harness's help: bodies carry the genesis hash.
    let mut raw = vec![0u8, 0];
    let mut body = vec![1u8];
    body.extend_from_slice(&archive_genesis_hash());
    body.extend_from_slice(&0u64.to_be_bytes());
    raw.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    raw.extend_from_slice(&body);
    write("archive_verify", "sealed-mode-raw-end", &raw);
}

fn keystores(rng: &mut FixedRng) {
    write("keystore_open", "key", &keystore::seal_with_key(rng, &KEYSTORE_KEY, AAD, b"state").unwrap());
    write("keystore_open", "key-empty", &keystore::seal_with_key(rng, &KEYSTORE_KEY, AAD, b"").unwrap());
    let blob = keystore::seal_with_password(rng, PASSWORD, b"keystore", &KdfParams::light()).unwrap();
    write("keystore_open", "password", &blob);
}

fn mls() {
    for (suite, name) in [(MlsSuite::XWing, "xwing"), (MlsSuite::Classic, "classic")] {
        let fixture = mls_fixture(suite);
        let (alice, bob) = (&fixture.alice, &fixture.bob);
        let dave = MlsClient::new(&identity(4), "dave", suite).unwrap();

        let message = alice.encrypt(GROUP, b"hello").unwrap();
        let update = alice.self_update(GROUP).unwrap();
        alice.clear_pending_commit(GROUP).unwrap();
        let remove = alice.remove_members(GROUP, &[bob.device_id()]).unwrap();
        alice.clear_pending_commit(GROUP).unwrap();
        let add = alice.add_members(GROUP, &[dave.generate_key_package().unwrap()]).unwrap();
        alice.clear_pending_commit(GROUP).unwrap();
        let tracker = {
            let mut tracker = ChannelTracker::from_group_info(GROUP, &fixture.group_info_epoch0).unwrap();
            tracker.process(&fixture.add_bob_commit).unwrap();
            tracker.to_bytes().unwrap()
        };
        let leave = bob.leave_group(GROUP).unwrap();

        write("tracker_restore", &format!("{name}-snapshot"), &tracker);
        for target in ["mls_process", "tracker_process"] {
            let seed = |what: &str, bytes: &[u8]| write(target, &format!("{name}-{what}"), bytes);
            seed("application", &message);
            seed("commit-update", &update.commit);
            seed("commit-remove", &remove.commit);
            seed("commit-add", &add.commit);
            seed("commit-epoch0", &fixture.add_bob_commit);
            seed("proposal-leave", &leave);
            seed("welcome", &fixture.welcome);
            seed("welcome-dave", &add.welcome);
            seed("group-info-epoch0", &fixture.group_info_epoch0);
            seed("group-info", &fixture.group_info);
            seed("key-package", &dave.generate_key_package().unwrap());
            seed("key-package-last-resort", &dave.generate_last_resort_key_package().unwrap());
        }
    }
}

fn main() {
    let mut rng = FixedRng::new(1);
    frames();
    envelopes(&mut rng);
    archives(&mut rng);
    keystores(&mut rng);
    mls();
    println!("seeds written to {}/corpus/", env!("CARGO_MANIFEST_DIR"));
}
