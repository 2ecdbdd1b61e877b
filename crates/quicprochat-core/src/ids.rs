//! Typed identifiers and the hashes that derive them.
//!
//! Every derivation here is part of the wire protocol: the server and every
//! client must compute the same bytes, so each function documents its exact
//! input layout and the tests pin known answers.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CoreError;

/// Domain separation label for [`dm_channel_id`].
const DM_CHANNEL_LABEL: &[u8] = b"qpc/v1/dm-channel";
/// Domain separation label for [`device_binding_challenge`].
const REGISTER_DEVICE_LABEL: &[u8] = b"qpc/v1/register-device";
/// How many bytes of an id `Debug` and `Display` show.
const SHORT_HEX_BYTES: usize = 4;

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// Length of the identifier in bytes.
            pub const LEN: usize = 16;

            /// The raw identifier bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// The full identifier as 32 lowercase hex characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses the 32-character hex form produced by [`Self::to_hex`].
            pub fn from_hex(text: &str) -> Result<Self, CoreError> {
                let bytes = hex::decode(text).map_err(CoreError::InvalidHex)?;
                Self::try_from(bytes.as_slice())
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = CoreError;

            fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
                let array: [u8; 16] =
                    bytes.try_into().map_err(|_| CoreError::InvalidIdLength {
                        expected: Self::LEN,
                        actual: bytes.len(),
                    })?;
                Ok(Self(array))
            }
        }

        impl From<[u8; 16]> for $name {
            fn from(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        /// Shows only the first bytes, enough to tell ids apart in logs.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(&self.0[..SHORT_HEX_BYTES]))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

id16! {
    /// A device: the first 16 bytes of SHA-256 over its Ed25519 identity key
    /// (see [`device_id_for_key`]).
    DeviceId
}

id16! {
    /// A channel, the server-side home of one MLS group. DM channels derive
    /// theirs with [`dm_channel_id`].
    ChannelId
}

/// Derives a device id: `SHA-256(identity_key)[..16]`.
pub fn device_id_for_key(identity_key: &[u8; 32]) -> DeviceId {
    DeviceId(truncate16(&Sha256::digest(identity_key)))
}

/// Derives the channel id of the direct-message channel between two users.
///
/// Order-independent: with `lo = min(user_a, user_b)` and `hi = max(..)` in
/// byte-wise lexicographic order, the id is
/// `SHA-256("qpc/v1/dm-channel" || u32be(len(lo)) || lo || u32be(len(hi)) || hi)[..16]`.
pub fn dm_channel_id(user_a: &[u8], user_b: &[u8]) -> ChannelId {
    let (lo, hi) = if user_a <= user_b { (user_a, user_b) } else { (user_b, user_a) };
    let mut hasher = Sha256::new();
    hasher.update(DM_CHANNEL_LABEL);
    for part in [lo, hi] {
        hasher.update(length_prefix(part));
        hasher.update(part);
    }
    ChannelId(truncate16(&hasher.finalize()))
}

/// `SHA-256(session_token)`: what the server stores for a session and what the device-binding
/// challenge covers, so server and client must compute it alike.
pub fn session_token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// `SHA-256(ciphertext)`: the address of a blob, checked by the server on upload and by the
/// recipient after download.
pub fn blob_id(ciphertext: &[u8]) -> [u8; 32] {
    Sha256::digest(ciphertext).into()
}

/// The message a device signs with its identity key to prove possession when
/// binding itself to a session (`RegisterDevice`):
/// `"qpc/v1/register-device" || session_token_hash || identity_key`.
pub fn device_binding_challenge(session_token_hash: &[u8; 32], identity_key: &[u8; 32]) -> Vec<u8> {
    let mut challenge = Vec::with_capacity(REGISTER_DEVICE_LABEL.len() + 64);
    challenge.extend_from_slice(REGISTER_DEVICE_LABEL);
    challenge.extend_from_slice(session_token_hash);
    challenge.extend_from_slice(identity_key);
    challenge
}

/// The digest the server signs as a delivery proof:
/// `SHA-256(envelope_id || channel_id || u64be(seq) || u64be(timestamp_ms))`.
pub fn delivery_proof_digest(envelope_id: &[u8], channel_id: &[u8], seq: u64, timestamp_ms: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(envelope_id);
    hasher.update(channel_id);
    hasher.update(seq.to_be_bytes());
    hasher.update(timestamp_ms.to_be_bytes());
    hasher.finalize().into()
}

/// The big-endian `u32` length prefix of `part`. Inputs longer than 4 GiB
/// cannot exist in this protocol; they saturate rather than wrap.
fn length_prefix(part: &[u8]) -> [u8; 4] {
    u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes()
}

fn truncate16(digest: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_channel_id_is_symmetric() {
        assert_eq!(dm_channel_id(b"alice", b"bob"), dm_channel_id(b"bob", b"alice"));
        assert_eq!(dm_channel_id(b"x", b"x"), dm_channel_id(b"x", b"x"));
    }

    #[test]
    fn dm_channel_id_is_distinct() {
        let ab = dm_channel_id(b"alice", b"bob");
        assert_ne!(ab, dm_channel_id(b"alice", b"carol"));
        assert_ne!(ab, dm_channel_id(b"bob", b"carol"));
        // Length prefixes keep concatenations apart.
        assert_ne!(dm_channel_id(b"ab", b"c"), dm_channel_id(b"a", b"bc"));
    }

    #[test]
    fn dm_channel_id_known_answer() {
        let mut hasher = Sha256::new();
        hasher.update(b"qpc/v1/dm-channel");
        hasher.update(5u32.to_be_bytes());
        hasher.update(b"alice");
        hasher.update(3u32.to_be_bytes());
        hasher.update(b"bob");
        let digest = hasher.finalize();
        assert_eq!(dm_channel_id(b"bob", b"alice").0, digest[..16]);
    }

    #[test]
    fn device_id_is_truncated_sha256() {
        let key = [7u8; 32];
        let digest = Sha256::digest(key);
        assert_eq!(device_id_for_key(&key).as_bytes(), &digest[..16]);
    }

    #[test]
    fn id_parsing_and_formatting() {
        let id = DeviceId([0xab; 16]);
        assert_eq!(id.to_string(), "abababab");
        assert_eq!(format!("{id:?}"), "DeviceId(abababab)");
        assert_eq!(DeviceId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(matches!(
            ChannelId::try_from(&[1u8; 15][..]),
            Err(CoreError::InvalidIdLength { expected: 16, actual: 15 })
        ));
    }

    #[test]
    fn challenge_and_digest_layout() {
        let challenge = device_binding_challenge(&[1; 32], &[2; 32]);
        assert!(challenge.starts_with(b"qpc/v1/register-device"));
        assert_eq!(challenge.len(), 22 + 64);

        let mut hasher = Sha256::new();
        hasher.update(b"env");
        hasher.update(b"chan");
        hasher.update(9u64.to_be_bytes());
        hasher.update(1000u64.to_be_bytes());
        let expected: [u8; 32] = hasher.finalize().into();
        assert_eq!(delivery_proof_digest(b"env", b"chan", 9, 1000), expected);
    }
}
