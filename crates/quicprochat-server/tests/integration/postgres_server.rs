//! A real server on the PostgreSQL store, end to end over QUIC (skipped like the other Postgres
//! tests when no PostgreSQL is reachable outside CI).

use std::time::Duration;

use quicprochat_proto::{Message, event, method, v1};
use quicprochat_server::ServerConfig;
use quicprochat_server::store::StoreBackend;

use crate::harness::{TestServer, dm_with, keyed_app, private, user};
use crate::pg::PgSchema;

const WAIT: Duration = Duration::from_secs(10);

async fn start_on(schema: &PgSchema, dir: &std::path::Path) -> quicprochat_server::RunningServer {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
    config.store = StoreBackend::Postgres(schema.options());
    quicprochat_server::start(config).await.unwrap()
}

#[tokio::test]
async fn a_dm_round_trip_through_a_server_on_postgres() {
    let Some(schema) = PgSchema::fresh("a_dm_round_trip_through_a_server_on_postgres").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer { server: start_on(&schema, dir.path()).await, dir };
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, bob_token, _) = user(&server, "bob").await;
    let (channel, _mls) = dm_with(&alice, "alice", "bob").await;
    let _: v1::SubscribeResponse = bob.call(method::SUBSCRIBE, &v1::SubscribeRequest {}).await.unwrap();

    let sent: v1::EnqueueResponse =
        alice.call(method::ENQUEUE, &keyed_app(&channel, b"hello bob", b"k1")).await.unwrap();
    let retried: v1::EnqueueResponse =
        alice.call(method::ENQUEUE, &keyed_app(&channel, b"hello bob", b"k1")).await.unwrap();
    assert_eq!(sent.envelope_id, retried.envelope_id, "an idempotent retry gets the original answer");

    // Pushed to bob, inline.
    let mut push = tokio::time::timeout(WAIT, bob.accept_push()).await.unwrap().unwrap();
    let frame = tokio::time::timeout(WAIT, push.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.event_type, event::MESSAGE_NOTIFICATION);
    let note = v1::MessageNotification::decode(frame.payload).unwrap();
    assert_eq!(note.envelope.unwrap().envelope.unwrap().payload.to_vec(), private(b"hello bob"));

    // Stored once, read with Peek, gone after Ack.
    let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    let kinds: Vec<i32> = page.envelopes.iter().map(|e| e.envelope.as_ref().unwrap().kind).collect();
    assert_eq!(kinds, vec![v1::EnvelopeKind::Welcome as i32, v1::EnvelopeKind::Application as i32]);
    let last = page.envelopes[1].seq;
    let acked: v1::AckResponse = bob.call(method::ACK, &v1::AckRequest { up_to_seq: last }).await.unwrap();
    assert_eq!(acked.removed, 2);

    // Bob answers; alice long-polls for it.
    let waiter = {
        let alice = alice.clone();
        tokio::spawn(async move {
            alice
                .call::<_, v1::PeekResponse>(
                    method::FETCH_WAIT,
                    &v1::FetchWaitRequest { after_seq: 0, limit: 10, timeout_ms: 20_000 },
                )
                .await
        })
    };
    let _: v1::EnqueueResponse = bob.call(method::ENQUEUE, &keyed_app(&channel, b"hi alice", b"")).await.unwrap();
    let woke = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(woke.envelopes.len(), 1);
    assert_eq!(woke.envelopes[0].envelope.as_ref().unwrap().payload.to_vec(), private(b"hi alice"));

    let rows = schema.client().await.query_one("SELECT COUNT(*) FROM envelopes", &[]).await.unwrap();
    assert_eq!(rows.get::<_, i64>(0), 1, "only alice's unacknowledged reply is stored");

    // A restart on the same database logs nobody out and loses nothing.
    let TestServer { server: running, dir } = server;
    running.shutdown().await.unwrap();
    let server = TestServer { server: start_on(&schema, dir.path()).await, dir };
    let bob = server.client().await;
    let _: v1::ResumeResponse =
        bob.call(method::RESUME, &v1::ResumeRequest { session_token: bob_token.into() }).await.unwrap();
    let page: v1::PeekResponse = bob.call(method::PEEK, &v1::PeekRequest::default()).await.unwrap();
    assert!(page.envelopes.is_empty(), "bob acknowledged everything before the restart");
    let alice = server.client().await;
    crate::harness::login(&alice, "alice", b"pw").await.unwrap();
    server.server.shutdown().await.unwrap();
}

/// A database of the previous version (one migration behind) with its blob bytes in the data
/// dir's `blobs/`: the migration and the import at start put them in PostgreSQL.
#[tokio::test]
async fn blob_files_of_an_earlier_version_are_imported_into_postgres() {
    use sha2::{Digest, Sha256};
    let Some(schema) = PgSchema::fresh("blob_files_of_an_earlier_version_are_imported_into_postgres").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer { server: start_on(&schema, dir.path()).await, dir };
    let (alice, _, _) = user(&server, "alice").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let id = Sha256::digest(&data).to_vec();
    for start in (0..data.len()).step_by(256 * 1024) {
        let end = (start + 256 * 1024).min(data.len());
        let request = v1::UploadBlobChunkRequest {
            blob_id: id.clone().into(),
            total_size: data.len() as u64,
            offset: start as u64,
            data: data[start..end].to_vec().into(),
        };
        let _: v1::UploadBlobChunkResponse = alice.call(method::UPLOAD_BLOB_CHUNK, &request).await.unwrap();
    }
    alice.close("restart");
    let TestServer { server: running, dir } = server;
    running.shutdown().await.unwrap();

    let blobs = dir.path().join(quicprochat_server::files::BLOBS);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(hex::encode(&id)), &data).unwrap();
    let db = schema.client().await;
    // As before the migration that moved blobs into the database (and the one after it).
    db.batch_execute(
        "DROP TRIGGER queue_depth_down ON queue; DROP FUNCTION queue_depth_down(); \
         ALTER TABLE devices DROP COLUMN queue_depth; DROP TABLE blob_chunks; DROP TABLE blob_refs; \
         DELETE FROM schema_version WHERE version >= 4",
    )
    .await
    .unwrap();

    let server = TestServer { server: start_on(&schema, dir.path()).await, dir };
    assert!(!blobs.exists(), "imported and removed");
    let (bob, _, _) = user(&server, "bob").await;
    let mut got = Vec::new();
    while got.len() < data.len() {
        let request = v1::DownloadBlobChunkRequest { blob_id: id.clone().into(), offset: got.len() as u64, max_len: 0 };
        let chunk: v1::DownloadBlobChunkResponse = bob.call(method::DOWNLOAD_BLOB_CHUNK, &request).await.unwrap();
        got.extend_from_slice(&chunk.data);
    }
    assert!(got == data, "the imported blob downloads intact");
    let refs = db.query_one("SELECT COUNT(*) FROM blob_refs", &[]).await.unwrap();
    assert_eq!(refs.get::<_, i64>(0), 1, "the migration made the uploader's account reference it");
    server.server.shutdown().await.unwrap();
}
