//! Transcript export: this device's stored messages written as a password-encrypted archive
//! whose records are chained by SHA-256 (the format is `quicprochat_core::archive`), and
//! [`verify_transcript`], which checks such an archive again without an account or a server.
//!
//! One record per stored message, oldest first: the sender's clock, the conversation, the
//! sender's username and device, and the text. A file message records a line naming the file,
//! its size and the SHA-256 of its encrypted blob, never its key; a deleted message records
//! `[deleted]`, an edited one its latest text followed by ` (edited)`.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message as _;
use quicprochat_core::CoreError;
use quicprochat_core::archive::{ArchiveRecord, ArchiveWriter, verify_archive};
use quicprochat_core::ids::{ChannelId, DeviceId};
use quicprochat_proto::v1;
use zeroize::Zeroizing;

use crate::account::kdf_params;
use crate::client::QpcClient;
use crate::error::Result;
use crate::store::LocalStore;
use crate::{ConversationId, Message, MessageKind, SdkError};

/// Messages read from the local store per lock.
const PAGE: u32 = 256;
/// The sender device recorded when this device does not know which device sent a message.
const UNKNOWN_DEVICE: [u8; 16] = [0; 16];

/// What [`QpcClient::export_transcript`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// The archive file.
    pub path: PathBuf,
    /// How many messages it holds.
    pub records: u64,
    /// How many conversations they come from.
    pub conversations: usize,
    /// The hash of the last record (SHA-256): the same transcript always has the same head
    /// hash, whatever the password, so it can be compared out of band.
    pub head_hash: [u8; 32],
}

/// A transcript archive whose every record decrypted and follows the one before it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedTranscript {
    /// The messages, in the order they were exported.
    pub records: Vec<TranscriptRecord>,
    /// The hash of the last record (see [`ExportSummary::head_hash`]).
    pub head_hash: [u8; 32],
}

impl VerifiedTranscript {
    /// How many messages the archive holds.
    pub fn record_count(&self) -> u64 {
        self.records.len() as u64
    }
}

/// Shows the count and head hash, never the messages.
impl fmt::Debug for VerifiedTranscript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedTranscript")
            .field("records", &self.records.len())
            .field("head_hash", &hex::encode(self.head_hash))
            .finish()
    }
}

/// One archived message.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TranscriptRecord {
    /// The sender's clock when it sent the message, Unix ms.
    pub timestamp_ms: u64,
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// The sender's username.
    pub sender: String,
    /// The sending device as MLS authenticated it (`None` for messages from others stored before
    /// devices were recorded).
    pub sender_device: Option<[u8; 16]>,
    /// What the message said (see the module docs for files, edits and deletions). An archive
    /// written by quicprochat always holds UTF-8; other bytes are shown as U+FFFD.
    pub text: String,
}

/// Shows who and when, never the text.
impl fmt::Debug for TranscriptRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TranscriptRecord")
            .field("timestamp_ms", &self.timestamp_ms)
            .field("conversation", &self.conversation)
            .field("sender", &self.sender)
            .field("sender_device", &self.sender_device.map(hex::encode))
            .field("text_len", &self.text.len())
            .finish()
    }
}

impl QpcClient {
    /// Exports the stored messages of `conversation` (or of every conversation on this device,
    /// also those it left) to an archive at `path`, encrypted with `password`, oldest first.
    ///
    /// The key is derived with Argon2id at the client's [`crate::KdfStrength`]. Messages stored
    /// while the export runs are left for the next one; messages whose disappearing timer ran
    /// out are deleted first, never exported. The file is written to a temporary file beside
    /// `path` and renamed over it (mode 0600), so `path` holds either the old file or the whole
    /// new archive. Needs no server.
    pub async fn export_transcript(
        &self,
        conversation: Option<ConversationId>,
        path: &Path,
        password: &[u8],
    ) -> Result<ExportSummary> {
        self.purge_expired()?;
        let client = self.clone();
        let target = path.to_path_buf();
        let password = Zeroizing::new(password.to_vec());
        let task = tokio::task::spawn_blocking(move || client.write_transcript(conversation, &target, &password));
        match task.await {
            Ok(written) => written,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(SdkError::ArchiveFile {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::Interrupted, "the export was cancelled"),
            }),
        }
    }

    /// Builds the archive page by page (the account lock is taken per page, so messages keep
    /// arriving meanwhile) and writes it.
    fn write_transcript(
        &self,
        conversation: Option<ConversationId>,
        path: &Path,
        password: &[u8],
    ) -> Result<ExportSummary> {
        let account = self.account()?;
        let end = {
            let local = account.lock()?;
            if let Some(id) = &conversation
                && local.store.conversation(id)?.is_none()
            {
                return Err(SdkError::UnknownConversation(*id));
            }
            local.store.last_stored_position()?
        };
        let mut rng = rand_core::OsRng;
        let mut writer = ArchiveWriter::new(&mut rng, password, &kdf_params(self.inner.config.kdf))?;
        let mut conversations = BTreeSet::new();
        let mut after = Default::default();
        loop {
            let records = {
                let local = account.lock()?;
                let page = local.store.stored_messages_page(conversation.as_ref(), after, end, PAGE)?;
                let Some((last, _)) = page.last() else { break };
                after = *last;
                page.iter()
                    .map(|(_, m)| archive_record(&local.store, m, account.device_id))
                    .collect::<Result<Vec<_>>>()?
            };
            for record in &records {
                conversations.insert(record.channel_id);
                writer.append(&mut rng, record)?;
            }
        }
        let records = writer.record_count();
        let head_hash = writer.head_hash();
        let bytes = writer.finish(&mut rng)?;
        write_private(path, &bytes)?;
        Ok(ExportSummary { path: path.to_path_buf(), records, conversations: conversations.len(), head_hash })
    }
}

/// Decrypts the transcript archive at `path` and checks its chain: every record must
/// authenticate and follow the one before it, and the archive must end with its end record.
/// Needs no account and no server, only the archive's password.
///
/// Runs Argon2id with the parameters the archive names (refused beyond the keystore's bounds
/// before anything is allocated): from async code, call it on a blocking thread.
///
/// Errors: [`SdkError::ArchiveWrongPassword`], [`SdkError::ArchiveTampered`],
/// [`SdkError::ArchiveChainBroken`], [`SdkError::ArchiveTruncated`], [`SdkError::NotAnArchive`],
/// [`SdkError::ArchiveUnsupportedVersion`], [`SdkError::ArchiveMalformed`], and
/// [`SdkError::ArchiveFile`] when the file cannot be read.
pub fn verify_transcript(path: &Path, password: &[u8]) -> Result<VerifiedTranscript> {
    let bytes = std::fs::read(path).map_err(|source| SdkError::ArchiveFile { path: path.to_path_buf(), source })?;
    let verified = verify_archive(&bytes, password).map_err(archive_error)?;
    let records = verified
        .records
        .into_iter()
        .map(|r| TranscriptRecord {
            timestamp_ms: r.timestamp_ms,
            conversation: ConversationId(*r.channel_id.as_bytes()),
            sender: r.sender,
            sender_device: Some(*r.sender_device.as_bytes()).filter(|d| *d != UNKNOWN_DEVICE),
            text: String::from_utf8_lossy(&r.body).into_owned(),
        })
        .collect();
    Ok(VerifiedTranscript { records, head_hash: verified.head_hash })
}

/// The archive record of a stored message.
fn archive_record(store: &LocalStore, m: &Message, me: DeviceId) -> Result<ArchiveRecord> {
    let text = if m.deleted_at_ms.is_some() {
        "[deleted]".to_owned()
    } else if m.kind == MessageKind::File {
        match store.attachment(&m.id)?.and_then(|encoded| v1::FileBody::decode(encoded.as_slice()).ok()) {
            Some(file) => format!(
                "[file] {} ({} bytes, encrypted blob SHA-256 {})",
                file.name,
                file.size,
                hex::encode(&file.blob_id)
            ),
            None => m.text.clone(),
        }
    } else if m.edited_at_ms.is_some() {
        format!("{} (edited)", m.text)
    } else {
        m.text.clone()
    };
    Ok(ArchiveRecord {
        timestamp_ms: m.sent_at_ms,
        channel_id: ChannelId(m.conversation.0),
        // Incoming messages stored before the device was recorded have none.
        sender_device: match m.outgoing {
            true => me,
            false => DeviceId(store.sender_device(&m.id)?.unwrap_or(UNKNOWN_DEVICE)),
        },
        sender: m.sender.clone(),
        body: text.into_bytes(),
    })
}

/// What a core archive error means to an SDK caller.
fn archive_error(e: CoreError) -> SdkError {
    match e {
        CoreError::WrongPassword => SdkError::ArchiveWrongPassword,
        CoreError::ArchiveRecordCorrupt { index } => SdkError::ArchiveTampered { record: index },
        CoreError::ArchiveChainBroken { index } => SdkError::ArchiveChainBroken { record: index },
        CoreError::Truncated { .. } => SdkError::ArchiveTruncated,
        CoreError::BadMagic { .. } => SdkError::NotAnArchive,
        CoreError::UnsupportedVersion { version, .. } => SdkError::ArchiveUnsupportedVersion(version),
        CoreError::MalformedArchive { reason } => SdkError::ArchiveMalformed(reason),
        CoreError::ArchiveFieldTooLong { field, .. } => SdkError::ArchiveMalformed(field),
        CoreError::KdfParamsOutOfBounds { .. } | CoreError::InvalidKdfParams(_) => {
            SdkError::ArchiveMalformed("key derivation parameters out of bounds")
        }
        other => SdkError::Crypto(other),
    }
}

/// Writes `bytes` to a new temporary file (mode 0600) beside `path`, syncs it and renames it
/// over `path`; the temporary file is removed if anything fails.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SdkError::ArchiveFile { path, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| SdkError::ArchiveFile {
        path: path.to_path_buf(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let mut nonce = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), hex::encode(nonce)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut file = opts.open(&tmp).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_archive_errors_become_typed_sdk_errors() {
        assert!(matches!(archive_error(CoreError::WrongPassword), SdkError::ArchiveWrongPassword));
        assert!(matches!(
            archive_error(CoreError::ArchiveRecordCorrupt { index: 3 }),
            SdkError::ArchiveTampered { record: 3 }
        ));
        assert!(matches!(
            archive_error(CoreError::ArchiveChainBroken { index: 2 }),
            SdkError::ArchiveChainBroken { record: 2 }
        ));
        assert!(matches!(archive_error(CoreError::Truncated { format: "x" }), SdkError::ArchiveTruncated));
        assert!(matches!(archive_error(CoreError::BadMagic { format: "x" }), SdkError::NotAnArchive));
        for e in [
            SdkError::ArchiveTampered { record: 1 },
            SdkError::ArchiveChainBroken { record: 1 },
            SdkError::ArchiveTruncated,
            SdkError::NotAnArchive,
        ] {
            assert!(e.is_invalid_archive(), "{e}");
        }
        assert!(!SdkError::ArchiveWrongPassword.is_invalid_archive());
    }

    #[test]
    fn writes_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("transcript.qpca");
        std::fs::write(&path, b"old").unwrap();
        write_private(&path, b"new archive").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new archive");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        let missing = dir.path().join("no-such-dir").join("t.qpca");
        assert!(matches!(write_private(&missing, b"x"), Err(SdkError::ArchiveFile { .. })));
    }
}
