//! Benchmarks of quicprochat-core: identity signatures, key packages, MLS
//! group operations for n = 10 and 100 members (and 1000 with
//! `QPC_BENCH_LARGE=1`) in both ciphersuites, the server's channel tracker,
//! hybrid envelopes, safety numbers, archive appends and OPAQUE logins.
//!
//! `cargo bench -p quicprochat-core` (or `… -- mls_xwing_n100` for one
//! group). Results for this repository's machine are in
//! `docs/benchmarks.md`.

// A benchmark that fails should stop loudly, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, group_sizes};

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use quicprochat_core::{
    ArchiveRecord, ArchiveWriter, ChannelId, ChannelTracker, DeviceId, HybridKeyPair, IdentityKeyPair, KdfParams,
    MlsClient, MlsSuite, SafetyNumber, envelope, verify_signature,
};
use rand::rngs::OsRng;

const GROUP: &[u8] = b"bench-group-0001";
/// Size of the application message benchmarked.
const MESSAGE: [u8; 1024] = [0x61; 1024];

fn suites() -> [(MlsSuite, &'static str); 2] {
    [(MlsSuite::XWing, "xwing"), (MlsSuite::Classic, "classic")]
}

fn client(name: &str, suite: MlsSuite) -> MlsClient {
    MlsClient::new(&IdentityKeyPair::generate(&mut OsRng), name, suite).unwrap()
}

fn identity(c: &mut Criterion) {
    let identity = IdentityKeyPair::generate(&mut OsRng);
    let public_key = identity.public_key();
    let message = [0x42u8; 64];
    let signature = identity.sign(&message);
    let mut group = c.benchmark_group("identity");
    group.bench_function("sign_64B", |b| b.iter(|| identity.sign(black_box(&message))));
    group.bench_function("verify_64B", |b| {
        b.iter(|| verify_signature(black_box(&public_key), black_box(&message), black_box(&signature)).unwrap())
    });
    group.finish();
}

fn key_packages(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_package");
    for (suite, name) in suites() {
        // A fresh client per input, so stored private keys do not pile up.
        group.bench_function(format!("generate_{name}"), |b| {
            b.iter_batched_ref(
                || client("bench", suite),
                |client| client.generate_key_package().unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A group of `n` members created by `creator` with one commit; `receiver`
/// is a member that joined; the others never process anything.
struct Fixture {
    suite: MlsSuite,
    creator: MlsClient,
    receiver: MlsClient,
    receiver_identity: IdentityKeyPair,
    receiver_state: Vec<u8>,
    /// Key packages of all members but the creator (for "create").
    key_packages: Vec<Vec<u8>>,
    /// A member the creator can remove.
    removable: DeviceId,
    tracker_state: Vec<u8>,
    /// A self-update commit by the creator, never merged, for receivers.
    commit: Vec<u8>,
}

impl Fixture {
    fn new(n: usize, suite: MlsSuite) -> Self {
        let creator = client("creator", suite);
        creator.create_group(GROUP).unwrap();
        let mut tracker = ChannelTracker::from_group_info(GROUP, &creator.export_group_info(GROUP).unwrap()).unwrap();

        let receiver_identity = IdentityKeyPair::generate(&mut OsRng);
        let receiver = MlsClient::new(&receiver_identity, "receiver", suite).unwrap();
        let others: Vec<MlsClient> = (2..n).map(|i| client(&format!("member{i}"), suite)).collect();
        let mut key_packages = vec![receiver.generate_key_package().unwrap()];
        key_packages.extend(others.iter().map(|other| other.generate_key_package().unwrap()));

        let outcome = creator.add_members(GROUP, &key_packages).unwrap();
        tracker.process(&outcome.commit).unwrap();
        creator.merge_pending_commit(GROUP).unwrap();
        receiver.join_from_welcome(&outcome.welcome).unwrap();
        assert_eq!(receiver.members(GROUP).unwrap().len(), n);

        let receiver_state = receiver.export_state().unwrap().to_vec();
        let commit = creator.self_update(GROUP).unwrap().commit;
        creator.clear_pending_commit(GROUP).unwrap();
        Self {
            suite,
            removable: others.last().map_or(receiver.device_id(), MlsClient::device_id),
            creator,
            receiver,
            receiver_identity,
            receiver_state,
            key_packages,
            tracker_state: tracker.to_bytes().unwrap(),
            commit,
        }
    }
}

fn mls_groups(c: &mut Criterion) {
    for n in group_sizes() {
        for (suite, name) in suites() {
            let fixture = Fixture::new(n, suite);
            let mut group = c.benchmark_group(format!("mls_{name}_n{n}"));
            mls_group_benches(&mut group, &fixture);
            group.finish();
        }
    }
}

fn mls_group_benches(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, f: &Fixture) {
    let creator = &f.creator;

    group.bench_function("create_with_n", |b| {
        b.iter_batched(
            || client("founder", f.suite),
            |founder| {
                founder.create_group(GROUP).unwrap();
                founder.add_members(GROUP, &f.key_packages).unwrap();
                founder.merge_pending_commit(GROUP).unwrap();
                founder
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("add_one", |b| {
        b.iter_batched(
            || {
                creator.clear_pending_commit(GROUP).unwrap();
                client("newcomer", f.suite).generate_key_package().unwrap()
            },
            |key_package| creator.add_members(GROUP, &[key_package]).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("remove_one", |b| {
        b.iter_batched(
            || creator.clear_pending_commit(GROUP).unwrap(),
            |()| creator.remove_members(GROUP, &[f.removable]).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("self_update", |b| {
        b.iter_batched(
            || creator.clear_pending_commit(GROUP).unwrap(),
            |()| creator.self_update(GROUP).unwrap(),
            BatchSize::PerIteration,
        )
    });
    creator.clear_pending_commit(GROUP).unwrap();

    group.bench_function("process_commit", |b| {
        b.iter_batched(
            || MlsClient::restore(&f.receiver_identity, "receiver", f.suite, &f.receiver_state).unwrap(),
            |receiver| {
                receiver.process(GROUP, &f.commit).unwrap();
                receiver
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("tracker_process_commit", |b| {
        b.iter_batched(
            || ChannelTracker::restore(&f.tracker_state).unwrap(),
            |mut tracker| {
                tracker.process(&f.commit).unwrap();
                tracker
            },
            BatchSize::PerIteration,
        )
    });

    // The floor of every MlsClient call on a group in use (kept in memory),
    // with no cryptography.
    group.bench_function("call_floor", |b| b.iter(|| creator.epoch(GROUP).unwrap()));
    // The first call after a restart: the group is loaded from storage.
    group.bench_function("cold_load", |b| {
        b.iter_batched(
            || MlsClient::restore(&f.receiver_identity, "receiver", f.suite, &f.receiver_state).unwrap(),
            |restored| restored.epoch(GROUP).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encrypt_1KiB", |b| b.iter(|| creator.encrypt(GROUP, black_box(&MESSAGE)).unwrap()));
    // The receiver sends and the creator decrypts, in order: the creator's
    // own generations ran far ahead in the encryption benchmark.
    group.bench_function("decrypt_1KiB", |b| {
        b.iter_batched(
            || f.receiver.encrypt(GROUP, &MESSAGE).unwrap(),
            |ciphertext| creator.process(GROUP, &ciphertext).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

fn hybrid_envelope(c: &mut Criterion) {
    let recipient = HybridKeyPair::generate(&mut OsRng).unwrap();
    let aad = b"bench-channel-0001";
    let sealed = envelope::seal(&mut OsRng, recipient.public_key(), aad, &MESSAGE).unwrap();
    let mut group = c.benchmark_group("envelope");
    group.bench_function("seal_1KiB", |b| {
        b.iter(|| envelope::seal(&mut OsRng, recipient.public_key(), black_box(aad), black_box(&MESSAGE)).unwrap())
    });
    group.bench_function("open_1KiB", |b| {
        b.iter(|| envelope::open(&recipient, black_box(aad), black_box(&sealed)).unwrap())
    });
    group.finish();
}

/// Each side of an OPAQUE login for a registered user: the server's answer to a credential
/// request (where its curve work is), and the client's whole login with light Argon2.
fn opaque_login(c: &mut Criterion) {
    use quicprochat_core::opaque::{
        ClientLogin, ClientRegistration, OpaqueParams, OpaqueServerSetup, ServerLogin, server_registration_finish,
        server_registration_start,
    };
    let setup = OpaqueServerSetup::generate(&mut OsRng);
    let (registration, request) = ClientRegistration::start(&mut OsRng, b"pw").unwrap();
    let response = server_registration_start(&setup, &request, b"alice").unwrap();
    let upload = registration.finish(&mut OsRng, b"pw", &response, &OpaqueParams::light()).unwrap();
    let file = server_registration_finish(&upload).unwrap();
    let (_, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
    let mut group = c.benchmark_group("opaque");
    group.bench_function("server_login_start", |b| {
        b.iter(|| ServerLogin::start(&mut OsRng, &setup, Some(&file), black_box(&request), b"alice").unwrap())
    });
    group.bench_function("client_login_finish_light", |b| {
        b.iter_batched(
            || {
                let (client, request) = ClientLogin::start(&mut OsRng, b"pw").unwrap();
                let (_, response) = ServerLogin::start(&mut OsRng, &setup, Some(&file), &request, b"alice").unwrap();
                (client, response)
            },
            |(client, response)| client.finish(b"pw", &response, &OpaqueParams::light()).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn safety_number(c: &mut Criterion) {
    let alice = IdentityKeyPair::generate(&mut OsRng).public_key();
    let bob = IdentityKeyPair::generate(&mut OsRng).public_key();
    c.bench_function("safety_number/compute", |b| {
        b.iter(|| SafetyNumber::compute(black_box("alice"), &alice, black_box("bob"), &bob))
    });
}

fn archive(c: &mut Criterion) {
    let record = ArchiveRecord {
        timestamp_ms: 1_700_000_000_000,
        channel_id: ChannelId([7; 16]),
        sender_device: DeviceId([9; 16]),
        sender: "alice".to_owned(),
        body: MESSAGE.to_vec(),
    };
    c.bench_function("archive/append_1KiB", |b| {
        b.iter_batched_ref(
            || ArchiveWriter::new(&mut OsRng, b"password", &KdfParams::light()).unwrap(),
            |writer| writer.append(&mut OsRng, black_box(&record)).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = config();
    targets = identity, key_packages, hybrid_envelope, opaque_login, safety_number, archive, mls_groups
}
criterion_main!(benches);
