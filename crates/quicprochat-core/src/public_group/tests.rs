use rand::rngs::OsRng;

use super::*;
use crate::identity::IdentityKeyPair;
use crate::mls::{MlsClient, Processed};

const GROUP: &[u8] = b"channel-00000001";

fn client(name: &str, suite: MlsSuite) -> MlsClient {
    MlsClient::new(&IdentityKeyPair::generate(&mut OsRng), name, suite).unwrap()
}

/// Alice creates the group; the server starts tracking it from the
/// GroupInfo of epoch 0.
fn founded(suite: MlsSuite) -> (MlsClient, ChannelTracker) {
    let alice = client("alice", suite);
    alice.create_group(GROUP).unwrap();
    let tracker = ChannelTracker::from_group_info(GROUP, &alice.export_group_info(GROUP).unwrap()).unwrap();
    assert_eq!(tracker.epoch(), 0);
    assert_eq!(tracker.members().unwrap(), alice.members(GROUP).unwrap());
    (alice, tracker)
}

fn commit(tracker: &mut ChannelTracker, message: &[u8]) -> TrackedCommit {
    match tracker.process(message).unwrap() {
        Tracked::Commit(commit) => commit,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// `owner` adds `joiner`; the tracker sees the commit first, as the server
/// would, and checks the GroupInfo uploaded with it. Returns the commit.
fn add(tracker: &mut ChannelTracker, owner: &MlsClient, joiner: &MlsClient) -> (Vec<u8>, TrackedCommit) {
    let outcome = owner.add_members(GROUP, &[joiner.generate_key_package().unwrap()]).unwrap();
    let tracked = commit(tracker, &outcome.commit);
    tracker.check_group_info(&outcome.group_info).unwrap();
    owner.merge_pending_commit(GROUP).unwrap();
    joiner.join_from_welcome(&outcome.welcome).unwrap();
    (outcome.commit, tracked)
}

fn usernames(members: &[MemberInfo]) -> Vec<&str> {
    members.iter().map(|member| member.username.as_str()).collect()
}

#[test]
fn tracker_follows_adds_updates_removes_and_leaves() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob = client("bob", MlsSuite::XWing);
    let carol = client("carol", MlsSuite::XWing);

    let (_, tracked) = add(&mut tracker, &alice, &bob);
    assert_eq!((tracked.epoch_before, tracked.epoch), (0, 1));
    assert_eq!(tracked.committer.device_id, alice.device_id());
    assert_eq!(usernames(&tracked.added), ["bob"]);
    assert_eq!(tracked.added[0].device_id, bob.device_id());
    assert!(tracked.removed.is_empty());
    assert_eq!(usernames(&tracked.members), ["alice", "bob"]);

    let (commit_bytes, tracked) = add(&mut tracker, &alice, &carol);
    bob.process(GROUP, &commit_bytes).unwrap();
    assert_eq!(usernames(&tracked.members), ["alice", "bob", "carol"]);
    assert_eq!(tracked.added[0].leaf_index, 2);

    // Carol rotates her keys: same members, new epoch, her new leaf.
    let update = carol.self_update(GROUP).unwrap();
    let tracked = commit(&mut tracker, &update.commit);
    tracker.check_group_info(&update.group_info).unwrap();
    carol.merge_pending_commit(GROUP).unwrap();
    for member in [&alice, &bob] {
        member.process(GROUP, &update.commit).unwrap();
    }
    assert_eq!(tracked.committer.device_id, carol.device_id());
    assert!(tracked.added.is_empty() && tracked.removed.is_empty());
    assert_eq!(tracked.epoch, 3);
    assert_eq!(tracker.members().unwrap(), alice.members(GROUP).unwrap());

    // Persisted and restored between two messages, as the server does.
    let mut tracker = ChannelTracker::restore(&tracker.to_bytes().unwrap()).unwrap();
    assert_eq!(tracker.epoch(), 3);

    // Alice removes bob.
    let removal = alice.remove_members(GROUP, &[bob.device_id()]).unwrap();
    let tracked = commit(&mut tracker, &removal.commit);
    tracker.check_group_info(&removal.group_info).unwrap();
    alice.merge_pending_commit(GROUP).unwrap();
    carol.process(GROUP, &removal.commit).unwrap();
    assert_eq!(usernames(&tracked.removed), ["bob"]);
    assert_eq!(usernames(&tracked.members), ["alice", "carol"]);

    // Carol leaves: her proposal, then alice's commit of it. The pending
    // proposal survives a snapshot.
    let proposal = carol.leave_group(GROUP).unwrap();
    match tracker.process(&proposal).unwrap() {
        Tracked::Proposal { sender, epoch } => {
            assert_eq!(sender.device_id, carol.device_id());
            assert_eq!(epoch, 4);
        }
        other => panic!("expected a proposal, got {other:?}"),
    }
    let mut tracker = ChannelTracker::restore(&tracker.to_bytes().unwrap()).unwrap();
    alice.process(GROUP, &proposal).unwrap();
    let leave = alice.commit_pending_proposals(GROUP).unwrap();
    let tracked = commit(&mut tracker, &leave.commit);
    alice.merge_pending_commit(GROUP).unwrap();
    assert_eq!(usernames(&tracked.removed), ["carol"]);
    assert_eq!(usernames(&tracked.members), ["alice"]);
    assert_eq!(tracker.members().unwrap(), alice.members(GROUP).unwrap());
    assert_eq!(tracker.epoch(), alice.epoch(GROUP).unwrap());
}

#[test]
fn classic_suite_is_tracked_too() {
    let (alice, mut tracker) = founded(MlsSuite::Classic);
    assert_eq!(tracker.suite().unwrap(), MlsSuite::Classic);
    let bob = client("bob", MlsSuite::Classic);
    let (_, tracked) = add(&mut tracker, &alice, &bob);
    assert_eq!(usernames(&tracked.members), ["alice", "bob"]);
}

#[test]
fn commit_signed_by_a_non_member_is_refused() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob = client("bob", MlsSuite::XWing);
    add(&mut tracker, &alice, &bob);

    // Mallory builds her own group under the same id, brings it to the
    // same epoch, and commits as "leaf 0" (alice's leaf in the real group).
    let mallory = client("mallory", MlsSuite::XWing);
    mallory.create_group(GROUP).unwrap();
    mallory.self_update(GROUP).unwrap();
    mallory.merge_pending_commit(GROUP).unwrap();
    let forged = mallory.self_update(GROUP).unwrap();
    assert!(matches!(tracker.process(&forged.commit), Err(CoreError::InvalidMessageSignature)));
    // Her GroupInfo of the same epoch does not describe the tracked group.
    mallory.clear_pending_commit(GROUP).unwrap();
    let same_epoch = mallory.export_group_info(GROUP).unwrap();
    assert!(matches!(tracker.check_group_info(&same_epoch), Err(CoreError::GroupInfoMismatch)));

    // Nothing changed: the real members' next commit is accepted.
    assert_eq!(tracker.epoch(), 1);
    let update = bob.self_update(GROUP).unwrap();
    commit(&mut tracker, &update.commit);
}

#[test]
fn tampered_commit_is_refused() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob = client("bob", MlsSuite::XWing);
    add(&mut tracker, &alice, &bob);
    let update = bob.self_update(GROUP).unwrap();

    // A member commit ends with signature (2-byte length + 64), confirmation
    // tag (1 + 32) and membership tag (1 + 32).
    let signature_byte = update.commit.len() - 66 - 10;
    let mut tampered = update.commit.clone();
    tampered[signature_byte] ^= 1;
    assert!(matches!(tracker.process(&tampered), Err(CoreError::InvalidMessageSignature)));

    // Any flipped byte of the signed content is refused one way or another.
    for position in (0..update.commit.len() - 100).step_by(97) {
        let mut tampered = update.commit.clone();
        tampered[position] ^= 0x40;
        assert!(tracker.process(&tampered).is_err(), "byte {position} flipped");
    }
    assert!(matches!(tracker.process(&update.commit[..update.commit.len() - 1]), Err(CoreError::MlsDecode(_))));
    assert_eq!(tracker.epoch(), 1);
    commit(&mut tracker, &update.commit);
}

#[test]
fn stale_and_future_commits_are_wrong_epoch() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob = client("bob", MlsSuite::XWing);
    add(&mut tracker, &alice, &bob);

    // Both commit at epoch 1; the server takes alice's first.
    let bob_commit = bob.self_update(GROUP).unwrap();
    let alice_commit = alice.self_update(GROUP).unwrap();
    commit(&mut tracker, &alice_commit.commit);
    assert!(matches!(
        tracker.process(&bob_commit.commit),
        Err(CoreError::WrongEpoch { message_epoch: 1, group_epoch: 2 })
    ));
    // The same commit twice: the replay is stale.
    assert!(matches!(tracker.process(&alice_commit.commit), Err(CoreError::WrongEpoch { .. })));
    assert!(matches!(tracker.check_group_info(&bob_commit.group_info), Err(CoreError::GroupInfoMismatch)));

    // A commit from a future epoch (the tracker missed one).
    alice.merge_pending_commit(GROUP).unwrap();
    let skipped = alice.self_update(GROUP).unwrap();
    alice.merge_pending_commit(GROUP).unwrap();
    let future = alice.self_update(GROUP).unwrap();
    assert!(matches!(tracker.process(&future.commit), Err(CoreError::WrongEpoch { message_epoch: 3, group_epoch: 2 })));
    commit(&mut tracker, &skipped.commit);
    commit(&mut tracker, &future.commit);
}

#[test]
fn group_info_must_match_the_tracked_epoch() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob = client("bob", MlsSuite::XWing);
    let stale = alice.export_group_info(GROUP).unwrap();
    add(&mut tracker, &alice, &bob);
    assert!(matches!(
        tracker.check_group_info(&stale),
        Err(CoreError::WrongEpoch { message_epoch: 0, group_epoch: 1 })
    ));
    tracker.check_group_info(&alice.export_group_info(GROUP).unwrap()).unwrap();
    tracker.check_group_info(&bob.export_group_info(GROUP).unwrap()).unwrap();

    // Bob's GroupInfo for a commit the tracker never saw: same epoch number
    // after the tracker moves on, different state.
    let bob_update = bob.self_update(GROUP).unwrap();
    let alice_update = alice.self_update(GROUP).unwrap();
    commit(&mut tracker, &alice_update.commit);
    assert!(matches!(tracker.check_group_info(&bob_update.group_info), Err(CoreError::GroupInfoMismatch)));
    tracker.check_group_info(&alice_update.group_info).unwrap();

    // Another group's GroupInfo, and not a GroupInfo at all.
    let other = client("olga", MlsSuite::XWing);
    other.create_group(b"another-channel!").unwrap();
    assert!(matches!(
        tracker.check_group_info(&other.export_group_info(b"another-channel!").unwrap()),
        Err(CoreError::WrongGroup)
    ));
    assert!(matches!(
        tracker.check_group_info(&alice_update.commit),
        Err(CoreError::UnexpectedMessage { expected: "GroupInfo", .. })
    ));
}

#[test]
fn external_commits_only_as_rejoin() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob_identity = IdentityKeyPair::generate(&mut OsRng);
    let bob = MlsClient::new(&bob_identity, "bob", MlsSuite::XWing).unwrap();
    add(&mut tracker, &alice, &bob);
    let info = alice.export_group_info(GROUP).unwrap();

    let mallory = client("mallory", MlsSuite::XWing);
    let join = mallory.join_by_external_commit(&info).unwrap();
    assert!(matches!(tracker.process(&join.commit), Err(CoreError::UnauthorizedExternalJoin)));

    // Bob lost his state and rejoins with the same identity.
    let bob_again = MlsClient::new(&bob_identity, "bob", MlsSuite::XWing).unwrap();
    let rejoin = bob_again.join_by_external_commit(&info).unwrap();
    let tracked = commit(&mut tracker, &rejoin.commit);
    tracker.check_group_info(&rejoin.group_info).unwrap();
    assert_eq!(tracked.committer.device_id, bob_identity.device_id());
    assert_eq!(usernames(&tracked.removed), ["bob"]);
    assert_eq!(usernames(&tracked.added), ["bob"]);
    assert_eq!(usernames(&tracked.members), ["alice", "bob"]);
    match alice.process(GROUP, &rejoin.commit).unwrap() {
        Processed::Commit { epoch, .. } => assert_eq!(epoch, tracker.epoch()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn non_handshake_input_is_refused() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    let bob = client("bob", MlsSuite::XWing);
    add(&mut tracker, &alice, &bob);

    let application = alice.encrypt(GROUP, b"private").unwrap();
    assert!(matches!(
        tracker.process(&application),
        Err(CoreError::UnexpectedMessage { expected: "PublicMessage", .. })
    ));
    let key_package = bob.generate_key_package().unwrap();
    assert!(matches!(tracker.process(&key_package), Err(CoreError::UnexpectedMessage { .. })));
    assert!(matches!(tracker.process(b"garbage"), Err(CoreError::MlsDecode(_))));

    let other = client("olga", MlsSuite::XWing);
    other.create_group(b"another-channel!").unwrap();
    let foreign = other.self_update(b"another-channel!").unwrap();
    assert!(matches!(tracker.process(&foreign.commit), Err(CoreError::WrongGroup)));

    // A GroupInfo of one channel does not start the tracker of another.
    assert!(matches!(
        ChannelTracker::from_group_info(b"some-other-id", &alice.export_group_info(GROUP).unwrap()),
        Err(CoreError::WrongGroup)
    ));
}

#[test]
fn snapshots_are_deterministic_and_checked() {
    let (alice, mut tracker) = founded(MlsSuite::XWing);
    add(&mut tracker, &alice, &client("bob", MlsSuite::XWing));
    let bytes = tracker.to_bytes().unwrap();
    assert_eq!(&bytes[..5], b"QPCT\x01");
    assert_eq!(usize::from(bytes[5]), GROUP.len());
    assert_eq!(&bytes[6..6 + GROUP.len()], GROUP);
    let restored = ChannelTracker::restore(&bytes).unwrap();
    assert_eq!(restored.to_bytes().unwrap(), bytes);
    assert_eq!(restored.members().unwrap(), tracker.members().unwrap());
    assert_eq!(restored.group_id(), GROUP);

    assert!(matches!(ChannelTracker::restore(&bytes[..bytes.len() - 1]), Err(CoreError::Truncated { .. })));
    assert!(matches!(ChannelTracker::restore(b"QPC"), Err(CoreError::Truncated { .. })));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(matches!(ChannelTracker::restore(&bad), Err(CoreError::BadMagic { .. })));
    let mut bad = bytes.clone();
    bad[4] = 2;
    assert!(matches!(ChannelTracker::restore(&bad), Err(CoreError::UnsupportedVersion { version: 2, .. })));
    // Another group id than the one stored.
    let mut bad = bytes;
    bad[6] ^= 1;
    assert!(matches!(ChannelTracker::restore(&bad), Err(CoreError::MalformedState { .. })));

    let debug = format!("{tracker:?}");
    assert!(debug.contains("epoch: 1"));
}

#[test]
fn corrupt_snapshot_values_are_a_typed_error_not_a_panic() {
    // Found by the `tracker_restore` fuzz target: a snapshot whose stored tree is the JSON `{`.
    let snapshot = hex::decode(
        "51504354011066757a7a2d67726f75702d30303030310000000100000052547265657b2276616c7565223a7b22766563223a5b\
         3130322c3131372c3132322c3132322c34352c3130332c3131342c3131312c3131372c3131322c34352c34382c34382c3438\
         2c34382c34395d7d7d0001000000017b",
    )
    .unwrap();
    let result = ChannelTracker::restore(&snapshot);
    assert!(
        matches!(result, Err(CoreError::TrackerStorage(TrackerStorageError::Corrupt { label: "Tree", .. }))),
        "{result:?}"
    );
}

#[test]
fn a_snapshot_with_a_queued_proposal_round_trips_and_the_commit_clears_the_queue() {
    let (alice, mut tracker) = founded(MlsSuite::Classic);
    let bob = client("bob", MlsSuite::Classic);
    add(&mut tracker, &alice, &bob);

    // Bob's leave proposal is queued in the tracker and survives a snapshot byte for byte.
    let proposal = bob.leave_group(GROUP).unwrap();
    assert!(matches!(tracker.process(&proposal).unwrap(), Tracked::Proposal { .. }));
    let snapshot = tracker.to_bytes().unwrap();
    let contains = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|window| window == needle);
    assert!(contains(&snapshot, b"QueuedProposal") && contains(&snapshot, b"ProposalQueueRefs"));
    let mut restored = ChannelTracker::restore(&snapshot).unwrap();
    assert_eq!(restored.to_bytes().unwrap(), snapshot);

    // Alice commits it; the restored tracker merges the commit and keeps no queued proposal.
    alice.process(GROUP, &proposal).unwrap();
    let leave = alice.commit_pending_proposals(GROUP).unwrap();
    let tracked = commit(&mut restored, &leave.commit);
    assert_eq!(usernames(&tracked.removed), ["bob"]);
    let after = restored.to_bytes().unwrap();
    assert!(!contains(&after, b"QueuedProposal") && !contains(&after, b"ProposalQueueRefs"));
}

#[test]
fn a_snapshot_whose_group_has_another_id_is_refused() {
    // Found by the `tracker_restore` fuzz target: the header names one group id, the stored
    // context another, so `to_bytes` would file the snapshot where `restore` cannot find it.
    let snapshot = include_bytes!("../../tests/vectors/tracker-snapshot-other-group-id.bin");
    let result = ChannelTracker::restore(snapshot);
    assert!(matches!(result, Err(CoreError::MalformedState { .. })), "{result:?}");
}
