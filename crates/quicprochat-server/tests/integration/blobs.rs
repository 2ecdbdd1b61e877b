//! Chunked blob upload with resume, hash check, size limit, download, expiry, and the import of
//! blob files an earlier version left in the data dir.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quicprochat_proto::{method, v1};
use quicprochat_rpc::{RpcClient, Status};
use quicprochat_server::Clock;
use sha2::{Digest, Sha256};

use crate::harness::{TestServer, user};

const CHUNK: usize = 256 * 1024;

async fn upload(
    rpc: &RpcClient,
    id: &[u8],
    total: u64,
    offset: u64,
    data: &[u8],
) -> Result<v1::UploadBlobChunkResponse, quicprochat_rpc::Error> {
    rpc.call(
        method::UPLOAD_BLOB_CHUNK,
        &v1::UploadBlobChunkRequest {
            blob_id: id.to_vec().into(),
            total_size: total,
            offset,
            data: data.to_vec().into(),
        },
    )
    .await
}

async fn blob_info(rpc: &RpcClient, id: &[u8]) -> Result<v1::BlobInfoResponse, quicprochat_rpc::Error> {
    rpc.call(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: id.to_vec().into() }).await
}

fn ciphertext(len: usize) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let id = Sha256::digest(&data).to_vec();
    (data, id)
}

#[tokio::test]
async fn chunked_upload_resumes_and_downloads_intact() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (data, id) = ciphertext(600 * 1024);
    let total = data.len() as u64;

    let first = upload(&alice, &id, total, 0, &data[..CHUNK]).await.unwrap();
    assert_eq!((first.received, first.complete), (CHUNK as u64, false));
    // The connection "dropped": ask where to resume.
    let info: v1::BlobInfoResponse =
        alice.call(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: id.clone().into() }).await.unwrap();
    assert_eq!((info.received, info.complete), (CHUNK as u64, false));
    // The first chunk again (its answer was lost): nothing changes, the answer says where to go on.
    let retried = upload(&alice, &id, total, 0, &data[..CHUNK]).await.unwrap();
    assert_eq!((retried.received, retried.complete), (CHUNK as u64, false));
    // A chunk overlapping what is stored, or starting past it: CONFLICT with where to resume.
    for (offset, len) in [(1000, CHUNK), (0, 1000), (CHUNK + 1, 1000)] {
        let wrong = upload(&alice, &id, total, offset as u64, &data[offset..offset + len]).await.unwrap_err();
        let quicprochat_rpc::Error::Rpc(e) = wrong else { panic!("expected an RPC error") };
        assert_eq!(e.status, Status::Conflict);
        assert_eq!(e.details.get("received").map(String::as_str), Some("262144"));
    }
    let resized = upload(&alice, &id, total + 1, CHUNK as u64, &data[CHUNK..2 * CHUNK]).await;
    assert_eq!(resized.unwrap_err().rpc_status(), Some(Status::BadRequest));
    // Not downloadable until complete.
    let r = bob
        .call::<_, v1::DownloadBlobChunkResponse>(
            method::DOWNLOAD_BLOB_CHUNK,
            &v1::DownloadBlobChunkRequest { blob_id: id.clone().into(), offset: 0, max_len: 0 },
        )
        .await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::NotFound));

    let mut offset = info.received as usize;
    let mut last = None;
    while offset < data.len() {
        let end = (offset + CHUNK).min(data.len());
        last = Some(upload(&alice, &id, total, offset as u64, &data[offset..end]).await.unwrap());
        offset = end;
    }
    assert!(last.unwrap().complete);

    let mut got = Vec::new();
    while got.len() < data.len() {
        let chunk: v1::DownloadBlobChunkResponse = bob
            .call(
                method::DOWNLOAD_BLOB_CHUNK,
                &v1::DownloadBlobChunkRequest { blob_id: id.clone().into(), offset: got.len() as u64, max_len: 0 },
            )
            .await
            .unwrap();
        assert_eq!(chunk.total_size, total);
        assert!(!chunk.data.is_empty() && chunk.data.len() <= CHUNK);
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(Sha256::digest(&got).to_vec(), id, "downloaded ciphertext matches its hash");
}

#[tokio::test]
async fn wrong_hash_discards_and_oversize_is_refused() {
    let server = TestServer::start_with(|c| c.limits.max_blob_bytes = 1024 * 1024).await;
    let (alice, _, _) = user(&server, "alice").await;
    let (data, _) = ciphertext(1000);
    let bogus = vec![7u8; 32];
    let r = upload(&alice, &bogus, data.len() as u64, 0, &data).await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::BadRequest));
    let r =
        alice.call::<_, v1::BlobInfoResponse>(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: bogus.into() }).await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::NotFound), "a mismatched upload leaves nothing");

    let r = upload(&alice, &[1u8; 32], 2 * 1024 * 1024, 0, b"x").await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::PayloadTooLarge));
    let r = upload(&alice, &[1u8; 32], 10, 5, b"toolongchunk").await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::BadRequest));
    let r = upload(&alice, &[1u8; 3], 10, 0, b"x").await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::BadRequest));
}

#[tokio::test]
async fn a_last_chunk_that_breaks_the_hash_discards_the_upload_and_nothing_else() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (bob, _, _) = user(&server, "bob").await;
    let (data, id) = ciphertext(2 * CHUNK + 100);
    let total = data.len() as u64;
    upload(&alice, &id, total, 0, &data[..CHUNK]).await.unwrap();
    upload(&alice, &id, total, CHUNK as u64, &data[CHUNK..2 * CHUNK]).await.unwrap();
    let mut wrong_tail = data[2 * CHUNK..].to_vec();
    wrong_tail[0] ^= 1;
    let refused = upload(&alice, &id, total, 2 * CHUNK as u64, &wrong_tail).await.unwrap_err();
    let quicprochat_rpc::Error::Rpc(e) = refused else { panic!("expected an RPC error") };
    assert_eq!(e.status, Status::BadRequest);
    assert!(e.message.contains("SHA-256 does not match"), "{}", e.message);
    let info = blob_info(&alice, &id).await;
    assert_eq!(info.unwrap_err().rpc_status(), Some(Status::NotFound), "the upload was discarded");
    let chunks: i64 = server.db().query_row("SELECT COUNT(*) FROM blob_chunks", [], |r| r.get(0)).unwrap();
    assert_eq!(chunks, 0, "with its bytes");

    // Uploaded again, right this time; then a wrong last chunk for the complete blob changes
    // nothing (it is the same ciphertext "uploaded again").
    for start in (0..data.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(data.len());
        upload(&alice, &id, total, start as u64, &data[start..end]).await.unwrap();
    }
    let again = upload(&bob, &id, total, 2 * CHUNK as u64, &wrong_tail).await.unwrap();
    assert!(again.complete);
    assert_eq!(download(&bob, &id).await, data);
}

async fn download(rpc: &RpcClient, id: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let chunk: v1::DownloadBlobChunkResponse = rpc
            .call(
                method::DOWNLOAD_BLOB_CHUNK,
                &v1::DownloadBlobChunkRequest { blob_id: id.to_vec().into(), offset: got.len() as u64, max_len: 0 },
            )
            .await
            .unwrap();
        got.extend_from_slice(&chunk.data);
        if got.len() as u64 >= chunk.total_size {
            return got;
        }
    }
}

#[tokio::test]
async fn downloads_start_anywhere_and_cross_chunk_boundaries() {
    let server = TestServer::start().await;
    let (alice, _, _) = user(&server, "alice").await;
    let (data, id) = ciphertext(3 * 100_000 + 7);
    // Uploaded in chunks of 100 000 bytes, downloaded in ranges that straddle them.
    for start in (0..data.len()).step_by(100_000) {
        let end = (start + 100_000).min(data.len());
        upload(&alice, &id, data.len() as u64, start as u64, &data[start..end]).await.unwrap();
    }
    for (offset, max_len) in [(0usize, 0u32), (99_990, 20), (50_000, 200_000), (299_999, 1000), (300_007, 10)] {
        let chunk: v1::DownloadBlobChunkResponse = alice
            .call(
                method::DOWNLOAD_BLOB_CHUNK,
                &v1::DownloadBlobChunkRequest { blob_id: id.clone().into(), offset: offset as u64, max_len },
            )
            .await
            .unwrap();
        let want = if max_len == 0 { CHUNK } else { max_len as usize };
        let end = (offset + want).min(data.len());
        assert_eq!(chunk.data.as_ref(), &data[offset..end], "offset {offset}, max_len {max_len}");
    }
    let past = alice
        .call::<_, v1::DownloadBlobChunkResponse>(
            method::DOWNLOAD_BLOB_CHUNK,
            &v1::DownloadBlobChunkRequest { blob_id: id.clone().into(), offset: data.len() as u64 + 1, max_len: 0 },
        )
        .await;
    assert_eq!(past.unwrap_err().rpc_status(), Some(Status::BadRequest));
}

#[tokio::test]
async fn expired_blobs_are_deleted_with_their_bytes() {
    let now = Arc::new(AtomicU64::new(1_000_000_000));
    let clock = Clock::manual(Arc::clone(&now));
    let server = TestServer::start_with(|c| {
        c.clock = clock;
        c.limits.blob_retention = Duration::from_secs(60);
        c.limits.gc_interval = Duration::from_millis(20);
    })
    .await;
    let (alice, _, _) = user(&server, "alice").await;
    let (data, id) = ciphertext(5000);
    assert!(upload(&alice, &id, data.len() as u64, 0, &data).await.unwrap().complete);
    let chunks = || -> i64 { server.db().query_row("SELECT COUNT(*) FROM blob_chunks", [], |r| r.get(0)).unwrap() };
    assert_eq!(chunks(), 1);

    now.fetch_add(61_000, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Err(e) = blob_info(&alice, &id).await {
            assert_eq!(e.rpc_status(), Some(Status::NotFound));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the expired blob was not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chunks(), 0, "its bytes went in the same transaction");
}

/// A data dir of the previous version: blob bytes in `blobs/<hex id>` (complete) and
/// `blobs/<hex id>.part` (an upload in progress), the database one migration behind. Staged from
/// a current one by writing the chunks out to files and undoing the migration.
#[tokio::test]
async fn blob_files_of_an_earlier_version_are_imported_at_start() {
    let server = TestServer::start().await;
    let (alice, token, _) = user(&server, "alice").await;
    let (complete, complete_id) = ciphertext(2 * CHUNK + 1234);
    let (partial, partial_id) = ciphertext(3 * CHUNK);
    for start in (0..complete.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(complete.len());
        upload(&alice, &complete_id, complete.len() as u64, start as u64, &complete[start..end]).await.unwrap();
    }
    upload(&alice, &partial_id, partial.len() as u64, 0, &partial[..CHUNK]).await.unwrap();
    alice.close("restart");
    let TestServer { server: running, dir } = server;
    running.shutdown().await.unwrap();

    let blobs = dir.path().join(quicprochat_server::files::BLOBS);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(hex::encode(&complete_id)), &complete).unwrap();
    // The old server could leave bytes past `received` in a partial file.
    std::fs::write(blobs.join(format!("{}.part", hex::encode(&partial_id))), &partial[..CHUNK + 10]).unwrap();
    let orphan = Sha256::digest(b"a blob nobody knows").to_vec();
    std::fs::write(blobs.join(hex::encode(&orphan)), b"a blob nobody knows").unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join(quicprochat_server::files::DATABASE)).unwrap();
        // As before the migration that moved blobs into the database (and the one after it).
        db.execute_batch(
            "DROP TRIGGER queue_depth_down; ALTER TABLE devices DROP COLUMN queue_depth; \
             DROP TABLE blob_chunks; DROP TABLE blob_refs; PRAGMA user_version = 6;",
        )
        .unwrap();
    }

    let server = TestServer { server: start_in(dir.path()).await, dir };
    assert!(!blobs.exists(), "the files are imported and removed, and their directory");
    let alice = server.client().await;
    let _: v1::ResumeResponse =
        alice.call(method::RESUME, &v1::ResumeRequest { session_token: token.into() }).await.unwrap();
    let (bob, _, _) = user(&server, "bob").await;
    assert_eq!(download(&bob, &complete_id).await, complete);
    let info: v1::BlobInfoResponse =
        alice.call(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: partial_id.clone().into() }).await.unwrap();
    assert_eq!((info.received, info.complete), (CHUNK as u64, false));
    for start in (CHUNK..partial.len()).step_by(CHUNK) {
        upload(&alice, &partial_id, partial.len() as u64, start as u64, &partial[start..start + CHUNK]).await.unwrap();
    }
    assert_eq!(download(&bob, &partial_id).await, partial, "the upload resumed where it stood");
    assert_eq!(blob_info(&bob, &orphan).await.unwrap_err().rpc_status(), Some(Status::NotFound));

    // The migration made alice the owner of what her device uploaded: her blobs go with her.
    let _: v1::DeleteAccountResponse = alice.call(method::DELETE_ACCOUNT, &v1::DeleteAccountRequest {}).await.unwrap();
    assert_eq!(blob_info(&bob, &complete_id).await.unwrap_err().rpc_status(), Some(Status::NotFound));
    let chunks: i64 = server.db().query_row("SELECT COUNT(*) FROM blob_chunks", [], |r| r.get(0)).unwrap();
    assert_eq!(chunks, 0);
}

async fn start_in(dir: &std::path::Path) -> quicprochat_server::RunningServer {
    quicprochat_server::start(quicprochat_server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir)).await.unwrap()
}

/// Upload and download time of one 5 MB blob in 256 KiB chunks, one chunk in flight (as the SDK
/// sends them), on an in-process server over QUIC on loopback. A measurement, not a check:
/// `cargo test --release -p quicprochat-server --test integration blob_throughput -- --ignored --nocapture`
/// (numbers in docs/benchmarks.md, "Blobs").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --release --ignored --nocapture"]
async fn blob_throughput_5_mb() {
    const SIZE: usize = 5 * 1000 * 1000;
    const RUNS: usize = 5;

    async fn measure(server: &TestServer, backend: &str) {
        let (alice, _, _) = user(server, "alice").await;
        let (bob, _, _) = user(server, "bob").await;
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            let mut data = ciphertext(SIZE).0;
            data[0] = run as u8;
            let id = Sha256::digest(&data).to_vec();
            let started = std::time::Instant::now();
            let mut offset = 0;
            while offset < data.len() {
                let end = (offset + CHUNK).min(data.len());
                upload(&alice, &id, SIZE as u64, offset as u64, &data[offset..end]).await.unwrap();
                offset = end;
            }
            ups.push(started.elapsed());
            let started = std::time::Instant::now();
            let mut got = 0usize;
            while got < SIZE {
                let chunk: v1::DownloadBlobChunkResponse = bob
                    .call(
                        method::DOWNLOAD_BLOB_CHUNK,
                        &v1::DownloadBlobChunkRequest { blob_id: id.clone().into(), offset: got as u64, max_len: 0 },
                    )
                    .await
                    .unwrap();
                got += chunk.data.len();
            }
            downs.push(started.elapsed());
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let rate = |d: Duration| SIZE as f64 / 1e6 / d.as_secs_f64();
        let (up, down) = (median(&mut ups), median(&mut downs));
        println!(
            "blobs {backend}: 5 MB upload {:.1} ms ({:.1} MB/s), download {:.1} ms ({:.1} MB/s), median of {RUNS}",
            up.as_secs_f64() * 1e3,
            rate(up),
            down.as_secs_f64() * 1e3,
            rate(down)
        );
    }

    let server = TestServer::start().await;
    measure(&server, "sqlite").await;
    server.server.shutdown().await.unwrap();
    if let Some(schema) = crate::pg::PgSchema::fresh("blob_throughput_5_mb").await {
        let server = TestServer::start_with(|c| {
            c.store = quicprochat_server::store::StoreBackend::Postgres(schema.options());
        })
        .await;
        measure(&server, "postgres").await;
        server.server.shutdown().await.unwrap();
    }
}
