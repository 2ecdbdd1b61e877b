//! One-shot commands as scripts use them: output, `--json`, and exit codes.

use crate::harness::{TestServer, qpc, stderr, stdout};

#[test]
fn demo_exits_zero_and_finds_no_plaintext() {
    let home = tempfile::tempdir().unwrap();
    let out = qpc(&["demo"], "", home.path());
    assert!(out.status.success(), "demo failed: {}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("no plaintext message, file or password on the server"), "{text}");
    assert!(text.contains("bob downloaded and decrypted team-plan.txt"), "{text}");
    assert!(text.contains("carol did not receive it"), "{text}");
    assert!(text.contains("bob reacted 👍"), "{text}");
    assert!(text.contains("demo complete"));
}

#[test]
fn send_and_recv_between_two_accounts_by_hand() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    server.ok("alice", "alice-pw", &["send", "--to", "bob", "hi bob, from a script"]);
    assert_eq!(server.ok("bob", "bob-pw", &["recv", "--wait", "5"]), "[alice] hi bob, from a script\n");

    // The local account file does not open with another password: an authentication failure.
    let wrong = server.run("bob", "not-bob", &["recv"]);
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("different password"));
}

#[test]
fn json_output_for_whoami_list_and_recv() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    server.ok("carol", "carol-pw", &["register"]);

    let me: serde_json::Value = serde_json::from_str(&server.ok("alice", "alice-pw", &["--json", "whoami"])).unwrap();
    assert_eq!(me["username"], "alice");
    assert_eq!(me["user_id"].as_str().unwrap().len(), 32);
    assert_eq!(me["device_id"].as_str().unwrap().len(), 32);
    assert!(server.ok("alice", "alice-pw", &["whoami"]).starts_with("alice\n"));

    assert!(server.ok("alice", "alice-pw", &["dm", "bob"]).contains("── bob ──"));
    assert!(server.ok("alice", "alice-pw", &["group", "create", "team", "bob", "carol"]).contains("created #team"));
    let list: serde_json::Value = serde_json::from_str(&server.ok("alice", "alice-pw", &["--json", "list"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let dm = list.iter().find(|c| c["kind"] == "dm").unwrap();
    assert_eq!(dm["peer"], "bob");
    assert_eq!(dm["name"], "bob");
    assert_eq!(dm["members"], serde_json::json!(["alice", "bob"]));
    assert_eq!(dm["id"].as_str().unwrap().len(), 32);
    assert!(dm["disappearing_secs"].is_null());
    let team = list.iter().find(|c| c["kind"] == "group").unwrap();
    assert_eq!(team["name"], "team");
    assert_eq!(team["members"], serde_json::json!(["alice", "bob", "carol"]));

    let sent = server.ok("alice", "alice-pw", &["send", "--to", "bob", "json please"]);
    assert!(sent.starts_with("sent ") && sent.ends_with(" to bob\n"), "{sent}");
    let short_id = sent.split_whitespace().nth(1).unwrap().to_owned();
    let got = server.ok("bob", "bob-pw", &["--json", "recv", "--wait", "10"]);
    let messages: Vec<serde_json::Value> = got.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let m = messages.iter().find(|m| m["text"] == "json please").unwrap_or_else(|| panic!("{got}"));
    assert_eq!(m["sender"], "alice");
    assert_eq!(m["conversation_name"], "alice");
    assert_eq!(m["short_id"], short_id.as_str());
    assert!(m["id"].as_str().unwrap().starts_with(&short_id));
    assert_eq!(m["kind"], "text");
    assert_eq!(m["outgoing"], false);
    assert_eq!(m["edited"], false);
    assert_eq!(m["deleted"], false);
    assert!(m["sent_at_ms"].as_u64().unwrap() > 0);

    let verify = server.ok("bob", "bob-pw", &["verify", "alice"]);
    assert!(verify.contains("safety number with alice"), "{verify}");
}

#[test]
fn group_one_shots() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    server.ok("carol", "carol-pw", &["register"]);
    server.ok("alice", "alice-pw", &["group", "create", "team", "bob"]);
    assert!(server.ok("alice", "alice-pw", &["group", "invite", "team", "carol"]).contains("invited carol to team"));
    assert!(server.ok("alice", "alice-pw", &["group", "remove", "team", "carol"]).contains("removed carol from team"));
    assert!(server.ok("alice", "alice-pw", &["send", "--group", "team", "to the team"]).contains(" to team"));
    assert!(server.ok("alice", "alice-pw", &["group", "leave", "team"]).contains("left team"));
    let missing = server.run("alice", "alice-pw", &["group", "invite", "nosuch", "bob"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no conversation named nosuch"));
}

#[test]
fn exit_codes_tell_usage_auth_and_network_failures_apart() {
    let server = TestServer::start();
    // Usage errors: 2.
    for args in [&["send"][..], &["group"], &["send", "--to", "bob"], &["--connect-timeout", "soon", "list"]] {
        let out = server.run("alice", "alice-pw", args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let home = tempfile::tempdir().unwrap();
    let no_user =
        qpc(&["--server", &server.addr, "--ca-cert", &server.cert.display().to_string(), "list"], "", home.path());
    assert_eq!(no_user.status.code(), Some(2), "{}", stderr(&no_user));
    assert!(stderr(&no_user).contains("a username is required"));

    // Wrong password for an account on the server (from a fresh device): 3.
    server.ok("bob", "bob-pw", &["register"]);
    let fresh = server.home.path().join("fresh-device");
    let fresh = fresh.display().to_string();
    let wrong = server.run("bob", "wrong-pw", &["--state-dir", &fresh, "login"]);
    assert_eq!(wrong.status.code(), Some(3), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("wrong username or password"), "{}", stderr(&wrong));

    // Nothing listens: 4.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("127.0.0.1:{port}");
    let cert = server.cert.display().to_string();
    let out = qpc(
        &["--server", &nowhere, "--ca-cert", &cert, "--connect-timeout", "2", "-u", "bob", "whoami"],
        "bob-pw",
        home.path(),
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}
