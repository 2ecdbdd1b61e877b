//! Group conversations: creation with members, invites, concurrent invites.

use quicprochat_sdk::{ClientEvent, ConversationId};

use crate::{Member, member, next_event, received_text, start_server};

async fn joined(m: &mut Member) -> ConversationId {
    match next_event(&mut m.events, |e| matches!(e, ClientEvent::ConversationCreated { .. })).await {
        ClientEvent::ConversationCreated { conversation, .. } => conversation,
        _ => unreachable!(),
    }
}

async fn expect_text(m: &mut Member, from: &str, text: &str) {
    let e = next_event(&mut m.events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await;
    assert_eq!(received_text(&e), Some((from, text)));
}

#[tokio::test]
async fn group_of_three_then_an_invite() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;

    let team = alice.client.create_group("team", &["bob", "carol"]).await.unwrap();
    assert_eq!(joined(&mut bob).await, team.id());
    assert_eq!(joined(&mut carol).await, team.id());
    let bob_team = bob.client.conversation(team.id()).unwrap().unwrap();
    let carol_team = carol.client.conversation(team.id()).unwrap().unwrap();
    let listed = bob.client.conversations().unwrap();
    assert_eq!(listed[0].peer, None, "a group is not mistaken for a DM");

    team.send_text("hi both").await.unwrap();
    expect_text(&mut bob, "alice", "hi both").await;
    expect_text(&mut carol, "alice", "hi both").await;
    bob_team.send_text("hi from bob").await.unwrap();
    expect_text(&mut alice, "bob", "hi from bob").await;
    expect_text(&mut carol, "bob", "hi from bob").await;

    let mut dave = member(&server, "dave").await;
    carol_team.invite("dave").await.unwrap();
    assert_eq!(joined(&mut dave).await, team.id());
    let e = next_event(&mut bob.events, |e| matches!(e, ClientEvent::MemberJoined { .. })).await;
    assert!(matches!(e, ClientEvent::MemberJoined { ref username, .. } if username == "dave"));
    next_event(&mut alice.events, |e| matches!(e, ClientEvent::MemberJoined { .. })).await;

    team.send_text("welcome dave").await.unwrap();
    expect_text(&mut dave, "alice", "welcome dave").await;
    expect_text(&mut bob, "alice", "welcome dave").await;
    let mut members = team.members().unwrap();
    members.sort();
    assert_eq!(members, vec!["alice", "bob", "carol", "dave"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_invites_converge_with_both_invitees_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let mut erin = member(&server, "erin").await;
    let mut frank = member(&server, "frank").await;

    let team = alice.client.create_group("team", &["bob", "carol"]).await.unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let bob_team = bob.client.conversation(team.id()).unwrap().unwrap();
    let carol_team = carol.client.conversation(team.id()).unwrap().unwrap();

    // Both commit at the same epoch: one wins, the other catches up and commits again.
    let (a, b) = tokio::join!(bob_team.invite("erin"), carol_team.invite("frank"));
    a.unwrap();
    b.unwrap();
    assert_eq!(joined(&mut erin).await, team.id());
    assert_eq!(joined(&mut frank).await, team.id());

    // Everyone converges on one epoch containing both invitees.
    let erin_team = erin.client.conversation(team.id()).unwrap().unwrap();
    erin_team.send_text("hello from erin").await.unwrap();
    expect_text(&mut frank, "erin", "hello from erin").await;
    expect_text(&mut bob, "erin", "hello from erin").await;
    expect_text(&mut carol, "erin", "hello from erin").await;
    let mut members = carol_team.members().unwrap();
    members.sort();
    assert_eq!(members, vec!["alice", "bob", "carol", "erin", "frank"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn five_members_a_removal_and_a_leave() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let mut dave = member(&server, "dave").await;
    let mut erin = member(&server, "erin").await;

    let team = alice.client.create_group("team", &["bob", "carol", "dave", "erin"]).await.unwrap();
    for m in [&mut bob, &mut carol, &mut dave, &mut erin] {
        assert_eq!(joined(m).await, team.id());
    }
    team.send_text("all five").await.unwrap();
    for m in [&mut bob, &mut carol, &mut dave, &mut erin] {
        expect_text(m, "alice", "all five").await;
    }

    // alice removes carol: carol learns it and is out of the group.
    team.remove("carol").await.unwrap();
    let e = next_event(&mut carol.events, |e| matches!(e, ClientEvent::MemberLeft { .. })).await;
    assert!(matches!(e, ClientEvent::MemberLeft { ref username, .. } if username == "carol"));
    next_event(&mut bob.events, |e| matches!(e, ClientEvent::MemberLeft { .. })).await;

    // erin leaves: her proposal is committed by whoever sees it first.
    let erin_team = erin.client.conversation(team.id()).unwrap().unwrap();
    erin_team.leave().await.unwrap();
    next_event(&mut erin.events, |e| matches!(e, ClientEvent::MemberLeft { username, .. } if username == "erin")).await;
    next_event(&mut dave.events, |e| matches!(e, ClientEvent::MemberLeft { username, .. } if username == "erin")).await;
    next_event(&mut alice.events, |e| matches!(e, ClientEvent::MemberLeft { username, .. } if username == "erin"))
        .await;

    let bob_team = bob.client.conversation(team.id()).unwrap().unwrap();
    bob_team.send_text("three of us").await.unwrap();
    expect_text(&mut alice, "bob", "three of us").await;
    expect_text(&mut dave, "bob", "three of us").await;

    // The removed and the departed receive nothing more: nothing is queued for them.
    for (m, name) in [(&carol, "carol"), (&erin, "erin")] {
        m.client.sync().await.unwrap();
        let texts: Vec<String> = m.client.messages(team.id(), 100).unwrap().into_iter().map(|msg| msg.text).collect();
        assert!(!texts.iter().any(|t| t == "three of us"), "{name} still receives");
    }
    let mut members = team.members().unwrap();
    members.sort();
    assert_eq!(members, vec!["alice", "bob", "dave"]);
    assert!(carol.client.conversation(team.id()).unwrap().unwrap().send_text("let me in").await.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_member_that_lost_its_group_state_rejoins_by_itself_and_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let team = alice.client.create_group("team", &["bob", "carol"]).await.unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    team.send_text("before").await.unwrap();
    expect_text(&mut bob, "alice", "before").await;
    expect_text(&mut carol, "alice", "before").await;

    // Carol's state of the group is lost (as with a corrupt or restored-from-old-backup file).
    carol.client.forget_group_state_for_tests(team.id()).unwrap();
    team.send_text("unreadable for carol").await.unwrap();
    expect_text(&mut bob, "alice", "unreadable for carol").await;
    let lost = next_event(&mut carol.events, |e| matches!(e, ClientEvent::MessagesLost { .. })).await;
    assert!(matches!(lost, ClientEvent::MessagesLost { conversation, count: 1 } if conversation == team.id()));
    // She rejoins by external commit on her own; the others follow the commit.
    let rejoined = match next_event(&mut carol.events, |e| matches!(e, ClientEvent::EpochChanged { .. })).await {
        ClientEvent::EpochChanged { epoch, .. } => epoch,
        _ => unreachable!(),
    };
    for other in [&mut alice, &mut bob] {
        next_event(&mut other.events, |e| matches!(e, ClientEvent::EpochChanged { epoch, .. } if *epoch == rejoined))
            .await;
    }
    assert_eq!(team.epoch().unwrap(), rejoined);

    // Everyone reads everything from then on, both ways; the history before stays.
    team.send_text("after the rejoin").await.unwrap();
    expect_text(&mut carol, "alice", "after the rejoin").await;
    expect_text(&mut bob, "alice", "after the rejoin").await;
    let carol_team = carol.client.conversation(team.id()).unwrap().unwrap();
    carol_team.send_text("carol is back").await.unwrap();
    expect_text(&mut alice, "carol", "carol is back").await;
    expect_text(&mut bob, "carol", "carol is back").await;
    let members: Vec<String> = carol_team.members().unwrap().into_iter().collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(carol_team.messages(10).unwrap().iter().any(|m| m.text == "before"));
}

#[tokio::test]
async fn concurrent_sends_from_all_members_arrive_once_in_order_per_sender() {
    const EACH: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let mut members = Vec::new();
    for name in names {
        members.push(member(&server, name).await);
    }
    let team = members[0].client.create_group("team", &names[1..]).await.unwrap();
    for m in &mut members[1..] {
        assert_eq!(joined(m).await, team.id());
    }

    // Everyone sends at once, each its own numbered sequence.
    let mut senders = tokio::task::JoinSet::new();
    for (i, m) in members.iter().enumerate() {
        let chat = m.client.conversation(team.id()).unwrap().unwrap();
        senders.spawn(async move {
            for n in 0..EACH {
                chat.send_text(&format!("{i}:{n}")).await.unwrap();
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }

    for (i, m) in members.iter_mut().enumerate() {
        let mut seen: Vec<(String, String)> = Vec::new();
        while seen.len() < (names.len() - 1) * EACH {
            let e = next_event(&mut m.events, |e| matches!(e, ClientEvent::MessageReceived { .. })).await;
            let (from, text) = received_text(&e).unwrap();
            seen.push((from.to_owned(), text.to_owned()));
        }
        for (j, sender) in names.iter().enumerate().filter(|(j, _)| *j != i) {
            let from_sender: Vec<&str> =
                seen.iter().filter(|(from, _)| from == sender).map(|(_, text)| text.as_str()).collect();
            let expected: Vec<String> = (0..EACH).map(|n| format!("{j}:{n}")).collect();
            assert_eq!(from_sender, expected, "{} got {sender}'s messages once and in order", names[i]);
        }
        assert_eq!(m.client.sync().await.unwrap(), 0, "nothing more for {}", names[i]);
    }
    server.shutdown().await.unwrap();
}
