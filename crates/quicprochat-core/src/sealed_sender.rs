//! Sealed sender: the server learns that *a current member* of a channel
//! enqueued an envelope, not which one (SPEC §5).
//!
//! **Construction.** Every member of a channel's MLS group at epoch `E`
//! derives the same Ed25519 *epoch sender key* from the epoch's exporter
//! secret:
//!
//! ```text
//! seed = MLS-Exporter("qpc/v1 sealed-sender", channel_id, 32)   (RFC 9420 §8.5)
//! key  = Ed25519 signing key with secret seed `seed`            (RFC 8032)
//! ```
//!
//! The committer that moves the group to `E` publishes the public half to
//! the server together with its commit ([`EpochSenderKey::after_pending_commit`]);
//! the server keeps it per channel and epoch. To enqueue anonymously a
//! member sends a [`SenderProof`], an Ed25519 signature with the shared key
//! over
//!
//! ```text
//! "qpc/v1 sealed-sender-proof" || channel_id (16) || u64be(epoch)
//!   || u64be(timestamp_ms) || nonce (16) || SHA-256(payload) (32)
//! ```
//!
//! with a random nonce and the caller's clock. The server checks it with
//! the stored key ([`EpochSenderPublicKey::verify`]), the freshness window
//! and nonce reuse ([`ReplayGuard`]).
//!
//! **What it protects.** Only holders of epoch `E`'s exporter secret — its
//! members — can produce a proof for `E` (Ed25519 unforgeability; the
//! exporter secret is known only to the epoch's members by MLS key schedule
//! secrecy). A member removed at `E` never learns `E`'s secret, so it cannot
//! sign for `E` or later. Ed25519 signing is deterministic, so every member
//! signing the same message produces the *same* signature: the proof alone
//! carries no information about which member made it. The payload hash, the
//! channel and the epoch are signed, so a proof cannot be moved to another
//! payload, channel or epoch.
//!
//! **What it does not protect.** Members can impersonate each other to the
//! server — by design: the real sender is authenticated inside the MLS
//! ciphertext. A member can hand the epoch key to an outsider, letting it
//! enqueue (but not read) until the next commit; the server cannot tell. The
//! published key is only as honest as the committer: a committer may upload
//! a wrong key (members should compare it with their own derivation and
//! report a mismatch). The server still sees everything around the proof:
//! the connection, IP address, timing and padded size of what is enqueued —
//! anonymity needs the enqueue to travel outside the sender's authenticated
//! session. The timestamp is the sender's clock and may reveal its skew.
//! Replays are stopped only within the freshness window and only by a
//! verifier that remembers nonces ([`ReplayGuard`], which lives in memory).
//! Proofs for a past epoch must be refused by the server's epoch policy, not
//! by this module: the key of a past epoch stays valid for that epoch.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::CoreError;
use crate::ids::ChannelId;
use crate::mls::MlsClient;

/// MLS exporter label of the epoch sender key seed.
pub const SEALED_SENDER_EXPORTER_LABEL: &str = "qpc/v1 sealed-sender";
/// Current version of the [`SenderProof`] encoding.
pub const SENDER_PROOF_VERSION: u8 = 1;
/// Length of a [`SenderProof`]'s random nonce.
pub const SENDER_PROOF_NONCE_LEN: usize = 16;
/// Length of an encoded [`SenderProof`].
pub const SENDER_PROOF_LEN: usize = 1 + 8 + 8 + SENDER_PROOF_NONCE_LEN + 64;
/// Length of an epoch sender public key.
pub const EPOCH_SENDER_PUBLIC_KEY_LEN: usize = 32;

/// Domain separation label of the signed message.
const PROOF_LABEL: &[u8] = b"qpc/v1 sealed-sender-proof";
/// Length of the exported seed.
const SEED_LEN: usize = 32;
const FORMAT: &str = "sender proof";

/// The Ed25519 key every member of one channel epoch shares, for signing
/// [`SenderProof`]s.
///
/// The secret is wiped when the value is dropped; `Debug` shows only the
/// channel, the epoch and the public key.
#[derive(Clone)]
pub struct EpochSenderKey {
    signing_key: SigningKey,
    channel_id: ChannelId,
    epoch: u64,
}

impl EpochSenderKey {
    /// Derives the key from the exporter output
    /// `MLS-Exporter(SEALED_SENDER_EXPORTER_LABEL, channel_id, 32)` of
    /// `epoch`. Fails with [`CoreError::InvalidKeyLength`] unless the
    /// exported secret is 32 bytes.
    pub fn from_exporter_secret(channel_id: ChannelId, epoch: u64, exported: &[u8]) -> Result<Self, CoreError> {
        let seed: Zeroizing<[u8; SEED_LEN]> = Zeroizing::new(
            exported
                .try_into()
                .map_err(|_| CoreError::InvalidKeyLength { expected: SEED_LEN, actual: exported.len() })?,
        );
        Ok(Self { signing_key: SigningKey::from_bytes(&seed), channel_id, epoch })
    }

    /// The key of the group's current epoch, as this member derives it.
    ///
    /// Errors: those of [`MlsClient::export_secret`] (e.g.
    /// [`CoreError::NotAMember`] after removal).
    pub fn current(client: &MlsClient, group_id: &[u8], channel_id: ChannelId) -> Result<Self, CoreError> {
        let epoch = client.epoch(group_id)?;
        let exported = client.export_secret(group_id, SEALED_SENDER_EXPORTER_LABEL, channel_id.as_bytes(), SEED_LEN)?;
        Self::from_exporter_secret(channel_id, epoch, &exported)
    }

    /// The key of the epoch this member's pending commit creates: the one
    /// the committer publishes with the commit.
    ///
    /// Errors: those of [`MlsClient::export_pending_commit_secret`] (e.g.
    /// [`CoreError::NoPendingCommit`]).
    pub fn after_pending_commit(client: &MlsClient, group_id: &[u8], channel_id: ChannelId) -> Result<Self, CoreError> {
        let epoch = client.epoch(group_id)?.checked_add(1).ok_or(CoreError::Internal("MLS epoch counter overflow"))?;
        let exported = client.export_pending_commit_secret(
            group_id,
            SEALED_SENDER_EXPORTER_LABEL,
            channel_id.as_bytes(),
            SEED_LEN,
        )?;
        Self::from_exporter_secret(channel_id, epoch, &exported)
    }

    /// The channel the key belongs to.
    pub fn channel_id(&self) -> ChannelId {
        self.channel_id
    }

    /// The epoch the key belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The public half, which the server stores for this channel and epoch.
    pub fn public_key(&self) -> EpochSenderPublicKey {
        EpochSenderPublicKey(self.signing_key.verifying_key())
    }

    /// Proves membership of the epoch for enqueuing `payload` (the exact
    /// bytes the server will store), at `now_ms` (ms since the Unix epoch),
    /// with a fresh nonce from `rng`.
    pub fn prove(&self, rng: &mut impl CryptoRngCore, payload: &[u8], now_ms: u64) -> SenderProof {
        let mut nonce = [0u8; SENDER_PROOF_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let message = signed_message(&self.channel_id, self.epoch, now_ms, &nonce, &Sha256::digest(payload).into());
        SenderProof {
            epoch: self.epoch,
            timestamp_ms: now_ms,
            nonce,
            signature: self.signing_key.sign(&message).to_bytes(),
        }
    }
}

/// `SigningKey` wipes itself on drop (ed25519-dalek's `zeroize` feature).
impl ZeroizeOnDrop for EpochSenderKey {}

impl fmt::Debug for EpochSenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochSenderKey")
            .field("channel_id", &self.channel_id)
            .field("epoch", &self.epoch)
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// The public half of an [`EpochSenderKey`], kept by the server per channel
/// and epoch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochSenderPublicKey(VerifyingKey);

impl EpochSenderPublicKey {
    /// Parses a 32-byte Ed25519 public key, refusing small-order points
    /// (under which signatures are forgeable).
    ///
    /// Errors: [`CoreError::InvalidKeyLength`], [`CoreError::InvalidPublicKey`],
    /// [`CoreError::WeakPublicKey`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        let array: &[u8; EPOCH_SENDER_PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CoreError::InvalidKeyLength { expected: EPOCH_SENDER_PUBLIC_KEY_LEN, actual: bytes.len() })?;
        let key = VerifyingKey::from_bytes(array).map_err(CoreError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(CoreError::WeakPublicKey);
        }
        Ok(Self(key))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; EPOCH_SENDER_PUBLIC_KEY_LEN] {
        self.0.to_bytes()
    }

    /// Checks that `proof` was made by a member of `epoch` of `channel_id`
    /// (the channel and epoch this key was published for) for exactly
    /// `payload`.
    ///
    /// Does not check freshness or replay: pass the result to
    /// [`ReplayGuard::check`] (or check [`FreshnessWindow`] and nonce reuse
    /// against a store).
    ///
    /// Errors: [`CoreError::SenderProofWrongEpoch`],
    /// [`CoreError::InvalidSignature`] (strict verification).
    pub fn verify(
        &self,
        channel_id: &ChannelId,
        epoch: u64,
        payload: &[u8],
        proof: &SenderProof,
    ) -> Result<VerifiedSenderProof, CoreError> {
        if proof.epoch != epoch {
            return Err(CoreError::SenderProofWrongEpoch { proof_epoch: proof.epoch, key_epoch: epoch });
        }
        let message =
            signed_message(channel_id, proof.epoch, proof.timestamp_ms, &proof.nonce, &Sha256::digest(payload).into());
        self.0
            .verify_strict(&message, &Signature::from_bytes(&proof.signature))
            .map_err(CoreError::InvalidSignature)?;
        Ok(VerifiedSenderProof {
            channel_id: *channel_id,
            epoch: proof.epoch,
            timestamp_ms: proof.timestamp_ms,
            nonce: proof.nonce,
        })
    }
}

impl fmt::Debug for EpochSenderPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EpochSenderPublicKey({})", hex::encode(self.0.as_bytes()))
    }
}

/// An anonymous proof that a member of a channel epoch authorised an
/// enqueue.
///
/// Encoding, version [`SENDER_PROOF_VERSION`], [`SENDER_PROOF_LEN`] bytes:
/// `version (1) || u64be(epoch) || u64be(timestamp_ms) || nonce (16) ||
/// signature (64)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderProof {
    epoch: u64,
    timestamp_ms: u64,
    nonce: [u8; SENDER_PROOF_NONCE_LEN],
    signature: [u8; 64],
}

impl SenderProof {
    /// The epoch whose key signed the proof.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the sender says it made the proof, in ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The proof's random nonce.
    pub fn nonce(&self) -> &[u8; SENDER_PROOF_NONCE_LEN] {
        &self.nonce
    }

    /// Encodes the proof.
    pub fn to_bytes(&self) -> [u8; SENDER_PROOF_LEN] {
        let mut out = [0u8; SENDER_PROOF_LEN];
        out[0] = SENDER_PROOF_VERSION;
        out[1..9].copy_from_slice(&self.epoch.to_be_bytes());
        out[9..17].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out[17..33].copy_from_slice(&self.nonce);
        out[33..].copy_from_slice(&self.signature);
        out
    }

    /// Decodes a proof made by [`Self::to_bytes`].
    ///
    /// Errors: [`CoreError::Truncated`] for empty input,
    /// [`CoreError::UnsupportedVersion`], [`CoreError::WrongLength`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        let Some(&version) = bytes.first() else {
            return Err(CoreError::Truncated { format: FORMAT });
        };
        if version != SENDER_PROOF_VERSION {
            return Err(CoreError::UnsupportedVersion { format: FORMAT, version });
        }
        let bytes: &[u8; SENDER_PROOF_LEN] = bytes.try_into().map_err(|_| CoreError::WrongLength {
            format: FORMAT,
            expected: SENDER_PROOF_LEN,
            actual: bytes.len(),
        })?;
        let mut u64_at = [0u8; 8];
        u64_at.copy_from_slice(&bytes[1..9]);
        let epoch = u64::from_be_bytes(u64_at);
        u64_at.copy_from_slice(&bytes[9..17]);
        let timestamp_ms = u64::from_be_bytes(u64_at);
        let mut nonce = [0u8; SENDER_PROOF_NONCE_LEN];
        nonce.copy_from_slice(&bytes[17..33]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[33..]);
        Ok(Self { epoch, timestamp_ms, nonce, signature })
    }
}

/// A [`SenderProof`] whose signature verified, as
/// [`EpochSenderPublicKey::verify`] returns it: the only input
/// [`ReplayGuard::check`] takes, so unsigned nonces cannot fill the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedSenderProof {
    channel_id: ChannelId,
    epoch: u64,
    timestamp_ms: u64,
    nonce: [u8; SENDER_PROOF_NONCE_LEN],
}

impl VerifiedSenderProof {
    /// The channel the proof is for.
    pub fn channel_id(&self) -> ChannelId {
        self.channel_id
    }

    /// The epoch the proof is for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the sender says it made the proof, in ms since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// The proof's nonce, unique per channel within the freshness window.
    pub fn nonce(&self) -> &[u8; SENDER_PROOF_NONCE_LEN] {
        &self.nonce
    }
}

/// How far a proof's timestamp may be from the verifier's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreshnessWindow {
    /// Oldest accepted proof, in ms before now.
    pub max_age_ms: u64,
    /// Furthest accepted proof, in ms after now (clock skew).
    pub max_future_ms: u64,
}

impl Default for FreshnessWindow {
    /// Five minutes back, one minute ahead.
    fn default() -> Self {
        Self { max_age_ms: 5 * 60 * 1000, max_future_ms: 60 * 1000 }
    }
}

impl FreshnessWindow {
    /// Checks a timestamp against `now_ms`: it must lie in
    /// `[now - max_age, now + max_future]`.
    ///
    /// Errors: [`CoreError::SenderProofExpired`],
    /// [`CoreError::SenderProofFromFuture`].
    pub fn check(&self, timestamp_ms: u64, now_ms: u64) -> Result<(), CoreError> {
        if timestamp_ms < now_ms.saturating_sub(self.max_age_ms) {
            return Err(CoreError::SenderProofExpired { timestamp_ms, now_ms });
        }
        if timestamp_ms > now_ms.saturating_add(self.max_future_ms) {
            return Err(CoreError::SenderProofFromFuture { timestamp_ms, now_ms });
        }
        Ok(())
    }
}

/// Refuses stale proofs and second uses of a nonce in a channel: a pure,
/// in-memory replay cache for the verifier, with time passed in.
///
/// Entries are forgotten once their timestamp leaves the freshness window
/// (a proof that old is refused as expired anyway). Time never runs
/// backwards for the guard: a `now_ms` earlier than one already seen is
/// raised to it, so a clock step back cannot revive a forgotten nonce. When
/// `capacity` unexpired entries are held, new proofs are refused with
/// [`CoreError::ReplayCacheFull`] rather than evicting a live entry.
#[derive(Debug)]
pub struct ReplayGuard {
    window: FreshnessWindow,
    capacity: usize,
    latest_now_ms: u64,
    seen: HashSet<(ChannelId, [u8; SENDER_PROOF_NONCE_LEN])>,
    by_time: BTreeSet<(u64, ChannelId, [u8; SENDER_PROOF_NONCE_LEN])>,
}

impl ReplayGuard {
    /// An empty guard holding at most `capacity` nonces.
    pub fn new(window: FreshnessWindow, capacity: usize) -> Self {
        Self { window, capacity, latest_now_ms: 0, seen: HashSet::new(), by_time: BTreeSet::new() }
    }

    /// Accepts a verified proof once: checks its freshness at `now_ms` and
    /// records its nonce.
    ///
    /// Errors: [`CoreError::SenderProofExpired`],
    /// [`CoreError::SenderProofFromFuture`], [`CoreError::SenderProofReplayed`],
    /// [`CoreError::ReplayCacheFull`].
    pub fn check(&mut self, proof: &VerifiedSenderProof, now_ms: u64) -> Result<(), CoreError> {
        let now_ms = now_ms.max(self.latest_now_ms);
        self.latest_now_ms = now_ms;
        self.window.check(proof.timestamp_ms, now_ms)?;
        self.forget_expired(now_ms);
        let key = (proof.channel_id, proof.nonce);
        if self.seen.contains(&key) {
            return Err(CoreError::SenderProofReplayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(CoreError::ReplayCacheFull { capacity: self.capacity });
        }
        self.seen.insert(key);
        self.by_time.insert((proof.timestamp_ms, proof.channel_id, proof.nonce));
        Ok(())
    }

    /// How many nonces the guard holds.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the guard holds no nonce.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Drops entries older than the window: exactly those that
    /// [`FreshnessWindow::check`] would refuse at `now_ms`.
    fn forget_expired(&mut self, now_ms: u64) {
        let oldest_allowed = now_ms.saturating_sub(self.window.max_age_ms);
        while let Some(&(timestamp_ms, channel_id, nonce)) = self.by_time.first() {
            if timestamp_ms >= oldest_allowed {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&(channel_id, nonce));
        }
    }
}

/// The message a [`SenderProof`] signs (see the module docs).
fn signed_message(
    channel_id: &ChannelId,
    epoch: u64,
    timestamp_ms: u64,
    nonce: &[u8; SENDER_PROOF_NONCE_LEN],
    payload_hash: &[u8; 32],
) -> Vec<u8> {
    let mut message = Vec::with_capacity(PROOF_LABEL.len() + ChannelId::LEN + 8 + 8 + SENDER_PROOF_NONCE_LEN + 32);
    message.extend_from_slice(PROOF_LABEL);
    message.extend_from_slice(channel_id.as_bytes());
    message.extend_from_slice(&epoch.to_be_bytes());
    message.extend_from_slice(&timestamp_ms.to_be_bytes());
    message.extend_from_slice(nonce);
    message.extend_from_slice(payload_hash);
    message
}

#[cfg(test)]
mod tests;
