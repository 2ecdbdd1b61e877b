//! The `examples/echo_bot.rs` bot, run against a real server through its public entry point.

#[allow(dead_code)]
#[path = "../../examples/echo_bot.rs"]
mod example;

use quicprochat_sdk::ClientEvent;

use crate::{client, next_event, received_text, start_server};

#[tokio::test]
async fn the_echo_bot_answers_a_dm() {
    let server_dir = tempfile::tempdir().unwrap();
    let (bot_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_server(server_dir.path()).await;
    let bot = client(&server, bot_dir.path()).await;
    let bot_events = bot.subscribe();
    bot.register("echo", b"bot").await.unwrap();
    let serving = tokio::spawn({
        let bot = bot.clone();
        async move { example::serve(&bot, bot_events).await }
    });

    let alice = client(&server, alice_dir.path()).await;
    let mut events = alice.subscribe();
    alice.register("alice", b"a").await.unwrap();
    let dm = alice.dm("echo").await.unwrap();
    dm.send_text("ping").await.unwrap();
    let e = next_event(&mut events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await;
    assert_eq!(received_text(&e), Some(("echo", "echo: ping")));
    assert!(!serving.is_finished(), "the bot keeps serving");
    serving.abort();
}
