//! Trust: pinning and roots.

use quicprochat_proto::v1;
use quicprochat_rpc::{Error, RpcClient, ServerTrust, client_config, generate_self_signed};

use crate::harness::*;

#[tokio::test]
async fn pinned_certificate_mismatch_fails_the_handshake() {
    let server = TestServer::start().await;
    let other = generate_self_signed(&["localhost".into()]).unwrap();
    let config = client_config(&ServerTrust::Pinned(other.cert_der.clone())).unwrap();
    let err =
        tokio::time::timeout(WAIT, RpcClient::connect(server.addr, "localhost", config)).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn roots_verify_name_and_chain() {
    let server = TestServer::start().await;
    let roots = ServerTrust::Roots(vec![server.cert_der.clone()]);

    let client =
        tokio::time::timeout(WAIT, RpcClient::connect(server.addr, "localhost", client_config(&roots).unwrap()))
            .await
            .unwrap()
            .unwrap();
    let _: v1::HealthResponse = client.call(HEALTH, &v1::HealthRequest {}).await.unwrap();

    let wrong_name =
        tokio::time::timeout(WAIT, RpcClient::connect(server.addr, "example.org", client_config(&roots).unwrap()))
            .await
            .unwrap();
    assert!(wrong_name.is_err());
}
