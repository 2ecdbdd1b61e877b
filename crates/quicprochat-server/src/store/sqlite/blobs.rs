//! Blobs in SQLite: the `blobs` row of each upload, its chunks in `blob_chunks` (one row per
//! uploaded chunk, keyed by the byte offset it starts at) and the accounts referencing it in
//! `blob_refs`. Chunks go with their blob by `ON DELETE CASCADE`, in the deleting transaction.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, i64_to_u64, u64_to_i64};
use crate::store::types::{BlobPiece, ChunkStep, join_blob_pieces};
use crate::store::{BlobChunk, BlobRecord, BlobSlice, BlobStore, StoreError};

/// A blob record from `total_size, received, complete, expires_ms` in the row's first columns.
fn blob_row(id: [u8; 32], r: &rusqlite::Row<'_>) -> rusqlite::Result<BlobRecord> {
    Ok(BlobRecord {
        id,
        total_size: i64_to_u64(r.get(0)?),
        received: i64_to_u64(r.get(1)?),
        complete: r.get(2)?,
        expires_ms: i64_to_u64(r.get(3)?),
    })
}

fn blob_in(conn: &Connection, id: [u8; 32]) -> Result<Option<BlobRecord>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT total_size, received, complete, expires_ms FROM blobs WHERE id = ?1")?
        .query_row([id.as_slice()], |r| blob_row(id, r))
        .optional()?)
}

fn write_chunk(tx: &Connection, chunk: BlobChunk) -> Result<BlobRecord, StoreError> {
    let id = chunk.id.as_slice();
    let stored = match blob_in(tx, chunk.id)? {
        Some(stored) => stored,
        // The first chunk creates the upload.
        None => {
            tx.prepare_cached(
                "INSERT INTO blobs (id, total_size, received, complete, uploader, created_ms, expires_ms) \
                 VALUES (?1, ?2, 0, 0, ?3, ?4, ?5)",
            )?
            .execute(params![
                id,
                u64_to_i64(chunk.total_size),
                chunk.uploader.0.as_slice(),
                u64_to_i64(chunk.now_ms),
                u64_to_i64(chunk.expires_ms)
            ])?;
            blob_in(tx, chunk.id)?.ok_or(StoreError::NotFound("blob"))?
        }
    };
    // Rolled back with the rest when the chunk is refused.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO blob_refs (blob_id, user_id) SELECT ?1, user_id FROM devices WHERE id = ?2",
    )?
    .execute(params![id, chunk.uploader.0.as_slice()])?;
    let record = match chunk.step(&stored)? {
        ChunkStep::Unchanged => stored,
        ChunkStep::Append { received, complete } => {
            tx.prepare_cached("INSERT INTO blob_chunks (blob_id, byte_offset, data) VALUES (?1, ?2, ?3)")?
                .execute(params![id, u64_to_i64(chunk.offset), chunk.data])?;
            tx.prepare_cached("UPDATE blobs SET received = ?2, complete = ?3 WHERE id = ?1")?.execute(params![
                id,
                u64_to_i64(received),
                complete
            ])?;
            BlobRecord { received, complete, ..stored }
        }
        ChunkStep::Retry => {
            let same: i64 = tx
                .prepare_cached(
                    "SELECT COUNT(*) FROM blob_chunks WHERE blob_id = ?1 AND byte_offset = ?2 AND data = ?3",
                )?
                .query_row(params![id, u64_to_i64(chunk.offset), chunk.data], |r| r.get(0))?;
            if same == 0 {
                return Err(StoreError::BlobOutOfOrder { received: stored.received });
            }
            stored
        }
    };
    Ok(record)
}

/// The blob `?1` and its bytes `[?2, ?2 + ?3)` from the chunks holding them: the chunk starting at
/// or before `?2` and those after it up to the end of the range, each cut to the range in SQL. No
/// row for an unknown blob; one row with NULL chunk columns for a blob without bytes in the range.
const READ_BLOB_SQL: &str = "\
SELECT b.total_size, b.received, b.complete, b.expires_ms, c.byte_offset, substr(c.data, max(?2, c.byte_offset) - c.byte_offset + 1, ?2 + ?3 - max(?2, c.byte_offset)) \
FROM blobs b LEFT JOIN blob_chunks c ON c.blob_id = b.id AND c.byte_offset < ?2 + ?3 AND c.byte_offset >= \
    COALESCE((SELECT MAX(byte_offset) FROM blob_chunks WHERE blob_id = ?1 AND byte_offset <= ?2), 0) \
WHERE b.id = ?1 ORDER BY c.byte_offset";

#[async_trait]
impl BlobStore for SqliteStore {
    async fn blob(&self, id: [u8; 32]) -> Result<Option<BlobRecord>, StoreError> {
        self.read(move |conn| blob_in(conn, id)).await
    }

    async fn write_blob_chunk(&self, chunk: BlobChunk) -> Result<BlobRecord, StoreError> {
        self.run(move |conn| write_chunk(conn, chunk)).await
    }

    async fn read_blob(&self, id: [u8; 32], offset: u64, max_len: u32) -> Result<Option<BlobSlice>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(READ_BLOB_SQL)?;
            let rows = stmt.query_map(params![id.as_slice(), u64_to_i64(offset), i64::from(max_len)], |r| {
                Ok(BlobPiece {
                    record: blob_row(id, r)?,
                    start: r.get::<_, Option<i64>>(4)?.map(i64_to_u64),
                    bytes: r.get(5)?,
                })
            })?;
            join_blob_pieces(offset, rows.map(|r| r.map_err(StoreError::from)))
        })
        .await
    }

    async fn discard_upload(&self, id: [u8; 32]) -> Result<bool, StoreError> {
        self.run(move |conn| Ok(conn.execute("DELETE FROM blobs WHERE id = ?1 AND complete = 0", [id.as_slice()])? > 0))
            .await
    }

    async fn delete_blob(&self, id: [u8; 32]) -> Result<bool, StoreError> {
        self.run(move |conn| Ok(conn.execute("DELETE FROM blobs WHERE id = ?1", [id.as_slice()])? > 0)).await
    }

    async fn purge_expired_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let gone = conn.execute("DELETE FROM blobs WHERE expires_ms <= ?1", [u64_to_i64(now_ms)])?;
            Ok(gone as u64)
        })
        .await
    }

    async fn import_blob_chunk(&self, id: [u8; 32], offset: u64, data: Vec<u8>) -> Result<(), StoreError> {
        self.run(move |tx| {
            let blob = blob_in(tx, id)?.ok_or(StoreError::NotFound("blob"))?;
            let end = offset.checked_add(data.len() as u64);
            if data.is_empty() || end.is_none_or(|end| end > blob.received) {
                return Err(StoreError::BlobChunkOutOfRange);
            }
            tx.execute(
                "INSERT OR IGNORE INTO blob_chunks (blob_id, byte_offset, data) VALUES (?1, ?2, ?3)",
                params![id.as_slice(), u64_to_i64(offset), data],
            )?;
            Ok(())
        })
        .await
    }
}
