use rand::rngs::OsRng;

use super::*;

const GROUP: &[u8] = b"group-0000000001";

struct Device {
    identity: IdentityKeyPair,
    client: MlsClient,
}

fn device(name: &str, suite: MlsSuite) -> Device {
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let client = MlsClient::new(&identity, name, suite).unwrap();
    Device { identity, client }
}

/// `owner` adds `joiner` to `GROUP`, merging after the (imagined) server
/// accepted; returns the outcome.
fn add(owner: &MlsClient, joiner: &MlsClient) -> AddOutcome {
    let key_package = joiner.generate_key_package().unwrap();
    let outcome = owner.add_members(GROUP, &[key_package]).unwrap();
    let epoch = owner.merge_pending_commit(GROUP).unwrap();
    assert_eq!(epoch, outcome.epoch_before + 1);
    let joined = joiner.join_from_welcome(&outcome.welcome).unwrap();
    assert_eq!(joined.group_id, GROUP);
    assert_eq!(joined.epoch, epoch);
    outcome
}

fn send(from: &MlsClient, to: &MlsClient, text: &[u8]) {
    let ciphertext = from.encrypt(GROUP, text).unwrap();
    match to.process(GROUP, &ciphertext).unwrap() {
        Processed::Application { sender, plaintext, .. } => {
            assert_eq!(plaintext, text);
            assert_eq!(sender.username, from.username());
            assert_eq!(sender.device_id, from.device_id());
        }
        other => panic!("expected an application message, got {other:?}"),
    }
}

fn two_party(suite: MlsSuite) -> (Device, Device) {
    let alice = device("alice", suite);
    let bob = device("bob", suite);
    alice.client.create_group(GROUP).unwrap();
    assert_eq!(alice.client.epoch(GROUP).unwrap(), 0);
    add(&alice.client, &bob.client);
    (alice, bob)
}

#[test]
fn xwing_two_party_exchange() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    assert_eq!(alice.client.epoch(GROUP).unwrap(), 1);
    assert_eq!(bob.client.epoch(GROUP).unwrap(), 1);

    send(&alice.client, &bob.client, b"hi bob");
    send(&bob.client, &alice.client, b"hi alice");
    for i in 0..5u8 {
        send(&alice.client, &bob.client, &[i; 3]);
    }

    let members = bob.client.members(GROUP).unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].username, "alice");
    assert_eq!(members[0].identity_key, alice.identity.public_key());
    assert_eq!(members[0].leaf_index, 0);
    assert_eq!(members[1].device_id, bob.identity.device_id());
    assert_eq!(alice.client.members(GROUP).unwrap(), members);
}

#[test]
fn classic_two_party_exchange() {
    let (alice, bob) = two_party(MlsSuite::Classic);
    assert_eq!(alice.client.suite(), MlsSuite::Classic);
    send(&alice.client, &bob.client, b"classic");
    send(&bob.client, &alice.client, b"still classic");
}

#[test]
fn suite_ids() {
    assert_eq!(MlsSuite::default(), MlsSuite::XWing);
    assert_eq!(MlsSuite::XWing.ciphersuite_id(), 0x004D);
    assert_eq!(MlsSuite::Classic.ciphersuite_id(), 0x0001);
    assert_eq!(MlsSuite::from_ciphersuite_id(0x004D), Some(MlsSuite::XWing));
    assert_eq!(MlsSuite::from_ciphersuite_id(0x0002), None);
}

#[test]
fn three_party_group_with_late_join() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    send(&alice.client, &bob.client, b"before carol");

    let carol = device("carol", MlsSuite::XWing);
    let outcome = add(&alice.client, &carol.client);

    match bob.client.process(GROUP, &outcome.commit).unwrap() {
        Processed::Commit { sender, epoch, added, removed } => {
            assert_eq!(sender.unwrap().username, "alice");
            assert_eq!(epoch, 2);
            assert_eq!(added.len(), 1);
            assert_eq!(added[0].username, "carol");
            assert_eq!(added[0].device_id, carol.identity.device_id());
            assert_eq!(added[0].leaf_index, 2);
            assert!(removed.is_empty());
        }
        other => panic!("expected a commit, got {other:?}"),
    }

    for (from, to) in [
        (&alice.client, &bob.client),
        (&bob.client, &carol.client),
        (&carol.client, &alice.client),
        (&carol.client, &bob.client),
    ] {
        send(from, to, b"three of us");
    }
    assert_eq!(carol.client.members(GROUP).unwrap().len(), 3);
}

#[test]
fn restored_state_keeps_working() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    send(&alice.client, &bob.client, b"before export");

    let snapshot = alice.client.export_state().unwrap();
    assert_eq!(snapshot.as_slice(), alice.client.export_state().unwrap().as_slice());
    let ciphertext = bob.client.encrypt(GROUP, b"while alice was away").unwrap();
    drop(alice.client);

    let restored = MlsClient::restore(&alice.identity, "alice", MlsSuite::XWing, &snapshot).unwrap();
    assert!(restored.has_group(GROUP).unwrap());
    assert_eq!(restored.epoch(GROUP).unwrap(), 1);
    match restored.process(GROUP, &ciphertext).unwrap() {
        Processed::Application { plaintext, .. } => assert_eq!(plaintext, b"while alice was away"),
        other => panic!("unexpected {other:?}"),
    }
    send(&restored, &bob.client, b"back again");
    send(&bob.client, &restored, b"welcome back");

    // A snapshot only restores for its own identity.
    assert!(matches!(
        MlsClient::restore(&bob.identity, "bob", MlsSuite::XWing, &snapshot),
        Err(CoreError::StateIdentityMismatch)
    ));
}

#[test]
fn restored_key_package_still_opens_its_welcome() {
    let alice = device("alice", MlsSuite::XWing);
    let bob = device("bob", MlsSuite::XWing);
    alice.client.create_group(GROUP).unwrap();
    let key_package = bob.client.generate_key_package().unwrap();
    let snapshot = bob.client.export_state().unwrap();
    let bob_restored = MlsClient::restore(&bob.identity, "bob", MlsSuite::XWing, &snapshot).unwrap();

    let outcome = alice.client.add_members(GROUP, &[key_package]).unwrap();
    alice.client.merge_pending_commit(GROUP).unwrap();
    bob_restored.join_from_welcome(&outcome.welcome).unwrap();
    send(&alice.client, &bob_restored, b"hello restored bob");
}

#[test]
fn pending_commit_survives_restore() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let carol = device("carol", MlsSuite::XWing);
    let outcome = alice.client.add_members(GROUP, &[carol.client.generate_key_package().unwrap()]).unwrap();
    let snapshot = alice.client.export_state().unwrap();
    let alice = MlsClient::restore(&alice.identity, "alice", MlsSuite::XWing, &snapshot).unwrap();
    assert!(alice.has_pending_commit(GROUP).unwrap());
    assert_eq!(alice.merge_pending_commit(GROUP).unwrap(), 2);
    bob.client.process(GROUP, &outcome.commit).unwrap();
    carol.client.join_from_welcome(&outcome.welcome).unwrap();
    send(&alice, &carol.client, b"hi carol");
}

#[test]
fn stale_commit_is_rejected_with_wrong_epoch() {
    let (alice, bob) = two_party(MlsSuite::XWing);

    // Both commit at epoch 1; the server accepts alice's.
    let bob_commit = bob.client.self_update(GROUP).unwrap();
    assert_eq!(bob_commit.epoch_before, 1);
    let carol = device("carol", MlsSuite::XWing);
    let alice_commit = add(&alice.client, &carol.client);

    match alice.client.process(GROUP, &bob_commit.commit) {
        Err(CoreError::WrongEpoch { message_epoch, group_epoch }) => {
            assert_eq!(message_epoch, 1);
            assert_eq!(group_epoch, 2);
        }
        other => panic!("expected WrongEpoch, got {other:?}"),
    }
    assert_eq!(alice.client.epoch(GROUP).unwrap(), 2);

    // Bob drops his refused commit and catches up.
    assert!(bob.client.has_pending_commit(GROUP).unwrap());
    bob.client.clear_pending_commit(GROUP).unwrap();
    bob.client.process(GROUP, &alice_commit.commit).unwrap();
    assert_eq!(bob.client.epoch(GROUP).unwrap(), 2);
    send(&bob.client, &alice.client, b"caught up");
    send(&alice.client, &bob.client, b"good");
    send(&bob.client, &carol.client, b"hi carol");
}

#[test]
fn commit_from_the_future_is_wrong_epoch() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let carol = device("carol", MlsSuite::XWing);
    add(&alice.client, &carol.client); // bob misses this one
    let update = alice.client.self_update(GROUP).unwrap();
    alice.client.merge_pending_commit(GROUP).unwrap();
    assert!(matches!(
        bob.client.process(GROUP, &update.commit),
        Err(CoreError::WrongEpoch { message_epoch: 2, group_epoch: 1 })
    ));
}

#[test]
fn own_commit_echo_does_not_corrupt_state() {
    let (alice, bob) = two_party(MlsSuite::XWing);

    // Echo while still pending: the server accepted it, so it is merged.
    let update = alice.client.self_update(GROUP).unwrap();
    match alice.client.process(GROUP, &update.commit).unwrap() {
        Processed::Commit { sender, epoch, .. } => {
            assert_eq!(sender.unwrap().device_id, alice.identity.device_id());
            assert_eq!(epoch, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!alice.client.has_pending_commit(GROUP).unwrap());

    // Echo after merging: stale, refused, nothing changes.
    assert!(matches!(alice.client.process(GROUP, &update.commit), Err(CoreError::WrongEpoch { .. })));
    bob.client.process(GROUP, &update.commit).unwrap();
    send(&alice.client, &bob.client, b"still fine");
    send(&bob.client, &alice.client, b"yes");

    // Own application messages fanned back are recognised.
    let own = alice.client.encrypt(GROUP, b"mine").unwrap();
    assert!(matches!(alice.client.process(GROUP, &own).unwrap(), Processed::OwnMessage { epoch: 2 }));
}

#[test]
fn messages_from_the_previous_epoch_still_decrypt() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let late = bob.client.encrypt(GROUP, b"sent before the commit").unwrap();
    let update = alice.client.self_update(GROUP).unwrap();
    alice.client.merge_pending_commit(GROUP).unwrap();
    bob.client.process(GROUP, &update.commit).unwrap();
    match alice.client.process(GROUP, &late).unwrap() {
        Processed::Application { plaintext, epoch, .. } => {
            assert_eq!(plaintext, b"sent before the commit");
            assert_eq!(epoch, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn remove_member() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let carol = device("carol", MlsSuite::XWing);
    let added = add(&alice.client, &carol.client);
    bob.client.process(GROUP, &added.commit).unwrap();

    let removal = alice.client.remove_members(GROUP, &[bob.identity.device_id()]).unwrap();
    assert!(removal.welcome.is_none());
    alice.client.merge_pending_commit(GROUP).unwrap();

    match carol.client.process(GROUP, &removal.commit).unwrap() {
        Processed::Commit { removed, epoch, .. } => {
            assert_eq!(epoch, 3);
            assert_eq!(removed.len(), 1);
            assert_eq!(removed[0].username, "bob");
        }
        other => panic!("unexpected {other:?}"),
    }
    match bob.client.process(GROUP, &removal.commit).unwrap() {
        Processed::Commit { removed, .. } => {
            assert_eq!(removed[0].device_id, bob.identity.device_id())
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(bob.client.encrypt(GROUP, b"am I still here?"), Err(CoreError::NotAMember)));
    bob.client.delete_group(GROUP).unwrap();
    assert!(!bob.client.has_group(GROUP).unwrap());

    send(&alice.client, &carol.client, b"just us");
    assert!(matches!(
        alice.client.remove_members(GROUP, &[bob.identity.device_id()]),
        Err(CoreError::UnknownMember(_))
    ));
}

#[test]
fn leave_via_proposal() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let proposal = bob.client.leave_group(GROUP).unwrap();
    match alice.client.process(GROUP, &proposal).unwrap() {
        Processed::Proposal { sender, epoch } => {
            assert_eq!(sender.unwrap().username, "bob");
            assert_eq!(epoch, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Proposals must be committed before sending.
    assert!(matches!(alice.client.encrypt(GROUP, b"x"), Err(CoreError::PendingProposals)));
    let commit = alice.client.commit_pending_proposals(GROUP).unwrap();
    alice.client.merge_pending_commit(GROUP).unwrap();
    match bob.client.process(GROUP, &commit.commit).unwrap() {
        Processed::Commit { removed, .. } => assert_eq!(removed[0].username, "bob"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(alice.client.members(GROUP).unwrap().len(), 1);
    alice.client.encrypt(GROUP, b"alone").unwrap();
}

#[test]
fn last_resort_key_package_is_reusable() {
    let alice = device("alice", MlsSuite::XWing);
    let bob = device("bob", MlsSuite::XWing);
    let key_package = bob.client.generate_last_resort_key_package().unwrap();
    for group in [b"group-a".as_slice(), b"group-b".as_slice()] {
        alice.client.create_group(group).unwrap();
        let outcome = alice.client.add_members(group, std::slice::from_ref(&key_package)).unwrap();
        alice.client.merge_pending_commit(group).unwrap();
        let joined = bob.client.join_from_welcome(&outcome.welcome).unwrap();
        assert_eq!(joined.group_id, group);
    }
}

#[test]
fn single_use_key_package_is_consumed() {
    let alice = device("alice", MlsSuite::XWing);
    let bob = device("bob", MlsSuite::XWing);
    let key_package = bob.client.generate_key_package().unwrap();
    let mut welcomes = Vec::new();
    for group in [b"group-a".as_slice(), b"group-b".as_slice()] {
        alice.client.create_group(group).unwrap();
        let outcome = alice.client.add_members(group, std::slice::from_ref(&key_package)).unwrap();
        alice.client.merge_pending_commit(group).unwrap();
        welcomes.push(outcome.welcome);
    }
    bob.client.join_from_welcome(&welcomes[0]).unwrap();
    assert!(matches!(bob.client.join_from_welcome(&welcomes[1]), Err(CoreError::NoMatchingKeyPackage)));
}

#[test]
fn padding_hides_exact_length() {
    let (alice, _bob) = two_party(MlsSuite::XWing);
    let short = alice.client.encrypt(GROUP, b"a").unwrap();
    let longer = alice.client.encrypt(GROUP, &[b'x'; 200]).unwrap();
    assert_eq!(short.len(), longer.len());
    let much_longer = alice.client.encrypt(GROUP, &[b'x'; 300]).unwrap();
    assert!(much_longer.len() > longer.len());
}

#[test]
fn typed_errors_for_bad_input() {
    let (alice, bob) = two_party(MlsSuite::XWing);

    assert!(matches!(alice.client.process(GROUP, b"not an mls message"), Err(CoreError::MlsDecode(_))));
    assert!(matches!(alice.client.epoch(b"nope"), Err(CoreError::UnknownGroup)));
    assert!(matches!(alice.client.create_group(GROUP), Err(CoreError::GroupExists)));

    // A Welcome is not a group message; a key package is not a Welcome.
    let carol = device("carol", MlsSuite::XWing);
    let key_package = carol.client.generate_key_package().unwrap();
    assert!(matches!(
        carol.client.join_from_welcome(&key_package),
        Err(CoreError::UnexpectedMessage { expected: "Welcome", .. })
    ));
    let outcome = alice.client.add_members(GROUP, &[key_package]).unwrap();
    assert!(matches!(bob.client.process(GROUP, &outcome.welcome), Err(CoreError::UnexpectedMessage { .. })));
    assert!(matches!(
        alice.client.add_members(GROUP, &[carol.client.generate_key_package().unwrap()]),
        Err(CoreError::PendingCommit)
    ));
    alice.client.clear_pending_commit(GROUP).unwrap();
    assert!(matches!(alice.client.merge_pending_commit(GROUP), Err(CoreError::NoPendingCommit)));

    // A message for another group.
    bob.client.create_group(b"other-group").unwrap();
    let other = bob.client.encrypt(b"other-group", b"x").unwrap();
    assert!(matches!(alice.client.process(GROUP, &other), Err(CoreError::WrongGroup)));

    // Key packages of another suite do not fit.
    let classic = device("dave", MlsSuite::Classic);
    assert!(matches!(
        alice.client.add_members(GROUP, &[classic.client.generate_key_package().unwrap()]),
        Err(CoreError::CiphersuiteMismatch { expected: 0x004D, found: 0x0001 })
    ));

    // A tampered ciphertext fails without breaking the group.
    let mut ciphertext = alice.client.encrypt(GROUP, b"tamper me").unwrap();
    let last = ciphertext.len() - 1;
    ciphertext[last] ^= 1;
    assert!(bob.client.process(GROUP, &ciphertext).is_err());
    send(&alice.client, &bob.client, b"after tampering");
}

#[test]
fn key_package_with_forged_device_id_is_refused() {
    let alice = device("alice", MlsSuite::XWing);
    alice.client.create_group(GROUP).unwrap();
    // Mallory builds a client whose credential claims alice's device id.
    let mallory_identity = IdentityKeyPair::generate(&mut OsRng);
    let mut mallory = MlsClient::new(&mallory_identity, "mallory", MlsSuite::XWing).unwrap();
    mallory.credential.credential = credential::credential_for("alice", &alice.identity.device_id()).unwrap();
    let forged = mallory.generate_key_package().unwrap();
    assert!(matches!(
        alice.client.add_members(GROUP, &[forged]),
        Err(CoreError::InvalidCredential(CredentialError::DeviceIdMismatch))
    ));
}

#[test]
fn debug_output_is_redacted() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let debug = format!("{:?}", alice.client);
    assert!(debug.contains("alice"));
    assert!(!debug.contains(&hex::encode(*alice.identity.secret_bytes())));
    let ciphertext = alice.client.encrypt(GROUP, b"top secret words").unwrap();
    let processed = bob.client.process(GROUP, &ciphertext).unwrap();
    assert!(!format!("{processed:?}").contains("top secret"));
}

#[test]
fn client_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MlsClient>();
    assert_send_sync::<IdentityKeyPair>();
}

#[test]
fn lost_device_rejoins_by_external_commit() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let carol = device("carol", MlsSuite::XWing);
    let added = add(&alice.client, &carol.client);
    // Bob's state is lost; a fresh client with the same identity rejoins from
    // the GroupInfo the server kept.
    drop(bob.client);
    let bob_again = MlsClient::new(&bob.identity, "bob", MlsSuite::XWing).unwrap();
    let rejoin = bob_again.join_by_external_commit(&added.group_info).unwrap();
    assert_eq!(rejoin.epoch_before, 2);
    assert_eq!(rejoin.joined.epoch, 3);
    assert_eq!(rejoin.joined.members.len(), 3);

    for member in [&alice.client, &carol.client] {
        match member.process(GROUP, &rejoin.commit).unwrap() {
            Processed::Commit { sender, epoch, added, removed } => {
                assert_eq!(epoch, 3);
                assert_eq!(sender.unwrap().device_id, bob.identity.device_id());
                assert_eq!(added.len(), 1);
                assert_eq!(removed.len(), 1);
                assert_eq!(removed[0].device_id, bob.identity.device_id());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    send(&alice.client, &bob_again, b"welcome back bob");
    send(&bob_again, &carol.client, b"thanks");

    // Rejoining over stale local state replaces it.
    let info = alice.client.export_group_info(GROUP).unwrap();
    let again = bob_again.join_by_external_commit(&info).unwrap();
    alice.client.process(GROUP, &again.commit).unwrap();
    send(&bob_again, &alice.client, b"fresh state");
}

#[test]
fn stranger_cannot_join_by_external_commit() {
    let (alice, bob) = two_party(MlsSuite::XWing);
    let mallory = device("mallory", MlsSuite::XWing);
    let info = alice.client.export_group_info(GROUP).unwrap();
    let join = mallory.client.join_by_external_commit(&info).unwrap();
    assert!(matches!(alice.client.process(GROUP, &join.commit), Err(CoreError::UnauthorizedExternalJoin)));
    assert_eq!(alice.client.epoch(GROUP).unwrap(), 1);
    send(&alice.client, &bob.client, b"unaffected");
}

#[test]
fn the_kept_group_and_storage_agree_after_successes_and_failures() {
    let (alice, bob) = two_party(MlsSuite::Classic);
    send(&alice.client, &bob.client, b"one");
    // A call that fails drops the kept group; the next one loads it from storage.
    let mut tampered = alice.client.encrypt(GROUP, b"two").unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(bob.client.process(GROUP, &tampered).is_err());
    // A commit made and merged through the kept group is in storage too.
    alice.client.self_update(GROUP).unwrap();
    alice.client.merge_pending_commit(GROUP).unwrap();
    let restored_alice =
        MlsClient::restore(&alice.identity, "alice", MlsSuite::Classic, &alice.client.export_state().unwrap()).unwrap();
    assert_eq!(restored_alice.epoch(GROUP).unwrap(), alice.client.epoch(GROUP).unwrap());
    let snapshot = bob.client.export_state().unwrap();
    let restored_bob = MlsClient::restore(&bob.identity, "bob", MlsSuite::Classic, &snapshot).unwrap();

    // Both copies of each side go on identically from here.
    let commit = alice.client.export_group_info(GROUP).unwrap();
    assert!(!commit.is_empty());
    let update = restored_alice.self_update(GROUP);
    assert!(update.is_ok(), "the restored committer can build on the merged epoch");
    restored_alice.clear_pending_commit(GROUP).unwrap();
    let ciphertext = alice.client.encrypt(GROUP, b"three").unwrap();
    for receiver in [&bob.client, &restored_bob] {
        // Neither has seen alice's update commit yet: the message is from a future epoch.
        assert!(matches!(receiver.process(GROUP, &ciphertext), Err(CoreError::WrongEpoch { .. })));
        assert_eq!(receiver.epoch(GROUP).unwrap(), 1);
    }
    send(&bob.client, &alice.client, b"four");
}

#[test]
fn persisted_entries_restore_a_working_client() {
    let (alice, bob) = two_party(MlsSuite::Classic);
    // Everything is a change until persisted; then only what an operation touched.
    let all = bob.client.state_changes().unwrap();
    assert!(all.writes().count() > 1);
    let mut table = changes::tests::Table::new();
    changes::tests::write_to(&mut table, &all);
    bob.client.mark_persisted(&all).unwrap();
    assert!(bob.client.state_changes().unwrap().is_empty());

    send(&alice.client, &bob.client, b"one");
    let changes = bob.client.state_changes().unwrap();
    assert!(!changes.is_empty() && changes.writes().count() < all.writes().count());
    changes::tests::write_to(&mut table, &changes);
    bob.client.mark_persisted(&changes).unwrap();

    let table = changes::tests::reassemble(&table);
    let restored = MlsClient::restore_entries(&bob.identity, "bob", MlsSuite::Classic, table).unwrap();
    assert!(restored.state_changes().unwrap().is_empty(), "restored entries count as persisted");
    assert_eq!(
        restored.export_state().unwrap().as_slice(),
        bob.client.export_state().unwrap().as_slice(),
        "the persisted entries are the whole state"
    );
    send(&alice.client, &restored, b"two");
    send(&restored, &alice.client, b"three");
}

#[test]
fn a_message_in_a_large_group_persists_a_few_chunks() {
    let alice = device("alice", MlsSuite::XWing);
    alice.client.create_group(GROUP).unwrap();
    let others: Vec<Device> = (0..23).map(|i| device(&format!("member{i}"), MlsSuite::XWing)).collect();
    let key_packages: Vec<Vec<u8>> = others.iter().map(|d| d.client.generate_key_package().unwrap()).collect();
    let outcome = alice.client.add_members(GROUP, &key_packages).unwrap();
    alice.client.merge_pending_commit(GROUP).unwrap();
    let bob = &others[0].client;
    bob.join_from_welcome(&outcome.welcome).unwrap();
    // Past epochs fill up, as in a group in use: each keeps the 24 members' X-Wing keys.
    for _ in 0..MAX_PAST_EPOCHS {
        let update = alice.client.self_update(GROUP).unwrap();
        alice.client.merge_pending_commit(GROUP).unwrap();
        assert!(matches!(bob.process(GROUP, &update.commit).unwrap(), Processed::Commit { .. }));
    }
    let all = bob.state_changes().unwrap();
    bob.mark_persisted(&all).unwrap();

    send(&alice.client, bob, b"hello");
    let changes = bob.state_changes().unwrap();
    // The message changed the current epoch's secrets, at the end of an entry that holds the
    // past epochs too: only its last chunks are written.
    assert!(!changes.is_empty());
    assert!(changes.bytes_written() <= 2 * STATE_CHUNK_LEN, "{changes:?}");
    assert!(all.bytes_written() > 10 * STATE_CHUNK_LEN, "{all:?}");
}
