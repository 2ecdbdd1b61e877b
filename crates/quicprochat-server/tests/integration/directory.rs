//! Channel queries, retention, group info, identities, hybrid keys, devices, endpoints.

use quicprochat_proto::{method, v1};
use quicprochat_rpc::Status;

use crate::harness::{TestServer, dm_with, login, register, register_device, user};

fn status<T: std::fmt::Debug>(r: Result<T, quicprochat_rpc::Error>) -> Option<Status> {
    r.unwrap_err().rpc_status()
}

#[tokio::test]
async fn channels_are_visible_to_members_only() {
    let server = TestServer::start().await;
    let (alice, _, alice_device) = user(&server, "alice").await;
    let (bob, _, bob_device) = user(&server, "bob").await;
    let (mallory, _, _) = user(&server, "mallory").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;

    let got: v1::GetChannelResponse =
        alice.call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel.clone() }).await.unwrap();
    let info = got.channel.unwrap();
    assert_eq!(info.epoch, 1);
    let mut members: Vec<Vec<u8>> = info.member_devices.iter().map(|d| d.to_vec()).collect();
    members.sort();
    let mut expected = vec![alice_device.clone(), bob_device.clone()];
    expected.sort();
    assert_eq!(members, expected);

    let listed: v1::ListChannelsResponse = bob.call(method::LIST_CHANNELS, &v1::ListChannelsRequest {}).await.unwrap();
    assert_eq!(listed.channels.len(), 1);
    assert_eq!(listed.channels[0].channel_id, channel);
    let none: v1::ListChannelsResponse =
        mallory.call(method::LIST_CHANNELS, &v1::ListChannelsRequest {}).await.unwrap();
    assert!(none.channels.is_empty());

    let r = mallory
        .call::<_, v1::GetChannelResponse>(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel.clone() })
        .await;
    assert_eq!(status(r), Some(Status::Forbidden));
    let r = alice
        .call::<_, v1::GetChannelResponse>(
            method::GET_CHANNEL,
            &v1::GetChannelRequest { channel_id: vec![9u8; 16].into() },
        )
        .await;
    assert_eq!(status(r), Some(Status::NotFound));
    let r = alice
        .call::<_, v1::GetChannelResponse>(
            method::GET_CHANNEL,
            &v1::GetChannelRequest { channel_id: vec![9u8; 3].into() },
        )
        .await;
    assert_eq!(status(r), Some(Status::BadRequest));

    let gi: v1::GetGroupInfoResponse =
        bob.call(method::GET_GROUP_INFO, &v1::GetGroupInfoRequest { channel_id: channel.clone() }).await.unwrap();
    assert!(!gi.group_info.is_empty());
    assert_eq!(gi.epoch, 1);
    let r = mallory
        .call::<_, v1::GetGroupInfoResponse>(method::GET_GROUP_INFO, &v1::GetGroupInfoRequest { channel_id: channel })
        .await;
    assert_eq!(status(r), Some(Status::Forbidden));
}

#[tokio::test]
async fn channel_retention_becomes_the_default_ttl() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (_bob, _, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let r = alice
        .call::<_, v1::SetChannelRetentionResponse>(
            method::SET_CHANNEL_RETENTION,
            &v1::SetChannelRetentionRequest { channel_id: channel.clone(), retention_secs: 400 * 24 * 3600 },
        )
        .await;
    assert_eq!(status(r), Some(Status::BadRequest));
    let _: v1::SetChannelRetentionResponse = alice
        .call(
            method::SET_CHANNEL_RETENTION,
            &v1::SetChannelRetentionRequest { channel_id: channel.clone(), retention_secs: 3600 },
        )
        .await
        .unwrap();
    let _: v1::EnqueueResponse = alice
        .call(
            method::ENQUEUE,
            &v1::EnqueueRequest {
                channel_id: channel.clone(),
                envelope: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Application as i32,
                    epoch: 1,
                    payload: crate::harness::private(b"fleeting").into(),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ttl: i64 = server
        .db()
        .query_row(
            "SELECT expires_ms - created_ms FROM envelopes WHERE payload = ?1",
            [crate::harness::private(b"fleeting")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ttl, 3600 * 1000);
    let got: v1::GetChannelResponse =
        alice.call(method::GET_CHANNEL, &v1::GetChannelRequest { channel_id: channel }).await.unwrap();
    assert_eq!(got.channel.unwrap().retention_secs, 3600);
}

#[tokio::test]
async fn identities_hybrid_keys_and_key_package_status() {
    let server = TestServer::start().await;
    let bob = server.client().await;
    register(&bob, "bob", b"pw").await;
    let token = login(&bob, "bob", b"pw").await.unwrap();
    let (identity, bob_device) = register_device(&bob, &token).await;
    let (alice, _, _) = user(&server, "alice").await;

    let who: v1::ResolveIdentityResponse = alice
        .call(
            method::RESOLVE_IDENTITY,
            &v1::ResolveIdentityRequest { identity_key: identity.public_key().to_vec().into() },
        )
        .await
        .unwrap();
    assert_eq!(who.username, "bob");
    assert_eq!(who.device_id.as_ref(), bob_device.as_slice());
    let r = alice
        .call::<_, v1::ResolveIdentityResponse>(
            method::RESOLVE_IDENTITY,
            &v1::ResolveIdentityRequest { identity_key: vec![1u8; 32].into() },
        )
        .await;
    assert_eq!(status(r), Some(Status::NotFound));

    let r = bob
        .call::<_, v1::UploadHybridKeyResponse>(
            method::UPLOAD_HYBRID_KEY,
            &v1::UploadHybridKeyRequest { public_key: vec![1u8; 32].into() },
        )
        .await;
    assert_eq!(status(r), Some(Status::BadRequest));
    let key = vec![7u8; 1216];
    let _: v1::UploadHybridKeyResponse = bob
        .call(method::UPLOAD_HYBRID_KEY, &v1::UploadHybridKeyRequest { public_key: key.clone().into() })
        .await
        .unwrap();
    let one: v1::FetchHybridKeyResponse = alice
        .call(method::FETCH_HYBRID_KEY, &v1::FetchHybridKeyRequest { device_id: bob_device.clone().into() })
        .await
        .unwrap();
    assert_eq!(one.public_key.as_ref(), key.as_slice());
    let all: v1::FetchHybridKeysResponse =
        alice.call(method::FETCH_HYBRID_KEYS, &v1::FetchHybridKeysRequest { username: "bob".into() }).await.unwrap();
    assert_eq!(all.keys.len(), 1);
    let r = alice
        .call::<_, v1::FetchHybridKeyResponse>(
            method::FETCH_HYBRID_KEY,
            &v1::FetchHybridKeyRequest { device_id: vec![0u8; 16].into() },
        )
        .await;
    assert_eq!(status(r), Some(Status::NotFound));

    let _: v1::UploadKeyPackagesResponse = bob
        .call(
            method::UPLOAD_KEY_PACKAGES,
            &v1::UploadKeyPackagesRequest {
                key_packages: vec![b"k".to_vec().into()],
                last_resort: b"l".to_vec().into(),
            },
        )
        .await
        .unwrap();
    let st: v1::KeyPackageStatusResponse =
        bob.call(method::KEY_PACKAGE_STATUS, &v1::KeyPackageStatusRequest {}).await.unwrap();
    assert_eq!((st.pool_size, st.has_last_resort, st.low_water), (1, true, 10));
}

#[tokio::test]
async fn revoked_device_loses_its_session_queue_and_memberships() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    // bob has two devices, each on its own connection.
    let bob1 = server.client().await;
    register(&bob1, "bob", b"pw").await;
    let t1 = login(&bob1, "bob", b"pw").await.unwrap();
    let (_, dev1) = register_device(&bob1, &t1).await;
    let bob2 = server.client().await;
    let t2 = login(&bob2, "bob", b"pw").await.unwrap();
    let bob2_identity = quicprochat_core::identity::IdentityKeyPair::generate(&mut rand_core::OsRng);
    let bob2_mls = quicprochat_core::mls::MlsClient::new(&bob2_identity, "bob", Default::default()).unwrap();
    let (_, dev2) = crate::harness::register_device_as(&bob2, &t2, bob2_identity).await;
    let listed: v1::ListDevicesResponse = bob1.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();
    assert_eq!(listed.devices.len(), 2);

    let kp = bob2_mls.generate_key_package().unwrap();
    let (_channel, _mls) = crate::harness::dm_with_package(&alice, "alice", "bob", dev2.clone(), kp).await;
    let _: v1::RevokeDeviceResponse =
        bob1.call(method::REVOKE_DEVICE, &v1::RevokeDeviceRequest { device_id: dev2.clone().into() }).await.unwrap();

    let r = bob2.call::<_, v1::PeekResponse>(method::PEEK, &v1::PeekRequest::default()).await;
    assert_eq!(status(r), Some(Status::Unauthenticated), "the revoked device's live session ends");
    let r = bob2.call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: t2.into() }).await;
    assert_eq!(status(r), Some(Status::Unauthenticated));
    let db = server.db();
    let n: i64 =
        db.query_row("SELECT COUNT(*) FROM queue WHERE device_id = ?1", [dev2.as_slice()], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM channel_members WHERE device_id = ?1", [dev2.as_slice()], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    let listed: v1::ListDevicesResponse = bob1.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();
    assert_eq!(listed.devices.len(), 1);
    assert_eq!(listed.devices[0].device_id.as_ref(), dev1.as_slice());

    // Nobody revokes a device of another account.
    let r = alice
        .call::<_, v1::RevokeDeviceResponse>(method::REVOKE_DEVICE, &v1::RevokeDeviceRequest { device_id: dev1.into() })
        .await;
    assert_eq!(status(r), Some(Status::NotFound));
}

#[tokio::test]
async fn endpoint_hints_publish_and_resolve() {
    let server = TestServer::start().await;
    let (alice, _, alice_device) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let r = alice
        .call::<_, v1::PublishEndpointResponse>(
            method::PUBLISH_ENDPOINT,
            &v1::PublishEndpointRequest { endpoint: b"hint".to_vec().into(), ttl_secs: 0 },
        )
        .await;
    assert_eq!(status(r), Some(Status::BadRequest));
    let _: v1::PublishEndpointResponse = alice
        .call(method::PUBLISH_ENDPOINT, &v1::PublishEndpointRequest { endpoint: b"hint".to_vec().into(), ttl_secs: 60 })
        .await
        .unwrap();
    let got: v1::ResolveEndpointResponse =
        bob.call(method::RESOLVE_ENDPOINT, &v1::ResolveEndpointRequest { username: "alice".into() }).await.unwrap();
    assert_eq!(got.endpoints.len(), 1);
    assert_eq!(got.endpoints[0].device_id.as_ref(), alice_device.as_slice());
    assert_eq!(got.endpoints[0].endpoint.as_ref(), b"hint");
    let r = bob
        .call::<_, v1::ResolveEndpointResponse>(
            method::RESOLVE_ENDPOINT,
            &v1::ResolveEndpointRequest { username: "nobody".into() },
        )
        .await;
    assert_eq!(status(r), Some(Status::NotFound));
}
