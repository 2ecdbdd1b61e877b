//! Blobs in PostgreSQL: the `blobs` row of each upload, its chunks in `blob_chunks` (one row per
//! uploaded chunk, keyed by the byte offset it starts at) and the accounts referencing it in
//! `blob_refs`. A chunk write locks its blob's row, so chunks of one upload arriving on several
//! nodes are stored one after the other; chunks go with their blob by `ON DELETE CASCADE`, in the
//! deleting transaction.

use async_trait::async_trait;
use deadpool_postgres::Object;
use tokio_postgres::Row;

// `retrying!` and `reading!` expand here and name `MAX_ATTEMPTS`, `backoff`, `is_transient`, `record`.
use super::{
    MAX_ATTEMPTS, PostgresStore, StoreError, backoff, begin, count, exec, i64_to_u64, is_transient, record, row, rows,
    u64_to_i64,
};
use crate::store::types::{BlobPiece, ChunkStep, join_blob_pieces};
use crate::store::{BlobChunk, BlobRecord, BlobSlice, BlobStore};

/// The blob `$1` and its bytes `[$2, $2 + $3)` from the chunks holding them: the chunk starting at
/// or before `$2` and those after it up to the end of the range, each cut to the range in SQL
/// (only the TOAST slices needed are read: the column is stored uncompressed). No row for an
/// unknown blob; one row with NULL chunk columns for a blob without bytes in the range.
const READ_BLOB_SQL: &str = "\
SELECT b.total_size, b.received, b.complete, b.expires_ms, c.byte_offset, substring(c.data FROM (GREATEST($2::BIGINT, c.byte_offset) - c.byte_offset + 1)::INT \
    FOR ($2::BIGINT + $3::BIGINT - GREATEST($2::BIGINT, c.byte_offset))::INT) \
FROM blobs b LEFT JOIN blob_chunks c ON c.blob_id = b.id AND c.byte_offset < $2::BIGINT + $3::BIGINT AND c.byte_offset >= \
    COALESCE((SELECT MAX(byte_offset) FROM blob_chunks WHERE blob_id = $1 AND byte_offset <= $2::BIGINT), 0) \
WHERE b.id = $1 ORDER BY c.byte_offset";

fn record_from(id: [u8; 32], r: &Row) -> Result<BlobRecord, StoreError> {
    Ok(BlobRecord {
        id,
        total_size: i64_to_u64(r.try_get(0)?),
        received: i64_to_u64(r.try_get(1)?),
        complete: r.try_get(2)?,
        expires_ms: i64_to_u64(r.try_get(3)?),
    })
}

/// Adds the account of device `$2` to those referencing blob `$1`.
const REFERENCE_SQL: &str =
    "INSERT INTO blob_refs (blob_id, user_id) SELECT $1, user_id FROM devices WHERE id = $2 ON CONFLICT DO NOTHING";

async fn write_chunk_tx(client: &mut Object, chunk: &BlobChunk) -> Result<BlobRecord, StoreError> {
    const LOCK: &str = "SELECT total_size, received, complete, expires_ms FROM blobs WHERE id = $1 FOR UPDATE";
    let tx = begin(client).await?;
    let id = chunk.id.as_slice();
    let uploader = chunk.uploader.0.as_slice();
    let mut locked = row(&tx, LOCK, &[&id]).await?;
    // The first chunk creates the upload; twice, in case a blob deleted (expired, discarded)
    // between the insert and the lock is to be created afresh.
    for _ in 0..2 {
        if locked.is_some() {
            break;
        }
        exec(
            &tx,
            "INSERT INTO blobs (id, total_size, received, complete, uploader, created_ms, expires_ms) \
             VALUES ($1, $2, 0, FALSE, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
            &[&id, &u64_to_i64(chunk.total_size), &uploader, &u64_to_i64(chunk.now_ms), &u64_to_i64(chunk.expires_ms)],
        )
        .await?;
        locked = row(&tx, LOCK, &[&id]).await?;
    }
    let stored = record_from(chunk.id, &locked.ok_or(StoreError::NotFound("blob"))?)?;
    let record = match chunk.step(&stored)? {
        ChunkStep::Unchanged => {
            exec(&tx, REFERENCE_SQL, &[&id, &uploader]).await?;
            stored
        }
        ChunkStep::Append { received, complete } => {
            // One statement (one round trip): the bytes, the reference, the progress.
            exec(
                &tx,
                "WITH chunk AS (INSERT INTO blob_chunks (blob_id, byte_offset, data) VALUES ($1, $2, $3)), \
                 reference AS (INSERT INTO blob_refs (blob_id, user_id) SELECT $1, user_id FROM devices \
                     WHERE id = $6 ON CONFLICT DO NOTHING) \
                 UPDATE blobs SET received = $4, complete = $5 WHERE id = $1",
                &[&id, &u64_to_i64(chunk.offset), &chunk.data, &u64_to_i64(received), &complete, &uploader],
            )
            .await?;
            BlobRecord { received, complete, ..stored }
        }
        ChunkStep::Retry => {
            let same = count(
                &tx,
                "SELECT COUNT(*) FROM blob_chunks WHERE blob_id = $1 AND byte_offset = $2 AND data = $3",
                &[&id, &u64_to_i64(chunk.offset), &chunk.data],
            )
            .await?;
            if same == 0 {
                return Err(StoreError::BlobOutOfOrder { received: stored.received });
            }
            exec(&tx, REFERENCE_SQL, &[&id, &uploader]).await?;
            stored
        }
    };
    tx.commit().await?;
    Ok(record)
}

async fn import_chunk_tx(client: &mut Object, id: [u8; 32], offset: u64, data: &[u8]) -> Result<(), StoreError> {
    let tx = begin(client).await?;
    let received = row(&tx, "SELECT received FROM blobs WHERE id = $1 FOR SHARE", &[&id.as_slice()])
        .await?
        .ok_or(StoreError::NotFound("blob"))?
        .try_get::<_, i64>(0)?;
    let end = offset.checked_add(data.len() as u64);
    if data.is_empty() || end.is_none_or(|end| end > i64_to_u64(received)) {
        return Err(StoreError::BlobChunkOutOfRange);
    }
    exec(
        &tx,
        "INSERT INTO blob_chunks (blob_id, byte_offset, data) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[&id.as_slice(), &u64_to_i64(offset), &data],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl BlobStore for PostgresStore {
    async fn blob(&self, id: [u8; 32]) -> Result<Option<BlobRecord>, StoreError> {
        let found = reading!(self, client => row(
            &client,
            "SELECT total_size, received, complete, expires_ms FROM blobs WHERE id = $1",
            &[&id.as_slice()],
        ))?;
        found.map(|r| record_from(id, &r)).transpose()
    }

    async fn write_blob_chunk(&self, chunk: BlobChunk) -> Result<BlobRecord, StoreError> {
        retrying!(self, client => write_chunk_tx(&mut client, &chunk))
    }

    async fn read_blob(&self, id: [u8; 32], offset: u64, max_len: u32) -> Result<Option<BlobSlice>, StoreError> {
        let found = reading!(self, client => rows(
            &client,
            READ_BLOB_SQL,
            &[&id.as_slice(), &u64_to_i64(offset), &i64::from(max_len)],
        ))?;
        join_blob_pieces(
            offset,
            found.iter().map(|r| {
                let start: Option<i64> = r.try_get(4)?;
                Ok(BlobPiece { record: record_from(id, r)?, start: start.map(i64_to_u64), bytes: r.try_get(5)? })
            }),
        )
    }

    async fn discard_upload(&self, id: [u8; 32]) -> Result<bool, StoreError> {
        let gone = retrying!(self, client => exec(
            &client,
            "DELETE FROM blobs WHERE id = $1 AND NOT complete",
            &[&id.as_slice()],
        ))?;
        Ok(gone > 0)
    }

    async fn delete_blob(&self, id: [u8; 32]) -> Result<bool, StoreError> {
        let gone = retrying!(self, client => exec(&client, "DELETE FROM blobs WHERE id = $1", &[&id.as_slice()]))?;
        Ok(gone > 0)
    }

    async fn purge_expired_blobs(&self, now_ms: u64) -> Result<u64, StoreError> {
        retrying!(self, client => exec(&client, "DELETE FROM blobs WHERE expires_ms <= $1", &[&u64_to_i64(now_ms)]))
    }

    async fn import_blob_chunk(&self, id: [u8; 32], offset: u64, data: Vec<u8>) -> Result<(), StoreError> {
        retrying!(self, client => import_chunk_tx(&mut client, id, offset, &data))
    }
}
