//! Encryption at rest with `db_key`: what lands on disk, and what a wrong or missing key does.
//! The encrypted cases need a build with the `sqlcipher` feature (`.ci/run` runs them).

use std::path::Path;

use quicprochat_server::at_rest::DbKey;
use quicprochat_server::store::StoreError;
use quicprochat_server::{ServerConfig, ServerError};

fn key(byte: u8) -> DbKey {
    DbKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap()
}

async fn start_in(dir: &Path, db_key: Option<DbKey>) -> Result<quicprochat_server::RunningServer, ServerError> {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    config.db_key = db_key;
    quicprochat_server::start(config).await
}

#[cfg(not(feature = "sqlcipher"))]
#[tokio::test]
async fn a_build_without_sqlcipher_refuses_a_db_key() {
    let dir = tempfile::tempdir().unwrap();
    let refused = start_in(dir.path(), Some(key(1))).await.unwrap_err();
    assert!(matches!(refused, ServerError::Store(StoreError::EncryptionUnavailable)), "{refused}");
    assert!(refused.to_string().contains("--features sqlcipher"));
}

#[cfg(feature = "sqlcipher")]
mod encrypted {
    use quicprochat_proto::{method, v1};
    use quicprochat_server::files;

    use super::*;
    use crate::harness::{TestServer, login, user};

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|window| window == needle)
    }

    #[tokio::test]
    async fn the_database_and_key_files_are_encrypted_and_need_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer { server: start_in(dir.path(), Some(key(1))).await.unwrap(), dir };
        let (alice, _, _) = user(&server, "alice").await;
        let info: v1::ServerInfoResponse = alice.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
        // Blob bytes are in the database, so under its encryption too.
        let blob = b"blob bytes the server stores ".repeat(100);
        let id = <sha2::Sha256 as sha2::Digest>::digest(&blob).to_vec();
        let request = v1::UploadBlobChunkRequest {
            blob_id: id.into(),
            total_size: blob.len() as u64,
            offset: 0,
            data: blob.clone().into(),
        };
        let up: v1::UploadBlobChunkResponse = alice.call(method::UPLOAD_BLOB_CHUNK, &request).await.unwrap();
        assert!(up.complete);
        alice.close("done");
        let TestServer { server, dir } = server;
        server.shutdown().await.unwrap();

        // Nothing readable on disk: no SQLite header, no username, no blob, no key in the clear.
        let db = std::fs::read(dir.path().join(files::DATABASE)).unwrap();
        assert!(!db.starts_with(b"SQLite format 3\0"), "the database file is encrypted");
        assert!(!contains(&db, b"alice"));
        let wal = std::fs::read(dir.path().join(format!("{}-wal", files::DATABASE))).unwrap_or_default();
        for file in [&db, &wal] {
            assert!(!contains(file, b"blob bytes the server stores"), "blob bytes are encrypted at rest");
        }
        let signing_key = std::fs::read(dir.path().join(files::SIGNING_KEY)).unwrap();
        assert_ne!(signing_key.len(), 32, "the signing key file is sealed, not the raw key");

        // Another key, or none, cannot open it; nothing is changed by trying.
        let wrong = start_in(dir.path(), Some(key(2))).await.unwrap_err();
        assert!(matches!(wrong, ServerError::Store(StoreError::WrongDbKey)), "{wrong}");
        let none = start_in(dir.path(), None).await.unwrap_err();
        assert!(matches!(none, ServerError::Store(StoreError::NotADatabase)), "{none}");

        // The right key opens everything: accounts, sessions and the same signing key.
        let server = TestServer { server: start_in(dir.path(), Some(key(1))).await.unwrap(), dir };
        let rpc = server.client().await;
        login(&rpc, "alice", b"pw").await.unwrap();
        let again: v1::ServerInfoResponse = rpc.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
        assert_eq!(again.signing_key, info.signing_key);
    }

    #[tokio::test]
    async fn a_cleartext_data_dir_is_encrypted_when_a_key_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer { server: start_in(dir.path(), None).await.unwrap(), dir };
        let (alice, _, _) = user(&server, "alice").await;
        let before: v1::ServerInfoResponse = alice.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
        alice.close("done");
        let TestServer { server, dir } = server;
        server.shutdown().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join(files::SIGNING_KEY)).unwrap().len(), 32, "written in the clear");

        let server = TestServer { server: start_in(dir.path(), Some(key(3))).await.unwrap(), dir };
        let rpc = server.client().await;
        login(&rpc, "alice", b"pw").await.unwrap();
        let after: v1::ServerInfoResponse = rpc.call(method::SERVER_INFO, &v1::ServerInfoRequest {}).await.unwrap();
        assert_eq!(after.signing_key, before.signing_key, "the same keys, now sealed");
        rpc.close("done");
        let TestServer { server, dir } = server;
        server.shutdown().await.unwrap();
        let db = std::fs::read(dir.path().join(files::DATABASE)).unwrap();
        assert!(!db.starts_with(b"SQLite format 3\0") && !contains(&db, b"alice"));
        assert_ne!(std::fs::read(dir.path().join(files::SIGNING_KEY)).unwrap().len(), 32);
        let none = start_in(dir.path(), None).await.unwrap_err();
        assert!(matches!(none, ServerError::Store(StoreError::NotADatabase)), "{none}");
    }

    #[tokio::test]
    async fn the_db_key_rotates_and_an_interrupted_rotation_can_be_rerun() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer { server: start_in(dir.path(), Some(key(4))).await.unwrap(), dir };
        let (alice, _, _) = user(&server, "alice").await;
        alice.close("done");
        let TestServer { server, dir } = server;
        server.shutdown().await.unwrap();

        quicprochat_server::rekey(dir.path(), &key(4), &key(5)).unwrap();
        // Run again (as after an interruption): everything is already under the new key.
        quicprochat_server::rekey(dir.path(), &key(4), &key(5)).unwrap();
        let old = start_in(dir.path(), Some(key(4))).await.unwrap_err();
        assert!(matches!(old, ServerError::Store(StoreError::WrongDbKey)), "{old}");
        let server = TestServer { server: start_in(dir.path(), Some(key(5))).await.unwrap(), dir };
        login(&server.client().await, "alice", b"pw").await.unwrap();
        // A third key that never encrypted anything cannot rotate it.
        let TestServer { server, dir } = server;
        server.shutdown().await.unwrap();
        assert!(quicprochat_server::rekey(dir.path(), &key(6), &key(7)).is_err());
    }
}
