//! How a device appears inside MLS: a `BasicCredential` whose identity names
//! the account and the device.
//!
//! Identity encoding, version 1:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, `0x01` |
//! | 1 | 16 | device id ([`DeviceId`]) |
//! | 17 | 1 | username length `n`, 1..=255 |
//! | 18 | n | username, UTF-8 |
//!
//! Nothing may follow the username. The credential does not carry the
//! identity key: that is the leaf's signature key, and the device id must
//! equal `SHA-256(signature_key)[..16]`, which [`member_from_parts`] checks,
//! so a member cannot claim another device's id.

use openmls::prelude::{BasicCredential, Credential, CredentialType};
use thiserror::Error;

use crate::ids::{DeviceId, device_id_for_key};

/// Version byte of the credential identity encoding.
pub const CREDENTIAL_IDENTITY_VERSION: u8 = 1;
/// Longest username a credential can carry, in bytes.
pub const MAX_USERNAME_LEN: usize = 255;

const HEADER_LEN: usize = 1 + DeviceId::LEN + 1;

/// Why a member's credential was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    /// Not a `BasicCredential`.
    #[error("unsupported credential type {0}")]
    UnsupportedType(u16),
    /// The identity uses an unknown encoding version.
    #[error("unsupported credential identity version {0}")]
    UnsupportedVersion(u8),
    /// The identity is shorter or longer than its length fields say.
    #[error("credential identity has the wrong length")]
    BadLength,
    /// The username is empty or longer than [`MAX_USERNAME_LEN`].
    #[error("username must be 1..={MAX_USERNAME_LEN} bytes, got {0}")]
    BadUsernameLength(usize),
    /// The username is not UTF-8.
    #[error("username is not valid UTF-8")]
    UsernameNotUtf8,
    /// The leaf's signature key is not a 32-byte Ed25519 key.
    #[error("signature key must be 32 bytes, got {0}")]
    BadSignatureKeyLength(usize),
    /// The device id in the credential is not derived from the signature key.
    #[error("device id does not match the signature key")]
    DeviceIdMismatch,
}

/// A group member as the application sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberInfo {
    /// The account's username.
    pub username: String,
    /// The device's id.
    pub device_id: DeviceId,
    /// The device's Ed25519 identity key (its MLS signature key).
    pub identity_key: [u8; 32],
    /// The member's leaf index in the ratchet tree.
    pub leaf_index: u32,
}

/// Encodes a credential identity (see the module docs).
pub fn encode_credential_identity(username: &str, device_id: &DeviceId) -> Result<Vec<u8>, CredentialError> {
    let name = username.as_bytes();
    if name.is_empty() || name.len() > MAX_USERNAME_LEN {
        return Err(CredentialError::BadUsernameLength(name.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + name.len());
    out.push(CREDENTIAL_IDENTITY_VERSION);
    out.extend_from_slice(device_id.as_bytes());
    // Fits: checked against MAX_USERNAME_LEN (= u8::MAX) above.
    out.push(u8::try_from(name.len()).map_err(|_| CredentialError::BadUsernameLength(name.len()))?);
    out.extend_from_slice(name);
    Ok(out)
}

/// Decodes a credential identity into `(username, device_id)`.
pub fn decode_credential_identity(identity: &[u8]) -> Result<(String, DeviceId), CredentialError> {
    let (&version, rest) = identity.split_first().ok_or(CredentialError::BadLength)?;
    if version != CREDENTIAL_IDENTITY_VERSION {
        return Err(CredentialError::UnsupportedVersion(version));
    }
    if rest.len() < DeviceId::LEN + 1 {
        return Err(CredentialError::BadLength);
    }
    let (device, rest) = rest.split_at(DeviceId::LEN);
    let (&name_len, name) = rest.split_first().ok_or(CredentialError::BadLength)?;
    if name_len == 0 {
        return Err(CredentialError::BadUsernameLength(0));
    }
    if name.len() != usize::from(name_len) {
        return Err(CredentialError::BadLength);
    }
    let username = std::str::from_utf8(name).map_err(|_| CredentialError::UsernameNotUtf8)?.to_owned();
    let device_id = DeviceId::try_from(device).map_err(|_| CredentialError::BadLength)?;
    Ok((username, device_id))
}

/// Builds the MLS credential for a device.
pub(crate) fn credential_for(username: &str, device_id: &DeviceId) -> Result<Credential, CredentialError> {
    Ok(BasicCredential::new(encode_credential_identity(username, device_id)?).into())
}

/// Checks a leaf's credential and signature key and turns them into a
/// [`MemberInfo`].
pub(crate) fn member_from_parts(
    credential: &Credential,
    signature_key: &[u8],
    leaf_index: u32,
) -> Result<MemberInfo, CredentialError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(CredentialError::UnsupportedType(u16::from(credential.credential_type())));
    }
    let (username, device_id) = decode_credential_identity(credential.serialized_content())?;
    let identity_key: [u8; 32] =
        signature_key.try_into().map_err(|_| CredentialError::BadSignatureKeyLength(signature_key.len()))?;
    if device_id_for_key(&identity_key) != device_id {
        return Err(CredentialError::DeviceIdMismatch);
    }
    Ok(MemberInfo { username, device_id, identity_key, leaf_index })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_roundtrip() {
        let device = DeviceId([3; 16]);
        let encoded = encode_credential_identity("alice", &device).unwrap();
        assert_eq!(encoded[0], 1);
        assert_eq!(&encoded[1..17], &[3; 16]);
        assert_eq!(encoded[17], 5);
        assert_eq!(&encoded[18..], b"alice");
        assert_eq!(decode_credential_identity(&encoded).unwrap(), ("alice".to_owned(), device));
    }

    #[test]
    fn malformed_identities_are_refused() {
        let device = DeviceId([3; 16]);
        let good = encode_credential_identity("bob", &device).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_credential_identity(&trailing), Err(CredentialError::BadLength));
        assert_eq!(decode_credential_identity(&good[..good.len() - 1]), Err(CredentialError::BadLength));
        let mut version = good.clone();
        version[0] = 9;
        assert_eq!(decode_credential_identity(&version), Err(CredentialError::UnsupportedVersion(9)));
        let mut not_utf8 = good;
        not_utf8[18] = 0xff;
        assert_eq!(decode_credential_identity(&not_utf8), Err(CredentialError::UsernameNotUtf8));
        assert_eq!(encode_credential_identity("", &device), Err(CredentialError::BadUsernameLength(0)));
        assert!(encode_credential_identity(&"x".repeat(256), &device).is_err());
    }

    #[test]
    fn device_id_must_match_key() {
        let key = [5u8; 32];
        let credential = credential_for("carol", &device_id_for_key(&key)).unwrap();
        let member = member_from_parts(&credential, &key, 2).unwrap();
        assert_eq!(member.username, "carol");
        assert_eq!(member.leaf_index, 2);
        assert_eq!(member_from_parts(&credential, &[6u8; 32], 2), Err(CredentialError::DeviceIdMismatch));
        assert_eq!(member_from_parts(&credential, &[5u8; 31], 2), Err(CredentialError::BadSignatureKeyLength(31)));
    }
}
