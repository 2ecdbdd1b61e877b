//! Keys (300): upload rules, one package per device, exhaustion onto the last resort with
//! KeyPackagesLow, hybrid keys, and the lookup rate limit class.

use std::time::Duration;

use bytes::Bytes;
use quicprochat_proto::{event, method, v1};
use quicprochat_rpc::{RpcClient, Status};
use quicprochat_server::Rate;

use crate::harness::{TestServer, login, register_device, rpc_error, user};

async fn upload(
    rpc: &RpcClient,
    packages: Vec<Vec<u8>>,
    last_resort: &[u8],
) -> Result<v1::UploadKeyPackagesResponse, quicprochat_rpc::Error> {
    rpc.call(
        method::UPLOAD_KEY_PACKAGES,
        &v1::UploadKeyPackagesRequest {
            key_packages: packages.into_iter().map(Bytes::from).collect(),
            last_resort: Bytes::copy_from_slice(last_resort),
        },
    )
    .await
}

async fn claim(rpc: &RpcClient, username: &str) -> Result<v1::FetchKeyPackagesResponse, quicprochat_rpc::Error> {
    rpc.call(method::FETCH_KEY_PACKAGES, &v1::FetchKeyPackagesRequest { username: username.into() }).await
}

#[tokio::test]
async fn key_package_uploads_follow_their_rules_and_report_the_pool() {
    let server = TestServer::start().await;
    let (bob, _, _) = user(&server, "bob").await;
    let refused = |r| rpc_error(r).status;
    assert_eq!(refused(upload(&bob, vec![b"kp".to_vec(); 201], b"").await), Status::BadRequest, "over 200");
    assert_eq!(refused(upload(&bob, vec![b"kp".to_vec(), Vec::new()], b"").await), Status::BadRequest, "empty");
    assert_eq!(refused(upload(&bob, vec![vec![1u8; 64 * 1024 + 1]], b"").await), Status::BadRequest, "> 64 KiB");
    assert_eq!(refused(upload(&bob, vec![b"kp".to_vec()], &vec![1u8; 64 * 1024 + 1]).await), Status::BadRequest);
    let st: v1::KeyPackageStatusResponse =
        bob.call(method::KEY_PACKAGE_STATUS, &v1::KeyPackageStatusRequest {}).await.unwrap();
    assert_eq!((st.pool_size, st.has_last_resort), (0, false), "refused uploads store nothing");

    let full = upload(&bob, vec![vec![7u8; 1024]; 199], b"").await.unwrap();
    assert_eq!(full.pool_size, 199);
    let largest = upload(&bob, vec![vec![7u8; 64 * 1024]; 1], b"").await.unwrap();
    assert_eq!(largest.pool_size, 200, "a package of exactly 64 KiB is within the rules");
    let more = upload(&bob, vec![b"kp".to_vec(); 3], b"last").await.unwrap();
    assert_eq!(more.pool_size, 203);
    let report = upload(&bob, Vec::new(), b"").await.unwrap();
    assert_eq!(report.pool_size, 203, "an upload with no packages reports the pool size");
    let st: v1::KeyPackageStatusResponse =
        bob.call(method::KEY_PACKAGE_STATUS, &v1::KeyPackageStatusRequest {}).await.unwrap();
    assert_eq!((st.pool_size, st.has_last_resort, st.low_water), (203, true, 10));
}

#[tokio::test]
async fn fetch_key_packages_claims_one_per_device_and_refuses_bad_names() {
    let server = TestServer::start().await;
    let (bob1, _, dev1) = user(&server, "bob").await;
    let bob2 = server.client().await;
    let token = login(&bob2, "bob", b"pw").await.unwrap();
    let (_, dev2) = register_device(&bob2, &token).await;
    upload(&bob1, vec![b"one-a".to_vec(), b"one-b".to_vec()], b"").await.unwrap();
    upload(&bob2, vec![b"two-a".to_vec()], b"").await.unwrap();
    let (alice, _, _) = user(&server, "alice").await;

    let got = claim(&alice, "BOB").await.unwrap();
    let mut claimed: Vec<(Vec<u8>, Vec<u8>)> =
        got.key_packages.iter().map(|p| (p.device_id.to_vec(), p.key_package.to_vec())).collect();
    claimed.sort();
    let mut expected = vec![(dev1.clone(), b"one-a".to_vec()), (dev2.clone(), b"two-a".to_vec())];
    expected.sort();
    assert_eq!(claimed, expected, "one per device, oldest first");
    assert_eq!(got.user_id.len(), 16);
    // bob's second device has nothing left and no last resort: only the first device answers.
    let again = claim(&alice, "bob").await.unwrap();
    let left: Vec<(Vec<u8>, Vec<u8>)> =
        again.key_packages.iter().map(|p| (p.device_id.to_vec(), p.key_package.to_vec())).collect();
    assert_eq!(left, vec![(dev1, b"one-b".to_vec())]);

    assert_eq!(rpc_error(claim(&alice, "no such name!").await).status, Status::BadRequest);
    assert_eq!(rpc_error(claim(&alice, "nobody").await).status, Status::NotFound);
}

#[tokio::test]
async fn an_exhausted_pool_serves_the_last_resort_and_pushes_key_packages_low() {
    let server = TestServer::start().await;
    let (bob, _, bob_device) = user(&server, "bob").await;
    let _: v1::SubscribeResponse = bob.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();
    upload(&bob, vec![b"only".to_vec()], b"last-resort").await.unwrap();
    let (alice, _, _) = user(&server, "alice").await;

    let mut served = Vec::new();
    for _ in 0..3 {
        let got = claim(&alice, "bob").await.unwrap();
        assert_eq!(got.key_packages.len(), 1);
        let p = &got.key_packages[0];
        assert_eq!(p.device_id.as_ref(), bob_device.as_slice());
        served.push((p.key_package.to_vec(), p.last_resort));
    }
    assert_eq!(
        served,
        vec![(b"only".to_vec(), false), (b"last-resort".to_vec(), true), (b"last-resort".to_vec(), true)]
    );
    let st: v1::KeyPackageStatusResponse =
        bob.call(method::KEY_PACKAGE_STATUS, &v1::KeyPackageStatusRequest {}).await.unwrap();
    assert_eq!((st.pool_size, st.has_last_resort), (0, true), "the last resort is kept");

    // Every claim below the low-water mark told bob to refill, the empty pool as 0.
    let mut push = tokio::time::timeout(Duration::from_secs(10), bob.accept_push()).await.unwrap().unwrap();
    for _ in 0..3 {
        let frame = tokio::time::timeout(Duration::from_secs(10), push.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(frame.event_type, event::KEY_PACKAGES_LOW);
        assert_eq!(frame.decode::<v1::KeyPackagesLow>().unwrap().pool_size, 0);
    }
}

#[tokio::test]
async fn hybrid_key_lookups_are_not_found_for_devices_and_users_without_one() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, bob_device) = user(&server, "bob").await;
    let r = alice
        .call::<_, v1::FetchHybridKeyResponse>(
            method::FETCH_HYBRID_KEY,
            &v1::FetchHybridKeyRequest { device_id: bob_device.clone().into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::NotFound, "a device that has none");
    let r = alice
        .call::<_, v1::FetchHybridKeyResponse>(
            method::FETCH_HYBRID_KEY,
            &v1::FetchHybridKeyRequest { device_id: vec![1u8; 5].into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest, "a device id is 16 bytes");
    let none: v1::FetchHybridKeysResponse =
        alice.call(method::FETCH_HYBRID_KEYS, &v1::FetchHybridKeysRequest { username: "bob".into() }).await.unwrap();
    assert!(none.keys.is_empty(), "a user whose devices have none");
    let r = alice
        .call::<_, v1::FetchHybridKeysResponse>(
            method::FETCH_HYBRID_KEYS,
            &v1::FetchHybridKeysRequest { username: "nobody".into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::NotFound);

    // A second upload replaces the key.
    for byte in [1u8, 2] {
        let _: v1::UploadHybridKeyResponse = bob
            .call(method::UPLOAD_HYBRID_KEY, &v1::UploadHybridKeyRequest { public_key: vec![byte; 1216].into() })
            .await
            .unwrap();
    }
    let all: v1::FetchHybridKeysResponse =
        alice.call(method::FETCH_HYBRID_KEYS, &v1::FetchHybridKeysRequest { username: "bob".into() }).await.unwrap();
    assert_eq!(all.keys.len(), 1);
    assert_eq!(all.keys[0].device_id.as_ref(), bob_device.as_slice());
    assert_eq!(all.keys[0].public_key.as_ref(), vec![2u8; 1216].as_slice());
    let r = bob
        .call::<_, v1::UploadHybridKeyResponse>(
            method::UPLOAD_HYBRID_KEY,
            &v1::UploadHybridKeyRequest { public_key: vec![1u8; 1217].into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);
}

#[tokio::test]
async fn identity_and_hybrid_key_lookups_share_the_lookup_rate_limit() {
    let server = TestServer::start_with(|c| c.limits.lookup_rate = Rate { per_minute: 1, burst: 1 }).await;
    let (alice, _, alice_device) = user(&server, "alice").await;
    let identity = crate::harness::test_identity("alice").public_key().to_vec();
    let first: v1::ResolveIdentityResponse = alice
        .call(method::RESOLVE_IDENTITY, &v1::ResolveIdentityRequest { identity_key: identity.clone().into() })
        .await
        .unwrap();
    assert_eq!(first.device_id.as_ref(), alice_device.as_slice());
    let limited = |status: Status| assert_eq!(status, Status::RateLimited);
    let r = alice
        .call::<_, v1::ResolveIdentityResponse>(
            method::RESOLVE_IDENTITY,
            &v1::ResolveIdentityRequest { identity_key: identity.into() },
        )
        .await;
    let e = rpc_error(r);
    limited(e.status);
    assert!(e.retry_after_ms > 0, "{e:?}");
    let r = alice
        .call::<_, v1::FetchHybridKeyResponse>(
            method::FETCH_HYBRID_KEY,
            &v1::FetchHybridKeyRequest { device_id: alice_device.into() },
        )
        .await;
    limited(rpc_error(r).status);
    let r = alice
        .call::<_, v1::FetchHybridKeysResponse>(
            method::FETCH_HYBRID_KEYS,
            &v1::FetchHybridKeysRequest { username: "alice".into() },
        )
        .await;
    limited(rpc_error(r).status);
    // Other methods are not in the class.
    let _: v1::KeyPackageStatusResponse =
        alice.call(method::KEY_PACKAGE_STATUS, &v1::KeyPackageStatusRequest {}).await.unwrap();
}
