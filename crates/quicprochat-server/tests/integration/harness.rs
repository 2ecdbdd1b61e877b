//! Starts servers and logs raw RPC clients in.

use bytes::Bytes;
use quicprochat_core::identity::IdentityKeyPair;
use quicprochat_core::ids::device_binding_challenge;
use quicprochat_core::mls::{MlsClient, MlsSuite};
use quicprochat_core::opaque::{ClientLogin, ClientRegistration, OpaqueParams};
use quicprochat_proto::{method, v1};
use quicprochat_rpc::{RpcClient, ServerTrust};
use quicprochat_server::{RunningServer, ServerConfig};
use sha2::{Digest, Sha256};

pub struct TestServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tune` adjusted its configuration.
    pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        tune(&mut config);
        let server = quicprochat_server::start(config).await.unwrap();
        Self { server, dir }
    }

    /// Opens the server's database read-only, for checks on what it stores.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.dir.path().join(quicprochat_server::files::DATABASE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    pub async fn client(&self) -> RpcClient {
        let tls =
            quicprochat_rpc::tls::client_config(&ServerTrust::Pinned(self.server.certificate_der().to_vec())).unwrap();
        RpcClient::connect(self.server.local_addr(), "localhost", tls).await.unwrap()
    }
}

pub async fn register(rpc: &RpcClient, username: &str, password: &[u8]) {
    let (reg, request) = ClientRegistration::start(&mut rand_core::OsRng, password).unwrap();
    let start: v1::RegisterStartResponse = rpc
        .call(
            method::REGISTER_START,
            &v1::RegisterStartRequest { username: username.into(), registration_request: request.into() },
        )
        .await
        .unwrap();
    let upload =
        reg.finish(&mut rand_core::OsRng, password, &start.registration_response, &OpaqueParams::light()).unwrap();
    let _: v1::RegisterFinishResponse = rpc
        .call(
            method::REGISTER_FINISH,
            &v1::RegisterFinishRequest { username: username.into(), registration_upload: upload.into() },
        )
        .await
        .unwrap();
}

/// Runs an OPAQUE login; returns the session token or the RPC error of LoginFinish.
pub async fn login(rpc: &RpcClient, username: &str, password: &[u8]) -> Result<Vec<u8>, quicprochat_rpc::Error> {
    let (login, request) = ClientLogin::start(&mut rand_core::OsRng, password).unwrap();
    let start: v1::LoginStartResponse = rpc
        .call(
            method::LOGIN_START,
            &v1::LoginStartRequest { username: username.into(), credential_request: request.into() },
        )
        .await?;
    // With a wrong password the client cannot even build a finalization; send garbage to make
    // the server decide as well.
    let finalization = match login.finish(password, &start.credential_response, &OpaqueParams::light()) {
        Ok(out) => out.finalization,
        Err(_) => vec![0u8; 64],
    };
    let fin: v1::LoginFinishResponse = rpc
        .call(
            method::LOGIN_FINISH,
            &v1::LoginFinishRequest { login_id: start.login_id, credential_finalization: finalization.into() },
        )
        .await?;
    Ok(fin.session_token.to_vec())
}

pub async fn register_device(rpc: &RpcClient, token: &[u8]) -> (IdentityKeyPair, Vec<u8>) {
    register_device_as(rpc, token, IdentityKeyPair::generate(&mut rand_core::OsRng)).await
}

pub async fn register_device_as(
    rpc: &RpcClient,
    token: &[u8],
    identity: IdentityKeyPair,
) -> (IdentityKeyPair, Vec<u8>) {
    let hash: [u8; 32] = Sha256::digest(token).into();
    let key = identity.public_key();
    let sig = identity.sign(&device_binding_challenge(&hash, &key));
    let resp: v1::RegisterDeviceResponse = rpc
        .call(
            method::REGISTER_DEVICE,
            &v1::RegisterDeviceRequest {
                identity_key: Bytes::copy_from_slice(&key),
                signature: Bytes::copy_from_slice(&sig),
                name: "test".into(),
            },
        )
        .await
        .unwrap();
    (identity, resp.device_id.to_vec())
}

/// A connection logged in as a fresh user with a bound device.
pub async fn user(server: &TestServer, name: &str) -> (RpcClient, Vec<u8>, Vec<u8>) {
    let rpc = server.client().await;
    register(&rpc, name, b"pw").await;
    let token = login(&rpc, name, b"pw").await.unwrap();
    let (_, device) = register_device_as(&rpc, &token, test_identity(name)).await;
    (rpc, token, device)
}

/// A deterministic device identity for a test user, so helpers can rebuild its MLS client.
pub fn test_identity(name: &str) -> IdentityKeyPair {
    let secret: [u8; 32] = Sha256::digest(format!("qpc test identity {name}").as_bytes()).into();
    IdentityKeyPair::from_secret_bytes(&secret)
}

/// An MLS client for the device `user()` registered for `name`.
pub fn mls_client(name: &str) -> MlsClient {
    MlsClient::new(&test_identity(name), name, MlsSuite::default()).unwrap()
}

/// An opaque payload shaped like an MLS PrivateMessage (version 1, wire format 2): the server
/// only checks that header of application envelopes, it cannot read further.
pub fn private(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, 0x01, 0x00, 0x02];
    out.extend_from_slice(bytes);
    out
}

/// `alice` creates the DM with `peer` and adds the peer's device with a real MLS commit and
/// Welcome, as the SDK does. Returns the channel id and alice's MLS client (at epoch 1).
pub async fn dm_with(alice: &RpcClient, alice_name: &str, peer: &str) -> (Bytes, MlsClient) {
    let kp = mls_client(peer).generate_key_package().unwrap();
    let device = test_identity(peer).device_id().0.to_vec();
    dm_with_package(alice, alice_name, peer, device, kp).await
}

/// Like [`dm_with`], with the peer device's key package given.
pub async fn dm_with_package(
    alice: &RpcClient,
    alice_name: &str,
    peer: &str,
    peer_device: Vec<u8>,
    key_package: Vec<u8>,
) -> (Bytes, MlsClient) {
    let created: v1::CreateChannelResponse = alice
        .call(method::CREATE_CHANNEL, &v1::CreateChannelRequest { kind: v1::ChannelKind::Dm as i32, peer: peer.into() })
        .await
        .unwrap();
    assert!(created.was_new);
    let mls = mls_client(alice_name);
    mls.create_group(&created.channel_id).unwrap();
    let add = mls.add_members(&created.channel_id, &[key_package]).unwrap();
    let _: v1::BatchEnqueueResponse = alice
        .call(
            method::BATCH_ENQUEUE,
            &v1::BatchEnqueueRequest {
                channel_id: created.channel_id.clone(),
                commit: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Commit as i32,
                    epoch: 0,
                    payload: add.commit.into(),
                }),
                welcomes: vec![v1::WelcomeDelivery { device_id: peer_device.into(), payload: add.welcome.into() }],
                group_info: add.group_info.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    mls.merge_pending_commit(&created.channel_id).unwrap();
    (created.channel_id, mls)
}

/// `creator` creates a group channel and adds `members` (device id and key package each) with
/// one real MLS commit and its Welcome, shared by the devices. Returns the channel id and the
/// creator's MLS client (at epoch 1).
pub async fn group_with(creator: &RpcClient, creator_name: &str, members: &[(Vec<u8>, Vec<u8>)]) -> (Bytes, MlsClient) {
    let created: v1::CreateChannelResponse = creator
        .call(
            method::CREATE_CHANNEL,
            &v1::CreateChannelRequest { kind: v1::ChannelKind::Group as i32, peer: "".into() },
        )
        .await
        .unwrap();
    assert!(created.was_new);
    let mls = mls_client(creator_name);
    mls.create_group(&created.channel_id).unwrap();
    let packages: Vec<Vec<u8>> = members.iter().map(|(_, kp)| kp.clone()).collect();
    let add = mls.add_members(&created.channel_id, &packages).unwrap();
    let _: v1::BatchEnqueueResponse = creator
        .call(
            method::BATCH_ENQUEUE,
            &v1::BatchEnqueueRequest {
                channel_id: created.channel_id.clone(),
                commit: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Commit as i32,
                    epoch: 0,
                    payload: add.commit.into(),
                }),
                shared_welcome: Some(v1::SharedWelcome {
                    payload: add.welcome.into(),
                    device_ids: members.iter().map(|(device, _)| device.clone().into()).collect(),
                }),
                group_info: add.group_info.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    mls.merge_pending_commit(&created.channel_id).unwrap();
    (created.channel_id, mls)
}

/// The device id and a fresh key package of the device `user()` registered for `name`.
pub fn member(name: &str) -> (Vec<u8>, Vec<u8>) {
    (test_identity(name).device_id().0.to_vec(), mls_client(name).generate_key_package().unwrap())
}

/// The status and error body of a failed call; panics on success.
pub fn rpc_error<T: std::fmt::Debug>(result: Result<T, quicprochat_rpc::Error>) -> quicprochat_rpc::RpcError {
    match result {
        Ok(ok) => panic!("expected an RPC error, got {ok:?}"),
        Err(quicprochat_rpc::Error::Rpc(e)) => e,
        Err(other) => panic!("expected an RPC error, got {other}"),
    }
}

/// An application envelope at epoch 1 carrying `private(payload)`, with an idempotency key.
pub fn keyed_app(channel: &Bytes, payload: &[u8], key: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        channel_id: channel.clone(),
        envelope: Some(v1::Envelope {
            kind: v1::EnvelopeKind::Application as i32,
            epoch: 1,
            payload: private(payload).into(),
        }),
        idempotency_key: Bytes::copy_from_slice(key),
        ..Default::default()
    }
}
