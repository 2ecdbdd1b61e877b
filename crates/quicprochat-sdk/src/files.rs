//! Files: encrypted on this device with a fresh key, uploaded as a blob in chunks (resumable),
//! shared as a `FileBody` inside MLS, downloaded, hash-checked and decrypted by recipients.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use quicprochat_core::keystore::{open_with_key, seal_with_key};
use quicprochat_proto::{method, v1};
use quicprochat_rpc::Status;
use zeroize::Zeroizing;

use crate::client::QpcClient;
use crate::conversation::ConversationHandle;
use crate::error::Result;
use crate::{Attachment, MessageId, SdkError};

/// Largest file this client sends (the server's default blob limit, less encryption overhead).
pub const MAX_FILE_BYTES: u64 = 50 * 1000 * 1000 - 1024;
/// Chunk size for upload and download.
const CHUNK: usize = 256 * 1024;
/// Associated data binding a file ciphertext to its purpose.
const FILE_AAD: &[u8] = b"qpc/v1/file";

/// What a file message stores as its text.
pub(crate) fn summary(name: &str, size: u64) -> String {
    format!("[file] {name} ({size} bytes)")
}

/// The public description of an encoded `FileBody`.
pub(crate) fn describe(encoded: &[u8]) -> Option<Attachment> {
    let body = v1::FileBody::decode(encoded).ok()?;
    Some(Attachment { name: body.name, size: body.size })
}

/// Keeps only the final component of a name, so a sender cannot steer where a file lands.
fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if base.is_empty() || base == "." || base == ".." { "file".to_owned() } else { base.to_owned() }
}

impl ConversationHandle {
    /// Encrypts the file at `path` with a fresh key, uploads it in chunks (`progress(sent,
    /// total)` after each), and shares it in this conversation.
    pub async fn send_file(&self, path: &Path, progress: impl Fn(u64, u64)) -> Result<MessageId> {
        let io = |source| SdkError::Io { path: path.to_path_buf(), source };
        let size = tokio::fs::metadata(path).await.map_err(io)?.len();
        if size > MAX_FILE_BYTES {
            return Err(SdkError::FileTooLarge { size, max: MAX_FILE_BYTES });
        }
        let plaintext = Zeroizing::new(tokio::fs::read(path).await.map_err(io)?);
        let mut key = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, key.as_mut());
        let ciphertext = seal_with_key(&mut rand_core::OsRng, &key, FILE_AAD, &plaintext)?;
        let blob_id = quicprochat_core::ids::blob_id(&ciphertext);
        self.client().upload_blob(&blob_id, &ciphertext, &progress).await?;

        let name = safe_name(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let body = v1::FileBody {
            blob_id: Bytes::copy_from_slice(&blob_id),
            key: Bytes::copy_from_slice(key.as_slice()),
            name: name.clone(),
            size,
            ciphertext_size: ciphertext.len() as u64,
        };
        let encoded = Zeroizing::new(body.encode_to_vec());
        self.send_body(v1::app_message::Body::File(body), &summary(&name, size), Some(&encoded)).await
    }
}

impl QpcClient {
    /// Uploads a blob, resuming where an earlier attempt stopped.
    async fn upload_blob(&self, id: &[u8; 32], data: &[u8], progress: &impl Fn(u64, u64)) -> Result<()> {
        let total = data.len() as u64;
        let info: std::result::Result<v1::BlobInfoResponse, _> =
            self.rpc().call(method::BLOB_INFO, &v1::BlobInfoRequest { blob_id: Bytes::copy_from_slice(id) }).await;
        let mut offset = match info {
            Ok(i) if i.complete => total,
            Ok(i) if i.total_size == total => i.received,
            Ok(_) => 0,
            Err(e) if e.rpc_status() == Some(Status::NotFound) => 0,
            Err(e) => return Err(e.into()),
        };
        progress(offset, total);
        while offset < total {
            let start = usize::try_from(offset).map_err(|_| SdkError::Protocol("blob offset"))?;
            let end = (start + CHUNK).min(data.len());
            let sent: v1::UploadBlobChunkResponse = self
                .rpc()
                .call(
                    method::UPLOAD_BLOB_CHUNK,
                    &v1::UploadBlobChunkRequest {
                        blob_id: Bytes::copy_from_slice(id),
                        total_size: total,
                        offset,
                        data: Bytes::copy_from_slice(&data[start..end]),
                    },
                )
                .await?;
            offset = sent.received;
            progress(offset, total);
            if sent.complete {
                break;
            }
        }
        Ok(())
    }

    /// Downloads the file shared by `message` into `dir` (under the sender's file name, never
    /// overwriting: a numbered name is chosen if needed), checks its hash, decrypts it, and
    /// returns where it was written. `progress(received, total)` after each chunk.
    pub async fn download_file(&self, message: MessageId, dir: &Path, progress: impl Fn(u64, u64)) -> Result<PathBuf> {
        let account = self.account()?;
        let encoded = account.lock()?.store.attachment(&message)?.ok_or(SdkError::NoAttachment)?;
        let body = v1::FileBody::decode(encoded.as_slice()).map_err(|_| SdkError::Protocol("stored file reference"))?;
        let key: Zeroizing<[u8; 32]> =
            Zeroizing::new(<[u8; 32]>::try_from(body.key.as_ref()).map_err(|_| SdkError::Protocol("file key"))?);
        let mut ciphertext = Vec::with_capacity(usize::try_from(body.ciphertext_size).unwrap_or(0).min(64 << 20));
        loop {
            let chunk: v1::DownloadBlobChunkResponse = self
                .rpc()
                .call(
                    method::DOWNLOAD_BLOB_CHUNK,
                    &v1::DownloadBlobChunkRequest {
                        blob_id: body.blob_id.clone(),
                        offset: ciphertext.len() as u64,
                        max_len: CHUNK as u32,
                    },
                )
                .await?;
            if chunk.data.is_empty() && (ciphertext.len() as u64) < chunk.total_size {
                return Err(SdkError::Protocol("empty blob chunk"));
            }
            ciphertext.extend_from_slice(&chunk.data);
            progress(ciphertext.len() as u64, chunk.total_size);
            if ciphertext.len() as u64 >= chunk.total_size {
                break;
            }
        }
        if quicprochat_core::ids::blob_id(&ciphertext).as_slice() != body.blob_id.as_ref() {
            return Err(SdkError::FileHashMismatch);
        }
        let plaintext = open_with_key(&key, FILE_AAD, &ciphertext)?;
        let path = free_path(dir, &safe_name(&body.name)).await?;
        crate::account::write_atomic(&path, &plaintext)?;
        Ok(path)
    }
}

/// `dir/name`, or `dir/name (2)`, ... if taken.
async fn free_path(dir: &Path, name: &str) -> Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await.map_err(|source| SdkError::Io { path: dir.to_path_buf(), source })?;
    let candidate = dir.join(name);
    if !candidate.exists() {
        return Ok(candidate);
    }
    for n in 2..10_000 {
        let candidate = dir.join(format!("{name} ({n})"));
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(SdkError::Protocol("no free file name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_download_dir() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("..\\boot.ini"), "boot.ini");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("report.pdf"), "report.pdf");
    }
}
