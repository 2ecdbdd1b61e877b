//! Auth (100) errors and the per-method guards: UNAUTHENTICATED without a session, FORBIDDEN
//! without a device, the auth rate limit class.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quicprochat_core::opaque::{ClientLogin, ClientRegistration, OpaqueParams};
use quicprochat_proto::{Message, method, v1};
use quicprochat_rpc::{RpcClient, Status};
use quicprochat_server::{Clock, Rate};

use crate::harness::{TestServer, login, register, rpc_error, user};

/// LoginStart for `username`; returns the client state and the server's answer.
async fn login_start(rpc: &RpcClient, username: &str, password: &[u8]) -> (ClientLogin, v1::LoginStartResponse) {
    let (client, request) = ClientLogin::start(&mut rand_core::OsRng, password).unwrap();
    let start: v1::LoginStartResponse = rpc
        .call(
            method::LOGIN_START,
            &v1::LoginStartRequest { username: username.into(), credential_request: request.into() },
        )
        .await
        .unwrap();
    (client, start)
}

#[tokio::test]
async fn register_start_refuses_a_malformed_opaque_message() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let r = rpc
        .call::<_, v1::RegisterStartResponse>(
            method::REGISTER_START,
            &v1::RegisterStartRequest { username: "alice".into(), registration_request: Bytes::from_static(b"xyz") },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);
    // Too short and too long names break the username rules.
    for name in ["ab", &"x".repeat(33)] {
        let (_, request) = ClientRegistration::start(&mut rand_core::OsRng, b"pw").unwrap();
        let r = rpc
            .call::<_, v1::RegisterStartResponse>(
                method::REGISTER_START,
                &v1::RegisterStartRequest { username: name.into(), registration_request: request.into() },
            )
            .await;
        assert_eq!(rpc_error(r).status, Status::BadRequest, "{name}");
    }
    // Nothing was created.
    let n: i64 = server.db().query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn register_finish_refuses_garbage_and_a_name_taken_meanwhile() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    let r = rpc
        .call::<_, v1::RegisterFinishResponse>(
            method::REGISTER_FINISH,
            &v1::RegisterFinishRequest { username: "alice".into(), registration_upload: Bytes::from_static(b"junk") },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);

    // Two registrations of one name race: both starts succeed, the second finish conflicts.
    let mut pending = Vec::new();
    for password in [b"first".as_slice(), b"second".as_slice()] {
        let (reg, request) = ClientRegistration::start(&mut rand_core::OsRng, password).unwrap();
        let start: v1::RegisterStartResponse = rpc
            .call(
                method::REGISTER_START,
                &v1::RegisterStartRequest { username: "alice".into(), registration_request: request.into() },
            )
            .await
            .unwrap();
        let upload =
            reg.finish(&mut rand_core::OsRng, password, &start.registration_response, &OpaqueParams::light()).unwrap();
        pending.push(upload);
    }
    let finish = |upload: Vec<u8>, name: &str| v1::RegisterFinishRequest {
        username: name.into(),
        registration_upload: upload.into(),
    };
    let first: v1::RegisterFinishResponse =
        rpc.call(method::REGISTER_FINISH, &finish(pending[0].clone(), "alice")).await.unwrap();
    assert_eq!(first.user_id.len(), 16);
    let r =
        rpc.call::<_, v1::RegisterFinishResponse>(method::REGISTER_FINISH, &finish(pending[1].clone(), "ALICE")).await;
    assert_eq!(rpc_error(r).status, Status::Conflict);
    // A valid upload under a name that breaks the rules.
    let r =
        rpc.call::<_, v1::RegisterFinishResponse>(method::REGISTER_FINISH, &finish(pending[1].clone(), "a b")).await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);
    // The first password is the one that counts.
    assert!(login(&rpc, "alice", b"first").await.is_ok());
    assert_eq!(login(&rpc, "alice", b"second").await.unwrap_err().rpc_status(), Some(Status::Unauthenticated));
}

#[tokio::test]
async fn login_start_answers_an_unknown_user_like_a_known_one() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    register(&rpc, "alice", b"pw").await;
    let (_, known) = login_start(&rpc, "alice", b"pw").await;
    let (_, unknown) = login_start(&rpc, "nobody", b"pw").await;
    assert_eq!(known.login_id.len(), 16);
    assert_eq!(unknown.login_id.len(), 16);
    assert_eq!(known.credential_response.len(), unknown.credential_response.len());
    assert_eq!(known.encoded_len(), unknown.encoded_len());
    // A bad username is a rule of the method, not a lookup.
    let (_, request) = ClientLogin::start(&mut rand_core::OsRng, b"pw").unwrap();
    let r = rpc
        .call::<_, v1::LoginStartResponse>(
            method::LOGIN_START,
            &v1::LoginStartRequest { username: "no way".into(), credential_request: request.into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::BadRequest);
}

#[tokio::test]
async fn login_finish_refuses_unknown_reused_and_expired_login_ids() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let server = TestServer::start_with(|c| c.clock = Clock::manual(Arc::clone(&now))).await;
    let rpc = server.client().await;
    register(&rpc, "alice", b"pw").await;

    // A login_id the server never issued.
    let r = rpc
        .call::<_, v1::LoginFinishResponse>(
            method::LOGIN_FINISH,
            &v1::LoginFinishRequest { login_id: vec![5u8; 16].into(), credential_finalization: vec![0u8; 64].into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::Unauthenticated);

    // A login_id is good for one LoginFinish.
    let (client, start) = login_start(&rpc, "alice", b"pw").await;
    let finalization = client.finish(b"pw", &start.credential_response, &OpaqueParams::light()).unwrap().finalization;
    let request =
        v1::LoginFinishRequest { login_id: start.login_id.clone(), credential_finalization: finalization.into() };
    let ok: v1::LoginFinishResponse = rpc.call(method::LOGIN_FINISH, &request).await.unwrap();
    assert_eq!(ok.session_token.len(), 32);
    assert_eq!(ok.expires_at_ms, 1_000_000_000 + 30 * 24 * 3600 * 1000, "sessions live 30 days by default");
    let r = rpc.call::<_, v1::LoginFinishResponse>(method::LOGIN_FINISH, &request).await;
    assert_eq!(rpc_error(r).status, Status::Unauthenticated);

    // A login_id left waiting past its window has expired, even with the right proof.
    let (client, start) = login_start(&rpc, "alice", b"pw").await;
    let finalization = client.finish(b"pw", &start.credential_response, &OpaqueParams::light()).unwrap().finalization;
    now.fetch_add(61_000, Ordering::SeqCst);
    let r = rpc
        .call::<_, v1::LoginFinishResponse>(
            method::LOGIN_FINISH,
            &v1::LoginFinishRequest { login_id: start.login_id, credential_finalization: finalization.into() },
        )
        .await;
    assert_eq!(rpc_error(r).status, Status::Unauthenticated);
}

#[tokio::test]
async fn resume_refuses_malformed_tokens_and_is_rate_limited_per_address() {
    let server = TestServer::start_with(|c| c.limits.auth_rate = Rate { per_minute: 1, burst: 3 }).await;
    let rpc = server.client().await;
    for token in [vec![1u8; 31], vec![1u8; 32], Vec::new()] {
        let r =
            rpc.call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: token.into() }).await;
        assert_eq!(rpc_error(r).status, Status::Unauthenticated);
    }
    let r = rpc
        .call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: vec![1u8; 32].into() })
        .await;
    let e = rpc_error(r);
    assert_eq!(e.status, Status::RateLimited);
    assert!(e.retry_after_ms > 0, "{e:?}");
    // The budget is per client address: another connection from 127.0.0.1 shares it.
    let other = server.client().await;
    let r = other.call::<_, v1::LoginStartResponse>(method::LOGIN_START, &v1::LoginStartRequest::default()).await;
    assert_eq!(rpc_error(r).status, Status::RateLimited);
}

#[tokio::test]
async fn delete_account_of_an_already_deleted_account_is_not_found() {
    // Two nodes on one data dir: the second does not know the first revoked the session, so
    // its DeleteAccount reaches the store and finds nothing to delete.
    let first = TestServer::start().await;
    let (alice, token, _) = user(&first, "alice").await;
    let second = quicprochat_server::start(quicprochat_server::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        first.dir.path(),
    ))
    .await
    .unwrap();
    let tls =
        quicprochat_rpc::tls::client_config(&quicprochat_rpc::ServerTrust::Pinned(second.certificate_der().to_vec()))
            .unwrap();
    let elsewhere = RpcClient::connect(second.local_addr(), "localhost", tls).await.unwrap();
    let _: v1::ResumeResponse =
        elsewhere.call(method::RESUME, &v1::ResumeRequest { session_token: token.into() }).await.unwrap();

    let _: v1::DeleteAccountResponse = alice.call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await.unwrap();
    let r = elsewhere.call::<_, v1::DeleteAccountResponse>(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await;
    assert_eq!(rpc_error(r).status, Status::NotFound);
    elsewhere.close("done");
    second.shutdown().await.unwrap();
}

/// Every method that needs a session.
const SESSION_METHODS: [u16; 30] = [
    method::LOGOUT,
    method::DELETE_ACCOUNT,
    method::ENQUEUE,
    method::BATCH_ENQUEUE,
    method::FETCH,
    method::FETCH_WAIT,
    method::PEEK,
    method::ACK,
    method::SUBSCRIBE,
    method::UPLOAD_KEY_PACKAGES,
    method::FETCH_KEY_PACKAGES,
    method::UPLOAD_HYBRID_KEY,
    method::FETCH_HYBRID_KEY,
    method::FETCH_HYBRID_KEYS,
    method::KEY_PACKAGE_STATUS,
    method::CREATE_CHANNEL,
    method::GET_CHANNEL,
    method::LIST_CHANNELS,
    method::SET_CHANNEL_RETENTION,
    method::GET_GROUP_INFO,
    method::RESOLVE_USER,
    method::RESOLVE_IDENTITY,
    method::UPLOAD_BLOB_CHUNK,
    method::DOWNLOAD_BLOB_CHUNK,
    method::BLOB_INFO,
    method::REGISTER_DEVICE,
    method::LIST_DEVICES,
    method::REVOKE_DEVICE,
    method::PUBLISH_ENDPOINT,
    method::RESOLVE_ENDPOINT,
];

#[tokio::test]
async fn every_session_method_is_unauthenticated_without_a_session() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    for id in SESSION_METHODS {
        let (status, body) = rpc.call_raw(id, &[]).await.unwrap();
        let name = quicprochat_proto::method_name(id).unwrap();
        assert_eq!(status, Status::Unauthenticated, "{name}");
        assert_eq!(v1::Error::decode(body).unwrap().code, u32::from(Status::Unauthenticated.as_u8()), "{name}");
    }
    // The open methods answer.
    let _: v1::HealthResponse = rpc.call(method::HEALTH, &v1::HealthRequest {}).await.unwrap();
    let _: v1::ServerInfoResponse = rpc.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
}

#[tokio::test]
async fn every_device_method_is_forbidden_without_a_device() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    register(&rpc, "alice", b"pw").await;
    login(&rpc, "alice", b"pw").await.unwrap();
    let channel = Bytes::from(vec![3u8; 16]);
    let app = Some(v1::Envelope {
        kind: v1::EnvelopeKind::Application as i32,
        epoch: 0,
        payload: crate::harness::private(b"x").into(),
    });
    let requests: Vec<(u16, Vec<u8>)> = vec![
        (
            method::ENQUEUE,
            v1::EnqueueRequest { channel_id: channel.clone(), envelope: app, ..Default::default() }.encode_to_vec(),
        ),
        (
            method::BATCH_ENQUEUE,
            v1::BatchEnqueueRequest {
                channel_id: channel.clone(),
                commit: Some(v1::Envelope {
                    kind: v1::EnvelopeKind::Commit as i32,
                    epoch: 0,
                    payload: Bytes::from_static(b"c"),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (method::FETCH, v1::FetchRequest::default().encode_to_vec()),
        (method::FETCH_WAIT, v1::FetchWaitRequest { timeout_ms: 10, ..Default::default() }.encode_to_vec()),
        (method::PEEK, v1::PeekRequest::default().encode_to_vec()),
        (method::ACK, v1::AckRequest { up_to_seq: 1 }.encode_to_vec()),
        (method::SUBSCRIBE, v1::SubscribeRequest {}.encode_to_vec()),
        (
            method::UPLOAD_KEY_PACKAGES,
            v1::UploadKeyPackagesRequest { key_packages: vec![Bytes::from_static(b"kp")], ..Default::default() }
                .encode_to_vec(),
        ),
        (method::UPLOAD_HYBRID_KEY, v1::UploadHybridKeyRequest { public_key: vec![7u8; 1216].into() }.encode_to_vec()),
        (method::KEY_PACKAGE_STATUS, v1::KeyPackageStatusRequest {}.encode_to_vec()),
        (
            method::CREATE_CHANNEL,
            v1::CreateChannelRequest { kind: v1::ChannelKind::Group as i32, peer: String::new() }.encode_to_vec(),
        ),
        (method::GET_CHANNEL, v1::GetChannelRequest { channel_id: channel.clone() }.encode_to_vec()),
        (method::LIST_CHANNELS, v1::ListChannelsRequest {}.encode_to_vec()),
        (
            method::SET_CHANNEL_RETENTION,
            v1::SetChannelRetentionRequest { channel_id: channel.clone(), retention_secs: 60 }.encode_to_vec(),
        ),
        (method::GET_GROUP_INFO, v1::GetGroupInfoRequest { channel_id: channel.clone() }.encode_to_vec()),
        (
            method::UPLOAD_BLOB_CHUNK,
            v1::UploadBlobChunkRequest {
                blob_id: vec![1u8; 32].into(),
                total_size: 1,
                offset: 0,
                data: vec![1].into(),
            }
            .encode_to_vec(),
        ),
        (
            method::PUBLISH_ENDPOINT,
            v1::PublishEndpointRequest { endpoint: Bytes::from_static(b"hint"), ttl_secs: 60 }.encode_to_vec(),
        ),
    ];
    for (id, payload) in requests {
        let (status, _) = rpc.call_raw(id, &payload).await.unwrap();
        assert_eq!(status, Status::Forbidden, "{}", quicprochat_proto::method_name(id).unwrap());
    }
    // Session-only methods work without a device.
    let _: v1::ListDevicesResponse = rpc.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();
    // Nothing was created on the way.
    let db = server.db();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM channels"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM key_packages"), 0);
    assert_eq!(count("SELECT COUNT(*) FROM envelopes"), 0);
}

#[tokio::test]
async fn logout_and_account_deletion_end_the_session_on_every_connection() {
    let server = TestServer::start().await;
    let (alice, token, _) = user(&server, "alice").await;
    // The same session resumed on a second connection, and a second session on a third.
    let same = server.client().await;
    let _: v1::ResumeResponse =
        same.call(method::RESUME, &v1::ResumeRequest { session_token: token.clone().into() }).await.unwrap();
    let other = server.client().await;
    login(&other, "alice", b"pw").await.unwrap();
    let _: v1::ListDevicesResponse = other.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();

    let _: v1::LogoutResponse = alice.call(method::LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    let r = same.call::<_, v1::PeekResponse>(method::PEEK, &v1::PeekRequest::default()).await;
    assert_eq!(rpc_error(r).status, Status::Unauthenticated, "logout ends the session everywhere it is bound");
    let _: v1::ListDevicesResponse = other.call(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await.unwrap();

    let again = login(&alice, "alice", b"pw").await.unwrap();
    assert_ne!(again, token);
    let _: v1::DeleteAccountResponse = alice.call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await.unwrap();
    let r = other.call::<_, v1::ListDevicesResponse>(method::LIST_DEVICES, &v1::ListDevicesRequest {}).await;
    assert_eq!(rpc_error(r).status, Status::Unauthenticated, "deletion ends every session of the account");
}

#[tokio::test]
async fn delete_account_deletes_the_blobs_only_the_account_references() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let upload = |rpc: RpcClient, data: &'static [u8]| async move {
        let id = <sha2::Sha256 as sha2::Digest>::digest(data).to_vec();
        let up: v1::UploadBlobChunkResponse = rpc
            .call(
                method::UPLOAD_BLOB_CHUNK,
                &v1::UploadBlobChunkRequest {
                    blob_id: id.clone().into(),
                    total_size: data.len() as u64,
                    offset: 0,
                    data: data.into(),
                },
            )
            .await
            .unwrap();
        assert!(up.complete);
        id
    };
    let own = upload(alice.clone(), b"ciphertext of a file").await;
    // Bob uploads a ciphertext alice uploaded too (a forwarded file): it is his as well.
    let shared = upload(alice.clone(), b"ciphertext of a forwarded file").await;
    assert_eq!(upload(bob.clone(), b"ciphertext of a forwarded file").await, shared);
    let _: v1::DeleteAccountResponse = alice.call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await.unwrap();

    let info = async |id: Vec<u8>| {
        bob.call::<_, v1::BlobInfoResponse>(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: id.into() }).await
    };
    assert_eq!(rpc_error(info(own).await).status, Status::NotFound, "the blob went with its only uploader");
    assert!(info(shared).await.unwrap().complete, "the blob bob references stays");
    // Its bytes went in the same transaction: only the shared blob's chunk is left.
    let chunks: i64 = server.db().query_row("SELECT COUNT(*) FROM blob_chunks", [], |r| r.get(0)).unwrap();
    assert_eq!(chunks, 1);
}
