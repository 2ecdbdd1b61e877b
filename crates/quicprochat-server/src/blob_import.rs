//! The upgrade from versions that kept blob bytes in files beside the database:
//! `DATA_DIR/blobs/<hex id>` for a complete blob, `<hex id>.part` for an upload in progress, their
//! records already in the store. At start-up, before the server accepts connections, each file's
//! bytes are copied into the store chunk by chunk, then the file is removed, and the directory
//! once it is empty.
//!
//! Safe to interrupt and to run on several nodes sharing the directory: chunks go to fixed offsets
//! and a chunk stored already is left alone, so the next start finishes the work.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::ServerError;
use crate::services::blobs::MAX_CHUNK;
use crate::store::{BlobRecord, Store};

/// What the import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobImport {
    /// Files whose bytes are now in the store.
    pub imported: usize,
    /// Files removed without importing: their blob is gone from the store (deleted or expired),
    /// the partial file of a complete blob, or a file shorter than its record or (complete) not
    /// hashing to its id, whose blob was deleted with it.
    pub dropped: usize,
}

/// A file of the old layout.
struct BlobFile {
    id: [u8; 32],
    /// `<id>.part`: an upload in progress.
    partial: bool,
    path: PathBuf,
}

/// Imports the blob files under `dir` (nothing if it does not exist) into `store`.
pub async fn import_blob_files(store: &dyn Store, dir: &Path) -> Result<BlobImport, ServerError> {
    let files = match list(dir).await {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BlobImport::default()),
        Err(e) => return Err(io("listing blob files", dir, e)),
    };
    let mut done = BlobImport::default();
    for file in files {
        let imported = import_file(store, &file).await?;
        if imported {
            done.imported += 1;
        } else {
            done.dropped += 1;
        }
        match tokio::fs::remove_file(&file.path).await {
            // Another node sharing the directory removed it first.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing an imported blob file", &file.path, e));
            }
            _ => {}
        }
    }
    if done != BlobImport::default() {
        tracing::info!(
            imported = done.imported,
            dropped = done.dropped,
            dir = %dir.display(),
            "moved blob files into the database"
        );
    }
    match tokio::fs::remove_dir(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), error = %e, "the old blob directory is left in place");
        }
        _ => {}
    }
    Ok(done)
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> ServerError {
    ServerError::Io { what, path: path.to_path_buf(), source }
}

async fn list(dir: &Path) -> std::io::Result<Vec<BlobFile>> {
    let mut out = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let (stem, partial) = match name.strip_suffix(".part") {
            Some(stem) => (stem, true),
            None => (&*name, false),
        };
        match hex::decode(stem).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(id) => out.push(BlobFile { id, partial, path: entry.path() }),
            None => tracing::warn!(file = %entry.path().display(), "not a blob file: left alone"),
        }
    }
    Ok(out)
}

/// Copies one file into the store; `false` if it was not to be imported (and its blob, if
/// unusable, was deleted).
async fn import_file(store: &dyn Store, file: &BlobFile) -> Result<bool, ServerError> {
    let Some(record) = store.blob(file.id).await? else { return Ok(false) };
    if file.partial && record.complete {
        return Ok(false);
    }
    // What the record vouches for: the whole blob when complete, else what was received.
    let len = if record.complete { record.total_size } else { record.received };
    let path = &file.path;
    let mut reader = match tokio::fs::File::open(path).await {
        Ok(reader) => reader,
        // Another node sharing the directory imported and removed it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(io("opening a blob file", path, e)),
    };
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(MAX_CHUNK as u64)).unwrap_or(MAX_CHUNK);
        let mut chunk = vec![0u8; n];
        match reader.read_exact(&mut chunk).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return drop_unusable(store, &record, file, "the file is shorter than its record").await;
            }
            Err(e) => return Err(io("reading a blob file", path, e)),
        }
        hasher.update(&chunk);
        store.import_blob_chunk(file.id, at, chunk).await?;
        at += n as u64;
    }
    if record.complete && <[u8; 32]>::from(hasher.finalize()) != file.id {
        return drop_unusable(store, &record, file, "its bytes do not hash to its id").await;
    }
    Ok(true)
}

async fn drop_unusable(
    store: &dyn Store,
    record: &BlobRecord,
    file: &BlobFile,
    why: &str,
) -> Result<bool, ServerError> {
    tracing::warn!(blob = %hex::encode(&file.id[..4]), complete = record.complete, "blob file not imported and its blob deleted: {why}");
    store.delete_blob(file.id).await?;
    Ok(false)
}
