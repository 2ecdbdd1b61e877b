//! One store conformance suite, run unchanged against every backend (`SqliteStore`,
//! `PostgresStore`): each case is an async fn over a [`Fixture`] (an `Arc<dyn Store>` and a
//! [`Probe`] that counts stored rows with SQL both dialects read), and [`conformance_suite!`]
//! turns the list of cases into tests for one backend.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use quicprochat_server::store::{
    AuditEvent, AuditKind, BlobChunk, BlobRecord, ChannelId, ChannelKind, DeviceId, DeviceRecord, EndpointRecord,
    EnqueueBatch, EnvelopeKind, NewChannel, SessionRecord, Store, StoreError, Tracking, UserId, WelcomeFor,
};

/// Counts rows with one `SELECT COUNT(*) …` that SQLite and PostgreSQL both read, and changes
/// rows behind the store's back (to stage what an older version left).
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    async fn count(&self, sql: &str) -> i64;
    async fn execute(&self, sql: &str);
}

/// A store under test, a probe into its database, and whatever keeps them alive.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub probe: Box<dyn Probe>,
    /// Dropped last: the temporary directory or the PostgreSQL schema.
    pub _keep: Box<dyn std::any::Any + Send>,
}

const NOW: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

fn chan(n: u8) -> ChannelId {
    ChannelId([n; 16])
}

fn fresh_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    id
}

async fn account(store: &Arc<dyn Store>, name: &str) -> UserId {
    store.create_user(name, format!("record of {name}").into_bytes(), NOW).await.unwrap().id
}

/// Binds device `n` (id `[n; 16]`, key `[n; 32]`) to `user`, created at `NOW + n`.
async fn device(store: &Arc<dyn Store>, user: UserId, n: u8) -> DeviceId {
    let record = DeviceRecord {
        id: dev(n),
        user_id: user,
        identity_key: [n; 32],
        name: format!("device {n}"),
        created_ms: NOW + u64::from(n),
    };
    store.upsert_device(record).await.unwrap();
    dev(n)
}

fn batch(channel: ChannelId, sender: DeviceId, kind: EnvelopeKind, epoch: u64, payload: &[u8]) -> EnqueueBatch {
    EnqueueBatch {
        channel,
        sender,
        kind,
        epoch,
        payload: Bytes::copy_from_slice(payload),
        welcomes: Vec::new(),
        group_info: None,
        envelope_id: fresh_id(),
        idempotency_key: Vec::new(),
        expires_ms: None,
        now_ms: NOW,
        max_queue_depth: 10_000,
        tracking: None,
    }
}

/// Channel `c` created by `creator`, with `others` added by a commit at epoch 0 whose welcome
/// (one for all of them) makes them members (as `BatchEnqueue` does). The channel is then at
/// epoch 1.
async fn group(store: &Arc<dyn Store>, c: ChannelId, creator: DeviceId, others: &[DeviceId]) {
    let created =
        store.create_channel(NewChannel { id: c, kind: ChannelKind::Group, first_member: creator, now_ms: NOW }).await;
    assert!(created.unwrap());
    let mut commit = batch(c, creator, EnvelopeKind::Commit, 0, b"add");
    commit.welcomes = vec![WelcomeFor { devices: others.to_vec(), payload: Bytes::from_static(b"welcome") }];
    commit.group_info = Some(b"group info 1".to_vec());
    store.enqueue(commit).await.unwrap();
}

async fn send(store: &Arc<dyn Store>, c: ChannelId, sender: DeviceId, payload: &[u8]) -> u64 {
    store.enqueue(batch(c, sender, EnvelopeKind::Application, 1, payload)).await.unwrap().seq
}

fn payloads(entries: &[quicprochat_server::store::QueuedEntry]) -> Vec<&[u8]> {
    entries.iter().map(|e| &e.payload[..]).collect()
}

/// Every device's queue count (`devices.queue_depth`, which the depth check reads) matches
/// its queue's rows, and every queue entry names a device and an envelope that exist (the
/// PostgreSQL store keeps these relations without foreign keys).
async fn depths_match_queues(f: &Fixture) {
    let off =
        "SELECT COUNT(*) FROM devices d WHERE d.queue_depth <> (SELECT COUNT(*) FROM queue q WHERE q.device_id = d.id)";
    assert_eq!(f.probe.count(off).await, 0, "a device's queue_depth drifted from its queue");
    let orphans = "SELECT COUNT(*) FROM queue q \
        WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = q.device_id) \
        OR NOT EXISTS (SELECT 1 FROM envelopes e WHERE e.seq = q.envelope)";
    assert_eq!(f.probe.count(orphans).await, 0, "a queue entry outlived its device or its envelope");
}

pub async fn accounts_and_sessions(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    assert!(matches!(s.create_user("alice", b"x".to_vec(), NOW).await, Err(StoreError::AlreadyExists("user"))));
    let found = s.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.username.as_str(), found.opaque_record.as_slice()),
        (alice, "alice", b"record of alice".as_slice())
    );
    assert_eq!(s.user_by_id(alice).await.unwrap().unwrap().username, "alice");
    assert!(s.user_by_name("bob").await.unwrap().is_none());
    assert!(s.user_by_id(UserId([9; 16])).await.unwrap().is_none());

    let session = SessionRecord {
        token_hash: [1; 32],
        user_id: alice,
        device_id: None,
        created_ms: NOW,
        expires_ms: NOW + DAY_MS,
    };
    s.create_session(session.clone()).await.unwrap();
    let loaded = s.session([1; 32]).await.unwrap().unwrap();
    assert_eq!(
        (loaded.user_id, loaded.device_id, loaded.created_ms, loaded.expires_ms),
        (alice, None, NOW, NOW + DAY_MS)
    );
    let d = device(s, alice, 1).await;
    s.set_session_device([1; 32], d).await.unwrap();
    assert_eq!(s.session([1; 32]).await.unwrap().unwrap().device_id, Some(d));
    assert!(matches!(s.set_session_device([2; 32], d).await, Err(StoreError::NotFound("session"))));
    assert!(s.session([2; 32]).await.unwrap().is_none());
    assert!(s.delete_session([1; 32]).await.unwrap());
    assert!(!s.delete_session([1; 32]).await.unwrap());
    assert!(s.session([1; 32]).await.unwrap().is_none());

    // A login writes its session and its audit event together; a duplicate token stores neither.
    let login = AuditEvent {
        at_ms: NOW,
        kind: AuditKind::LoginSucceeded,
        user: Some(alice),
        device: None,
        method: None,
        status: None,
    };
    let fresh = SessionRecord { token_hash: [3; 32], ..session };
    s.record_login(fresh.clone(), login).await.unwrap();
    assert_eq!(s.session([3; 32]).await.unwrap().unwrap().user_id, alice);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM audit_log WHERE event = 'login_succeeded'").await, 1);
    assert!(s.record_login(fresh, login).await.is_err());
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM audit_log WHERE event = 'login_succeeded'").await, 1);
}

pub async fn devices_hybrid_keys_and_endpoints(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let a2 = device(s, alice, 2).await;
    let a1 = device(s, alice, 1).await;
    // The same key for the same account again is a no-op; for another account it is refused.
    device(s, alice, 1).await;
    let stolen = DeviceRecord { id: a1, user_id: bob, identity_key: [1; 32], name: "x".into(), created_ms: NOW };
    assert!(matches!(s.upsert_device(stolen).await, Err(StoreError::AlreadyExists("device"))));
    let listed: Vec<DeviceId> = s.devices_of(alice).await.unwrap().iter().map(|d| d.id).collect();
    assert_eq!(listed, vec![a1, a2], "oldest first");
    assert!(s.devices_of(bob).await.unwrap().is_empty());
    let by_key = s.device_by_key([2; 32]).await.unwrap().unwrap();
    assert_eq!((by_key.id, by_key.user_id, by_key.name.as_str(), by_key.created_ms), (a2, alice, "device 2", NOW + 2));
    assert!(s.device_by_key([7; 32]).await.unwrap().is_none());

    assert!(s.hybrid_key(a1).await.unwrap().is_none());
    s.set_hybrid_key(a1, b"xwing 1".to_vec()).await.unwrap();
    s.set_hybrid_key(a1, b"xwing 1b".to_vec()).await.unwrap();
    s.set_hybrid_key(a2, b"xwing 2".to_vec()).await.unwrap();
    assert_eq!(s.hybrid_key(a1).await.unwrap().unwrap(), b"xwing 1b");
    assert_eq!(s.hybrid_keys_of(alice).await.unwrap(), vec![(a1, b"xwing 1b".to_vec()), (a2, b"xwing 2".to_vec())]);

    s.set_endpoint(EndpointRecord { device_id: a1, endpoint: b"old".to_vec(), expires_ms: NOW + 10 }).await.unwrap();
    s.set_endpoint(EndpointRecord { device_id: a1, endpoint: b"new".to_vec(), expires_ms: NOW + 100 }).await.unwrap();
    s.set_endpoint(EndpointRecord { device_id: a2, endpoint: b"soon".to_vec(), expires_ms: NOW + 50 }).await.unwrap();
    let live: Vec<(DeviceId, Vec<u8>)> =
        s.endpoints_of(alice, NOW + 60).await.unwrap().into_iter().map(|e| (e.device_id, e.endpoint)).collect();
    assert_eq!(live, vec![(a1, b"new".to_vec())]);
}

pub async fn key_packages_are_single_use_with_a_last_resort(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let (a1, a2) = (device(s, alice, 1).await, device(s, alice, 2).await);
    assert_eq!(s.key_package_status(a1).await.unwrap(), (0, false));
    let pool = vec![b"kp1".to_vec(), b"kp2".to_vec()];
    assert_eq!(s.add_key_packages(a1, pool, Some(b"lr1".to_vec())).await.unwrap(), 2);
    assert_eq!(s.add_key_packages(a1, vec![b"kp3".to_vec()], Some(b"lr2".to_vec())).await.unwrap(), 3);
    assert_eq!(s.key_package_status(a1).await.unwrap(), (3, true));
    assert_eq!(s.add_key_packages(a2, vec![b"other".to_vec()], None).await.unwrap(), 1);

    // One per device, oldest device first, oldest package first.
    let claimed = s.claim_key_packages(alice).await.unwrap();
    let got: Vec<(DeviceId, &[u8], bool, u32)> =
        claimed.iter().map(|c| (c.device_id, c.key_package.as_slice(), c.last_resort, c.remaining)).collect();
    assert_eq!(got, vec![(a1, b"kp1".as_slice(), false, 2), (a2, b"other".as_slice(), false, 0)]);
    let claimed = s.claim_key_packages(alice).await.unwrap();
    assert_eq!(claimed.len(), 1, "a device with no package at all is skipped");
    assert_eq!(claimed[0].key_package, b"kp2");
    assert_eq!(s.claim_key_packages(alice).await.unwrap()[0].key_package, b"kp3");
    // The pool is empty: the (newest) last-resort package, returned and kept.
    for _ in 0..2 {
        let claimed = s.claim_key_packages(alice).await.unwrap();
        assert_eq!(
            (claimed[0].key_package.as_slice(), claimed[0].last_resort, claimed[0].remaining),
            (b"lr2".as_slice(), true, 0)
        );
    }
    assert_eq!(s.key_package_status(a1).await.unwrap(), (0, true));
    assert!(s.claim_key_packages(UserId([9; 16])).await.unwrap().is_empty());
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM key_packages").await, 1);
}

pub async fn concurrent_claims_hand_each_key_package_out_once(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let a1 = device(s, alice, 1).await;
    let pool: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'k', i]).collect();
    s.add_key_packages(a1, pool, Some(b"lr".to_vec())).await.unwrap();
    let claims: Vec<_> = (0..10)
        .map(|_| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.claim_key_packages(alice).await.unwrap().remove(0) })
        })
        .collect();
    let mut regular = HashSet::new();
    let mut last_resort = 0;
    for claim in claims {
        let c = claim.await.unwrap();
        if c.last_resort {
            last_resort += 1;
        } else {
            assert!(regular.insert(c.key_package), "a key package was handed out twice");
        }
    }
    assert_eq!((regular.len(), last_resort), (6, 4));
}

pub async fn channels_and_membership(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let (a1, a2) = (device(s, alice, 1).await, device(s, alice, 2).await);
    let new = |id, kind, first| NewChannel { id, kind, first_member: first, now_ms: NOW };
    assert!(s.create_channel(new(chan(1), ChannelKind::Dm, a1)).await.unwrap());
    assert!(!s.create_channel(new(chan(1), ChannelKind::Dm, a2)).await.unwrap());
    assert!(s.create_channel(new(chan(2), ChannelKind::Group, a1)).await.unwrap());
    let c = s.channel(chan(1)).await.unwrap().unwrap();
    assert_eq!(
        (c.id, c.kind, c.epoch, c.group_info, c.retention_secs, c.tracker),
        (chan(1), ChannelKind::Dm, 0, None, 0, None)
    );
    assert!(s.channel(chan(9)).await.unwrap().is_none());
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![a1], "the loser of the race does not become a member");
    let of: Vec<ChannelId> = s.channels_of(a1).await.unwrap().iter().map(|c| c.id).collect();
    assert_eq!(of, vec![chan(1), chan(2)]);
    assert!(s.channels_of(a2).await.unwrap().is_empty());
    s.set_retention(chan(2), 3600).await.unwrap();
    assert_eq!(s.channel(chan(2)).await.unwrap().unwrap().retention_secs, 3600);
    assert!(matches!(s.set_retention(chan(9), 1).await, Err(StoreError::NotFound("channel"))));

    // Racing creators of one DM: exactly one is told it created it.
    let racers: Vec<_> = [a1, a2]
        .into_iter()
        .cycle()
        .take(8)
        .map(|d| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.create_channel(new(chan(3), ChannelKind::Dm, d)).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap());
    }
    assert_eq!(winners, 1);
    assert_eq!(s.members(chan(3)).await.unwrap().len(), 1);
}

pub async fn enqueue_fans_out_once_to_every_other_member_device(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, a2, b1) = (device(s, alice, 1).await, device(s, alice, 2).await, device(s, bob, 3).await);
    group(s, chan(1), a1, &[a2, b1]).await;
    let c = s.channel(chan(1)).await.unwrap().unwrap();
    assert_eq!((c.epoch, c.group_info.as_deref()), (1, Some(b"group info 1".as_slice())));
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![a1, a2, b1]);
    // Welcomes only: the commit itself had nobody to go to and is not kept.
    // One Welcome for both added devices: stored once, queued to each.
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 1);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 2);
    let welcome = s.peek(b1, 0, 10, u64::MAX, NOW).await.unwrap().entries;
    assert_eq!((welcome.len(), welcome[0].kind, welcome[0].seq), (1, EnvelopeKind::Welcome, 1));
    let welcome_at_a2 = s.peek(a2, 0, 10, u64::MAX, NOW).await.unwrap().entries;
    assert_eq!(
        (payloads(&welcome_at_a2), welcome_at_a2[0].envelope_id),
        (vec![&b"welcome"[..]], welcome[0].envelope_id)
    );

    let mut message = batch(chan(1), a1, EnvelopeKind::Application, 1, b"hello");
    let envelope_id = message.envelope_id;
    message.now_ms = NOW + 5;
    let out = s.enqueue(message).await.unwrap();
    assert!(!out.replayed);
    assert_eq!((out.envelope_id, out.timestamp_ms, out.epoch), (envelope_id, NOW + 5, 1));
    let mut to: Vec<(DeviceId, u64)> = out.deliveries.iter().map(|(d, e)| (*d, e.seq)).collect();
    to.sort();
    assert_eq!(to, vec![(a2, 2), (b1, 2)], "the sender's other device too, never the sender");
    let (_, e) = &out.deliveries[0];
    assert_eq!(
        (e.channel, e.envelope_id, e.kind, e.epoch, &e.payload[..], e.created_ms),
        (chan(1), envelope_id, EnvelopeKind::Application, 1, b"hello".as_slice(), NOW + 5)
    );
    // The payload is stored once, queued twice.
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes WHERE kind = 1").await, 1);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 4);
    let second = send(s, chan(1), b1, b"hi back").await;
    assert!(second > out.seq, "envelope sequence numbers increase");
    let at_a1 = s.peek(a1, 0, 10, u64::MAX, NOW).await.unwrap().entries;
    assert_eq!((payloads(&at_a1), at_a1[0].seq), (vec![b"hi back".as_slice()], 1));

    // Refusals change nothing.
    let stranger = device(s, bob, 4).await;
    let refused = s.enqueue(batch(chan(1), stranger, EnvelopeKind::Application, 1, b"x")).await;
    assert!(matches!(refused, Err(StoreError::NotMember)));
    let nowhere = s.enqueue(batch(chan(9), a1, EnvelopeKind::Application, 1, b"x")).await;
    assert!(matches!(nowhere, Err(StoreError::NotFound("channel"))));
    let mut to_nobody = batch(chan(1), a1, EnvelopeKind::Commit, 1, b"add ghost");
    to_nobody.welcomes = vec![WelcomeFor { devices: vec![b1, dev(99)], payload: Bytes::from_static(b"w") }];
    assert!(matches!(s.enqueue(to_nobody).await, Err(StoreError::UnknownDevice)));
    assert_eq!(s.channel(chan(1)).await.unwrap().unwrap().epoch, 1, "the refused commit left no trace");
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 3);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 6);
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![a1, a2, b1]);
}

pub async fn commits_are_sequenced_and_stale_ones_conflict(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, b1) = (device(s, alice, 1).await, device(s, bob, 2).await);
    group(s, chan(1), a1, &[b1]).await;
    let mut commit = batch(chan(1), b1, EnvelopeKind::Commit, 1, b"update");
    commit.group_info = Some(b"group info 2".to_vec());
    assert_eq!(s.enqueue(commit).await.unwrap().epoch, 2);
    let stale = s.enqueue(batch(chan(1), a1, EnvelopeKind::Commit, 1, b"late")).await;
    assert!(matches!(stale, Err(StoreError::StaleEpoch { attempted: 1, current: 2 })));
    let proposal = s.enqueue(batch(chan(1), a1, EnvelopeKind::Proposal, 1, b"p")).await;
    assert!(matches!(proposal, Err(StoreError::StaleEpoch { attempted: 1, current: 2 })));
    assert_eq!(s.enqueue(batch(chan(1), a1, EnvelopeKind::Proposal, 2, b"p")).await.unwrap().epoch, 2);
    // A commit without GroupInfo keeps the last one.
    assert_eq!(s.enqueue(batch(chan(1), a1, EnvelopeKind::Commit, 2, b"c")).await.unwrap().epoch, 3);
    assert_eq!(s.channel(chan(1)).await.unwrap().unwrap().group_info.unwrap(), b"group info 2");

    // Racing commits for one epoch: exactly one wins, the others see where the channel went.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let s = Arc::clone(s);
            let sender = if i % 2 == 0 { a1 } else { b1 };
            tokio::spawn(async move { s.enqueue(batch(chan(1), sender, EnvelopeKind::Commit, 3, b"race")).await })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(out) => {
                assert_eq!(out.epoch, 4);
                won += 1;
            }
            Err(StoreError::StaleEpoch { attempted: 3, current: 4 }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(s.channel(chan(1)).await.unwrap().unwrap().epoch, 4);
}

pub async fn tracked_handshakes_replace_membership_by_compare_and_swap(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, b1, b2) = (device(s, alice, 1).await, device(s, bob, 2).await, device(s, bob, 3).await);
    group(s, chan(1), a1, &[b1, b2]).await;
    let mut remove = batch(chan(1), a1, EnvelopeKind::Commit, 1, b"remove b2");
    remove.tracking = Some(Tracking { tracker_before: None, tracker: b"tree 2".to_vec(), members: vec![a1, b1] });
    let out = s.enqueue(remove).await.unwrap();
    assert_eq!(out.deliveries.len(), 2, "the removed device still learns of its removal");
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![a1, b1]);
    assert_eq!(s.channel(chan(1)).await.unwrap().unwrap().tracker.unwrap(), b"tree 2");
    // Validated against a tracker that was replaced meanwhile: refused, nothing changes.
    let mut stale = batch(chan(1), b1, EnvelopeKind::Proposal, 2, b"p");
    stale.tracking = Some(Tracking { tracker_before: None, tracker: b"tree x".to_vec(), members: vec![b1] });
    assert!(matches!(s.enqueue(stale).await, Err(StoreError::StaleEpoch { .. })));
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![a1, b1]);
    let mut fine = batch(chan(1), b1, EnvelopeKind::Proposal, 2, b"p");
    fine.tracking =
        Some(Tracking { tracker_before: Some(b"tree 2".to_vec()), tracker: b"tree 3".to_vec(), members: vec![a1, b1] });
    s.enqueue(fine).await.unwrap();
    assert_eq!(s.channel(chan(1)).await.unwrap().unwrap().tracker.unwrap(), b"tree 3");
}

pub async fn idempotent_retries_store_nothing_new(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, b1) = (device(s, alice, 1).await, device(s, bob, 2).await);
    group(s, chan(1), a1, &[b1]).await;
    let mut first = batch(chan(1), a1, EnvelopeKind::Application, 1, b"once");
    first.idempotency_key = b"key-1".to_vec();
    let original = s.enqueue(first.clone()).await.unwrap();
    let mut retry = first.clone();
    retry.envelope_id = fresh_id();
    retry.now_ms = NOW + 1000;
    let again = s.enqueue(retry).await.unwrap();
    assert!(again.replayed && again.deliveries.is_empty());
    assert_eq!(
        (again.seq, again.envelope_id, again.timestamp_ms, again.epoch),
        (original.seq, original.envelope_id, NOW, 1)
    );
    let looked_up = s.replayed(a1, b"key-1".to_vec(), NOW + 1).await.unwrap().unwrap();
    assert_eq!((looked_up.seq, looked_up.replayed), (original.seq, true));
    assert!(s.replayed(a1, b"key-2".to_vec(), NOW).await.unwrap().is_none());
    assert!(s.replayed(b1, b"key-1".to_vec(), NOW).await.unwrap().is_none(), "keys are per device");
    assert!(s.replayed(a1, Vec::new(), NOW).await.unwrap().is_none());
    assert_eq!(s.peek(b1, 1, 10, u64::MAX, NOW).await.unwrap().entries.len(), 1);

    // A retried commit is answered even though the original moved the epoch on.
    let mut commit = batch(chan(1), a1, EnvelopeKind::Commit, 1, b"commit");
    commit.idempotency_key = b"commit-1".to_vec();
    let committed = s.enqueue(commit.clone()).await.unwrap();
    let replay = s.enqueue(commit).await.unwrap();
    assert_eq!((replay.replayed, replay.seq, replay.epoch), (true, committed.seq, 2));

    // After 24 hours the key is free again.
    let mut later = first.clone();
    later.envelope_id = fresh_id();
    later.epoch = 2;
    later.now_ms = NOW + DAY_MS + 1;
    let fresh = s.enqueue(later).await.unwrap();
    assert!(!fresh.replayed && fresh.seq != original.seq);
    assert_eq!(s.peek(b1, 1, 10, u64::MAX, NOW).await.unwrap().entries.len(), 3);
    // Purging drops records older than the window.
    s.purge_expired(NOW + 3 * DAY_MS).await.unwrap();
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM idempotency").await, 0);

    // Concurrent retries of one send: one enqueue, every answer names it.
    let mut racing = batch(chan(1), b1, EnvelopeKind::Application, 2, b"racing");
    racing.idempotency_key = b"race".to_vec();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (s, mut b) = (Arc::clone(s), racing.clone());
            b.envelope_id = fresh_id();
            tokio::spawn(async move { s.enqueue(b).await.unwrap() })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut originals = 0;
    for t in tasks {
        let out = t.await.unwrap();
        originals += usize::from(!out.replayed);
        ids.insert(out.envelope_id);
    }
    assert_eq!((originals, ids.len()), (1, 1));
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes WHERE payload = X'726163696e67'").await, 1);
    let at_a1 = s.peek(a1, 0, 100, u64::MAX, NOW).await.unwrap().entries;
    assert_eq!(at_a1.iter().filter(|e| e.payload[..] == b"racing"[..]).count(), 1);

    // One key sent to two channels at once (neither waits for the other's channel): one
    // envelope is stored, and every answer names it.
    group(s, chan(2), a1, &[b1]).await;
    let tasks: Vec<_> = (0..6u8)
        .map(|i| {
            let s = Arc::clone(s);
            let mut b = batch(chan(1 + i % 2), a1, EnvelopeKind::Application, 1, b"cross");
            b.idempotency_key = b"cross".to_vec();
            tokio::spawn(async move { s.enqueue(b).await.unwrap() })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().envelope_id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes WHERE payload = X'63726f7373'").await, 1);
    depths_match_queues(&f).await;
}

pub async fn full_queues_refuse_application_messages_only(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, b1) = (device(s, alice, 1).await, device(s, bob, 2).await);
    group(s, chan(1), a1, &[b1]).await;
    assert_eq!(s.queue_depth().await.unwrap(), (1, 1));
    let limited = |payload: &[u8]| {
        let mut b = batch(chan(1), a1, EnvelopeKind::Application, 1, payload);
        b.max_queue_depth = 3;
        b
    };
    s.enqueue(limited(b"1")).await.unwrap();
    s.enqueue(limited(b"2")).await.unwrap();
    assert!(matches!(s.enqueue(limited(b"3")).await, Err(StoreError::QueueFull)));
    assert_eq!(s.queue_depth().await.unwrap(), (3, 3));
    let mut commit = batch(chan(1), a1, EnvelopeKind::Commit, 1, b"remove");
    commit.max_queue_depth = 3;
    s.enqueue(commit).await.unwrap();
    s.enqueue(batch(chan(1), b1, EnvelopeKind::Application, 2, b"reply")).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), (5, 4));
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes WHERE payload = X'33'").await, 0);
    depths_match_queues(&f).await;

    // An ack makes room again, and so does an expired envelope's purge.
    s.ack(b1, 2).await.unwrap();
    assert_eq!(s.queue_depth().await.unwrap(), (3, 2));
    s.enqueue(limited(b"3")).await.unwrap();
    let mut expiring = limited(b"soon");
    expiring.expires_ms = Some(NOW + 10);
    assert!(matches!(s.enqueue(expiring.clone()).await, Err(StoreError::QueueFull)));
    s.ack(b1, 3).await.unwrap();
    s.enqueue(expiring).await.unwrap();
    assert!(matches!(s.enqueue(limited(b"4")).await, Err(StoreError::QueueFull)));
    s.purge_expired(NOW + 10).await.unwrap();
    s.enqueue(limited(b"4")).await.unwrap();
    depths_match_queues(&f).await;
}

pub async fn peek_reads_and_ack_deletes(f: Fixture) {
    let s = &f.store;
    let (alice, bob, carol) = (account(s, "alice").await, account(s, "bob").await, account(s, "carol").await);
    let (a1, b1, c1) = (device(s, alice, 1).await, device(s, bob, 2).await, device(s, carol, 3).await);
    group(s, chan(1), a1, &[b1, c1]).await;
    for p in [b"one".as_slice(), b"two", b"three", b"four"] {
        send(s, chan(1), a1, p).await;
    }
    let all = s.peek(b1, 0, 100, u64::MAX, NOW).await.unwrap().entries;
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(payloads(&s.peek(b1, 2, 2, u64::MAX, NOW).await.unwrap().entries), vec![b"two".as_slice(), b"three"]);
    // About max_bytes, but never nothing: the first entry comes however large.
    assert_eq!(payloads(&s.peek(b1, 1, 100, 7, NOW).await.unwrap().entries), vec![b"one".as_slice(), b"two"]);
    assert_eq!(payloads(&s.peek(b1, 1, 100, 1, NOW).await.unwrap().entries), vec![b"one".as_slice()]);
    assert_eq!(s.peek(b1, 1, 100, u64::MAX, NOW).await.unwrap().entries.len(), 4, "peeking deletes nothing");
    // `more` says whether the page stopped short of the queue's end, by count or by bytes.
    let more = |after, limit, bytes| async move { s.peek(b1, after, limit, bytes, NOW).await.unwrap().more };
    assert!(more(0, 4, u64::MAX).await, "one entry left after four");
    assert!(!more(0, 5, u64::MAX).await, "exactly the rest: the end");
    assert!(!more(0, 100, u64::MAX).await);
    assert!(more(1, 100, 7).await, "stopped by bytes");
    assert!(!more(4, 1, 1).await, "the last entry alone is the end, however large");
    assert!(!more(5, 100, u64::MAX).await, "an empty page is the end");

    assert_eq!(s.ack(b1, 3).await.unwrap(), 3);
    assert_eq!(s.ack(b1, 3).await.unwrap(), 0);
    assert_eq!(payloads(&s.peek(b1, 0, 100, u64::MAX, NOW).await.unwrap().entries), vec![b"three".as_slice(), b"four"]);
    // Bob's welcome was his alone and went; carol still holds every message.
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 5);
    assert_eq!(s.ack(c1, 2).await.unwrap(), 2);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 3, "acked by both: the payload goes");

    // Both recipients acking everything at once leave no payload behind.
    for i in 0..20u8 {
        send(s, chan(1), a1, &[i]).await;
    }
    let (s1, s2) = (Arc::clone(s), Arc::clone(s));
    let (r1, r2) = tokio::join!(
        tokio::spawn(async move { s1.ack(b1, u64::MAX).await.unwrap() }),
        tokio::spawn(async move { s2.ack(c1, u64::MAX).await.unwrap() })
    );
    assert_eq!((r1.unwrap(), r2.unwrap()), (22, 23));
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 0);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 0);
    assert!(s.peek(b1, 0, 100, u64::MAX, NOW).await.unwrap().entries.is_empty());
    depths_match_queues(&f).await;
}

/// Many recipients acking the same envelopes at once, one of their devices deleted meanwhile:
/// each payload stays while anyone still holds it and goes with the last entry, however the
/// deletions interleave.
pub async fn concurrent_acks_of_many_recipients_leave_no_payload_behind(f: Fixture) {
    let s = &f.store;
    let mut devices = Vec::new();
    let mut owners = Vec::new();
    for n in 1..=25u8 {
        let user = account(s, &format!("user{n}")).await;
        owners.push(user);
        devices.push(device(s, user, n).await);
    }
    let (sender, recipients) = (devices[0], &devices[1..]);
    group(s, chan(1), sender, recipients).await;
    let ack_all = |ackers: &[DeviceId]| {
        ackers
            .iter()
            .map(|&d| {
                let s = Arc::clone(s);
                tokio::spawn(async move { s.ack(d, u64::MAX).await.unwrap() })
            })
            .collect::<Vec<_>>()
    };
    for round in 0..4u8 {
        for i in 0..3u8 {
            send(s, chan(1), sender, &[round, i]).await;
        }
        let waiting: u8 = if round == 0 { 4 } else { 3 };
        // Half of them ack: every payload stays for the other half.
        for t in ack_all(&recipients[..12]) {
            assert_eq!(t.await.unwrap(), u64::from(waiting));
        }
        assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, i64::from(waiting));
        for d in &recipients[12..] {
            assert_eq!(s.peek(*d, 0, 100, u64::MAX, NOW).await.unwrap().entries.len(), usize::from(waiting));
        }
        // The other half ack at once; in the last round one of them is deleted meanwhile.
        let mut acks = ack_all(&recipients[12..23]);
        if round == 3 {
            let (s, owner, last) = (Arc::clone(s), owners[24], recipients[23]);
            let deletion = tokio::spawn(async move { s.delete_device(owner, last).await.unwrap().map(|_| 0) });
            acks.push(tokio::spawn(async move { deletion.await.unwrap().unwrap() }));
        } else {
            acks.extend(ack_all(&recipients[23..]));
        }
        for t in acks {
            t.await.unwrap();
        }
        assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 0, "round {round}");
        assert_eq!(
            f.probe.count("SELECT COUNT(*) FROM envelopes").await,
            0,
            "round {round}: a payload was left behind"
        );
    }
    depths_match_queues(&f).await;
}

pub async fn entries_are_read_back_by_position(f: Fixture) {
    let s = &f.store;
    let (alice, bob, carol) = (account(s, "alice").await, account(s, "bob").await, account(s, "carol").await);
    let (a1, b1, c1) = (device(s, alice, 1).await, device(s, bob, 2).await, device(s, carol, 3).await);
    group(s, chan(1), a1, &[b1, c1]).await;
    send(s, chan(1), a1, b"one").await;
    let mut short = batch(chan(1), a1, EnvelopeKind::Application, 1, b"short-lived");
    short.expires_ms = Some(NOW + 1000);
    s.enqueue(short).await.unwrap();
    send(s, chan(1), a1, b"three").await;
    // Each queue: the welcome at 1, then "one", "short-lived" and "three" at 2, 3 and 4.
    let read = |positions: Vec<(DeviceId, u64)>, now| async move {
        let found: Vec<(DeviceId, u64, Vec<u8>)> = s
            .queued_at(positions, now)
            .await
            .unwrap()
            .into_iter()
            .map(|(device, entry)| (device, entry.seq, entry.payload.to_vec()))
            .collect();
        found
    };
    assert_eq!(
        read(vec![(c1, 4), (b1, 2), (b1, 9), (dev(9), 2), (c1, 3)], NOW).await,
        vec![(b1, 2, b"one".to_vec()), (c1, 3, b"short-lived".to_vec()), (c1, 4, b"three".to_vec())],
        "every filled position with its device, by device and sequence; empty ones and unknown devices left out"
    );
    assert_eq!(read(vec![(c1, 3), (c1, 4)], NOW + 1000).await, vec![(c1, 4, b"three".to_vec())], "expired");
    s.ack(b1, 2).await.unwrap();
    assert_eq!(read(vec![(b1, 2), (b1, 4)], NOW).await, vec![(b1, 4, b"three".to_vec())], "acknowledged");
    let entry = s.queued_at(vec![(b1, 4)], NOW).await.unwrap().remove(0).1;
    assert_eq!((entry.channel, entry.kind, entry.epoch), (chan(1), EnvelopeKind::Application, 1));
    // The entries of one envelope share one copy of its payload, however many devices it went to.
    let shared = s.queued_at(vec![(b1, 4), (c1, 4)], NOW).await.unwrap();
    assert_eq!(shared[0].1.payload.as_ptr(), shared[1].1.payload.as_ptr(), "the payload was read once");
    assert!(s.queued_at(Vec::new(), NOW).await.unwrap().is_empty());
}

pub async fn expired_envelopes_are_hidden_then_purged(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, b1) = (device(s, alice, 1).await, device(s, bob, 2).await);
    group(s, chan(1), a1, &[b1]).await;
    let mut short = batch(chan(1), a1, EnvelopeKind::Application, 1, b"short");
    short.expires_ms = Some(NOW + 1000);
    s.enqueue(short).await.unwrap();
    send(s, chan(1), a1, b"kept").await;
    s.set_retention(chan(1), 60).await.unwrap();
    send(s, chan(1), a1, b"channel ttl").await;
    // Commits never take the channel's TTL.
    s.enqueue(batch(chan(1), a1, EnvelopeKind::Commit, 1, b"commit")).await.unwrap();

    assert_eq!(s.peek(b1, 1, 10, u64::MAX, NOW).await.unwrap().entries.len(), 4);
    assert_eq!(
        payloads(&s.peek(b1, 1, 10, u64::MAX, NOW + 1000).await.unwrap().entries),
        vec![b"kept".as_slice(), b"channel ttl", b"commit"]
    );
    assert_eq!(s.purge_expired(NOW + 999).await.unwrap(), 0);
    assert_eq!(s.purge_expired(NOW + 1000).await.unwrap(), 1);
    assert_eq!(s.purge_expired(NOW + 60_000).await.unwrap(), 1);
    assert_eq!(payloads(&s.peek(b1, 1, 10, u64::MAX, NOW).await.unwrap().entries), vec![b"kept".as_slice(), b"commit"]);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 3);

    // Purges on two nodes at once: every expired row goes exactly once.
    for i in 0..10u8 {
        let mut b = batch(chan(1), a1, EnvelopeKind::Application, 2, &[i]);
        b.expires_ms = Some(NOW + 5);
        s.enqueue(b).await.unwrap();
    }
    // A page that fills its limit looks for one more entry; an expired one is not one.
    let full = s.peek(b1, 1, 2, u64::MAX, NOW).await.unwrap();
    assert_eq!((payloads(&full.entries), full.more), (vec![b"kept".as_slice(), b"commit"], true));
    let full = s.peek(b1, 1, 2, u64::MAX, NOW + 10).await.unwrap();
    assert_eq!((payloads(&full.entries), full.more), (vec![b"kept".as_slice(), b"commit"], false));
    let (s1, s2) = (Arc::clone(s), Arc::clone(s));
    let (p1, p2) = tokio::join!(s1.purge_expired(NOW + 70_000), s2.purge_expired(NOW + 70_000));
    assert_eq!(p1.unwrap() + p2.unwrap(), 10);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM queue").await, 3);
    depths_match_queues(&f).await;
}

/// Chunk `data` of blob `id` (of `total` bytes) at `offset`, sent by `uploader`, expiring a day
/// after `NOW`.
fn chunk(id: [u8; 32], total: u64, offset: u64, data: &[u8], uploader: DeviceId) -> BlobChunk {
    BlobChunk {
        id,
        total_size: total,
        offset,
        data: data.to_vec(),
        uploader,
        hash_checked: false,
        now_ms: NOW,
        expires_ms: NOW + DAY_MS,
    }
}

/// The chunk that completes a blob, its hash checked by the caller.
fn last_chunk(id: [u8; 32], total: u64, offset: u64, data: &[u8], uploader: DeviceId) -> BlobChunk {
    BlobChunk { hash_checked: true, ..chunk(id, total, offset, data, uploader) }
}

/// Uploads `data` whole as blob `id` in chunks of `size` bytes.
async fn stored_blob(s: &Arc<dyn Store>, id: [u8; 32], data: &[u8], size: usize, uploader: DeviceId) -> BlobRecord {
    let mut record = None;
    for (i, part) in data.chunks(size).enumerate() {
        let offset = (i * size) as u64;
        let c = if offset as usize + part.len() == data.len() {
            last_chunk(id, data.len() as u64, offset, part, uploader)
        } else {
            chunk(id, data.len() as u64, offset, part, uploader)
        };
        record = Some(s.write_blob_chunk(c).await.unwrap());
    }
    record.unwrap()
}

/// SQL naming one blob's chunks (the probe reads `X'..'` on both backends).
fn chunks_of(id: [u8; 32]) -> String {
    format!("SELECT COUNT(*) FROM blob_chunks WHERE blob_id = X'{}'", hex::encode(id))
}

fn out_of_order<T: std::fmt::Debug>(r: Result<T, StoreError>) -> u64 {
    match r {
        Err(StoreError::BlobOutOfOrder { received }) => received,
        other => panic!("expected BlobOutOfOrder, got {other:?}"),
    }
}

pub async fn blob_chunks_append_in_order_and_read_across_their_boundaries(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let a1 = device(s, alice, 1).await;
    let id = [1; 32];
    assert!(s.blob(id).await.unwrap().is_none());
    assert!(s.read_blob(id, 0, 10).await.unwrap().is_none());

    let first = s.write_blob_chunk(chunk(id, 10, 0, b"abcd", a1)).await.unwrap();
    let expected = BlobRecord { id, total_size: 10, received: 4, complete: false, expires_ms: NOW + DAY_MS };
    assert_eq!(first, expected);
    assert_eq!(s.blob(id).await.unwrap(), Some(expected));
    // A retry of the stored chunk changes nothing; any other chunk not at 4 is out of order.
    assert_eq!(s.write_blob_chunk(chunk(id, 10, 0, b"abcd", a1)).await.unwrap(), expected);
    assert_eq!(out_of_order(s.write_blob_chunk(chunk(id, 10, 0, b"abcx", a1)).await), 4);
    assert_eq!(out_of_order(s.write_blob_chunk(chunk(id, 10, 2, b"cd", a1)).await), 4);
    assert_eq!(out_of_order(s.write_blob_chunk(chunk(id, 10, 3, b"de", a1)).await), 4);
    assert_eq!(out_of_order(s.write_blob_chunk(chunk(id, 10, 6, b"gh", a1)).await), 4);
    let other_size = s.write_blob_chunk(chunk(id, 11, 4, b"efg", a1)).await;
    assert!(matches!(other_size, Err(StoreError::BlobSizeMismatch { given: 11, stored: 10 })), "{other_size:?}");
    let past_end = s.write_blob_chunk(chunk(id, 10, 4, b"efghijk", a1)).await;
    assert!(matches!(past_end, Err(StoreError::BlobChunkOutOfRange)), "{past_end:?}");
    assert_eq!(f.probe.count(&chunks_of(id)).await, 1);

    assert_eq!(s.write_blob_chunk(chunk(id, 10, 4, b"efg", a1)).await.unwrap().received, 7);
    // The completing chunk is refused until its hash was checked.
    assert_eq!(out_of_order(s.write_blob_chunk(chunk(id, 10, 7, b"hij", a1)).await), 7);
    assert_eq!(s.blob(id).await.unwrap().unwrap().received, 7);
    let done = s.write_blob_chunk(last_chunk(id, 10, 7, b"hij", a1)).await.unwrap();
    assert_eq!((done.received, done.complete), (10, true));
    // A complete blob stays as it is, whatever is sent for it.
    assert_eq!(s.write_blob_chunk(chunk(id, 99, 3, b"zz", a1)).await.unwrap(), done);
    assert_eq!(f.probe.count(&chunks_of(id)).await, 3);

    let read = |offset: u64, len: u32| async move { s.read_blob(id, offset, len).await.unwrap().unwrap().bytes };
    assert_eq!(read(0, 100).await, b"abcdefghij");
    assert_eq!(s.read_blob(id, 2, 2).await.unwrap().unwrap().record, done, "read with its record");
    assert_eq!(read(3, 3).await, b"def", "across a chunk boundary");
    assert_eq!(read(2, 7).await, b"cdefghi", "across two");
    assert_eq!(read(5, 1).await, b"f");
    assert_eq!(read(4, 3).await, b"efg");
    assert_eq!(read(9, 10).await, b"j");
    assert!(read(10, 5).await.is_empty());

    // An upload with some bytes: reads end where they end; discarding takes it with its bytes.
    let partial = [2; 32];
    s.write_blob_chunk(chunk(partial, 5, 0, b"xy", a1)).await.unwrap();
    let slice = s.read_blob(partial, 1, 4).await.unwrap().unwrap();
    assert_eq!((slice.bytes.as_slice(), slice.record.received, slice.record.complete), (b"y".as_slice(), 2, false));
    assert!(s.read_blob(partial, 3, 2).await.unwrap().unwrap().bytes.is_empty());
    assert!(s.discard_upload(partial).await.unwrap());
    assert!(s.blob(partial).await.unwrap().is_none());
    assert_eq!(f.probe.count(&chunks_of(partial)).await, 0);
    // A complete blob is not discarded, only deleted.
    assert!(!s.discard_upload(id).await.unwrap());
    assert!(s.blob(id).await.unwrap().is_some());
    assert!(s.delete_blob(id).await.unwrap());
    assert!(!s.delete_blob(id).await.unwrap());
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM blob_chunks").await, 0);
    assert!(s.read_blob(id, 0, 10).await.unwrap().is_none());
}

pub async fn expired_blobs_go_with_their_chunks(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let a1 = device(s, alice, 1).await;
    let soon = BlobChunk { expires_ms: NOW + 10, ..chunk([1; 32], 4, 0, b"ab", a1) };
    s.write_blob_chunk(soon).await.unwrap();
    s.write_blob_chunk(chunk([1; 32], 4, 2, b"c", a1)).await.unwrap();
    let later = BlobChunk { expires_ms: NOW + 20, ..last_chunk([2; 32], 2, 0, b"zz", a1) };
    assert!(s.write_blob_chunk(later).await.unwrap().complete);
    assert_eq!(s.blob([1; 32]).await.unwrap().unwrap().expires_ms, NOW + 10, "set by the first chunk");

    assert_eq!(s.purge_expired_blobs(NOW + 9).await.unwrap(), 0);
    assert_eq!(s.purge_expired_blobs(NOW + 10).await.unwrap(), 1);
    assert!(s.blob([1; 32]).await.unwrap().is_none());
    assert_eq!(f.probe.count(&chunks_of([1; 32])).await, 0);
    assert_eq!(f.probe.count(&chunks_of([2; 32])).await, 1);
    assert_eq!(s.purge_expired_blobs(NOW + 20).await.unwrap(), 1);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM blob_chunks").await, 0);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM blob_refs").await, 0);
}

pub async fn concurrent_chunk_writes_store_each_byte_once(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let a1 = device(s, alice, 1).await;
    let id = [3; 32];
    let all = |tasks: Vec<tokio::task::JoinHandle<Result<BlobRecord, StoreError>>>| async move {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    // The same first chunk, eight times at once (retries on several nodes): stored once.
    let first: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.write_blob_chunk(chunk(id, 12, 0, b"0123", a1)).await })
        })
        .collect();
    for r in all(first).await {
        assert_eq!(r.unwrap().received, 4);
    }
    // Eight different second chunks at once: one wins, the others learn where the upload is.
    let second: Vec<_> = (0..8u8)
        .map(|i| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.write_blob_chunk(chunk(id, 12, 4, &[b'a' + i; 4], a1)).await })
        })
        .collect();
    let results = all(second).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(b) if b.received == 8)
                || matches!(r, Err(StoreError::BlobOutOfOrder { received: 8 })))
    );
    // The completing chunk, four times at once: complete once, every caller told so.
    let last: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.write_blob_chunk(last_chunk(id, 12, 8, b"wxyz", a1)).await })
        })
        .collect();
    for r in all(last).await {
        let b = r.unwrap();
        assert_eq!((b.received, b.complete), (12, true));
    }
    assert_eq!(f.probe.count(&chunks_of(id)).await, 3);
    let bytes = s.read_blob(id, 0, 12).await.unwrap().unwrap().bytes;
    assert_eq!(&bytes[..4], b"0123");
    assert_eq!(&bytes[8..], b"wxyz");
    assert!(bytes[4..8].iter().all(|b| *b == bytes[4]));
}

pub async fn imported_chunks_fill_a_blob_without_changing_it(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let a1 = device(s, alice, 1).await;
    let id = [4; 32];
    let record = stored_blob(s, id, b"abcdefghij", 4, a1).await;
    // What an older version left: the record, its bytes in a file.
    f.probe.execute("DELETE FROM blob_chunks").await;
    assert!(s.read_blob(id, 0, 10).await.unwrap().unwrap().bytes.is_empty());

    s.import_blob_chunk(id, 0, b"abcdef".to_vec()).await.unwrap();
    s.import_blob_chunk(id, 6, b"ghij".to_vec()).await.unwrap();
    // Imported again (an interrupted import run twice): nothing changes.
    s.import_blob_chunk(id, 0, b"zzzzzz".to_vec()).await.unwrap();
    assert_eq!(s.read_blob(id, 0, 10).await.unwrap().unwrap().bytes, b"abcdefghij");
    assert_eq!(s.read_blob(id, 5, 3).await.unwrap().unwrap().bytes, b"fgh");
    assert_eq!(s.blob(id).await.unwrap(), Some(record), "the record is unchanged");
    assert_eq!(f.probe.count(&chunks_of(id)).await, 2);

    let past = s.import_blob_chunk(id, 8, b"ijk".to_vec()).await;
    assert!(matches!(past, Err(StoreError::BlobChunkOutOfRange)), "{past:?}");
    let empty = s.import_blob_chunk(id, 0, Vec::new()).await;
    assert!(matches!(empty, Err(StoreError::BlobChunkOutOfRange)), "{empty:?}");
    let unknown = s.import_blob_chunk([5; 32], 0, b"x".to_vec()).await;
    assert!(matches!(unknown, Err(StoreError::NotFound("blob"))), "{unknown:?}");
    // An upload in progress takes bytes up to what it received.
    s.write_blob_chunk(chunk([6; 32], 9, 0, b"abc", a1)).await.unwrap();
    let beyond = s.import_blob_chunk([6; 32], 0, b"abcd".to_vec()).await;
    assert!(matches!(beyond, Err(StoreError::BlobChunkOutOfRange)), "{beyond:?}");
}

pub async fn deleting_a_device_takes_its_queue_and_sessions(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, b1, b2) = (device(s, alice, 1).await, device(s, bob, 2).await, device(s, bob, 3).await);
    group(s, chan(1), a1, &[b1, b2]).await;
    send(s, chan(1), a1, b"for both").await;
    s.add_key_packages(b2, vec![b"kp".to_vec()], Some(b"lr".to_vec())).await.unwrap();
    s.set_hybrid_key(b2, b"xwing".to_vec()).await.unwrap();
    let bound =
        SessionRecord { token_hash: [7; 32], user_id: bob, device_id: Some(b2), created_ms: NOW, expires_ms: NOW + 1 };
    s.create_session(bound.clone()).await.unwrap();
    s.create_session(SessionRecord { token_hash: [8; 32], device_id: Some(b1), ..bound }).await.unwrap();

    assert!(s.delete_device(alice, b2).await.unwrap().is_none(), "only the owner deletes a device");
    assert!(s.session([7; 32]).await.unwrap().is_some());
    assert_eq!(s.delete_device(bob, b2).await.unwrap().unwrap(), vec![[7; 32]]);
    assert!(s.session([7; 32]).await.unwrap().is_none());
    assert!(s.session([8; 32]).await.unwrap().is_some());
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![a1, b1]);
    assert!(s.device_by_key([3; 32]).await.unwrap().is_none());
    assert!(s.hybrid_key(b2).await.unwrap().is_none());
    assert_eq!(s.key_package_status(b2).await.unwrap(), (0, false));
    // b2's welcome went with it; the message b1 still holds stays.
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 2);
    s.ack(b1, u64::MAX).await.unwrap();
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 0);
    depths_match_queues(&f).await;
}

pub async fn deleting_an_account_purges_it_in_one_go(f: Fixture) {
    let s = &f.store;
    let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
    let (a1, a2, b1) = (device(s, alice, 1).await, device(s, alice, 2).await, device(s, bob, 3).await);
    group(s, chan(1), a1, &[a2, b1]).await;
    group(s, chan(2), a1, &[a2]).await;
    send(s, chan(1), b1, b"to alice").await;
    send(s, chan(1), a1, b"to bob").await;
    s.add_key_packages(a1, vec![b"kp".to_vec()], Some(b"lr".to_vec())).await.unwrap();
    // Alice's own blob, bob's, one alice uploaded and bob uploaded again, and an upload of hers
    // in progress.
    stored_blob(s, [1; 32], b"alice's", 3, a2).await;
    stored_blob(s, [2; 32], b"bob's", 3, b1).await;
    stored_blob(s, [3; 32], b"shared", 3, a1).await;
    s.write_blob_chunk(chunk([3; 32], 6, 0, b"sha", b1)).await.unwrap();
    s.write_blob_chunk(chunk([4; 32], 9, 0, b"half", a1)).await.unwrap();
    let session = |hash, device| SessionRecord {
        token_hash: hash,
        user_id: alice,
        device_id: device,
        created_ms: NOW,
        expires_ms: NOW + 1,
    };
    s.create_session(session([5; 32], Some(a1))).await.unwrap();
    s.create_session(session([6; 32], None)).await.unwrap();
    let mut idem = batch(chan(1), a1, EnvelopeKind::Application, 1, b"keyed");
    idem.idempotency_key = b"k".to_vec();
    s.enqueue(idem).await.unwrap();
    let audit = AuditEvent {
        at_ms: NOW,
        kind: AuditKind::Registered,
        user: Some(alice),
        device: None,
        method: None,
        status: None,
    };
    s.record_audit(audit).await.unwrap();

    let mut deleted = s.delete_account(alice).await.unwrap().unwrap();
    deleted.sessions.sort();
    assert_eq!(deleted.sessions, vec![[5; 32], [6; 32]]);
    assert!(s.user_by_name("alice").await.unwrap().is_none());
    assert!(s.devices_of(alice).await.unwrap().is_empty());
    assert!(s.session([5; 32]).await.unwrap().is_none());
    // The blobs only alice referenced went with their bytes; those bob references stay.
    assert!(s.blob([1; 32]).await.unwrap().is_none() && s.blob([4; 32]).await.unwrap().is_none());
    assert_eq!(s.read_blob([2; 32], 0, 10).await.unwrap().unwrap().bytes, b"bob's");
    assert_eq!(s.read_blob([3; 32], 0, 10).await.unwrap().unwrap().bytes, b"shared");
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM blob_chunks").await, 4);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM blob_refs").await, 2);
    assert_eq!(s.members(chan(1)).await.unwrap(), vec![b1]);
    assert!(s.channel(chan(2)).await.unwrap().is_none(), "a channel nobody is in any more goes");
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM key_packages").await, 0);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM idempotency").await, 0);
    // Only what bob still has to read is left: the welcome and the two messages from alice.
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 3);
    assert_eq!(
        payloads(&s.peek(b1, 1, 10, u64::MAX, NOW).await.unwrap().entries),
        vec![b"to bob".as_slice(), b"keyed"]
    );
    // The audit log keeps its entries (ids only).
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM audit_log").await, 1);
    assert!(s.delete_account(alice).await.unwrap().is_none());
    assert!(s.user_by_name("bob").await.unwrap().is_some());
    depths_match_queues(&f).await;
}

pub async fn the_audit_log_records_every_kind(f: Fixture) {
    let s = &f.store;
    let alice = account(s, "alice").await;
    let kinds = [
        AuditKind::Registered,
        AuditKind::LoginSucceeded,
        AuditKind::LoginFailed,
        AuditKind::LoggedOut,
        AuditKind::DeviceRegistered,
        AuditKind::DeviceRevoked,
        AuditKind::AccountDeleted,
        AuditKind::Refused,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let refused = kind == AuditKind::Refused;
        let event = AuditEvent {
            at_ms: NOW + i as u64,
            kind,
            user: (i % 2 == 0).then_some(alice),
            device: (i % 3 == 0).then_some(dev(1)),
            method: refused.then_some("Enqueue"),
            status: refused.then_some("RATE_LIMITED"),
        };
        s.record_audit(event).await.unwrap();
    }
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM audit_log").await, 8);
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM audit_log WHERE user_id IS NOT NULL").await, 4);
    assert_eq!(
        f.probe
            .count(
                "SELECT COUNT(*) FROM audit_log WHERE event = 'refused' AND method = 'Enqueue' AND status = 'RATE_LIMITED'"
            )
            .await,
        1
    );
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM audit_log WHERE event = 'login_failed'").await, 1);
}

pub async fn concurrent_senders_get_gapless_per_device_sequences(f: Fixture) {
    let s = &f.store;
    let mut devices = Vec::new();
    for n in 1..=5u8 {
        let user = account(s, &format!("user{n}")).await;
        devices.push(device(s, user, n).await);
    }
    group(s, chan(1), devices[0], &devices[1..]).await;
    let senders: Vec<_> = devices[..4]
        .iter()
        .map(|&d| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                for i in 0..10u8 {
                    s.enqueue(batch(chan(1), d, EnvelopeKind::Application, 1, &[d.0[0], i])).await.unwrap();
                }
            })
        })
        .collect();
    for t in senders {
        t.await.unwrap();
    }
    for (i, d) in devices.iter().enumerate() {
        let entries = s.peek(*d, 0, 1000, u64::MAX, NOW).await.unwrap().entries;
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        let expected = if i == 0 {
            30
        } else if i < 4 {
            31
        } else {
            41
        };
        assert_eq!(seqs, (1..=expected).collect::<Vec<u64>>(), "device {i}: gapless, once each");
        // Each sender's messages arrive in the order they were sent.
        for sender in &devices[..4] {
            let from: Vec<u8> =
                entries.iter().filter(|e| e.payload.first() == Some(&sender.0[0])).map(|e| e.payload[1]).collect();
            if sender != d {
                assert_eq!(from, (0..10).collect::<Vec<u8>>());
            }
        }
    }
    assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes WHERE kind = 1").await, 40);
    depths_match_queues(&f).await;
}

/// Generates one `#[tokio::test]` per conformance case for a backend; `$fixture` is an async
/// expression giving `Option<Fixture>` (`None` = backend unavailable, test skipped).
macro_rules! conformance_suite {
    ($fixture:path) => {
        conformance_suite!(@cases $fixture;
            accounts_and_sessions,
            devices_hybrid_keys_and_endpoints,
            key_packages_are_single_use_with_a_last_resort,
            concurrent_claims_hand_each_key_package_out_once,
            concurrent_senders_get_gapless_per_device_sequences,
            channels_and_membership,
            enqueue_fans_out_once_to_every_other_member_device,
            commits_are_sequenced_and_stale_ones_conflict,
            tracked_handshakes_replace_membership_by_compare_and_swap,
            idempotent_retries_store_nothing_new,
            full_queues_refuse_application_messages_only,
            peek_reads_and_ack_deletes,
            concurrent_acks_of_many_recipients_leave_no_payload_behind,
            entries_are_read_back_by_position,
            expired_envelopes_are_hidden_then_purged,
            blob_chunks_append_in_order_and_read_across_their_boundaries,
            expired_blobs_go_with_their_chunks,
            concurrent_chunk_writes_store_each_byte_once,
            imported_chunks_fill_a_blob_without_changing_it,
            deleting_a_device_takes_its_queue_and_sessions,
            deleting_an_account_purges_it_in_one_go,
            the_audit_log_records_every_kind,
        );
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(fixture) = $fixture(stringify!($case)).await {
                    crate::store_conformance::$case(fixture).await;
                }
            }
        )*
    };
}

mod sqlite {
    use super::*;
    use quicprochat_server::store::SqliteStore;

    struct SqliteProbe(Mutex<rusqlite::Connection>);

    #[async_trait::async_trait]
    impl Probe for SqliteProbe {
        async fn count(&self, sql: &str) -> i64 {
            self.0.lock().unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
        }
        async fn execute(&self, sql: &str) {
            self.0.lock().unwrap().execute_batch(sql).unwrap();
        }
    }

    async fn fixture(_test: &str) -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).unwrap();
        let probe = rusqlite::Connection::open(&path).unwrap();
        probe.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        Some(Fixture { store: Arc::new(store), probe: Box::new(SqliteProbe(Mutex::new(probe))), _keep: Box::new(dir) })
    }

    conformance_suite!(fixture);
}

mod postgres {
    use super::*;
    use crate::pg::PgSchema;

    struct PostgresProbe(tokio_postgres::Client);

    #[async_trait::async_trait]
    impl Probe for PostgresProbe {
        async fn count(&self, sql: &str) -> i64 {
            // SQLite's X'..' blob literals read as PostgreSQL's.
            let sql = sql.replace("X'", "'\\x");
            self.0.query_one(sql.as_str(), &[]).await.unwrap().get(0)
        }
        async fn execute(&self, sql: &str) {
            self.0.batch_execute(sql).await.unwrap();
        }
    }

    async fn fixture(test: &str) -> Option<Fixture> {
        let schema = PgSchema::fresh(test).await?;
        let store = schema.store().await;
        let probe = PostgresProbe(schema.client().await);
        Some(Fixture { store: Arc::new(store), probe: Box::new(probe), _keep: Box::new(schema) })
    }

    conformance_suite!(fixture);

    /// Envelopes that lost their last entries without being deleted (a node stopped between an
    /// ack's commit and its settling) go at the first purge of a node started afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_started_node_purges_envelopes_no_entry_names() {
        let Some(f) = fixture("a_started_node_purges_envelopes_no_entry_names").await else { return };
        let s = &f.store;
        let (alice, bob) = (account(s, "alice").await, account(s, "bob").await);
        let (a1, b1) = (device(s, alice, 1).await, device(s, bob, 2).await);
        group(s, chan(1), a1, &[b1]).await;
        send(s, chan(1), a1, b"still queued").await;
        f.probe
            .execute(&format!(
                "INSERT INTO envelopes (id, channel_id, kind, epoch, payload, created_ms) \
                 VALUES ('\\x{:032x}', '\\x01', 1, 1, 'left', {NOW})",
                1
            ))
            .await;
        assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 3);
        let schema: &PgSchema = f._keep.downcast_ref().unwrap();
        let restarted: Arc<dyn Store> = Arc::new(schema.store().await);
        assert_eq!(restarted.purge_expired(NOW).await.unwrap(), 0, "nothing expired");
        assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes WHERE payload = 'left'").await, 0);
        assert_eq!(f.probe.count("SELECT COUNT(*) FROM envelopes").await, 2, "the welcome and the message stay");
        assert_eq!(
            payloads(&s.peek(b1, 1, 10, u64::MAX, NOW).await.unwrap().entries),
            vec![b"still queued".as_slice()]
        );
    }
}
