//! `qpc` as a person or a script uses it: the real binary against a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn qpc(args: &[&str], password: &str, home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qpc"))
        .args(args)
        .env("QPC_PASSWORD", password)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("QPC_SERVER")
        .env_remove("QPC_USERNAME")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn demo_exits_zero_and_finds_no_plaintext() {
    let home = tempfile::tempdir().unwrap();
    let out = qpc(&["demo"], "", home.path());
    assert!(out.status.success(), "demo failed: {}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("no plaintext message and no password on the server"), "{text}");
    assert!(text.contains("demo complete"));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_and_recv_between_two_accounts_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        quicprochat_server::start(quicprochat_server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path()))
            .await
            .unwrap();
    let addr = server.local_addr().to_string();
    let cert = dir.path().join(quicprochat_server::files::DEV_CERT);
    let cert = cert.to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    let run = |user: &'static str, password: &'static str, rest: Vec<&'static str>| {
        let mut args = vec!["--server", addr.as_str(), "--ca-cert", cert, "--username", user];
        args.extend(rest);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let home = home.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            qpc(&refs, password, &home)
        })
    };

    let reg = run("bob", "bob-pw", vec!["register"]).await.unwrap();
    assert!(reg.status.success(), "{}", String::from_utf8_lossy(&reg.stderr));
    let sent = run("alice", "alice-pw", vec!["send", "--to", "bob", "hi bob, from a script"]).await.unwrap();
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let got = run("bob", "bob-pw", vec!["recv", "--wait", "5"]).await.unwrap();
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(stdout(&got), "[alice] hi bob, from a script\n");

    let wrong = run("bob", "not-bob", vec!["recv"]).await.unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("different password"));
    server.shutdown().await.unwrap();
}
