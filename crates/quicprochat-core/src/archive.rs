//! Transcript archives: an exported conversation history, encrypted with a
//! password, whose records are chained by SHA-256 so that an independent
//! verifier ([`verify_archive`]) notices any record modified, removed,
//! duplicated or moved.
//!
//! Pure: [`ArchiveWriter`] builds the archive in memory and returns bytes;
//! writing them to a file is the caller's job.
//!
//! # Format, version 1
//!
//! A 33-byte header, then sealed records, the last of which is the end record:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"QPCA"` |
//! | 4 | 1 | version, `1` |
//! | 5 | 4 | Argon2id memory cost in KiB, big-endian |
//! | 9 | 4 | Argon2id iterations, big-endian |
//! | 13 | 4 | Argon2id parallelism, big-endian |
//! | 17 | 16 | salt |
//!
//! The archive key is `Argon2id(password, salt)` (32 bytes, v1.3), derived
//! once per archive. Each sealed record is
//! `u32be(len) ‖ nonce (12) ‖ ChaCha20-Poly1305(key, nonce, aad = header, plaintext)`
//! with `len` counting nonce, ciphertext and tag, at most
//! [`MAX_SEALED_RECORD_LEN`]. Nonces are random (a writer never reuses one,
//! even if an archive is rebuilt from the same state), and the header as
//! associated data binds every record to this archive's parameters and salt.
//!
//! Record plaintext: `kind (1) ‖ prev_hash (32) ‖ fields`, where a message
//! record (`kind = 0`) has the fields
//! `timestamp_ms u64be ‖ channel_id (16) ‖ sender_device (16) ‖ u8 sender_len ‖ sender ‖ u32be body_len ‖ body`
//! and the end record (`kind = 1`) has `record_count u64be`. Nothing may
//! follow the fields, nor the end record.
//!
//! # The chain
//!
//! `hash(record) = SHA-256("qpc/v1/archive-record" ‖ plaintext)`; the first
//! record's `prev_hash` is [`archive_genesis_hash`] and every later one's is
//! the hash of the record before it. The *head hash* is the hash of the last
//! message record (the genesis hash for an empty archive). It depends only on
//! the records, not on the password or salt, so the same transcript always
//! has the same head hash: users can compare it out of band, or sign it.
//!
//! # What it protects
//!
//! Without the password nobody can read records or forge one. A modified
//! record fails its AEAD tag ([`CoreError::ArchiveRecordCorrupt`]); a record
//! removed, repeated or moved breaks the chain
//! ([`CoreError::ArchiveChainBroken`]); a cut-off archive lacks its end
//! record ([`CoreError::Truncated`]), and the end record commits to the record
//! count. A wrong password, like a modified first record or header, fails
//! with [`CoreError::WrongPassword`]: the two cannot be told apart. Anyone
//! with the password can, of course, write a different valid archive; the
//! head hash compared out of band is what pins a particular transcript.
//! Record sizes and timestamps are visible in length; bodies are not padded.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::ids::{ChannelId, DeviceId};
use crate::keystore::{KdfParams, argon2id};

/// Magic bytes opening an archive.
pub const ARCHIVE_MAGIC: [u8; 4] = *b"QPCA";
/// Current archive format version.
pub const ARCHIVE_VERSION: u8 = 1;
/// Largest message body a record may carry (1 MiB).
pub const MAX_BODY_LEN: usize = 1024 * 1024;
/// Longest sender username a record may carry, in bytes.
pub const MAX_SENDER_LEN: usize = 255;
/// Largest sealed record accepted (nonce, ciphertext and tag of the largest
/// message record). A longer length prefix is refused before anything is
/// allocated.
pub const MAX_SEALED_RECORD_LEN: usize = NONCE_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;

const FORMAT: &str = "transcript archive";
const RECORD_LABEL: &[u8] = b"qpc/v1/archive-record";
const GENESIS_LABEL: &[u8] = b"qpc/v1/archive-genesis";

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const HASH_LEN: usize = 32;
const HEADER_LEN: usize = 4 + 1 + 12 + SALT_LEN;

const KIND_MESSAGE: u8 = 0;
const KIND_END: u8 = 1;
/// kind, prev hash, timestamp, channel, device, sender length, body length.
const MESSAGE_FIXED_LEN: usize = 1 + HASH_LEN + 8 + ChannelId::LEN + DeviceId::LEN + 1 + 4;
const END_LEN: usize = 1 + HASH_LEN + 8;
const MAX_PLAINTEXT_LEN: usize = MESSAGE_FIXED_LEN + MAX_SENDER_LEN + MAX_BODY_LEN;

/// One archived message.
#[derive(Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    /// When the message was sent or received, in milliseconds since the Unix
    /// epoch (as the caller recorded it).
    pub timestamp_ms: u64,
    /// The conversation it belongs to.
    pub channel_id: ChannelId,
    /// The sending device.
    pub sender_device: DeviceId,
    /// The sender's username, at most [`MAX_SENDER_LEN`] bytes.
    pub sender: String,
    /// The message plaintext, at most [`MAX_BODY_LEN`] bytes.
    pub body: Vec<u8>,
}

/// Shows sizes, never the body.
impl fmt::Debug for ArchiveRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveRecord")
            .field("timestamp_ms", &self.timestamp_ms)
            .field("channel_id", &self.channel_id)
            .field("sender_device", &self.sender_device)
            .field("sender", &self.sender)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The hash every chain starts from: `SHA-256("qpc/v1/archive-genesis")`.
pub fn archive_genesis_hash() -> [u8; 32] {
    Sha256::digest(GENESIS_LABEL).into()
}

/// Builds an archive record by record.
///
/// The key is derived once, in [`Self::new`]; each [`Self::append`] seals one
/// record, and [`Self::finish`] adds the end record and returns the bytes.
pub struct ArchiveWriter {
    key: Zeroizing<[u8; KEY_LEN]>,
    bytes: Vec<u8>,
    head: [u8; HASH_LEN],
    count: u64,
}

/// Shows the progress, never the key.
impl fmt::Debug for ArchiveWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("records", &self.count)
            .field("bytes", &self.bytes.len())
            .field("head_hash", &hex::encode(self.head))
            .finish_non_exhaustive()
    }
}

impl ArchiveWriter {
    /// Starts an empty archive encrypted under `password`. Runs Argon2id
    /// with `params` once (see [`KdfParams`]; bounds as for the keystore).
    pub fn new(rng: &mut impl CryptoRngCore, password: &[u8], params: &KdfParams) -> Result<Self, CoreError> {
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&ARCHIVE_MAGIC);
        header.push(ARCHIVE_VERSION);
        header.extend_from_slice(&params.m_cost_kib.to_be_bytes());
        header.extend_from_slice(&params.t_cost.to_be_bytes());
        header.extend_from_slice(&params.p_cost.to_be_bytes());
        header.extend_from_slice(&salt);
        let key = derive_key(params, password, &salt)?;
        Ok(Self { key, bytes: header, head: archive_genesis_hash(), count: 0 })
    }

    /// Seals `record` onto the chain; returns the new head hash.
    ///
    /// Fails with [`CoreError::ArchiveFieldTooLong`] for a sender or body
    /// over the limits, leaving the archive as it was.
    pub fn append(&mut self, rng: &mut impl CryptoRngCore, record: &ArchiveRecord) -> Result<[u8; 32], CoreError> {
        let plaintext = encode_message(&self.head, record)?;
        self.seal(rng, &plaintext)?;
        self.head = record_hash(&plaintext);
        self.count += 1;
        Ok(self.head)
    }

    /// The hash of the last record appended (the genesis hash before any).
    pub fn head_hash(&self) -> [u8; 32] {
        self.head
    }

    /// How many records were appended.
    pub fn record_count(&self) -> u64 {
        self.count
    }

    /// Adds the end record and returns the whole archive.
    pub fn finish(mut self, rng: &mut impl CryptoRngCore) -> Result<Vec<u8>, CoreError> {
        let mut plaintext = Zeroizing::new(Vec::with_capacity(END_LEN));
        plaintext.push(KIND_END);
        plaintext.extend_from_slice(&self.head);
        plaintext.extend_from_slice(&self.count.to_be_bytes());
        self.seal(rng, &plaintext)?;
        Ok(self.bytes)
    }

    fn seal(&mut self, rng: &mut impl CryptoRngCore, plaintext: &[u8]) -> Result<(), CoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &self.bytes[..HEADER_LEN] })
            .map_err(|_| CoreError::EncryptionFailed)?;
        let len = u32::try_from(NONCE_LEN + ciphertext.len())
            .map_err(|_| CoreError::Internal("archive record length checked against MAX_BODY_LEN"))?;
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(&nonce);
        self.bytes.extend_from_slice(&ciphertext);
        Ok(())
    }
}

/// An archive whose every record decrypted and chained correctly.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedArchive {
    /// The records, in order.
    pub records: Vec<ArchiveRecord>,
    /// The hash of the last record (the genesis hash when there are none).
    pub head_hash: [u8; 32],
}

/// Shows the count and head hash, never the records' bodies.
impl fmt::Debug for VerifiedArchive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedArchive")
            .field("records", &self.records.len())
            .field("head_hash", &hex::encode(self.head_hash))
            .finish()
    }
}

/// Decrypts an archive and checks its chain, independently of whoever wrote
/// it.
///
/// Errors: [`CoreError::BadMagic`], [`CoreError::UnsupportedVersion`],
/// [`CoreError::KdfParamsOutOfBounds`] (before Argon2 allocates anything),
/// [`CoreError::WrongPassword`] (wrong password, or header or first record
/// modified), [`CoreError::ArchiveRecordCorrupt`] (a later record modified),
/// [`CoreError::ArchiveChainBroken`] (records removed, repeated or
/// reordered), [`CoreError::Truncated`] (cut off, end record missing),
/// [`CoreError::ArchiveFieldTooLong`] (a length over the limits) and
/// [`CoreError::MalformedArchive`].
pub fn verify_archive(bytes: &[u8], password: &[u8]) -> Result<VerifiedArchive, CoreError> {
    let mut reader = Reader { rest: bytes, sealed: false };
    if reader.take(4)? != ARCHIVE_MAGIC {
        return Err(CoreError::BadMagic { format: FORMAT });
    }
    let version = reader.take(1)?[0];
    if version != ARCHIVE_VERSION {
        return Err(CoreError::UnsupportedVersion { format: FORMAT, version });
    }
    let params = KdfParams { m_cost_kib: reader.u32()?, t_cost: reader.u32()?, p_cost: reader.u32()? };
    let salt = reader.take(SALT_LEN)?;
    let header = &bytes[..HEADER_LEN];
    let key = derive_key(&params, password, salt)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));

    let mut records = Vec::new();
    let mut head = archive_genesis_hash();
    let mut index: u64 = 0;
    loop {
        if reader.rest.is_empty() {
            // Every archive ends with its end record.
            return Err(CoreError::Truncated { format: FORMAT });
        }
        let len = usize::try_from(reader.u32()?).unwrap_or(usize::MAX);
        if len > MAX_SEALED_RECORD_LEN {
            return Err(CoreError::ArchiveFieldTooLong { field: "sealed record", len, max: MAX_SEALED_RECORD_LEN });
        }
        if len < NONCE_LEN + TAG_LEN {
            return Err(CoreError::MalformedArchive { reason: "sealed record shorter than nonce and tag" });
        }
        let sealed = reader.take(len)?;
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plaintext = Zeroizing::new(
            cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: header }).map_err(|_| {
                if index == 0 { CoreError::WrongPassword } else { CoreError::ArchiveRecordCorrupt { index } }
            })?,
        );
        let mut fields = Reader { rest: &plaintext, sealed: true };
        let kind = fields.take(1)?[0];
        if fields.take(HASH_LEN)? != head.as_slice() {
            return Err(CoreError::ArchiveChainBroken { index });
        }
        match kind {
            KIND_MESSAGE => {
                records.push(decode_message_fields(&mut fields)?);
                head = record_hash(&plaintext);
            }
            KIND_END => {
                let count = fields.u64()?;
                if !fields.rest.is_empty() {
                    return Err(CoreError::MalformedArchive { reason: "bytes after the end record's fields" });
                }
                if count != index {
                    return Err(CoreError::MalformedArchive { reason: "end record count does not match" });
                }
                if !reader.rest.is_empty() {
                    return Err(CoreError::MalformedArchive { reason: "data after the end record" });
                }
                return Ok(VerifiedArchive { records, head_hash: head });
            }
            _ => return Err(CoreError::MalformedArchive { reason: "unknown record kind" }),
        }
        index += 1;
    }
}

fn derive_key(params: &KdfParams, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, CoreError> {
    let argon2 = argon2id(params.m_cost_kib, params.t_cost, params.p_cost, Some(KEY_LEN))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon2.hash_password_into(password, salt, key.as_mut_slice()).map_err(CoreError::KeyDerivation)?;
    Ok(key)
}

fn record_hash(plaintext: &[u8]) -> [u8; HASH_LEN] {
    Sha256::new().chain_update(RECORD_LABEL).chain_update(plaintext).finalize().into()
}

fn encode_message(prev_hash: &[u8; HASH_LEN], record: &ArchiveRecord) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let sender = record.sender.as_bytes();
    let sender_len = u8::try_from(sender.len()).map_err(|_| CoreError::ArchiveFieldTooLong {
        field: "sender",
        len: sender.len(),
        max: MAX_SENDER_LEN,
    })?;
    let body_too_long = || CoreError::ArchiveFieldTooLong { field: "body", len: record.body.len(), max: MAX_BODY_LEN };
    if record.body.len() > MAX_BODY_LEN {
        return Err(body_too_long());
    }
    let body_len = u32::try_from(record.body.len()).map_err(|_| body_too_long())?;
    let mut out = Zeroizing::new(Vec::with_capacity(MESSAGE_FIXED_LEN + sender.len() + record.body.len()));
    out.push(KIND_MESSAGE);
    out.extend_from_slice(prev_hash);
    out.extend_from_slice(&record.timestamp_ms.to_be_bytes());
    out.extend_from_slice(record.channel_id.as_bytes());
    out.extend_from_slice(record.sender_device.as_bytes());
    out.push(sender_len);
    out.extend_from_slice(sender);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&record.body);
    Ok(out)
}

/// Decodes a message record's fields (after kind and prev hash).
fn decode_message_fields(fields: &mut Reader<'_>) -> Result<ArchiveRecord, CoreError> {
    let timestamp_ms = fields.u64()?;
    let channel_id = ChannelId::try_from(fields.take(ChannelId::LEN)?)?;
    let sender_device = DeviceId::try_from(fields.take(DeviceId::LEN)?)?;
    let sender_len = usize::from(fields.take(1)?[0]);
    let sender = std::str::from_utf8(fields.take(sender_len)?)
        .map_err(|_| CoreError::MalformedArchive { reason: "sender is not UTF-8" })?
        .to_owned();
    let body_len = usize::try_from(fields.u32()?).unwrap_or(usize::MAX);
    if body_len > MAX_BODY_LEN {
        return Err(CoreError::ArchiveFieldTooLong { field: "body", len: body_len, max: MAX_BODY_LEN });
    }
    let body = fields.take(body_len)?.to_vec();
    if !fields.rest.is_empty() {
        return Err(CoreError::MalformedArchive { reason: "bytes after a message record's fields" });
    }
    Ok(ArchiveRecord { timestamp_ms, channel_id, sender_device, sender, body })
}

/// Reads the archive (`sealed: false`) or one record's authenticated
/// plaintext (`sealed: true`, where running short is a malformed record, not
/// a cut-off file).
struct Reader<'a> {
    rest: &'a [u8],
    sealed: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CoreError> {
        if self.rest.len() < n {
            return Err(if self.sealed {
                CoreError::MalformedArchive { reason: "record shorter than its fields" }
            } else {
                CoreError::Truncated { format: FORMAT }
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, CoreError> {
        let mut array = [0u8; 4];
        array.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(array))
    }

    fn u64(&mut self) -> Result<u64, CoreError> {
        let mut array = [0u8; 8];
        array.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(array))
    }
}

#[cfg(test)]
mod tests;
