//! Tests of sealed sender, over real MLS groups, plus a pinned vector of
//! our own in `tests/vectors/sealed-sender-v1.json`.

use rand::rngs::OsRng;
use serde_json::Value;

use super::*;
use crate::identity::IdentityKeyPair;
use crate::mls::MlsSuite;

const GROUP: &[u8] = b"group-sealed-001";
const CHANNEL: ChannelId = ChannelId([7; 16]);
const NOW: u64 = 1_700_000_000_000;
const GOLDEN: &str = include_str!("../../tests/vectors/sealed-sender-v1.json");

fn client(name: &str) -> MlsClient {
    MlsClient::new(&IdentityKeyPair::generate(&mut OsRng), name, MlsSuite::XWing).unwrap()
}

/// `owner` adds `joiner`; the commit is accepted and merged. Returns the
/// commit for the other members to process.
fn add(owner: &MlsClient, joiner: &MlsClient) -> Vec<u8> {
    let outcome = owner.add_members(GROUP, &[joiner.generate_key_package().unwrap()]).unwrap();
    owner.merge_pending_commit(GROUP).unwrap();
    joiner.join_from_welcome(&outcome.welcome).unwrap();
    outcome.commit
}

/// Alice, Bob and Carol in one group at epoch 2.
fn three_members() -> (MlsClient, MlsClient, MlsClient) {
    let (alice, bob, carol) = (client("alice"), client("bob"), client("carol"));
    alice.create_group(GROUP).unwrap();
    add(&alice, &bob);
    let commit = add(&alice, &carol);
    bob.process(GROUP, &commit).unwrap();
    (alice, bob, carol)
}

fn key(client: &MlsClient) -> EpochSenderKey {
    EpochSenderKey::current(client, GROUP, CHANNEL).unwrap()
}

fn field(vector: &Value, name: &str) -> Vec<u8> {
    hex::decode(vector[name].as_str().unwrap()).unwrap()
}

#[test]
fn members_of_an_epoch_share_the_key_and_their_proofs_verify() {
    let (alice, bob, carol) = three_members();
    let published = alice.epoch(GROUP).unwrap();
    assert_eq!(published, 2);
    let server_key = key(&alice).public_key();
    assert_eq!(key(&bob).public_key(), server_key);
    assert_eq!(key(&carol).public_key(), server_key);
    assert_eq!(key(&carol).epoch(), published);
    assert_eq!(key(&carol).channel_id(), CHANNEL);

    for member in [&alice, &bob, &carol] {
        let proof = key(member).prove(&mut OsRng, b"mls ciphertext", NOW);
        let verified = server_key.verify(&CHANNEL, published, b"mls ciphertext", &proof).unwrap();
        assert_eq!(verified.epoch(), published);
        assert_eq!(verified.channel_id(), CHANNEL);
        assert_eq!(verified.timestamp_ms(), NOW);
        assert_eq!(verified.nonce(), proof.nonce());
    }
}

#[test]
fn proofs_do_not_reveal_the_member() {
    // Same message (nonce included): every member produces the very same
    // bytes, since Ed25519 signing is deterministic and the key is shared.
    let (alice, bob, carol) = three_members();
    let proofs: Vec<SenderProof> = [&alice, &bob, &carol]
        .into_iter()
        .map(|member| key(member).prove(&mut FixedRng(vec![0x42; 16]), b"payload", NOW))
        .collect();
    assert_eq!(proofs[0], proofs[1]);
    assert_eq!(proofs[1], proofs[2]);
}

#[test]
fn committer_publishes_the_next_epoch_key_with_its_commit() {
    let (alice, bob, carol) = three_members();
    let commit = alice.self_update(GROUP).unwrap();
    let published = EpochSenderKey::after_pending_commit(&alice, GROUP, CHANNEL).unwrap();
    assert_eq!(published.epoch(), 3);
    // Before the commit is merged, the current key is still epoch 2's.
    assert_ne!(key(&alice).public_key(), published.public_key());

    alice.merge_pending_commit(GROUP).unwrap();
    bob.process(GROUP, &commit.commit).unwrap();
    carol.process(GROUP, &commit.commit).unwrap();
    for member in [&alice, &bob, &carol] {
        assert_eq!(key(member).public_key(), published.public_key());
        assert_eq!(key(member).epoch(), 3);
    }
    assert!(matches!(EpochSenderKey::after_pending_commit(&alice, GROUP, CHANNEL), Err(CoreError::NoPendingCommit)));
}

#[test]
fn non_members_and_old_epoch_keys_fail() {
    let (alice, bob, carol) = three_members();
    let old_key = key(&bob);

    // Bob is removed: epoch 3, whose key he cannot derive.
    let removal = alice.remove_members(GROUP, &[bob.device_id()]).unwrap();
    alice.merge_pending_commit(GROUP).unwrap();
    carol.process(GROUP, &removal.commit).unwrap();
    bob.process(GROUP, &removal.commit).unwrap();
    assert!(matches!(EpochSenderKey::current(&bob, GROUP, CHANNEL), Err(CoreError::NotAMember)));

    let epoch = alice.epoch(GROUP).unwrap();
    let server_key = key(&alice).public_key();
    assert_eq!(key(&carol).public_key(), server_key);

    // Bob's old key, signing for the new epoch or for its own.
    let mut forged = old_key.prove(&mut OsRng, b"spam", NOW);
    assert!(matches!(
        server_key.verify(&CHANNEL, epoch, b"spam", &forged),
        Err(CoreError::SenderProofWrongEpoch { proof_epoch: 2, key_epoch: 3 })
    ));
    forged.epoch = epoch;
    assert!(matches!(server_key.verify(&CHANNEL, epoch, b"spam", &forged), Err(CoreError::InvalidSignature(_))));

    // An outsider with a group of its own under the same channel id.
    let mallory = client("mallory");
    mallory.create_group(GROUP).unwrap();
    let outsider = EpochSenderKey::from_exporter_secret(
        CHANNEL,
        epoch,
        &mallory.export_secret(GROUP, SEALED_SENDER_EXPORTER_LABEL, CHANNEL.as_bytes(), 32).unwrap(),
    )
    .unwrap();
    let proof = outsider.prove(&mut OsRng, b"spam", NOW);
    assert!(matches!(server_key.verify(&CHANNEL, epoch, b"spam", &proof), Err(CoreError::InvalidSignature(_))));
}

#[test]
fn proof_is_bound_to_payload_channel_and_time() {
    let (alice, _bob, _carol) = three_members();
    let member_key = key(&alice);
    let (server_key, epoch) = (member_key.public_key(), member_key.epoch());
    let proof = member_key.prove(&mut OsRng, b"payload", NOW);
    server_key.verify(&CHANNEL, epoch, b"payload", &proof).unwrap();

    assert!(matches!(server_key.verify(&CHANNEL, epoch, b"payloaD", &proof), Err(CoreError::InvalidSignature(_))));
    assert!(matches!(
        server_key.verify(&ChannelId([8; 16]), epoch, b"payload", &proof),
        Err(CoreError::InvalidSignature(_))
    ));
    let mut bytes = proof.to_bytes();
    for at in [9, 17, 33, SENDER_PROOF_LEN - 1] {
        bytes[at] ^= 0x01;
        let tampered = SenderProof::from_bytes(&bytes).unwrap();
        assert!(
            matches!(server_key.verify(&CHANNEL, epoch, b"payload", &tampered), Err(CoreError::InvalidSignature(_))),
            "byte {at}"
        );
        bytes[at] ^= 0x01;
    }
}

#[test]
fn proof_encoding() {
    let (alice, _bob, _carol) = three_members();
    let proof = key(&alice).prove(&mut OsRng, b"x", NOW);
    let bytes = proof.to_bytes();
    assert_eq!(bytes[0], SENDER_PROOF_VERSION);
    assert_eq!(SenderProof::from_bytes(&bytes).unwrap(), proof);
    assert!(matches!(SenderProof::from_bytes(&[]), Err(CoreError::Truncated { .. })));
    assert!(matches!(
        SenderProof::from_bytes(&bytes[..SENDER_PROOF_LEN - 1]),
        Err(CoreError::WrongLength { expected: SENDER_PROOF_LEN, actual, .. }) if actual == SENDER_PROOF_LEN - 1
    ));
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(SenderProof::from_bytes(&longer), Err(CoreError::WrongLength { .. })));
    let mut version = bytes;
    version[0] = 2;
    assert!(matches!(SenderProof::from_bytes(&version), Err(CoreError::UnsupportedVersion { version: 2, .. })));
}

#[test]
fn public_key_parsing_refuses_weak_keys() {
    let member_key = EpochSenderKey::from_exporter_secret(CHANNEL, 1, &[3; 32]).unwrap();
    let bytes = member_key.public_key().to_bytes();
    assert_eq!(EpochSenderPublicKey::from_bytes(&bytes).unwrap(), member_key.public_key());
    assert!(matches!(
        EpochSenderPublicKey::from_bytes(&bytes[..31]),
        Err(CoreError::InvalidKeyLength { expected: 32, actual: 31 })
    ));
    // The identity point: small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(matches!(EpochSenderPublicKey::from_bytes(&identity), Err(CoreError::WeakPublicKey)));
    assert!(matches!(
        EpochSenderKey::from_exporter_secret(CHANNEL, 1, &[3; 31]),
        Err(CoreError::InvalidKeyLength { expected: 32, actual: 31 })
    ));
}

#[test]
fn freshness_window() {
    let window = FreshnessWindow { max_age_ms: 1000, max_future_ms: 100 };
    window.check(NOW, NOW).unwrap();
    window.check(NOW - 1000, NOW).unwrap();
    window.check(NOW + 100, NOW).unwrap();
    assert!(matches!(window.check(NOW - 1001, NOW), Err(CoreError::SenderProofExpired { .. })));
    assert!(matches!(window.check(NOW + 101, NOW), Err(CoreError::SenderProofFromFuture { .. })));
    // No underflow near zero.
    window.check(0, 10).unwrap();
}

fn verified(member_key: &EpochSenderKey, timestamp_ms: u64) -> VerifiedSenderProof {
    let proof = member_key.prove(&mut OsRng, b"payload", timestamp_ms);
    member_key.public_key().verify(&member_key.channel_id(), member_key.epoch(), b"payload", &proof).unwrap()
}

#[test]
fn replayed_or_expired_proofs_are_detected() {
    let member_key = EpochSenderKey::from_exporter_secret(CHANNEL, 4, &[9; 32]).unwrap();
    let window = FreshnessWindow { max_age_ms: 1000, max_future_ms: 100 };
    let mut guard = ReplayGuard::new(window, 16);

    let proof = verified(&member_key, NOW);
    guard.check(&proof, NOW).unwrap();
    assert!(matches!(guard.check(&proof, NOW + 10), Err(CoreError::SenderProofReplayed)));
    assert!(matches!(guard.check(&proof, NOW + 1000), Err(CoreError::SenderProofReplayed)));
    // Once out of the window, it is refused as expired.
    assert!(matches!(guard.check(&proof, NOW + 1001), Err(CoreError::SenderProofExpired { .. })));
    // …and a clock stepping back does not revive it: the guard's time only
    // moves forward.
    assert!(matches!(guard.check(&proof, NOW), Err(CoreError::SenderProofExpired { .. })));

    let late = verified(&member_key, NOW + 5000);
    assert!(matches!(guard.check(&late, NOW + 1001), Err(CoreError::SenderProofFromFuture { .. })));
    let stale = verified(&member_key, NOW - 5000);
    assert!(matches!(guard.check(&stale, NOW + 1001), Err(CoreError::SenderProofExpired { .. })));

    // The same nonce in another channel is another proof.
    let other_channel = VerifiedSenderProof { channel_id: ChannelId([1; 16]), ..proof };
    let mut fresh_guard = ReplayGuard::new(window, 16);
    fresh_guard.check(&proof, NOW).unwrap();
    fresh_guard.check(&other_channel, NOW).unwrap();
    assert_eq!(fresh_guard.len(), 2);
}

#[test]
fn replay_guard_forgets_expired_entries_and_has_a_bound() {
    let member_key = EpochSenderKey::from_exporter_secret(CHANNEL, 4, &[9; 32]).unwrap();
    let window = FreshnessWindow { max_age_ms: 1000, max_future_ms: 100 };
    let mut guard = ReplayGuard::new(window, 3);
    assert!(guard.is_empty());
    for offset in 0..3 {
        guard.check(&verified(&member_key, NOW + offset), NOW).unwrap();
    }
    assert!(matches!(guard.check(&verified(&member_key, NOW), NOW), Err(CoreError::ReplayCacheFull { capacity: 3 })));
    // 1001 ms on, the first entry expired and was dropped; room for one.
    guard.check(&verified(&member_key, NOW + 1001), NOW + 1001).unwrap();
    assert_eq!(guard.len(), 3);
    // Far later, everything old is gone.
    guard.check(&verified(&member_key, NOW + 10_000), NOW + 10_000).unwrap();
    assert_eq!(guard.len(), 1);
}

#[test]
fn debug_output_is_redacted() {
    let member_key = EpochSenderKey::from_exporter_secret(CHANNEL, 1, &[0x5a; 32]).unwrap();
    let debug = format!("{member_key:?}");
    assert!(debug.contains(&hex::encode(member_key.public_key().to_bytes())));
    assert!(!debug.contains(&hex::encode([0x5a; 32])));
}

/// An RNG that hands out fixed bytes, for pinned vectors.
struct FixedRng(Vec<u8>);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FixedRng {}

/// The derivation, the signed message and the encoding, pinned: exporter
/// output to public key, and a proof from fixed inputs (Ed25519 signing is
/// deterministic).
#[test]
fn golden_sender_proof() {
    let vector: Value = serde_json::from_str(GOLDEN).unwrap();
    let channel_id = ChannelId::try_from(field(&vector, "channel_id").as_slice()).unwrap();
    let epoch = vector["epoch"].as_u64().unwrap();
    let timestamp_ms = vector["timestamp_ms"].as_u64().unwrap();
    let payload = field(&vector, "payload");
    let nonce: [u8; SENDER_PROOF_NONCE_LEN] = field(&vector, "nonce").try_into().unwrap();

    let member_key = EpochSenderKey::from_exporter_secret(channel_id, epoch, &field(&vector, "exported_seed")).unwrap();
    assert_eq!(hex::encode(member_key.public_key().to_bytes()), vector["public_key"].as_str().unwrap());
    let message = signed_message(&channel_id, epoch, timestamp_ms, &nonce, &Sha256::digest(&payload).into());
    assert_eq!(hex::encode(&message), vector["signed_message"].as_str().unwrap());

    let proof = member_key.prove(&mut FixedRng(nonce.to_vec()), &payload, timestamp_ms);
    assert_eq!(hex::encode(proof.to_bytes()), vector["proof"].as_str().unwrap());
    member_key.public_key().verify(&channel_id, epoch, &payload, &proof).unwrap();
}
