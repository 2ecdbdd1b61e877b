//! Channels (400), users (500), blobs (600), devices (700) and node (800): the success paths
//! and documented refusals the domain tests do not already show.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quicprochat_core::ids::device_binding_challenge;
use quicprochat_proto::{method, v1};
use quicprochat_rpc::{RpcClient, Status};
use quicprochat_server::Clock;
use sha2::{Digest, Sha256};

use crate::harness::{TestServer, dm_with, login, register, rpc_error, test_identity, user};

async fn create(
    rpc: &RpcClient,
    kind: v1::ChannelKind,
    peer: &str,
) -> Result<v1::CreateChannelResponse, quicprochat_rpc::Error> {
    rpc.call(method::CREATE_CHANNEL, &v1::CreateChannelRequest { kind: kind as i32, peer: peer.into() }).await
}

#[tokio::test]
async fn groups_are_created_and_dm_rules_are_enforced() {
    let server = TestServer::start().await;
    let (alice, _, alice_device) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;

    let g1 = create(&alice, v1::ChannelKind::Group, "").await.unwrap();
    let g2 = create(&alice, v1::ChannelKind::Group, "").await.unwrap();
    for g in [&g1, &g2] {
        assert!(g.was_new && g.is_member);
        assert_eq!((g.kind, g.epoch, g.channel_id.len()), (v1::ChannelKind::Group as i32, 0, 16));
    }
    assert_ne!(g1.channel_id, g2.channel_id, "group ids are random");
    let got: v1::GetChannelResponse =
        alice.call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: g1.channel_id.clone() }).await.unwrap();
    let info = got.channel.unwrap();
    assert_eq!(info.member_devices, vec![Bytes::from(alice_device)], "the creating device is the first member");
    assert_eq!((info.kind, info.epoch, info.retention_secs), (v1::ChannelKind::Group as i32, 0, 0));
    let listed: v1::ListChannelsResponse =
        alice.call(method::LIST_CHANNELS, &v1::ListChannelsRequest {}).await.unwrap();
    assert_eq!(listed.channels.len(), 2);

    // No commit carried a GroupInfo yet; an unknown channel has none either.
    for channel in [g1.channel_id.clone(), vec![0x42; 16].into()] {
        let r = alice
            .call::<_, v1::GetGroupInfoResponse>(
                method::GET_GROUP_INFO,
                &v1::GetGroupInfoRequest { channel_id: channel },
            )
            .await;
        assert_eq!(rpc_error(r).status, Status::NotFound);
    }

    // The DM's second creator is told it is not new and not (yet) a member.
    let dm = create(&alice, v1::ChannelKind::Dm, "bob").await.unwrap();
    let other = create(&bob, v1::ChannelKind::Dm, "Alice").await.unwrap();
    assert_eq!(other.channel_id, dm.channel_id);
    assert!(dm.was_new && dm.is_member);
    assert!(!other.was_new && !other.is_member);
    assert_eq!(other.kind, v1::ChannelKind::Dm as i32);

    for (kind, peer) in
        [(v1::ChannelKind::Dm, "alice"), (v1::ChannelKind::Dm, "ALICE"), (v1::ChannelKind::Unspecified, "bob")]
    {
        assert_eq!(rpc_error(create(&alice, kind, peer).await).status, Status::BadRequest, "{kind:?} {peer}");
    }
    let r = alice
        .call::<_, v1::CreateChannelResponse>(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest { kind: 99, peer: "bob".into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest, "an unknown kind");
}

#[tokio::test]
async fn retention_is_for_members_of_existing_channels_up_to_a_year() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let set = |rpc: &RpcClient, channel_id: Bytes, retention_secs: u32| {
        let rpc = rpc.clone();
        async move {
            rpc.call::<_, v1::SetChannelRetentionResponse>(
                method::SET_CHANNEL_RETENTION,
                &v1::SetChannelRetentionRequest { channel_id, retention_secs },
            )
            .await
        }
    };
    assert_eq!(rpc_error(set(&alice, vec![0x77; 16].into(), 60).await).status, Status::NotFound);
    assert_eq!(rpc_error(set(&mallory, channel.clone(), 60).await).status, Status::Forbidden);
    set(&alice, channel.clone(), 365 * 24 * 3600).await.unwrap();
    let retention = |rpc: RpcClient, channel: Bytes| async move {
        let got: v1::GetChannelResponse =
            rpc.call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel }).await.unwrap();
        got.channel.unwrap().retention_secs
    };
    assert_eq!(retention(alice.clone(), channel.clone()).await, 365 * 24 * 3600);
    set(&alice, channel.clone(), 0).await.unwrap();
    assert_eq!(retention(alice.clone(), channel).await, 0, "0 keeps envelopes until acked");
}

#[tokio::test]
async fn users_resolve_by_name_and_identity() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let found: v1::ResolveUserResponse =
        alice.call(method::RESOLVE_USER, &v1::ResolveUserRequest { username: "BOB".into() }).await.unwrap();
    assert_eq!(found.username, "bob");
    assert_eq!(found.user_id.len(), 16);
    assert_eq!(found.device_keys, vec![Bytes::from(test_identity("bob").public_key().to_vec())]);
    let r = alice
        .call::<_, v1::ResolveUserResponse>(method::RESOLVE_USER, &v1::ResolveUserRequest { username: "nobody".into() })
        .await;
    assert_eq!(rpc_error(r).status, Status::NotFound);

    let who: v1::ResolveIdentityResponse = alice
        .call(
            method::RESOLVE_IDENTITY,
            &v1::ResolveIdentityRequest { identity_key: test_identity("bob").public_key().to_vec().into() },
        )
        .await
        .unwrap();
    assert_eq!((who.username.as_str(), &who.user_id), ("bob", &found.user_id));
    for len in [0, 31, 33] {
        let r = alice
            .call::<_, v1::ResolveIdentityResponse>(
                method::RESOLVE_IDENTITY,
                &v1::ResolveIdentityRequest { identity_key: vec![1u8; len].into() },
            )
            .await;
        assert_eq!(rpc_error(r).status, Status::BadRequest, "{len}-byte key");
    }
}

/// RegisterDevice with `identity`'s signature over this session's challenge and `name`.
async fn bind(
    rpc: &RpcClient,
    token: &[u8],
    identity: &quicprochat_core::identity::IdentityKeyPair,
    name: &str,
) -> Result<v1::RegisterDeviceResponse, quicprochat_rpc::Error> {
    let hash: [u8; 32] = Sha256::digest(token).into();
    let key = identity.public_key();
    let signature = identity.sign(&device_binding_challenge(&hash, &key));
    rpc.call(
        method::REGISTER_DEVICE,
        &v1::RegisterDeviceRequest {
            identity_key: Bytes::copy_from_slice(&key),
            signature: Bytes::copy_from_slice(&signature),
            name: name.into(),
        },
    )
    .await
}

#[tokio::test]
async fn device_registration_rules_and_one_account_per_key() {
    let server = TestServer::start().await;
    let alice = server.client().await;
    register(&alice, "alice", b"pw").await;
    let alice_token = login(&alice, "alice", b"pw").await.unwrap();
    let identity = test_identity("alice");

    let r = alice
        .call::<_, v1::RegisterDeviceResponse>(
            method::REGISTER_DEVICE,
            &v1::RegisterDeviceRequest {
                identity_key: vec![1u8; 31].into(),
                signature: vec![0u8; 64].into(),
                name: "x".into(),
            },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest, "key length");
    assert_eq!(rpc_error(bind(&alice, &alice_token, &identity, &"n".repeat(65)).await).status, Status::BadRequest);
    // A signature over another session's challenge does not bind.
    assert_eq!(rpc_error(bind(&alice, &[9u8; 32], &identity, "laptop").await).status, Status::Forbidden);

    let bound = bind(&alice, &alice_token, &identity, &"n".repeat(64)).await.unwrap();
    assert_eq!(bound.device_id.as_ref(), identity.device_id().0.as_slice());
    // The same key from another session of the same account is the same device.
    let again = server.client().await;
    let token = login(&again, "alice", b"pw").await.unwrap();
    let rebound = bind(&again, &token, &identity, "laptop").await.unwrap();
    assert_eq!(rebound.device_id, bound.device_id);
    let listed: v1::ListDevicesResponse = again.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();
    assert_eq!(listed.devices.len(), 1);
    assert_eq!(listed.devices[0].identity_key.as_ref(), identity.public_key().as_slice());

    // Another account cannot bind it, even with a valid signature.
    let bob = server.client().await;
    register(&bob, "bob", b"pw").await;
    let bob_token = login(&bob, "bob", b"pw").await.unwrap();
    assert_eq!(rpc_error(bind(&bob, &bob_token, &identity, "stolen").await).status, Status::Conflict);
    let listed: v1::ListDevicesResponse = bob.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();
    assert!(listed.devices.is_empty());

    // Revoking: an unknown device id is not found, a malformed one is refused.
    let r = bob
        .call::<_, v1::RevokeDeviceResponse>(
            method::REVOKE_DEVICE,
            &v1::RevokeDeviceRequest { device_id: vec![3u8; 16].into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::NotFound);
    let r = bob
        .call::<_, v1::RevokeDeviceResponse>(
            method::REVOKE_DEVICE,
            &v1::RevokeDeviceRequest { device_id: vec![3u8; 4].into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);
}

#[tokio::test]
async fn node_health_server_info_and_endpoint_rules() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let server = TestServer::start_with(|c| c.clock = Clock::manual(Arc::clone(&now))).await;
    let anonymous = server.client().await;
    let health: v1::HealthResponse = anonymous.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    assert_eq!(health.status, "serving");
    assert!(!health.version.is_empty());
    let info: v1::ServerInfoResponse = anonymous.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
    assert_eq!(info.version, health.version);
    assert_eq!(info.signing_key.len(), 32);

    let (alice, _, alice_device) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let publish = |endpoint: Vec<u8>, ttl_secs: u32| {
        let alice = alice.clone();
        async move {
            alice
                .call::<_, v1::PublishEndpointResponse>(
                    method::PUBLISH_ENDPOINT,
                    &v1::PublishEndpointRequest { endpoint: endpoint.into(), ttl_secs },
                )
                .await
        }
    };
    for (endpoint, ttl) in [(Vec::new(), 60), (vec![1u8; 4097], 60), (b"hint".to_vec(), 86_401)] {
        assert_eq!(
            rpc_error(publish(endpoint.clone(), ttl).await).status,
            Status::BadRequest,
            "{} bytes, {ttl} s",
            endpoint.len()
        );
    }
    let resolve = || {
        let bob = bob.clone();
        async move {
            let got: v1::ResolveEndpointResponse = bob
                .call(method::RESOLVE_ENDPOINT, &v1::ResolveEndpointRequest { username: "alice".into() })
                .await
                .unwrap();
            got.endpoints
        }
    };
    assert!(resolve().await.is_empty(), "nothing published yet");
    publish(vec![1u8; 4096], 86_400).await.unwrap();
    publish(b"newer".to_vec(), 60).await.unwrap();
    let hints = resolve().await;
    assert_eq!(hints.len(), 1, "a device has one current hint");
    assert_eq!((hints[0].device_id.to_vec(), hints[0].endpoint.to_vec()), (alice_device, b"newer".to_vec()));
    assert_eq!(hints[0].expires_at_ms, 1_000_000_000 + 60_000);
    now.fetch_add(61_000, Ordering::SeqCst);
    assert!(resolve().await.is_empty(), "expired hints are not returned");
}

async fn upload(
    rpc: &RpcClient,
    id: &[u8],
    total_size: u64,
    offset: u64,
    data: &[u8],
) -> Result<v1::UploadBlobChunkResponse, quicprochat_rpc::Error> {
    rpc.call(
        method::UPLOAD_BLOB_CHUNK,
        &v1::UploadBlobChunkRequest { blob_id: id.to_vec().into(), total_size, offset, data: data.to_vec().into() },
    )
    .await
}

async fn download(
    rpc: &RpcClient,
    id: &[u8],
    offset: u64,
    max_len: u32,
) -> Result<v1::DownloadBlobChunkResponse, quicprochat_rpc::Error> {
    rpc.call(
        method::DOWNLOAD_BLOB_CHUNK,
        &v1::DownloadBlobChunkRequest { blob_id: id.to_vec().into(), offset, max_len },
    )
    .await
}

#[tokio::test]
async fn blob_chunk_rules_and_downloads() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let data: Vec<u8> = (0..300 * 1024).map(|i| (i % 253) as u8).collect();
    let id = Sha256::digest(&data).to_vec();
    let total = data.len() as u64;
    let refused = |r: Result<v1::UploadBlobChunkResponse, quicprochat_rpc::Error>| rpc_error(r).status;

    assert_eq!(refused(upload(&alice, &id, total, 0, &[]).await), Status::BadRequest, "empty chunk");
    assert_eq!(refused(upload(&alice, &id, 0, 0, b"x").await), Status::BadRequest, "empty blob");
    assert_eq!(
        refused(upload(&alice, &id, total, 0, &data[..256 * 1024 + 1]).await),
        Status::BadRequest,
        "chunk > 256 KiB"
    );
    let first = upload(&alice, &id, total, 0, &data[..256 * 1024]).await.unwrap();
    assert_eq!((first.received, first.complete), (256 * 1024, false));
    assert_eq!(
        refused(upload(&alice, &id, total + 1, 256 * 1024, &data[256 * 1024..]).await),
        Status::BadRequest,
        "size changed"
    );
    let done = upload(&alice, &id, total, 256 * 1024, &data[256 * 1024..]).await.unwrap();
    assert_eq!((done.received, done.complete), (total, true));
    let again = upload(&alice, &id, total, 0, &data[..10]).await.unwrap();
    assert_eq!((again.received, again.complete), (total, true), "a complete blob stays complete");

    let info: v1::BlobInfoResponse =
        bob.call(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: id.clone().into() }).await.unwrap();
    assert_eq!((info.total_size, info.received, info.complete), (total, total, true));
    assert!(info.expires_at_ms > 0);
    let part = download(&bob, &id, 1000, 100).await.unwrap();
    assert_eq!((part.data.as_ref(), part.total_size), (&data[1000..1100], total));
    let tail = download(&bob, &id, total - 5, 0).await.unwrap();
    assert_eq!(tail.data.as_ref(), &data[data.len() - 5..]);
    let end = download(&bob, &id, total, 0).await.unwrap();
    assert!(end.data.is_empty());
    assert_eq!(rpc_error(download(&bob, &id, total + 1, 0).await).status, Status::BadRequest, "offset past the end");
    assert_eq!(rpc_error(download(&bob, &[8u8; 32], 0, 0).await).status, Status::NotFound, "unknown blob");
    assert_eq!(rpc_error(download(&bob, &[8u8; 31], 0, 0).await).status, Status::BadRequest, "id not 32 bytes");
    let r = bob
        .call::<_, v1::BlobInfoResponse>(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: vec![8u8; 31].into() })
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);
}
