//! Encryption of the whole local database.
//!
//! Builds with the `sqlcipher` feature encrypt the database file page by page (SQLCipher:
//! AES-256 with an HMAC-SHA512 per page) under a key derived from the account's storage key,
//! which lives only in the password-sealed account file: conversation names, senders,
//! timestamps, the outbox and the indexes are unreadable without the password. A database
//! written in the clear by an earlier build is encrypted in place on the first open.
//!
//! Every build also seals the secret-bearing columns (message bodies, attachments, reactions,
//! the MLS state, the outbox) with the storage key itself, so a build without the feature
//! still keeps what was said and the group keys unreadable; only the metadata is in the clear.

use std::path::Path;

use rusqlite::Connection;

use crate::SdkError;
use crate::error::Result;

/// Whether this build encrypts the whole database (the `sqlcipher` feature).
pub const DATABASE_ENCRYPTION: bool = cfg!(feature = "sqlcipher");

/// HKDF purpose of the database key, derived from the account's storage key.
#[cfg(feature = "sqlcipher")]
const DATABASE_PURPOSE: &[u8] = b"qpc-sdk/v1/database";

/// Opens the database at `path` for the account whose storage key is `storage_key`, encrypted
/// when this build can (encrypting a cleartext file first), and checks that it reads.
pub(super) fn open(path: &Path, storage_key: &[u8; 32]) -> Result<Connection> {
    #[cfg(feature = "sqlcipher")]
    {
        let key = quicprochat_core::keystore::derive_subkey(storage_key, DATABASE_PURPOSE)?;
        let pragma = zeroize::Zeroizing::new(format!("x'{}'", hex::encode(key.as_slice())));
        if is_cleartext(path)? {
            encrypt_in_place(path, &pragma)?;
        }
        let conn = Connection::open(path)?;
        // SQLCipher logs a failed page HMAC to stderr itself; the typed error says it instead.
        conn.execute_batch("PRAGMA cipher_log_level = NONE;")?;
        conn.pragma_update(None, "key", pragma.as_str())?;
        check(&conn, true)?;
        Ok(conn)
    }
    #[cfg(not(feature = "sqlcipher"))]
    {
        let _: &[u8; 32] = storage_key;
        let conn = Connection::open(path)?;
        check(&conn, false)?;
        Ok(conn)
    }
}

/// Reads the schema, which decrypts page 1: an encrypted file opened without its key (or with
/// another) fails here with SQLITE_NOTADB.
fn check(conn: &Connection, keyed: bool) -> Result<()> {
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::NotADatabase => {
            Err(if keyed { SdkError::LocalStoreUnreadable } else { SdkError::LocalStoreEncrypted })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is an unencrypted SQLite database (its header is readable).
#[cfg(feature = "sqlcipher")]
fn is_cleartext(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut header = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut file) => Ok(file.read_exact(&mut header).is_ok() && &header == b"SQLite format 3\0"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SdkError::Io { path: path.to_path_buf(), source }),
    }
}

/// Encrypts a cleartext database: SQLCipher's `sqlcipher_export` copies schema and rows into a
/// new encrypted file, which then replaces the old one (and its WAL). A crash before the rename
/// leaves the cleartext file as it was, and the next open starts again.
#[cfg(feature = "sqlcipher")]
fn encrypt_in_place(path: &Path, pragma: &str) -> Result<()> {
    let io = |source| SdkError::Io { path: path.to_path_buf(), source };
    let encrypted = path.with_extension("db.encrypting");
    let _ = std::fs::remove_file(&encrypted);
    {
        let clear = Connection::open(path)?;
        // Fold the WAL into the main file so the export sees every committed row.
        clear.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let version: i64 = clear.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let target = encrypted.to_str().ok_or(SdkError::Protocol("state dir path is not UTF-8"))?;
        clear.execute("ATTACH DATABASE ?1 AS encrypted KEY ?2", rusqlite::params![target, pragma])?;
        clear.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        // `sqlcipher_export` copies schema and rows, not the schema version.
        clear.pragma_update(Some("encrypted"), "user_version", version)?;
        clear.execute("DETACH DATABASE encrypted", [])?;
    }
    std::fs::rename(&encrypted, path).map_err(io)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    tracing::info!("encrypted the local database written by an earlier build");
    Ok(())
}
