//! Registration, login, resume and devices.

use quicprochat_proto::{method, v1};
use quicprochat_rpc::Status;

use crate::harness::{TestServer, login, register, register_device, user};

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_alike() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    register(&rpc, "alice", b"right").await;
    let wrong = login(&rpc, "alice", b"wrong").await.unwrap_err();
    assert_eq!(wrong.rpc_status(), Some(Status::Unauthenticated));
    let unknown = login(&rpc, "nobody", b"whatever").await.unwrap_err();
    assert_eq!(unknown.rpc_status(), Some(Status::Unauthenticated));
    assert!(login(&rpc, "Alice", b"right").await.is_ok(), "usernames are case-folded");
}

#[tokio::test]
async fn taken_username_conflicts_and_bad_names_are_refused() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    register(&rpc, "alice", b"pw").await;
    let err = rpc
        .call::<_, v1::RegisterStartResponse>(
            method::REGISTER_START,
            &v1::RegisterStartRequest { username: "ALICE".into(), registration_request: vec![0u8; 32].into() },
        )
        .await
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Conflict));
    let err = rpc
        .call::<_, v1::RegisterStartResponse>(
            method::REGISTER_START,
            &v1::RegisterStartRequest { username: "a b".into(), registration_request: vec![0u8; 32].into() },
        )
        .await
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::BadRequest));
}

#[tokio::test]
async fn sessions_survive_a_restart_and_resume_binds_them() {
    let mut server = TestServer::start().await;
    let (_rpc, token, device) = user(&server, "alice").await;
    let dir = server.dir;
    server.server.shutdown().await.unwrap();
    let restarted =
        quicprochat_server::start(quicprochat_server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path()))
            .await
            .unwrap();
    server = TestServer { server: restarted, dir };
    let rpc = server.client().await;
    let resumed: v1::ResumeResponse =
        rpc.call(method::RESUME, &v1::ResumeRequest { session_token: token.into() }).await.unwrap();
    assert_eq!(resumed.username, "alice");
    assert_eq!(resumed.device_id.as_ref(), device.as_slice());
    let _: v1::PeekResponse = rpc.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();

    let bad = rpc
        .call::<_, v1::ResumeResponse>(method::RESUME, &v1::ResumeRequest { session_token: vec![7u8; 32].into() })
        .await;
    assert_eq!(bad.unwrap_err().rpc_status(), Some(Status::Unauthenticated));
}

#[tokio::test]
async fn device_registration_needs_a_valid_signature() {
    let server = TestServer::start().await;
    let rpc = server.client().await;
    register(&rpc, "alice", b"pw").await;
    let token = login(&rpc, "alice", b"pw").await.unwrap();
    let err = rpc
        .call::<_, v1::RegisterDeviceResponse>(
            method::REGISTER_DEVICE,
            &v1::RegisterDeviceRequest {
                identity_key: vec![1u8; 32].into(),
                signature: vec![2u8; 64].into(),
                name: "x".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::Forbidden));
    let (_, device) = register_device(&rpc, &token).await;
    assert_eq!(device.len(), 16);
}

#[tokio::test]
async fn key_packages_are_single_use_with_a_last_resort() {
    let server = TestServer::start().await;
    let (bob, _, bob_device) = user(&server, "bob").await;
    let up: v1::UploadKeyPackagesResponse = bob
        .call(
            method::UPLOAD_KEY_PACKAGES,
            &v1::UploadKeyPackagesRequest {
                key_packages: vec![b"kp-1".to_vec().into(), b"kp-2".to_vec().into()],
                last_resort: b"kp-last".to_vec().into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(up.pool_size, 2);
    let (alice, _, _) = user(&server, "alice").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r: v1::FetchKeyPackagesResponse = alice
            .call(method::FETCH_KEY_PACKAGES, &v1::FetchKeyPackagesRequest { username: "bob".into() })
            .await
            .unwrap();
        assert_eq!(r.key_packages.len(), 1);
        assert_eq!(r.key_packages[0].device_id.as_ref(), bob_device.as_slice());
        seen.push((r.key_packages[0].key_package.to_vec(), r.key_packages[0].last_resort));
    }
    assert_eq!(
        seen,
        vec![
            (b"kp-1".to_vec(), false),
            (b"kp-2".to_vec(), false),
            (b"kp-last".to_vec(), true),
            (b"kp-last".to_vec(), true)
        ]
    );
    let err = alice
        .call::<_, v1::FetchKeyPackagesResponse>(
            method::FETCH_KEY_PACKAGES,
            &v1::FetchKeyPackagesRequest { username: "carol".into() },
        )
        .await
        .unwrap_err();
    assert_eq!(err.rpc_status(), Some(Status::NotFound));
}

#[tokio::test]
async fn auth_events_reach_the_audit_log() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let _ = login(&alice, "alice", b"wrong").await.unwrap_err();
    let _ = login(&alice, "nobody", b"x").await.unwrap_err();
    let _: v1::LogoutResponse = alice.call(method::LOGOUT, &v1::LogoutRequest {}).await.unwrap();
    // Refused by the middleware: an authenticated method after logout.
    let err = alice.call::<_, v1::ListChannelsResponse>(method::LIST_CHANNELS, &v1::ListChannelsRequest {}).await;
    assert_eq!(err.unwrap_err().rpc_status(), Some(Status::Unauthenticated));
    let db = server.db();
    let mut stmt = db.prepare("SELECT event, user_id IS NOT NULL, method, status FROM audit_log ORDER BY id").unwrap();
    let rows: Vec<(String, bool, Option<String>, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect();
    let expected: Vec<(String, bool, Option<String>, Option<String>)> = [
        ("registered", true, None, None),
        ("login_succeeded", true, None, None),
        ("device_registered", true, None, None),
        ("login_failed", true, None, None),
        ("login_failed", false, None, None),
        ("logged_out", true, None, None),
        ("refused", false, Some("ListChannels"), Some("UNAUTHENTICATED")),
    ]
    .into_iter()
    .map(|(e, u, m, s)| (e.to_owned(), u, m.map(str::to_owned), s.map(str::to_owned)))
    .collect();
    assert_eq!(rows, expected);
}
