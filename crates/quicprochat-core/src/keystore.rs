//! Sealed blobs for data at rest: keystores and state files.
//!
//! Two formats, both ChaCha20-Poly1305:
//!
//! **Password-sealed** ([`seal_with_password`]), key = Argon2id(password, salt):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"QPCK"` |
//! | 4 | 1 | version, `1` |
//! | 5 | 4 | Argon2 memory cost in KiB, big-endian |
//! | 9 | 4 | Argon2 iterations, big-endian |
//! | 13 | 4 | Argon2 parallelism, big-endian |
//! | 17 | 16 | salt |
//! | 33 | 12 | nonce |
//! | 45 | … | ciphertext and 16-byte tag |
//!
//! The whole 45-byte header is the AEAD associated data, so changing any
//! parameter, the salt or the nonce makes opening fail.
//!
//! **Key-sealed** ([`seal_with_key`]), for files the SDK encrypts with a
//! stored 32-byte key: `version (1) || nonce (12) || ciphertext+tag`, with
//! associated data `version || caller_aad`.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::CoreError;

/// Magic bytes opening a password-sealed blob.
pub const PASSWORD_SEALED_MAGIC: [u8; 4] = *b"QPCK";
/// Current version of the password-sealed format.
pub const PASSWORD_SEALED_VERSION: u8 = 1;
/// Current version of the key-sealed format.
pub const KEY_SEALED_VERSION: u8 = 1;

/// Largest Argon2 memory cost accepted, in KiB (1 GiB). A file asking for
/// more is refused before anything is allocated.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
/// Largest Argon2 iteration count accepted.
pub const MAX_T_COST: u32 = 16;
/// Largest Argon2 parallelism accepted.
pub const MAX_P_COST: u32 = 16;

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const PASSWORD_HEADER_LEN: usize = 4 + 1 + 12 + SALT_LEN + NONCE_LEN;
const KEY_SEALED_HEADER_LEN: usize = 1 + NONCE_LEN;

const PASSWORD_FORMAT: &str = "password-sealed blob";
const KEY_FORMAT: &str = "key-sealed blob";

/// Argon2id cost parameters for [`seal_with_password`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of iterations.
    pub t_cost: u32,
    /// Degree of parallelism.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// Production strength: 64 MiB, 3 iterations, 1 lane.
    fn default() -> Self {
        Self { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

impl KdfParams {
    /// The cheapest parameters Argon2 allows (8 KiB, 1 iteration, 1 lane).
    /// For tests only: they give no protection against guessing.
    pub fn light() -> Self {
        Self { m_cost_kib: 8, t_cost: 1, p_cost: 1 }
    }

    fn argon2(&self) -> Result<Argon2<'static>, CoreError> {
        argon2id(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
    }
}

/// Builds an Argon2id (v1.3) instance after checking the parameters against
/// this crate's bounds ([`MAX_M_COST_KIB`], [`MAX_T_COST`], [`MAX_P_COST`]).
pub(crate) fn argon2id(
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    output_len: Option<usize>,
) -> Result<Argon2<'static>, CoreError> {
    if m_cost_kib > MAX_M_COST_KIB || t_cost > MAX_T_COST || p_cost > MAX_P_COST {
        return Err(CoreError::KdfParamsOutOfBounds { m_cost_kib, t_cost, p_cost });
    }
    let params = Params::new(m_cost_kib, t_cost, p_cost, output_len).map_err(CoreError::InvalidKdfParams)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Encrypts `plaintext` under a key derived from `password`.
///
/// Fails with [`CoreError::KdfParamsOutOfBounds`] or
/// [`CoreError::InvalidKdfParams`] for parameters that
/// [`open_with_password`] would refuse.
pub fn seal_with_password(
    rng: &mut impl CryptoRngCore,
    password: &[u8],
    plaintext: &[u8],
    params: &KdfParams,
) -> Result<Vec<u8>, CoreError> {
    let argon2 = params.argon2()?;
    let mut salt = [0u8; SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);

    let mut out = Vec::with_capacity(PASSWORD_HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&PASSWORD_SEALED_MAGIC);
    out.push(PASSWORD_SEALED_VERSION);
    out.extend_from_slice(&params.m_cost_kib.to_be_bytes());
    out.extend_from_slice(&params.t_cost.to_be_bytes());
    out.extend_from_slice(&params.p_cost.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);

    let key = derive_key(&argon2, password, &salt)?;
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &out })
        .map_err(|_| CoreError::EncryptionFailed)?;
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts a blob made by [`seal_with_password`].
///
/// Errors: [`CoreError::BadMagic`], [`CoreError::Truncated`],
/// [`CoreError::UnsupportedVersion`], [`CoreError::KdfParamsOutOfBounds`]
/// (checked before any memory is allocated for Argon2), and
/// [`CoreError::WrongPassword`] when the password is wrong *or* the blob was
/// modified: the two are cryptographically indistinguishable.
pub fn open_with_password(password: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    if sealed.len() < 5 {
        return Err(CoreError::Truncated { format: PASSWORD_FORMAT });
    }
    if sealed[..4] != PASSWORD_SEALED_MAGIC {
        return Err(CoreError::BadMagic { format: PASSWORD_FORMAT });
    }
    if sealed[4] != PASSWORD_SEALED_VERSION {
        return Err(CoreError::UnsupportedVersion { format: PASSWORD_FORMAT, version: sealed[4] });
    }
    if sealed.len() < PASSWORD_HEADER_LEN + TAG_LEN {
        return Err(CoreError::Truncated { format: PASSWORD_FORMAT });
    }
    let (header, ciphertext) = sealed.split_at(PASSWORD_HEADER_LEN);
    let params = KdfParams {
        m_cost_kib: read_u32(&header[5..9]),
        t_cost: read_u32(&header[9..13]),
        p_cost: read_u32(&header[13..17]),
    };
    let salt = &header[17..17 + SALT_LEN];
    let nonce = &header[17 + SALT_LEN..];

    let key = derive_key(&params.argon2()?, password, salt)?;
    let plaintext = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: header })
        .map_err(|_| CoreError::WrongPassword)?;
    Ok(Zeroizing::new(plaintext))
}

/// Derives an independent 32-byte key for one `purpose` from a master key: HKDF-SHA256
/// (RFC 5869) with no salt (the master key is already uniformly random) and `purpose` as the
/// info string. Keys for different purposes are unrelated, so one operator secret can key
/// several algorithms without reusing a key across them.
pub fn derive_subkey(master: &[u8], purpose: &[u8]) -> Result<Zeroizing<[u8; 32]>, CoreError> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(None, master)
        .expand(purpose, out.as_mut_slice())
        .map_err(|_| CoreError::Internal("HKDF-SHA256 refused a 32-byte output"))?;
    Ok(out)
}

/// Encrypts `plaintext` under a raw 32-byte key, binding `aad`.
pub fn seal_with_key(
    rng: &mut impl CryptoRngCore,
    key: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let full_aad = key_sealed_aad(aad);
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &full_aad })
        .map_err(|_| CoreError::EncryptionFailed)?;
    let mut out = Vec::with_capacity(KEY_SEALED_HEADER_LEN + ciphertext.len());
    out.push(KEY_SEALED_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts a blob made by [`seal_with_key`] with the same `aad`.
///
/// Errors: [`CoreError::Truncated`], [`CoreError::UnsupportedVersion`], and
/// [`CoreError::DecryptionFailed`] for a wrong key, wrong `aad` or modified
/// blob.
pub fn open_with_key(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CoreError> {
    let Some((&version, rest)) = sealed.split_first() else {
        return Err(CoreError::Truncated { format: KEY_FORMAT });
    };
    if version != KEY_SEALED_VERSION {
        return Err(CoreError::UnsupportedVersion { format: KEY_FORMAT, version });
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(CoreError::Truncated { format: KEY_FORMAT });
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let full_aad = key_sealed_aad(aad);
    let plaintext = ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &full_aad })
        .map_err(|_| CoreError::DecryptionFailed)?;
    Ok(Zeroizing::new(plaintext))
}

fn derive_key(argon2: &Argon2<'_>, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, CoreError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    argon2.hash_password_into(password, salt, key.as_mut_slice()).map_err(CoreError::KeyDerivation)?;
    Ok(key)
}

fn key_sealed_aad(aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(1 + aad.len());
    full.push(KEY_SEALED_VERSION);
    full.extend_from_slice(aad);
    full
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_be_bytes(array)
}

#[cfg(test)]
mod tests {

    #[test]
    fn derive_subkey_is_hkdf_sha256_and_separates_purposes() {
        // RFC 5869 test case 3 (no salt, no info), first 32 bytes of the output.
        let okm = derive_subkey(&[0x0b; 22], b"").unwrap();
        assert_eq!(hex::encode(okm.as_slice()), "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d");
        let master = [7u8; 32];
        let a = derive_subkey(&master, b"qpc-server/v1/database").unwrap();
        let b = derive_subkey(&master, b"qpc-server/v1/key-files").unwrap();
        assert_ne!(a.as_slice(), b.as_slice());
        assert_eq!(a.as_slice(), derive_subkey(&master, b"qpc-server/v1/database").unwrap().as_slice());
    }
    use super::*;
    use rand::rngs::OsRng;

    fn sealed(password: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with_password(&mut OsRng, password, plaintext, &KdfParams::light()).unwrap()
    }

    #[test]
    fn password_roundtrip() {
        let blob = sealed(b"hunter2", b"secret state");
        assert_eq!(&blob[..4], b"QPCK");
        assert_eq!(blob.len(), PASSWORD_HEADER_LEN + 12 + TAG_LEN);
        let opened = open_with_password(b"hunter2", &blob).unwrap();
        assert_eq!(opened.as_slice(), b"secret state");
    }

    #[test]
    fn wrong_password_is_refused() {
        let blob = sealed(b"hunter2", b"secret");
        assert!(matches!(open_with_password(b"hunter3", &blob), Err(CoreError::WrongPassword)));
    }

    #[test]
    fn tampered_header_or_body_is_refused() {
        let blob = sealed(b"pw", b"secret");
        // Salt byte.
        let mut tampered = blob.clone();
        tampered[20] ^= 1;
        assert!(matches!(open_with_password(b"pw", &tampered), Err(CoreError::WrongPassword)));
        // Parameter: one more iteration is still in bounds but authenticated.
        let mut tampered = blob.clone();
        tampered[12] = 2;
        assert!(matches!(open_with_password(b"pw", &tampered), Err(CoreError::WrongPassword)));
        // Ciphertext byte.
        let mut tampered = blob.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(open_with_password(b"pw", &tampered), Err(CoreError::WrongPassword)));
        // Magic.
        let mut tampered = blob;
        tampered[0] = b'X';
        assert!(matches!(open_with_password(b"pw", &tampered), Err(CoreError::BadMagic { .. })));
    }

    #[test]
    fn unsupported_version_is_refused() {
        let mut blob = sealed(b"pw", b"secret");
        blob[4] = 2;
        assert!(matches!(open_with_password(b"pw", &blob), Err(CoreError::UnsupportedVersion { version: 2, .. })));
    }

    #[test]
    fn absurd_params_are_refused_before_allocating() {
        let mut blob = sealed(b"pw", b"secret");
        // 100 GiB of memory cost.
        blob[5..9].copy_from_slice(&(100u32 * 1024 * 1024).to_be_bytes());
        assert!(matches!(open_with_password(b"pw", &blob), Err(CoreError::KdfParamsOutOfBounds { .. })));
        let too_heavy = KdfParams { m_cost_kib: MAX_M_COST_KIB + 1, ..KdfParams::light() };
        assert!(matches!(
            seal_with_password(&mut OsRng, b"pw", b"x", &too_heavy),
            Err(CoreError::KdfParamsOutOfBounds { .. })
        ));
    }

    #[test]
    fn truncated_blobs_are_refused() {
        let blob = sealed(b"pw", b"secret");
        assert!(matches!(open_with_password(b"pw", &blob[..PASSWORD_HEADER_LEN]), Err(CoreError::Truncated { .. })));
        assert!(matches!(open_with_password(b"pw", b"QP"), Err(CoreError::Truncated { .. })));
    }

    #[test]
    fn key_sealed_roundtrip_and_failures() {
        let key = [9u8; 32];
        let blob = seal_with_key(&mut OsRng, &key, b"state-v1", b"payload").unwrap();
        assert_eq!(blob[0], KEY_SEALED_VERSION);
        assert_eq!(open_with_key(&key, b"state-v1", &blob).unwrap().as_slice(), b"payload");
        assert!(matches!(open_with_key(&key, b"other", &blob), Err(CoreError::DecryptionFailed)));
        assert!(matches!(open_with_key(&[8u8; 32], b"state-v1", &blob), Err(CoreError::DecryptionFailed)));
        let mut wrong_version = blob.clone();
        wrong_version[0] = 7;
        assert!(matches!(
            open_with_key(&key, b"state-v1", &wrong_version),
            Err(CoreError::UnsupportedVersion { version: 7, .. })
        ));
        assert!(matches!(open_with_key(&key, b"state-v1", &blob[..10]), Err(CoreError::Truncated { .. })));
    }
}
