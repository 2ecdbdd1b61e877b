//! Group lifecycle across several members: group sizes, removal, leave, key
//! rotation and commits out of order. (`tests.rs` covers the single
//! operations.)

use rand::rngs::OsRng;

use super::*;

const GROUP: &[u8] = b"lifecycle-group1";

fn client(name: &str, suite: MlsSuite) -> (IdentityKeyPair, MlsClient) {
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let client = MlsClient::new(&identity, name, suite).unwrap();
    (identity, client)
}

/// A group of `n` devices: the first creates it and adds the others with one
/// commit. Returns the clients, creator first.
fn group_of(n: usize, suite: MlsSuite) -> Vec<MlsClient> {
    let clients: Vec<MlsClient> = (0..n).map(|i| client(&format!("member{i}"), suite).1).collect();
    let (creator, joiners) = clients.split_first().unwrap();
    creator.create_group(GROUP).unwrap();
    if !joiners.is_empty() {
        let key_packages: Vec<Vec<u8>> = joiners.iter().map(|c| c.generate_key_package().unwrap()).collect();
        let outcome = creator.add_members(GROUP, &key_packages).unwrap();
        creator.merge_pending_commit(GROUP).unwrap();
        for joiner in joiners {
            let joined = joiner.join_from_welcome(&outcome.welcome).unwrap();
            assert_eq!(joined.epoch, 1);
            assert_eq!(joined.members.len(), n);
        }
    }
    clients
}

fn expect_plaintext(receiver: &MlsClient, ciphertext: &[u8], sender: &MlsClient, text: &[u8]) {
    match receiver.process(GROUP, ciphertext).unwrap() {
        Processed::Application { sender: from, plaintext, .. } => {
            assert_eq!(plaintext, text);
            assert_eq!(from.device_id, sender.device_id());
        }
        other => panic!("expected an application message, got {other:?}"),
    }
}

/// Every member sends one message that every other member decrypts.
fn all_to_all(clients: &[MlsClient]) {
    for (i, sender) in clients.iter().enumerate() {
        let text = format!("from member {i}");
        let ciphertext = sender.encrypt(GROUP, text.as_bytes()).unwrap();
        for (j, receiver) in clients.iter().enumerate() {
            if i != j {
                expect_plaintext(receiver, &ciphertext, sender, text.as_bytes());
            }
        }
    }
}

/// `committer`'s pending commit is accepted: it merges, and every other
/// client in `others` processes it.
fn accept(committer: &MlsClient, commit: &[u8], others: &[&MlsClient]) {
    committer.merge_pending_commit(GROUP).unwrap();
    for other in others {
        other.process(GROUP, commit).unwrap();
    }
}

#[test]
fn groups_of_two_three_and_five() {
    for (n, suite) in [(2, MlsSuite::XWing), (3, MlsSuite::XWing), (5, MlsSuite::XWing), (5, MlsSuite::Classic)] {
        let clients = group_of(n, suite);
        let members = clients[0].members(GROUP).unwrap();
        assert_eq!(members.len(), n);
        for client in &clients {
            assert_eq!(client.members(GROUP).unwrap(), members);
            assert_eq!(client.epoch(GROUP).unwrap(), 1);
        }
        all_to_all(&clients);
    }
}

#[test]
fn removed_member_can_no_longer_decrypt() {
    let clients = group_of(3, MlsSuite::XWing);
    let [alice, bob, carol] = &clients[..] else { unreachable!() };
    let bob_before = bob.export_state().unwrap();

    let removal = alice.remove_members(GROUP, &[bob.device_id()]).unwrap();
    accept(alice, &removal.commit, &[bob, carol]);
    let secret = carol.encrypt(GROUP, b"after bob left").unwrap();
    expect_plaintext(alice, &secret, carol, b"after bob left");

    // Bob processed his removal: the group is closed to him.
    assert!(matches!(bob.process(GROUP, &secret), Err(CoreError::NotAMember)));
    // Bob's state from before the removal has no keys for the new epoch.
    let old_bob = MlsClient::restore(&bob.signer.0, "member1", MlsSuite::XWing, &bob_before).unwrap();
    assert!(matches!(old_bob.process(GROUP, &secret), Err(CoreError::WrongEpoch { message_epoch: 2, group_epoch: 1 })));
}

#[test]
fn leave_is_committed_by_another_member() {
    let clients = group_of(3, MlsSuite::XWing);
    let [alice, bob, carol] = &clients[..] else { unreachable!() };

    // Carol proposes her removal; every member stores the proposal; bob
    // commits it.
    let proposal = carol.leave_group(GROUP).unwrap();
    for member in [alice, bob] {
        match member.process(GROUP, &proposal).unwrap() {
            Processed::Proposal { sender, .. } => assert_eq!(sender.unwrap().device_id, carol.device_id()),
            other => panic!("expected a proposal, got {other:?}"),
        }
    }
    let commit = bob.commit_pending_proposals(GROUP).unwrap();
    bob.merge_pending_commit(GROUP).unwrap();
    for member in [alice, carol] {
        match member.process(GROUP, &commit.commit).unwrap() {
            Processed::Commit { sender, removed, added, epoch } => {
                assert_eq!(sender.unwrap().device_id, bob.device_id());
                assert_eq!(removed.len(), 1);
                assert_eq!(removed[0].device_id, carol.device_id());
                assert!(added.is_empty());
                assert_eq!(epoch, 2);
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    assert_eq!(alice.members(GROUP).unwrap().len(), 2);
    let secret = alice.encrypt(GROUP, b"just the two of us").unwrap();
    expect_plaintext(bob, &secret, alice, b"just the two of us");
    assert!(matches!(carol.process(GROUP, &secret), Err(CoreError::NotAMember)));
    assert!(matches!(carol.encrypt(GROUP, b"still here?"), Err(CoreError::NotAMember)));
}

#[test]
fn key_rotation_retires_old_epoch_keys() {
    let clients = group_of(2, MlsSuite::XWing);
    let [alice, bob] = &clients[..] else { unreachable!() };
    let held_back = bob.encrypt(GROUP, b"sent at epoch 1").unwrap();
    let bob_before = bob.export_state().unwrap();

    // Alice rotates her leaf keys; both move to epoch 2.
    let update = alice.self_update(GROUP).unwrap();
    assert!(update.welcome.is_none());
    alice.merge_pending_commit(GROUP).unwrap();
    match bob.process(GROUP, &update.commit).unwrap() {
        Processed::Commit { sender, epoch, added, removed } => {
            assert_eq!(sender.unwrap().device_id, alice.device_id());
            assert_eq!(epoch, 2);
            assert!(added.is_empty() && removed.is_empty());
        }
        other => panic!("expected a commit, got {other:?}"),
    }

    // A message of the new epoch decrypts once, and only with new state.
    let fresh = alice.encrypt(GROUP, b"sent at epoch 2").unwrap();
    expect_plaintext(bob, &fresh, alice, b"sent at epoch 2");
    assert!(bob.process(GROUP, &fresh).is_err(), "its message key is deleted after use");
    let old_bob = MlsClient::restore(&bob.signer.0, "member1", MlsSuite::XWing, &bob_before).unwrap();
    assert!(matches!(old_bob.process(GROUP, &fresh), Err(CoreError::WrongEpoch { message_epoch: 2, group_epoch: 1 })));

    // Past epochs' secrets are kept for MAX_PAST_EPOCHS epochs, then gone.
    for _ in 0..MAX_PAST_EPOCHS {
        let update = bob.self_update(GROUP).unwrap();
        accept(bob, &update.commit, &[alice]);
    }
    assert_eq!(alice.epoch(GROUP).unwrap(), 2 + MAX_PAST_EPOCHS as u64);
    assert!(matches!(
        alice.process(GROUP, &held_back),
        Err(CoreError::WrongEpoch { message_epoch: 1, group_epoch: 7 })
    ));
}

#[test]
fn out_of_order_commits_are_refused_then_applied_in_order() {
    let clients = group_of(3, MlsSuite::XWing);
    let [alice, bob, carol] = &clients[..] else { unreachable!() };

    let first = alice.self_update(GROUP).unwrap();
    alice.merge_pending_commit(GROUP).unwrap();
    let second = alice.self_update(GROUP).unwrap();
    alice.merge_pending_commit(GROUP).unwrap();
    let message = alice.encrypt(GROUP, b"at epoch 3").unwrap();

    // Bob gets the second commit and the message first: both from the future.
    assert!(matches!(
        bob.process(GROUP, &second.commit),
        Err(CoreError::WrongEpoch { message_epoch: 2, group_epoch: 1 })
    ));
    assert!(matches!(bob.process(GROUP, &message), Err(CoreError::WrongEpoch { message_epoch: 3, group_epoch: 1 })));
    assert_eq!(bob.epoch(GROUP).unwrap(), 1);

    // In order they apply; replayed, the first one is stale.
    for member in [bob, carol] {
        member.process(GROUP, &first.commit).unwrap();
        member.process(GROUP, &second.commit).unwrap();
        assert!(matches!(
            member.process(GROUP, &first.commit),
            Err(CoreError::WrongEpoch { message_epoch: 1, group_epoch: 3 })
        ));
        expect_plaintext(member, &message, alice, b"at epoch 3");
    }
    all_to_all(&clients);
}
