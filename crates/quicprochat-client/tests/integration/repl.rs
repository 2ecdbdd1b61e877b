//! The REPL as a person uses it: each command's happy path against a real server, and its
//! usage error.

use crate::harness::{TestServer, id_in};

#[test]
fn rich_messaging_between_two_repls() {
    let server = TestServer::start();
    let mut bob = server.repl("bob", "bob-pw");
    let mut alice = server.repl("alice", "alice-pw");

    alice.run("/dm bob", "── bob ──");
    bob.expect("joined conversation alice");
    bob.run("/dm alice", "── alice ──");

    let id = id_in(&alice.run("hello bob", "sent "));
    assert!(bob.expect("[alice] hello bob").starts_with(&id));
    // Bob's REPL shows the message in the current conversation, so it tells alice it was read.
    alice.expect(&format!("* bob read {id}"));

    bob.run("/react 👍", &format!("reacted 👍 to {id}"));
    alice.expect(&format!("* bob reacted 👍 to {id}"));
    bob.run(&format!("/unreact {id}"), &format!("withdrew your reaction to {id}"));
    alice.expect(&format!("* bob withdrew their reaction to {id}"));
    bob.run(&format!("/react 🎉 {}", &id[..4]), &format!("reacted 🎉 to {id}"));
    alice.expect(&format!("* bob reacted 🎉 to {id}"));

    alice.run(&format!("/edit {id} hello again"), &format!("edited {id}"));
    bob.expect(&format!("* alice edited {id}: hello again"));
    bob.run("/history", &format!("{id} [alice] hello again (edited) [🎉 bob]"));
    // Only the sender may edit.
    bob.run(&format!("/edit {id} mine now"), "only its sender may edit or delete it");

    alice.run("/typing", "told bob that you are typing");
    bob.expect("* alice is typing");
    bob.run("/typing-notify off", "typing indicators off");
    bob.run("/typing-notify on", "typing indicators on");

    alice.run(&format!("/delete {id}"), &format!("deleted {id}"));
    bob.expect(&format!("* alice deleted {id}"));
    bob.run("/hist 5", &format!("{id} [alice] (deleted)"));
    alice.run(&format!("/edit {id} too late"), "was deleted");

    alice.run("/disappear 2s", "new messages in bob disappear 2s after arriving");
    bob.expect("* alice set disappearing messages to 2s");
    alice.run("/gi", "disappear:   2s");
    let short_lived = id_in(&alice.run("this one disappears", "sent "));
    bob.expect("[alice] this one disappears");
    bob.expect(&format!("* message {short_lived} disappeared"));
    alice.expect(&format!("* message {short_lived} disappeared"));
    alice.run("/disappear off", "disappearing messages off in bob");
    bob.expect("* alice turned disappearing messages off");

    alice.run("/gi", "bob (dm)");
    alice.expect("with:        bob");
    alice.expect("members:     alice, bob");
    alice.run("/rename Bobby", "renamed to Bobby (on this device only)");
    alice.run("/ls", "Bobby  (dm with bob)");

    assert!(alice.quit().success());
    assert!(bob.quit().success());
}

#[test]
fn group_commands_in_the_repl() {
    let server = TestServer::start();
    server.ok("bob", "bob-pw", &["register"]);
    server.ok("carol", "carol-pw", &["register"]);
    let mut alice = server.repl("alice", "alice-pw");

    alice.run("/cg team bob", "created #team");
    alice.run("/group-info", "team (group)");
    alice.expect("members:     alice, bob");
    alice.expect("epoch:");
    alice.run("/rename crew", "renamed to crew (on this device only)");
    alice.run("/list", "crew  (group of 2)");
    alice.run("/invite carol", "invited carol to crew");
    alice.run("/members", "alice, bob, carol");
    alice.run("/remove carol", "removed carol from crew");
    alice.run("/members", "alice, bob");
    alice.run("/join", "invitations are accepted as they arrive");
    alice.run("/rotate-key", "keys rotated; now at epoch");
    alice.run("/leave", "left crew");
    alice.run("/gi", "no conversation selected");
    alice.run("/switch #nosuch", "no conversation named nosuch");
    assert!(alice.quit().success());
}

#[test]
fn usage_errors_and_help() {
    let server = TestServer::start();
    let mut alice = server.repl("alice", "alice-pw");
    for (line, answer) in [
        ("/react", "usage: /react <emoji> [id]"),
        ("/react 👍 zz", "is not a message id"),
        ("/unreact a b", "usage: /unreact [id]"),
        ("/edit abcd", "usage: /edit <id> <text>"),
        ("/edit 12 text", "is not a message id"),
        ("/delete", "usage: /delete <id>"),
        ("/typing now", "usage: /typing"),
        ("/typing-notify maybe", "usage: /typing-notify on|off"),
        ("/disappear 5x", "usage: /disappear <30m|1h|1d|7d|off>"),
        ("/disappear", "usage: /disappear"),
        ("/rename", "usage: /rename <name>"),
        ("/gi extra", "usage: /group-info"),
        ("/join now", "usage: /join"),
        ("/delete-account now", "usage: /delete-account"),
        ("/cg", "usage: /create-group <name> [users…]"),
        ("/sf", "usage: /send-file <path>"),
        ("/dl", "usage: /download <id>"),
        ("/hist x", "usage: /history [n]"),
        ("/frobnicate", "unknown command /frobnicate; try /help"),
        // Commands that need a conversation say so.
        ("/react 👍", "no conversation selected"),
        ("/typing", "no conversation selected"),
        ("/edit abcd text", "no conversation selected"),
        ("/delete abcd", "no conversation selected"),
        ("/disappear 1h", "no conversation selected"),
        ("/rename x", "no conversation selected"),
        ("/help nothing", "no command /nothing"),
    ] {
        alice.run(line, answer);
    }
    alice.run("/help", "Chat:");
    alice.expect("Groups:");
    alice.expect("Security:");
    alice.expect("System:");
    alice.expect("/create-group, /cg <name> [users…]");
    alice.run("/help gi", "usage: /group-info");
    alice.expect("aliases: /gi");
    alice.expect("category: Groups");
    alice.run("/help /rotate-key", "usage: /update-key");
    alice.run("/whoami", "alice");
    alice.expect("device id:");
    assert!(alice.quit().success());
}

#[test]
fn delete_account_asks_first() {
    let server = TestServer::start();
    let mut alice = server.repl("alice", "alice-pw");
    alice.run("/delete-account", "Type the username (alice) to confirm");
    alice.run("no thanks", "cancelled; the account is kept");
    alice.run("/whoami", "alice");
    alice.run("/delete-account", "Type the username (alice) to confirm");
    alice.run("alice", "account deleted; goodbye");
    assert!(alice.finish().success());
    // The account is gone from the server: logging in fails as an authentication error.
    let login = server.run("alice", "alice-pw", &["login"]);
    assert_eq!(login.status.code(), Some(3), "{}", crate::harness::stderr(&login));
}
