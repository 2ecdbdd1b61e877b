//! Hybrid public-key envelopes: HPKE (RFC 9180) in base mode with the X-Wing
//! KEM (X25519 + ML-KEM-768, draft-connolly-cfrg-xwing-kem-06), HKDF-SHA256
//! and ChaCha20-Poly1305.
//!
//! For anything sent to a device outside MLS (and the sealed-sender layer).
//! Every primitive comes from the libcrux / hpke-rs stack that openmls's
//! libcrux provider already uses: the X-Wing KEM from `libcrux-kem`, the HPKE
//! key schedule and AEAD context from `hpke-rs` with its libcrux backend.
//! Nothing here computes a primitive itself.
//!
//! Envelope format, version [`ENVELOPE_VERSION`]:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"QPCE"` |
//! | 4 | 1 | version, `1` |
//! | 5 | 2 | HPKE KEM id, `0x647a` (X-Wing), big-endian |
//! | 7 | 2 | HPKE KDF id, `0x0001` (HKDF-SHA256), big-endian |
//! | 9 | 2 | HPKE AEAD id, `0x0003` (ChaCha20-Poly1305), big-endian |
//! | 11 | 1120 | `enc`, the X-Wing ciphertext |
//! | 1131 | n + 16 | AEAD ciphertext and tag |
//!
//! The HPKE `info` is the fixed label `"qpc/v1 hybrid-envelope"`; the AEAD
//! associated data is the 11-byte header followed by the caller's associated
//! data, so changing any header byte (or the caller's context) makes opening
//! fail. A version other than 1 is refused with
//! [`CoreError::UnsupportedVersion`]; any suite other than the one above
//! — in particular a classical, weaker one — with
//! [`CoreError::UnsupportedEnvelopeSuite`], before any cryptography runs.
//!
//! Sealing composes HPKE's `SetupBaseS` from its two library halves so that
//! its randomness comes from the caller's `rng` (the crate's rule) rather
//! than from hpke-rs's internal generator: `libcrux-kem` encapsulates with
//! that randomness, and hpke-rs's `KeySchedule` turns the shared secret into
//! the AEAD context. Opening is hpke-rs's own `SetupBaseR`. A test checks
//! that envelopes made by hpke-rs's single-shot `Seal` open here.

use std::fmt;

use hpke_rs::hpke_types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs::{Hpke, HpkePrivateKey, Mode};
use hpke_rs_libcrux::HpkeLibcrux;
use libcrux_kem::{Algorithm, PublicKey as KemPublicKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::CoreError;

/// Magic bytes opening an envelope.
pub const ENVELOPE_MAGIC: [u8; 4] = *b"QPCE";
/// Current envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// HPKE KEM id of X-Wing.
pub const ENVELOPE_KEM_ID: u16 = 0x647a;
/// HPKE KDF id of HKDF-SHA256.
pub const ENVELOPE_KDF_ID: u16 = 0x0001;
/// HPKE AEAD id of ChaCha20-Poly1305.
pub const ENVELOPE_AEAD_ID: u16 = 0x0003;

/// Length of an X-Wing public key (ML-KEM-768 key then X25519 key).
pub const HYBRID_PUBLIC_KEY_LEN: usize = 1216;
/// Length of an X-Wing secret key: the 32-byte seed both halves expand from.
pub const HYBRID_SECRET_KEY_LEN: usize = 32;
/// Length of the X-Wing ciphertext (`enc`) in every envelope.
pub const ENCAPSULATED_KEY_LEN: usize = 1120;
/// Largest envelope (1 MiB, the server's default payload limit for one
/// delivery envelope): [`open`] refuses longer input before doing any work,
/// [`seal`] refuses plaintexts that would exceed it.
pub const MAX_ENVELOPE_LEN: usize = 1 << 20;
/// Bytes an envelope adds to its plaintext: header, `enc` and AEAD tag.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + ENCAPSULATED_KEY_LEN + TAG_LEN;
/// Largest plaintext an envelope may carry.
pub const MAX_ENVELOPE_PLAINTEXT_LEN: usize = MAX_ENVELOPE_LEN - ENVELOPE_OVERHEAD;

/// The HPKE `info` of every envelope.
const INFO: &[u8] = b"qpc/v1 hybrid-envelope";
/// Fixed header: magic, version and the three suite ids.
const HEADER_LEN: usize = 4 + 1 + 2 + 2 + 2;
const TAG_LEN: usize = 16;
/// Randomness X-Wing encapsulation consumes: 32 bytes for ML-KEM, 32 for the
/// ephemeral X25519 key.
const ENCAPSULATION_SEED_LEN: usize = 64;
const FORMAT: &str = "hybrid envelope";
/// How many bytes of the public key's SHA-256 `Debug` shows.
const FINGERPRINT_BYTES: usize = 8;

/// An X-Wing public key that envelopes are sealed to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HybridPublicKey(Vec<u8>);

impl HybridPublicKey {
    /// Parses a 1216-byte X-Wing public key, checking the ML-KEM half
    /// (FIPS 203 modulus check).
    ///
    /// Errors: [`CoreError::InvalidKeyLength`] and
    /// [`CoreError::InvalidHybridPublicKey`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CoreError> {
        if bytes.len() != HYBRID_PUBLIC_KEY_LEN {
            return Err(CoreError::InvalidKeyLength { expected: HYBRID_PUBLIC_KEY_LEN, actual: bytes.len() });
        }
        KemPublicKey::decode(Algorithm::XWingKemDraft06, bytes).map_err(|_| CoreError::InvalidHybridPublicKey)?;
        Ok(Self(bytes.to_vec()))
    }

    /// The key's 1216 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's 1216 bytes, owned.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.clone()
    }

    /// The first bytes of the key's SHA-256, enough to tell keys apart.
    fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(&self.0)[..FINGERPRINT_BYTES])
    }
}

impl fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HybridPublicKey(sha256:{})", self.fingerprint())
    }
}

/// An X-Wing key pair that envelopes are opened with.
///
/// The secret is the 32-byte X-Wing seed, wiped when the value is dropped;
/// `Debug` shows only a fingerprint of the public key.
#[derive(Clone)]
pub struct HybridKeyPair {
    secret: Zeroizing<[u8; HYBRID_SECRET_KEY_LEN]>,
    public: HybridPublicKey,
}

impl HybridKeyPair {
    /// Generates a fresh key pair from `rng`.
    ///
    /// Fails only with [`CoreError::Internal`], if the library refuses to
    /// expand a seed it must accept.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, CoreError> {
        let mut seed = Zeroizing::new([0u8; HYBRID_SECRET_KEY_LEN]);
        rng.fill_bytes(seed.as_mut_slice());
        Self::from_secret_bytes(&seed)
    }

    /// Rebuilds a key pair from its 32-byte secret seed (X-Wing
    /// `GenerateKeyPairDerand`).
    pub fn from_secret_bytes(secret: &[u8; HYBRID_SECRET_KEY_LEN]) -> Result<Self, CoreError> {
        // libcrux's secret key struct is a plain copy of the seed that this
        // crate cannot wipe; it is dropped at once.
        let (_secret_key, public_key) = libcrux_kem::key_gen_derand(Algorithm::XWingKemDraft06, secret)
            .map_err(|_| CoreError::Internal("X-Wing key generation refused a 32-byte seed"))?;
        Ok(Self { secret: Zeroizing::new(*secret), public: HybridPublicKey(public_key.encode()) })
    }

    /// The 32-byte secret seed, for sealing into a keystore.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; HYBRID_SECRET_KEY_LEN]> {
        self.secret.clone()
    }

    /// The public key to publish.
    pub fn public_key(&self) -> &HybridPublicKey {
        &self.public
    }
}

/// The secret is a `Zeroizing` array, wiped on drop.
impl ZeroizeOnDrop for HybridKeyPair {}

impl fmt::Debug for HybridKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridKeyPair").field("public_key", &self.public).finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` to `recipient`, binding `aad` (which the recipient
/// must pass to [`open`] unchanged). Returns the envelope (see the module
/// docs), [`ENVELOPE_OVERHEAD`] bytes longer than the plaintext.
///
/// Errors: [`CoreError::EnvelopeTooLarge`] for a plaintext over
/// [`MAX_ENVELOPE_PLAINTEXT_LEN`], [`CoreError::InvalidHybridPublicKey`]
/// when encapsulation to the key fails (e.g. a small-order X25519 half).
pub fn seal(
    rng: &mut impl CryptoRngCore,
    recipient: &HybridPublicKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CoreError> {
    let mut randomness = Zeroizing::new([0u8; ENCAPSULATION_SEED_LEN]);
    rng.fill_bytes(randomness.as_mut_slice());
    seal_derand(&randomness, recipient, aad, plaintext)
}

/// Decrypts an envelope made by [`seal`] for `recipient` with the same
/// `aad`.
///
/// Errors, in the order they are checked, all before any cryptography:
/// [`CoreError::EnvelopeTooLarge`] (over [`MAX_ENVELOPE_LEN`]),
/// [`CoreError::Truncated`], [`CoreError::BadMagic`],
/// [`CoreError::UnsupportedVersion`], [`CoreError::UnsupportedEnvelopeSuite`];
/// then [`CoreError::DecryptionFailed`] for a wrong key, wrong `aad` or any
/// modified byte — indistinguishable by design.
pub fn open(recipient: &HybridKeyPair, aad: &[u8], envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    open_parts(recipient, aad, &parse(envelope)?)
}

/// HPKE `SetupBaseR` and `Open` on a parsed envelope.
fn open_parts(recipient: &HybridKeyPair, aad: &[u8], parts: &Parts<'_>) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let secret_key = HpkePrivateKey::new(recipient.secret.to_vec());
    let mut context = hpke()
        .setup_receiver(parts.enc, &secret_key, INFO, None, None, None)
        .map_err(|_| CoreError::DecryptionFailed)?;
    let plaintext =
        context.open(&associated_data(parts.header, aad), parts.ciphertext).map_err(|_| CoreError::DecryptionFailed)?;
    Ok(Zeroizing::new(plaintext))
}

/// [`seal`] with the encapsulation randomness given: deterministic, for
/// known-answer tests.
fn seal_derand(
    randomness: &[u8; ENCAPSULATION_SEED_LEN],
    recipient: &HybridPublicKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CoreError> {
    if plaintext.len() > MAX_ENVELOPE_PLAINTEXT_LEN {
        return Err(CoreError::EnvelopeTooLarge { len: plaintext.len(), max: MAX_ENVELOPE_PLAINTEXT_LEN });
    }
    let (shared_secret, enc) = encapsulate(recipient, randomness)?;
    let mut context = hpke().key_schedule(&shared_secret, INFO, &[], &[]).map_err(CoreError::Hpke)?;
    let header = header();
    let ciphertext = context.seal(&associated_data(&header, aad), plaintext).map_err(CoreError::Hpke)?;

    let mut out = Vec::with_capacity(HEADER_LEN + enc.len() + ciphertext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// X-Wing `EncapsulateDerand(pk, eseed)`: returns `(shared_secret, enc)`.
fn encapsulate(
    recipient: &HybridPublicKey,
    randomness: &[u8; ENCAPSULATION_SEED_LEN],
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), CoreError> {
    let public_key = KemPublicKey::decode(Algorithm::XWingKemDraft06, recipient.as_bytes())
        .map_err(|_| CoreError::InvalidHybridPublicKey)?;
    // With 64 bytes of randomness the only failure left is the X25519
    // exchange with a degenerate recipient key.
    let (shared_secret, enc) =
        public_key.encapsulate_derand(randomness).map_err(|_| CoreError::InvalidHybridPublicKey)?;
    Ok((Zeroizing::new(shared_secret.encode()), enc.encode()))
}

/// The one HPKE configuration of envelope version 1.
fn hpke() -> Hpke<HpkeLibcrux> {
    Hpke::new(Mode::Base, KemAlgorithm::XWingDraft06, KdfAlgorithm::HkdfSha256, AeadAlgorithm::ChaCha20Poly1305)
}

fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&ENVELOPE_MAGIC);
    header[4] = ENVELOPE_VERSION;
    header[5..7].copy_from_slice(&ENVELOPE_KEM_ID.to_be_bytes());
    header[7..9].copy_from_slice(&ENVELOPE_KDF_ID.to_be_bytes());
    header[9..11].copy_from_slice(&ENVELOPE_AEAD_ID.to_be_bytes());
    header
}

/// AEAD associated data: the whole header, then the caller's context.
fn associated_data(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(header.len() + aad.len());
    full.extend_from_slice(header);
    full.extend_from_slice(aad);
    full
}

/// An envelope split into its parts, after every check that needs no key.
struct Parts<'a> {
    header: &'a [u8],
    enc: &'a [u8],
    ciphertext: &'a [u8],
}

fn parse(envelope: &[u8]) -> Result<Parts<'_>, CoreError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(CoreError::EnvelopeTooLarge { len: envelope.len(), max: MAX_ENVELOPE_LEN });
    }
    if envelope.len() < 5 {
        return Err(CoreError::Truncated { format: FORMAT });
    }
    if envelope[..4] != ENVELOPE_MAGIC {
        return Err(CoreError::BadMagic { format: FORMAT });
    }
    if envelope[4] != ENVELOPE_VERSION {
        return Err(CoreError::UnsupportedVersion { format: FORMAT, version: envelope[4] });
    }
    if envelope.len() < HEADER_LEN {
        return Err(CoreError::Truncated { format: FORMAT });
    }
    let suite_id = |at: usize| u16::from_be_bytes([envelope[at], envelope[at + 1]]);
    let (kem, kdf, aead) = (suite_id(5), suite_id(7), suite_id(9));
    if (kem, kdf, aead) != (ENVELOPE_KEM_ID, ENVELOPE_KDF_ID, ENVELOPE_AEAD_ID) {
        return Err(CoreError::UnsupportedEnvelopeSuite { kem, kdf, aead });
    }
    if envelope.len() < ENVELOPE_OVERHEAD {
        return Err(CoreError::Truncated { format: FORMAT });
    }
    let (header, rest) = envelope.split_at(HEADER_LEN);
    let (enc, ciphertext) = rest.split_at(ENCAPSULATED_KEY_LEN);
    Ok(Parts { header, enc, ciphertext })
}

#[cfg(test)]
mod tests;
