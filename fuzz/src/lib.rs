//! Fixtures shared by the fuzz targets in `fuzz_targets/` and by the seed
//! corpus writer (`examples/seeds.rs`).
//!
//! Every key, password and identity here is fixed, so a crashing input
//! found in one run reproduces in the next. The exception is the MLS
//! fixture: openmls draws its HPKE keys from its own RNG, so the group's
//! tree differs between runs (the members' identity keys do not).

// A fixture that cannot be built is a broken harness: stop loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use quicprochat_core::keystore::{MAX_M_COST_KIB, MAX_P_COST, MAX_T_COST};
use quicprochat_core::{HybridKeyPair, IdentityKeyPair, MlsClient, MlsSuite, archive};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// Password of every archive and password-sealed blob the targets open.
pub const PASSWORD: &[u8] = b"fuzz-password";
/// Key of every key-sealed blob the keystore target opens.
pub const KEYSTORE_KEY: [u8; 32] = [0x4b; 32];
/// Associated data of envelopes and key-sealed blobs.
pub const AAD: &[u8] = b"qpc-fuzz-aad";
/// Secret seed of the envelope recipient's X-Wing key pair.
pub const HYBRID_SEED: [u8; 32] = [0x5e; 32];
/// MLS group id (the channel id) of the MLS and tracker fixtures.
pub const GROUP: &[u8] = b"fuzz-group-00001";

/// Largest Argon2 memory cost (KiB) a target lets through to the parser.
pub const LIGHT_M_COST_KIB: u32 = 64;
/// Largest Argon2 iteration count a target lets through.
pub const LIGHT_T_COST: u32 = 2;
/// Largest Argon2 parallelism a target lets through.
pub const LIGHT_P_COST: u32 = 2;

/// Whether Argon2 parameters read from a fuzz input would make one iteration
/// slow: within quicprochat-core's caps (up to 1 GiB and 16 iterations,
/// which the parser accepts and then runs for seconds) but above the light
/// limits here. Parameters over the caps are *not* slow (the parser refuses
/// them before Argon2 allocates anything), so those inputs still run.
pub fn kdf_params_too_slow(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> bool {
    let within_caps = m_cost_kib <= MAX_M_COST_KIB && t_cost <= MAX_T_COST && p_cost <= MAX_P_COST;
    let light = m_cost_kib <= LIGHT_M_COST_KIB && t_cost <= LIGHT_T_COST && p_cost <= LIGHT_P_COST;
    within_caps && !light
}

/// [`kdf_params_too_slow`] for a header laid out as both the archive and the
/// password-sealed keystore lay theirs out: magic (4), version (1), then
/// `m_cost`, `t_cost`, `p_cost` as `u32be`. Inputs too short to carry the
/// parameters are never slow.
pub fn kdf_header_too_slow(bytes: &[u8]) -> bool {
    let read = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    match (read(5), read(9), read(13)) {
        (Some(m), Some(t), Some(p)) => kdf_params_too_slow(m, t, p),
        _ => false,
    }
}

/// The envelope recipient: an X-Wing key pair from [`HYBRID_SEED`].
pub fn hybrid_key_pair() -> HybridKeyPair {
    HybridKeyPair::from_secret_bytes(&HYBRID_SEED).expect("every 32-byte seed is an X-Wing key")
}

/// A fixed identity key from a one-byte seed.
pub fn identity(seed: u8) -> IdentityKeyPair {
    IdentityKeyPair::from_secret_bytes(&[seed; 32])
}

/// A deterministic RNG (SplitMix64) for seeds and round-trip checks. Not
/// random at all: fuzzing only.
#[derive(Debug, Clone)]
pub struct FixedRng(u64);

impl FixedRng {
    /// An RNG whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Only so the library's `CryptoRngCore` bounds accept it; see the type's docs.
impl CryptoRng for FixedRng {}

/// A two-member MLS group: `alice` created it and added `bob`, both at
/// epoch 1. `carol` is outside, with one key package of hers stored, so a
/// Welcome to her gets as far as the key package lookup.
#[derive(Debug)]
pub struct MlsFixture {
    /// The creator, member 0.
    pub alice: MlsClient,
    /// Member 1, joined from alice's Welcome.
    pub bob: MlsClient,
    /// Not a member.
    pub carol: MlsClient,
    /// The GroupInfo of epoch 0 (alice alone), what a server starts tracking
    /// the channel from.
    pub group_info_epoch0: Vec<u8>,
    /// The commit that added bob (epoch 0 to 1).
    pub add_bob_commit: Vec<u8>,
    /// The Welcome that let bob join.
    pub welcome: Vec<u8>,
    /// The GroupInfo of epoch 1.
    pub group_info: Vec<u8>,
}

/// Builds the [`MlsFixture`] for `suite`, with identities from fixed seeds.
pub fn mls_fixture(suite: MlsSuite) -> MlsFixture {
    let alice = MlsClient::new(&identity(1), "alice", suite).unwrap();
    let bob = MlsClient::new(&identity(2), "bob", suite).unwrap();
    let carol = MlsClient::new(&identity(3), "carol", suite).unwrap();
    carol.generate_key_package().unwrap();

    alice.create_group(GROUP).unwrap();
    let group_info_epoch0 = alice.export_group_info(GROUP).unwrap();
    let outcome = alice.add_members(GROUP, &[bob.generate_key_package().unwrap()]).unwrap();
    alice.merge_pending_commit(GROUP).unwrap();
    bob.join_from_welcome(&outcome.welcome).unwrap();
    MlsFixture {
        alice,
        bob,
        carol,
        group_info_epoch0,
        add_bob_commit: outcome.commit,
        welcome: outcome.welcome,
        group_info: outcome.group_info,
    }
}

/// Label of the archive's record hash (`quicprochat_core::archive`, format
/// version 1). Should it change, sealed-mode inputs stop passing the chain
/// check but the target still checks for panics.
const ARCHIVE_RECORD_LABEL: &[u8] = b"qpc/v1/archive-record";
/// Salt of the archives [`ArchiveSealer`] builds.
const ARCHIVE_SALT: [u8; 16] = [0x5a; 16];

/// Builds archives whose record *plaintexts* come from the fuzz input, so
/// the record parser behind the AEAD and the hash chain is reached at all:
/// a fuzzer cannot forge ChaCha20-Poly1305 tags. The header asks for the
/// cheapest Argon2 parameters and the key is derived once, here, exactly as
/// `quicprochat_core::archive` derives it.
#[derive(Clone)]
pub struct ArchiveSealer {
    header: Vec<u8>,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for ArchiveSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSealer").finish_non_exhaustive()
    }
}

impl Default for ArchiveSealer {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveSealer {
    /// Derives the key of [`PASSWORD`] with 8 KiB, 1 iteration, 1 lane.
    pub fn new() -> Self {
        let (m_cost, t_cost, p_cost) = (8u32, 1u32, 1u32);
        let mut header = Vec::with_capacity(33);
        header.extend_from_slice(&archive::ARCHIVE_MAGIC);
        header.push(archive::ARCHIVE_VERSION);
        for value in [m_cost, t_cost, p_cost] {
            header.extend_from_slice(&value.to_be_bytes());
        }
        header.extend_from_slice(&ARCHIVE_SALT);
        let params = Params::new(m_cost, t_cost, p_cost, Some(32)).unwrap();
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(PASSWORD, &ARCHIVE_SALT, &mut key)
            .unwrap();
        Self { header, cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) }
    }

    /// Turns a script into an archive. The script is a list of records,
    /// each `flags (1) | len (u16be) | body (len)`, the last one possibly
    /// cut short. With bit 0 of `flags` set the record's plaintext is
    /// `body[0]` (the kind), then the correct previous hash, then
    /// `body[1..]`; without it, `body` alone. The hash chain follows the
    /// records of kind 0 (messages), as the verifier's does.
    pub fn seal(&self, mut script: &[u8]) -> Vec<u8> {
        let mut out = self.header.clone();
        let mut head = archive::archive_genesis_hash();
        let mut counter: u64 = 0;
        while let Some((&flags, rest)) = script.split_first() {
            let (len, rest) = match rest {
                [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
                _ => (rest.len(), &[][..]),
            };
            let (body, rest) = rest.split_at(len.min(rest.len()));
            script = rest;

            let mut plaintext = Vec::with_capacity(body.len() + 32);
            match body.split_first() {
                Some((&kind, fields)) if flags & 1 == 1 => {
                    plaintext.push(kind);
                    plaintext.extend_from_slice(&head);
                    plaintext.extend_from_slice(fields);
                }
                _ => plaintext.extend_from_slice(body),
            }
            if plaintext.first() == Some(&0) {
                head = Sha256::new().chain_update(ARCHIVE_RECORD_LABEL).chain_update(&plaintext).finalize().into();
            }

            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let ciphertext =
                self.cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: &plaintext, aad: &self.header }).unwrap();
            let len = u32::try_from(nonce.len() + ciphertext.len()).unwrap();
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ciphertext);
        }
        out
    }
}
