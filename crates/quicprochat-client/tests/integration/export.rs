//! `qpc export` and `qpc export verify`: an archive written from a real conversation verifies
//! without a server or an account; damage and a wrong password fail with their exit codes.

use std::path::Path;
use std::process::Output;

use crate::harness::{TestServer, qpc_command, stderr, stdout};

const ARCHIVE_PASSWORD: &str = "archive-pw";

/// `qpc export …` as `user` on the server, with the archive password in the environment.
fn export(server: &TestServer, user: &str, password: &str, rest: &[&str]) -> Output {
    qpc_command(server.home.path(), password)
        .args(server.args(user, rest))
        .env("QPC_EXPORT_PASSWORD", ARCHIVE_PASSWORD)
        .output()
        .unwrap()
}

/// `qpc [--json] export verify FILE` with no server, username or account: only the archive.
fn verify(home: &Path, archive: &Path, password: Option<&str>, json: bool) -> Output {
    let mut cmd = qpc_command(home, "");
    cmd.env_remove("QPC_PASSWORD");
    if let Some(password) = password {
        cmd.env("QPC_EXPORT_PASSWORD", password);
    }
    if json {
        cmd.arg("--json");
    }
    cmd.args(["export", "verify"]).arg(archive).output().unwrap()
}

fn head_hash(text: &str) -> String {
    let line = text.lines().find_map(|l| l.strip_prefix("head hash ")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(line.len(), 64, "{line}");
    line.to_owned()
}

#[test]
fn export_then_verify_without_server_or_account() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    server.ok("alice", "alice-pw", &["send", "--to", "bob", "hi bob"]);
    assert_eq!(server.ok("bob", "bob-pw", &["recv", "--wait", "10"]), "[alice] hi bob\n");
    server.ok("bob", "bob-pw", &["send", "--to", "alice", "hi alice"]);
    server.ok("alice", "alice-pw", &["group", "create", "team", "bob"]);
    server.ok("alice", "alice-pw", &["send", "--group", "team", "to the team"]);

    let dir = tempfile::tempdir().unwrap();
    let dm = dir.path().join("dm.qpca");
    let dm_arg = dm.display().to_string();
    let out = export(&server, "alice", "alice-pw", &["export", "--conversation", "@bob", "--out", &dm_arg]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let written = stdout(&out);
    assert!(written.starts_with(&format!("exported 2 messages from 1 conversation to {dm_arg}\n")), "{written}");
    let hash = head_hash(&written);

    let checked = verify(dir.path(), &dm, Some(ARCHIVE_PASSWORD), false);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let text = stdout(&checked);
    assert!(text.starts_with(&format!("{dm_arg}: intact, 2 messages\n")), "{text}");
    assert_eq!(head_hash(&text), hash, "the verifier finds the head hash the exporter printed");
    let said: Vec<&str> = text.lines().skip(2).map(|l| l.split_once(" [").unwrap().1).collect();
    assert_eq!(said, ["alice] hi bob", "bob] hi alice"], "{text}");

    let json = verify(dir.path(), &dm, Some(ARCHIVE_PASSWORD), true);
    assert!(json.status.success(), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["records"], 2);
    assert_eq!(v["head_hash"], hash.as_str());
    assert_eq!(v["messages"][0]["sender"], "alice");
    assert_eq!(v["messages"][0]["text"], "hi bob");
    assert_eq!(v["messages"][0]["sender_device"].as_str().unwrap().len(), 32, "alice's own device");
    assert_eq!(v["messages"][1]["sender_device"].as_str().unwrap().len(), 32, "bob's device, as MLS authenticated it");
    assert_ne!(v["messages"][1]["sender_device"], v["messages"][0]["sender_device"]);
    assert_eq!(v["messages"][1]["conversation"], v["messages"][0]["conversation"]);

    // Every conversation, as JSON.
    let all = dir.path().join("all.qpca");
    let all_arg = all.display().to_string();
    let out = export(&server, "alice", "alice-pw", &["--json", "export", "--out", &all_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((v["records"].as_u64(), v["conversations"].as_u64()), (Some(3), Some(2)), "{v}");
    assert!(stdout(&verify(dir.path(), &all, Some(ARCHIVE_PASSWORD), false)).ends_with("[alice] to the team\n"));

    let missing = export(&server, "alice", "alice-pw", &["export", "--conversation", "#nosuch", "--out", &all_arg]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no conversation named nosuch"), "{}", stderr(&missing));
}

#[test]
fn damaged_archive_and_wrong_password_exit_with_their_codes() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    server.ok("alice", "alice-pw", &["send", "--to", "bob", "one"]);
    server.ok("alice", "alice-pw", &["send", "--to", "bob", "two"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.qpca");
    let out = export(&server, "alice", "alice-pw", &["export", "--out", &archive.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&archive).unwrap();

    // A flipped byte inside the second record (after the 33-byte header and the first record).
    let first = u32::from_be_bytes(bytes[33..37].try_into().unwrap()) as usize;
    let mut flipped = bytes.clone();
    flipped[33 + 4 + first + 4 + 20] ^= 0x80;
    let tampered = dir.path().join("tampered.qpca");
    std::fs::write(&tampered, &flipped).unwrap();
    let out = verify(dir.path(), &tampered, Some(ARCHIVE_PASSWORD), false);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("the archive was modified: record 1"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "nothing of a damaged archive is shown");

    let cut = dir.path().join("cut.qpca");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let out = verify(dir.path(), &cut, Some(ARCHIVE_PASSWORD), false);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    let out = verify(dir.path(), &archive, Some("not-the-archive-pw"), false);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not open with this password"), "{}", stderr(&out));

    // No password and no terminal to ask on: a usage error.
    let out = verify(dir.path(), &archive, None, false);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("QPC_EXPORT_PASSWORD"), "{}", stderr(&out));

    // The intact archive still verifies.
    assert!(verify(dir.path(), &archive, Some(ARCHIVE_PASSWORD), false).status.success());
}

#[test]
fn repl_exports_and_verifies() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("my archive.qpca");
    let archive = archive.display().to_string();

    let mut alice = server.repl_with_env("alice", "alice-pw", &[("QPC_EXPORT_PASSWORD", ARCHIVE_PASSWORD)]);
    alice.run("/dm bob", "── bob ──");
    alice.run("hello from the repl", "sent ");
    alice.run(&format!("/export @bob {archive}"), &format!("exported 1 message from 1 conversation to {archive}"));
    alice.run(&format!("/export verify {archive}"), "intact, 1 message");
    alice.expect("[alice] hello from the repl");
    alice.run("/export #nosuch x.qpca", "no conversation named nosuch");
    assert!(alice.quit().success());

    // Without the password and without a terminal to ask on, /export says what it needs.
    let mut bob = server.repl("bob", "bob-pw");
    bob.run(&format!("/export verify {archive}"), "QPC_EXPORT_PASSWORD");
    assert!(bob.quit().success());
}
