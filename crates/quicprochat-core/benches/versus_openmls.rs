//! The SDK's MLS path next to raw openmls on the same tree shape (issue #8):
//! for n = 10 and 100 members (and 1000 with `QPC_BENCH_LARGE=1`), in both
//! ciphersuites, the same operations measured twice.
//!
//! - `ours`: through [`MlsClient`] as the SDK drives it, each operation
//!   followed by the persistence step (`state_changes` + `mark_persisted`;
//!   the SDK writes only the changed entries).
//! - `raw`: the same operation on an [`MlsGroup`] kept in memory, with the
//!   same provider, ciphersuite, group configuration and credentials.
//!
//! Both groups were built the same way: the creator added the n−1 other
//! members in one commit; the receiver is a member that joined from the
//! Welcome; then the creator committed as many self-updates as past epochs
//! are kept, so both sides start in the steady state of a group in use.
//! Whatever `ours` costs beyond `raw` is what quicprochat adds: padding,
//! credential checks, the kept-group lookup and the change diff.
//!
//! `cargo bench -p quicprochat-core --bench versus_openmls` (or `… -- n100`
//! for one size). Results are in `docs/benchmarks.md`.

// A benchmark that fails should stop loudly, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, group_sizes};

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialType, CredentialWithKey, ExtensionType, GroupId, KeyPackage,
    LeafNodeParameters, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    PURE_PLAINTEXT_WIRE_FORMAT_POLICY, ProcessedMessageContent, SenderRatchetConfiguration, StagedWelcome,
};
use openmls_libcrux_crypto::Provider;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use quicprochat_core::mls::encode_credential_identity;
use quicprochat_core::{IdentityKeyPair, MlsClient, MlsSuite, Processed, device_id_for_key};
use rand::rngs::OsRng;

const GROUP: &[u8] = b"bench-group-0001";
/// Size of the application message benchmarked.
const MESSAGE: [u8; 1024] = [0x61; 1024];

// The group configuration `MlsClient::create_group` uses (see `src/mls/mod.rs`).
const MAX_PAST_EPOCHS: usize = 5;
const OUT_OF_ORDER_TOLERANCE: u32 = 32;
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

fn suites() -> [(MlsSuite, Ciphersuite, &'static str); 2] {
    [
        (MlsSuite::XWing, Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519, "xwing"),
        (MlsSuite::Classic, Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, "classic"),
    ]
}

// ----- ours: MlsClient as the SDK drives it ---------------------------------

/// The SDK's persistence step after every operation: take the changed
/// entries (the SDK seals and writes them here) and report them persisted.
fn persist(client: &MlsClient) {
    let changes = client.state_changes().unwrap();
    client.mark_persisted(&changes).unwrap();
}

fn client(name: &str, suite: MlsSuite) -> MlsClient {
    MlsClient::new(&IdentityKeyPair::generate(&mut OsRng), name, suite).unwrap()
}

/// A group of `n` built through [`MlsClient`], everything persisted.
struct Ours {
    creator: MlsClient,
    receiver: MlsClient,
}

impl Ours {
    fn new(n: usize, suite: MlsSuite) -> Self {
        let creator = client("creator", suite);
        creator.create_group(GROUP).unwrap();
        let receiver = client("receiver", suite);
        let mut key_packages = vec![receiver.generate_key_package().unwrap()];
        // The other members only hand out a key package.
        key_packages.extend((2..n).map(|i| client(&format!("member{i}"), suite).generate_key_package().unwrap()));
        let outcome = creator.add_members(GROUP, &key_packages).unwrap();
        creator.merge_pending_commit(GROUP).unwrap();
        receiver.join_from_welcome(&outcome.welcome).unwrap();
        assert_eq!(receiver.members(GROUP).unwrap().len(), n);
        persist(&creator);
        persist(&receiver);
        let ours = Self { creator, receiver };
        for _ in 0..MAX_PAST_EPOCHS {
            ours.receiver.process(GROUP, &ours.next_commit()).unwrap();
            persist(&ours.receiver);
        }
        ours
    }

    /// A self-update commit by the creator, merged and persisted.
    fn next_commit(&self) -> Vec<u8> {
        let commit = self.creator.self_update(GROUP).unwrap().commit;
        self.creator.merge_pending_commit(GROUP).unwrap();
        persist(&self.creator);
        commit
    }
}

// ----- raw: openmls MlsGroup, kept in memory --------------------------------

/// An Ed25519 signer, as a raw openmls user would write one (the device
/// signer of `MlsClient` is the same).
struct RawSigner(SigningKey);

impl Signer for RawSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A member's signer and credential, the credential with the same identity
/// bytes `MlsClient` uses, so both trees hold leaves of the same size.
fn raw_member(name: &str) -> (RawSigner, CredentialWithKey) {
    let key = SigningKey::generate(&mut OsRng);
    let public = key.verifying_key().to_bytes();
    let identity = encode_credential_identity(name, &device_id_for_key(&public)).unwrap();
    let credential =
        CredentialWithKey { credential: BasicCredential::new(identity).into(), signature_key: public.to_vec().into() };
    (RawSigner(key), credential)
}

fn capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(vec![
            Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        ])
        .extensions(vec![ExtensionType::LastResort])
        .credentials(vec![CredentialType::Basic])
        .build()
}

fn sender_ratchet_configuration() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

fn raw_key_package(ciphersuite: Ciphersuite, provider: &Provider, name: &str) -> KeyPackage {
    let (signer, credential) = raw_member(name);
    KeyPackage::builder()
        .leaf_node_capabilities(capabilities())
        .build(ciphersuite, provider, &signer, credential)
        .unwrap()
        .key_package()
        .clone()
}

/// One member's side of a raw group.
struct RawMember {
    provider: Provider,
    signer: RawSigner,
    group: MlsGroup,
}

/// The same shape built directly on openmls.
struct Raw {
    creator: RawMember,
    receiver: RawMember,
}

impl Raw {
    fn new(n: usize, ciphersuite: Ciphersuite) -> Self {
        let provider = Provider::new().unwrap();
        let (signer, credential) = raw_member("creator");
        let mut group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(GROUP))
            .ciphersuite(ciphersuite)
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchet_configuration())
            .with_capabilities(capabilities())
            .build(&provider, &signer, credential)
            .unwrap();

        let receiver_provider = Provider::new().unwrap();
        let (receiver_signer, receiver_credential) = raw_member("receiver");
        let receiver_key_package = KeyPackage::builder()
            .leaf_node_capabilities(capabilities())
            .build(ciphersuite, &receiver_provider, &receiver_signer, receiver_credential)
            .unwrap()
            .key_package()
            .clone();
        // The other members never process anything: one provider keeps all
        // their key packages' private keys.
        let others = Provider::new().unwrap();
        let mut key_packages = vec![receiver_key_package];
        key_packages.extend((2..n).map(|i| raw_key_package(ciphersuite, &others, &format!("member{i}"))));

        let (_commit, welcome, _group_info) = group.add_members(&provider, &signer, &key_packages).unwrap();
        group.merge_pending_commit(&provider).unwrap();
        let welcome = match MlsMessageIn::tls_deserialize_exact(welcome.to_bytes().unwrap()).unwrap().extract() {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => unreachable!("add_members returns a Welcome"),
        };
        let receiver_group = StagedWelcome::build_from_welcome(&receiver_provider, &join_config(), welcome)
            .unwrap()
            .skip_lifetime_validation()
            .build()
            .unwrap()
            .into_group(&receiver_provider)
            .unwrap();
        assert_eq!(receiver_group.members().count(), n);
        let mut raw = Self {
            creator: RawMember { provider, signer, group },
            receiver: RawMember { provider: receiver_provider, signer: receiver_signer, group: receiver_group },
        };
        for _ in 0..MAX_PAST_EPOCHS {
            let commit = raw_next_commit(&mut raw.creator);
            assert!(raw_process(&mut raw.receiver, &commit).is_none());
        }
        raw
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet_configuration())
        .build()
}

fn raw_encrypt(member: &mut RawMember, plaintext: &[u8]) -> Vec<u8> {
    member.group.create_message(&member.provider, &member.signer, plaintext).unwrap().to_bytes().unwrap()
}

/// Processes an `MLSMessage` as a raw openmls user does: parse, process,
/// merge a commit; returns an application message's plaintext.
fn raw_process(member: &mut RawMember, message: &[u8]) -> Option<Vec<u8>> {
    let message = MlsMessageIn::tls_deserialize_exact(message).unwrap().try_into_protocol_message().unwrap();
    let processed = member.group.process_message(&member.provider, message).unwrap();
    match processed.into_content() {
        ProcessedMessageContent::ApplicationMessage(message) => Some(message.into_bytes()),
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            member.group.merge_staged_commit(&member.provider, *staged).unwrap();
            None
        }
        _ => unreachable!("the benchmark sends application messages and commits"),
    }
}

/// A self-update commit and its GroupInfo, serialised (what `MlsClient`
/// returns), left pending.
fn raw_self_update(member: &mut RawMember) -> Vec<u8> {
    let bundle = member.group.self_update(&member.provider, &member.signer, LeafNodeParameters::default()).unwrap();
    let (commit, _welcome, group_info) = bundle.into_messages();
    black_box(group_info.map(|info| info.to_bytes().unwrap()));
    commit.to_bytes().unwrap()
}

/// A self-update commit, merged.
fn raw_next_commit(member: &mut RawMember) -> Vec<u8> {
    let commit = raw_self_update(member);
    member.group.merge_pending_commit(&member.provider).unwrap();
    commit
}

// ----- the benchmarks --------------------------------------------------------

fn versus(c: &mut Criterion) {
    for n in group_sizes() {
        for (suite, ciphersuite, name) in suites() {
            let ours = Ours::new(n, suite);
            let mut raw = Raw::new(n, ciphersuite);
            let mut group = c.benchmark_group(format!("versus_{name}_n{n}"));
            // Every iteration of the commit benchmarks takes milliseconds to
            // a third of a second: the same count of iterations per sample.
            group.sampling_mode(SamplingMode::Flat);
            pair_benches(&mut group, &ours, &mut raw);
            group.finish();
        }
    }
}

fn pair_benches(group: &mut BenchmarkGroup<'_, WallTime>, ours: &Ours, raw: &mut Raw) {
    // The creator sends.
    group.bench_function("encrypt_1KiB/ours", |b| {
        b.iter(|| {
            let ciphertext = ours.creator.encrypt(GROUP, black_box(&MESSAGE)).unwrap();
            persist(&ours.creator);
            ciphertext
        })
    });
    group.bench_function("encrypt_1KiB/raw", |b| b.iter(|| raw_encrypt(&mut raw.creator, black_box(&MESSAGE))));

    // The receiver sends (untimed), the creator decrypts, in order.
    group.bench_function("decrypt_1KiB/ours", |b| {
        b.iter_batched(
            || {
                let ciphertext = ours.receiver.encrypt(GROUP, &MESSAGE).unwrap();
                persist(&ours.receiver);
                ciphertext
            },
            |ciphertext| {
                let processed = ours.creator.process(GROUP, &ciphertext).unwrap();
                persist(&ours.creator);
                assert!(matches!(processed, Processed::Application { .. }));
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decrypt_1KiB/raw", |b| {
        b.iter_batched(
            || raw_encrypt(&mut raw.receiver, &MESSAGE),
            |ciphertext| assert!(raw_process(&mut raw.creator, &ciphertext).is_some()),
            BatchSize::SmallInput,
        )
    });

    // The creator commits a self-update (untimed), the receiver processes
    // and merges it; both stay at the same epoch.
    group.bench_function("process_commit/ours", |b| {
        b.iter_batched(
            || ours.next_commit(),
            |commit| {
                let processed = ours.receiver.process(GROUP, &commit).unwrap();
                persist(&ours.receiver);
                assert!(matches!(processed, Processed::Commit { .. }));
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("process_commit/raw", |b| {
        b.iter_batched(
            || raw_next_commit(&mut raw.creator),
            |commit| assert!(raw_process(&mut raw.receiver, &commit).is_none()),
            BatchSize::PerIteration,
        )
    });

    // Last: the creator rotates its keys and merges (the server accepted),
    // leaving the receiver behind.
    group.bench_function("self_update_merge/ours", |b| {
        b.iter(|| {
            let outcome = ours.creator.self_update(GROUP).unwrap();
            ours.creator.merge_pending_commit(GROUP).unwrap();
            persist(&ours.creator);
            outcome
        })
    });
    group.bench_function("self_update_merge/raw", |b| b.iter(|| raw_next_commit(&mut raw.creator)));
}

criterion_group! {
    name = benches;
    config = config();
    targets = versus
}
criterion_main!(benches);
