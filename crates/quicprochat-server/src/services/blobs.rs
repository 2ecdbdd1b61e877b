//! Blobs: client-encrypted files stored as ciphertext addressed by SHA-256, uploaded and
//! downloaded in chunks, with resume. Metadata in the store; bytes in `DATA_DIR/blobs/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::BlobRecord;

/// Largest chunk in either direction.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Where blob files live, and one lock per upload so chunks of one blob never interleave.
#[derive(Debug)]
pub struct BlobFiles {
    dir: PathBuf,
    uploads: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
}

impl BlobFiles {
    /// Blob files under `dir` (created on first use).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, uploads: Mutex::new(HashMap::new()) }
    }

    fn path(&self, id: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(id))
    }

    fn part_path(&self, id: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.part", hex::encode(id)))
    }

    fn lock(&self, id: [u8; 32]) -> Arc<tokio::sync::Mutex<()>> {
        match self.uploads.lock() {
            Ok(mut map) => {
                map.retain(|_, l| Arc::strong_count(l) > 1);
                Arc::clone(map.entry(id).or_default())
            }
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Removes a blob's files, complete or partial.
    pub async fn remove(&self, id: &[u8; 32]) {
        let _ = tokio::fs::remove_file(self.path(id)).await;
        let _ = tokio::fs::remove_file(self.part_path(id)).await;
    }

    /// The blob files present now, with the blob each belongs to.
    pub async fn list(&self) -> std::io::Result<Vec<([u8; 32], PathBuf)>> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stem = name.trim_end_matches(".part");
            if let Some(id) = hex::decode(stem).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                out.push((id, entry.path()));
            }
        }
        Ok(out)
    }

    /// Removes listed files whose blob the store no longer knows (e.g. after an account
    /// deletion).
    pub async fn remove_orphans(&self, listed: Vec<([u8; 32], PathBuf)>, known: &[[u8; 32]]) -> usize {
        let mut removed = 0;
        for (id, path) in listed {
            if !known.contains(&id) && tokio::fs::remove_file(&path).await.is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn io_error(e: std::io::Error) -> ServiceError {
    tracing::error!(error = %e, "blob file I/O failed");
    ServiceError::Unavailable("blob storage")
}

fn blob_id(bytes: &[u8]) -> Result<[u8; 32], ServiceError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| ServiceError::BadRequest("blob_id must be the 32-byte SHA-256".into()))
}

/// Upload progress after a chunk.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes stored.
    pub received: u64,
    /// Complete and hash-verified.
    pub complete: bool,
}

/// Appends one chunk to an upload; verifies the hash when the last byte arrives.
pub async fn upload_chunk(
    state: &AppState,
    session: &Session,
    id: &[u8],
    total_size: u64,
    offset: u64,
    data: &[u8],
) -> Result<Progress, ServiceError> {
    let device = session.device()?;
    let id = blob_id(id)?;
    let max = state.limits.max_blob_bytes;
    if total_size > max {
        return Err(ServiceError::PayloadTooLarge {
            len: usize::try_from(total_size).unwrap_or(usize::MAX),
            max: max as usize,
        });
    }
    if total_size == 0 || data.is_empty() || data.len() > MAX_CHUNK {
        return Err(ServiceError::BadRequest("chunks are 1 byte to 256 KiB of a non-empty blob".into()));
    }
    if offset.checked_add(data.len() as u64).is_none_or(|end| end > total_size) {
        return Err(ServiceError::BadRequest("chunk runs past the blob's total size".into()));
    }
    let files = &state.blobs;
    let lock = files.lock(id);
    let _guard = lock.lock().await;

    let now = state.clock.now_ms();
    let record = match state.store.blob(id).await? {
        Some(r) => r,
        None => {
            let expires = now + state.limits.blob_retention.as_millis() as u64;
            state.store.create_blob(id, total_size, device, now, expires).await?;
            BlobRecord { id, total_size, received: 0, complete: false, expires_ms: expires }
        }
    };
    if record.complete {
        return Ok(Progress { received: record.total_size, complete: true });
    }
    if record.total_size != total_size {
        return Err(ServiceError::BadRequest("total_size differs from the upload's first chunk".into()));
    }
    if offset != record.received {
        return Err(ServiceError::OutOfOrder { received: record.received });
    }

    tokio::fs::create_dir_all(&files.dir).await.map_err(io_error)?;
    let part = files.part_path(&id);
    let mut file =
        tokio::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&part).await.map_err(io_error)?;
    // A crash between writing and recording progress leaves extra bytes: drop them.
    file.set_len(record.received).await.map_err(io_error)?;
    file.seek(std::io::SeekFrom::Start(record.received)).await.map_err(io_error)?;
    file.write_all(data).await.map_err(io_error)?;
    file.sync_data().await.map_err(io_error)?;
    drop(file);

    let received = offset + data.len() as u64;
    if received < total_size {
        state.store.set_blob_received(id, received, false).await?;
        return Ok(Progress { received, complete: false });
    }
    if hash_file(&part).await.map_err(io_error)? != id {
        files.remove(&id).await;
        state.store.delete_blob(id).await?;
        return Err(ServiceError::BadRequest("the blob's SHA-256 does not match its id; upload discarded".into()));
    }
    tokio::fs::rename(&part, files.path(&id)).await.map_err(io_error)?;
    state.store.set_blob_received(id, received, true).await?;
    metrics::counter!("qpc_blobs_stored_total").increment(1);
    Ok(Progress { received, complete: true })
}

async fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Reads a chunk of a complete blob.
pub async fn download_chunk(
    state: &AppState,
    id: &[u8],
    offset: u64,
    max_len: u32,
) -> Result<(Vec<u8>, u64), ServiceError> {
    let id = blob_id(id)?;
    let record = state.store.blob(id).await?.filter(|r| r.complete).ok_or(ServiceError::NotFound("blob"))?;
    if offset > record.total_size {
        return Err(ServiceError::BadRequest("offset past the end of the blob".into()));
    }
    let want = if max_len == 0 { MAX_CHUNK } else { (max_len as usize).min(MAX_CHUNK) };
    let len = want.min(usize::try_from(record.total_size - offset).unwrap_or(usize::MAX));
    let mut file = tokio::fs::File::open(state.blobs.path(&id)).await.map_err(io_error)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_error)?;
    let mut data = vec![0u8; len];
    file.read_exact(&mut data).await.map_err(io_error)?;
    Ok((data, record.total_size))
}

/// State of a blob or an upload.
pub async fn info(state: &AppState, id: &[u8]) -> Result<BlobRecord, ServiceError> {
    state.store.blob(blob_id(id)?).await?.ok_or(ServiceError::NotFound("blob"))
}

/// Deletes expired blobs and files nothing references; run by the GC task.
pub async fn purge(state: &AppState) -> Result<usize, ServiceError> {
    let expired = state.store.purge_expired_blobs(state.clock.now_ms()).await?;
    for id in &expired {
        state.blobs.remove(id).await;
    }
    // Files are listed before the store is asked which blobs exist: a blob's record is created
    // before its file, so an upload racing this pass is never mistaken for an orphan.
    let listed = state.blobs.list().await.map_err(io_error)?;
    let known = state.store.blob_ids().await?;
    let orphans = state.blobs.remove_orphans(listed, &known).await;
    Ok(expired.len() + orphans)
}
