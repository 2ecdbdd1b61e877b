//! Device identity: one Ed25519 key pair per device.
//!
//! The same key signs MLS messages (it is the signature key of the device's
//! leaf in every group), device-binding challenges, and anything else a device
//! must prove it authored.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::CoreError;
use crate::ids::{DeviceId, device_id_for_key};

/// Length of an Ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// A device's Ed25519 identity key pair.
///
/// The secret half is wiped when the value is dropped; `Debug` shows only the
/// public key.
#[derive(Clone)]
pub struct IdentityKeyPair {
    signing_key: SigningKey,
}

impl IdentityKeyPair {
    /// Generates a fresh key pair from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self { signing_key: SigningKey::generate(rng) }
    }

    /// Rebuilds a key pair from its 32-byte secret seed.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self { signing_key: SigningKey::from_bytes(secret) }
    }

    /// The 32-byte secret seed, for sealing into a keystore.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing_key.to_bytes())
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// This device's id, derived from the public key.
    pub fn device_id(&self) -> DeviceId {
        device_id_for_key(&self.public_key())
    }

    /// Signs `message` (pure Ed25519, no prehash).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing_key.sign(message).to_bytes()
    }
}

/// `SigningKey` wipes itself on drop (ed25519-dalek's `zeroize` feature).
impl ZeroizeOnDrop for IdentityKeyPair {}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair").field("public_key", &hex::encode(self.public_key())).finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature with strict checks (no small-order keys, no
/// malleable signatures).
///
/// Errors: [`CoreError::InvalidKeyLength`] or
/// [`CoreError::InvalidSignatureLength`] for badly sized inputs,
/// [`CoreError::InvalidPublicKey`] when the key is not a valid point, and
/// [`CoreError::InvalidSignature`] when the signature does not verify.
pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CoreError> {
    let key_bytes: &[u8; PUBLIC_KEY_LEN] = public_key
        .try_into()
        .map_err(|_| CoreError::InvalidKeyLength { expected: PUBLIC_KEY_LEN, actual: public_key.len() })?;
    let signature_bytes: &[u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| CoreError::InvalidSignatureLength { expected: SIGNATURE_LEN, actual: signature.len() })?;
    let verifying_key = VerifyingKey::from_bytes(key_bytes).map_err(CoreError::InvalidPublicKey)?;
    let signature = Signature::from_bytes(signature_bytes);
    verifying_key.verify_strict(message, &signature).map_err(CoreError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn sign_and_verify() {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let signature = identity.sign(b"hello");
        verify_signature(&identity.public_key(), b"hello", &signature).unwrap();
    }

    #[test]
    fn tampered_message_or_signature_fails() {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let mut signature = identity.sign(b"hello");
        assert!(matches!(
            verify_signature(&identity.public_key(), b"hellO", &signature),
            Err(CoreError::InvalidSignature(_))
        ));
        signature[10] ^= 1;
        assert!(matches!(
            verify_signature(&identity.public_key(), b"hello", &signature),
            Err(CoreError::InvalidSignature(_))
        ));
    }

    #[test]
    fn wrong_key_and_bad_lengths_fail() {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let bob = IdentityKeyPair::generate(&mut OsRng);
        let signature = alice.sign(b"m");
        assert!(matches!(verify_signature(&bob.public_key(), b"m", &signature), Err(CoreError::InvalidSignature(_))));
        assert!(matches!(
            verify_signature(&[0u8; 31], b"m", &signature),
            Err(CoreError::InvalidKeyLength { expected: 32, actual: 31 })
        ));
        assert!(matches!(
            verify_signature(&alice.public_key(), b"m", &signature[..63]),
            Err(CoreError::InvalidSignatureLength { expected: 64, actual: 63 })
        ));
    }

    #[test]
    fn secret_roundtrip_and_redacted_debug() {
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let restored = IdentityKeyPair::from_secret_bytes(&identity.secret_bytes());
        assert_eq!(restored.public_key(), identity.public_key());
        assert_eq!(restored.device_id(), identity.device_id());

        let debug = format!("{identity:?}");
        assert!(debug.contains(&hex::encode(identity.public_key())));
        assert!(!debug.contains(&hex::encode(*identity.secret_bytes())));
    }
}
