//! Blobs: client-encrypted files stored as ciphertext addressed by SHA-256, uploaded and
//! downloaded in chunks, with resume. Metadata and bytes both live in the store, so any node of a
//! cluster serves any blob.

use sha2::{Digest, Sha256};

use crate::error::ServiceError;
use crate::session::Session;
use crate::state::AppState;
use crate::store::{BlobChunk, BlobRecord, StoreError};

/// Largest chunk in either direction.
pub const MAX_CHUNK: usize = 256 * 1024;

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

/// Stores one chunk of an upload. The chunk that completes the blob is stored only once the
/// stored bytes before it and the chunk itself hash to the blob's id; on a mismatch the upload is
/// discarded.
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
    let Some(end) = offset.checked_add(data.len() as u64).filter(|end| *end <= total_size) else {
        return Err(ServiceError::BadRequest("chunk runs past the blob's total size".into()));
    };

    let mut hash_checked = false;
    if end == total_size && stands_at(state.store.blob(id).await?, total_size) == Some(offset) {
        // Only when `offset` bytes are stored: otherwise the store says where the upload stands.
        if let Some(mut hasher) = hash_of_stored(state, id, offset).await? {
            hasher.update(data);
            if <[u8; 32]>::from(hasher.finalize()) != id {
                state.store.discard_upload(id).await?;
                return Err(ServiceError::BadRequest(
                    "the blob's SHA-256 does not match its id; upload discarded".into(),
                ));
            }
            hash_checked = true;
        }
    }

    let now = state.clock.now_ms();
    let chunk = BlobChunk {
        id,
        total_size,
        offset,
        data: data.to_vec(),
        uploader: device,
        hash_checked,
        now_ms: now,
        expires_ms: now.saturating_add(u64::try_from(state.limits.blob_retention.as_millis()).unwrap_or(u64::MAX)),
    };
    let record = state.store.write_blob_chunk(chunk).await?;
    if hash_checked && record.complete {
        metrics::counter!("qpc_blobs_stored_total").increment(1);
    }
    Ok(Progress { received: record.received, complete: record.complete })
}

/// Where an upload of `total_size` bytes continues: at 0 when there is none yet, `None` when the
/// blob is complete or was started with another size.
fn stands_at(stored: Option<BlobRecord>, total_size: u64) -> Option<u64> {
    match stored {
        None => Some(0),
        Some(b) if !b.complete && b.total_size == total_size => Some(b.received),
        Some(_) => None,
    }
}

/// SHA-256 state over the first `len` stored bytes of a blob, read one chunk at a time; `None`
/// if fewer are stored.
async fn hash_of_stored(state: &AppState, id: [u8; 32], len: u64) -> Result<Option<Sha256>, ServiceError> {
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    while at < len {
        let want = u32::try_from((len - at).min(MAX_CHUNK as u64)).unwrap_or(u32::MAX);
        match state.store.read_blob(id, at, want).await? {
            Some(slice) if !slice.bytes.is_empty() => {
                hasher.update(&slice.bytes);
                at += slice.bytes.len() as u64;
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(hasher))
}

/// Reads a chunk of a complete blob.
pub async fn download_chunk(
    state: &AppState,
    id: &[u8],
    offset: u64,
    max_len: u32,
) -> Result<(Vec<u8>, u64), ServiceError> {
    let id = blob_id(id)?;
    let want = if max_len == 0 { MAX_CHUNK } else { (max_len as usize).min(MAX_CHUNK) };
    // One read: the record and the bytes.
    let slice = state
        .store
        .read_blob(id, offset, u32::try_from(want).unwrap_or(u32::MAX))
        .await?
        .filter(|s| s.record.complete)
        .ok_or(ServiceError::NotFound("blob"))?;
    let total = slice.record.total_size;
    if offset > total {
        return Err(ServiceError::BadRequest("offset past the end of the blob".into()));
    }
    if slice.bytes.len() as u64 != (want as u64).min(total - offset) {
        // A complete blob whose chunks do not cover it.
        return Err(StoreError::Corrupt("blob_chunks").into());
    }
    Ok((slice.bytes, total))
}

/// State of a blob or an upload.
pub async fn info(state: &AppState, id: &[u8]) -> Result<BlobRecord, ServiceError> {
    state.store.blob(blob_id(id)?).await?.ok_or(ServiceError::NotFound("blob"))
}

/// Deletes expired blobs with their bytes; run by the GC task. How many went.
pub async fn purge(state: &AppState) -> Result<u64, ServiceError> {
    Ok(state.store.purge_expired_blobs(state.clock.now_ms()).await?)
}
