//! Encryption at rest: the operator's `db_key` and what it protects.
//!
//! One 32-byte secret, given as 64 hex characters (`QPC_DB_KEY` or `db_key_file`), keys two
//! independent subkeys (HKDF-SHA256, [`quicprochat_core::keystore::derive_subkey`]):
//!
//! - the **database** key: the whole SQLite file, its WAL and its journal are encrypted page by
//!   page by SQLCipher (AES-256-CBC with an HMAC-SHA512 per page), in builds with the
//!   `sqlcipher` feature;
//! - the **key-files** key: the OPAQUE server setup and the delivery-proof signing key in the
//!   data dir are sealed with ChaCha20-Poly1305 (the core keystore's key-sealed format), bound
//!   to their file names.
//!
//! Blob files need nothing more: clients encrypt them before upload. The dev-mode TLS key is
//! not covered; production mode uses the operator's own certificate files.

use std::fmt;

use zeroize::Zeroizing;

/// Whether this build can encrypt its database (the `sqlcipher` feature).
pub const DATABASE_ENCRYPTION: bool = cfg!(feature = "sqlcipher");

const DATABASE_PURPOSE: &[u8] = b"qpc-server/v1/database";
const KEY_FILES_PURPOSE: &[u8] = b"qpc-server/v1/key-files";

/// Why a `db_key` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbKeyError {
    /// Not 64 hex characters.
    #[error("db_key must be 64 hex characters (32 random bytes, e.g. `openssl rand -hex 32`)")]
    Malformed,
    /// The key derivation failed (a bug, not a bad key).
    #[error("deriving the database subkeys failed")]
    Derivation,
}

/// The operator's encryption-at-rest secret. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct DbKey {
    database: Zeroizing<[u8; 32]>,
    key_files: Zeroizing<[u8; 32]>,
}

impl DbKey {
    /// Parses 64 hex characters (surrounding whitespace, such as a file's final newline, is
    /// ignored).
    pub fn from_hex(text: &str) -> Result<Self, DbKeyError> {
        let text = text.trim();
        let mut master = Zeroizing::new([0u8; 32]);
        if text.len() != 64 || hex::decode_to_slice(text, master.as_mut_slice()).is_err() {
            return Err(DbKeyError::Malformed);
        }
        let derive = |purpose| {
            quicprochat_core::keystore::derive_subkey(master.as_slice(), purpose).map_err(|_| DbKeyError::Derivation)
        };
        Ok(Self { database: derive(DATABASE_PURPOSE)?, key_files: derive(KEY_FILES_PURPOSE)? })
    }

    /// SQLCipher's raw-key form of the database key: `x'<64 hex>'`.
    pub(crate) fn sqlcipher_pragma(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("x'{}'", hex::encode(self.database.as_slice())))
    }

    /// The key that seals the key files.
    pub(crate) fn key_files(&self) -> &[u8; 32] {
        &self.key_files
    }
}

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_keys_are_64_hex_characters_and_never_printed() {
        let key = DbKey::from_hex(&format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(format!("{key:?}"), "DbKey(<redacted>)");
        assert_ne!(key.key_files().as_slice(), &[0xab; 32], "subkeys, not the master key");
        assert!(key.sqlcipher_pragma().starts_with("x'") && key.sqlcipher_pragma().len() == 67);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert_eq!(DbKey::from_hex(bad).unwrap_err(), DbKeyError::Malformed, "{bad:?}");
        }
    }
}
