//! Chunked blob upload with resume, hash check, size limit, download, expiry.

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
    let wrong = upload(&alice, &id, total, 0, &data[..CHUNK]).await.unwrap_err();
    let quicprochat_rpc::Error::Rpc(e) = wrong else { panic!("expected an RPC error") };
    assert_eq!(e.status, Status::Conflict);
    assert_eq!(e.details.get("received").map(String::as_str), Some("262144"));
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
async fn expired_blobs_are_deleted_with_their_files() {
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
    let file = server.dir.path().join(quicprochat_server::files::BLOBS).join(hex::encode(&id));
    assert!(file.exists());

    now.fetch_add(61_000, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "expired blob file was not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = alice.call::<_, v1::BlobInfoResponse>(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: id.into() }).await;
    assert_eq!(r.unwrap_err().rpc_status(), Some(Status::NotFound));
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
