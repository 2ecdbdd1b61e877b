//! An enqueue in PostgreSQL: the envelope stored once and queued to every other member device,
//! with its welcomes, in one transaction of few round trips.
//!
//! Each statement is a round trip to the database and a wake-up on both sides, which cost more
//! than the statements' own work. An application message takes six: `BEGIN`, the channel's lock,
//! what is read under it ([`STATE_SQL`]), the fan-out ([`FAN_OUT_SQL`]), the announcement to the
//! other nodes, `COMMIT`. Commits add the epoch and the tracked membership, and each welcome
//! four statements of its own.

use deadpool_postgres::{Object, Transaction};
use tokio_postgres::Row;

use super::{
    IDEMPOTENCY_WINDOW_MS, StoreError, announce, begin, bytes16, exec, find_replay, get16, i64_to_u64, replay_from,
    row, rows, u64_to_i64,
};
use crate::store::{DeviceId, EnqueueBatch, EnqueueOutcome, EnvelopeKind, QueuedEntry};

/// Read under the channel's lock (`$1` channel, `$2` sender, `$3` idempotency key, `$4` start of
/// its window), so that whatever the transactions that held the lock committed is seen: an
/// earlier run of this request (columns 0–3, NULL when there is none), whether the sender is a
/// member (4), and the other members' devices in id order (5).
const STATE_SQL: &str = "\
SELECT r.envelope, r.epoch_after, r.envelope_id, r.created_ms, \
    EXISTS (SELECT 1 FROM channel_members WHERE channel_id = $1 AND device_id = $2), \
    ARRAY(SELECT device_id FROM channel_members WHERE channel_id = $1 AND device_id <> $2 ORDER BY device_id) \
FROM (SELECT 1) AS one \
LEFT JOIN idempotency r ON $3 <> ''::BYTEA AND r.device_id = $2 AND r.key = $3 AND r.created_ms >= $4";

/// The fan-out in one statement:
/// - `locked`: every device the enqueue appends to (`$1`, recipients and welcomed devices), locked
///   in id order, whoever reads the rows first: sequence numbers and queue depths are then this
///   transaction's alone until it commits;
/// - `envelope`: the payload, stored once (`$3`–`$9`);
/// - `allocated`: the next sequence number of each recipient (`$2`) that still exists, its
///   queue's depth raised (each device counts its queue, so the depth check costs a row per
///   recipient, not the length of its queue);
/// - `queued`: a queue entry per allocated position;
/// - `recorded`: the idempotency record (`$10` sender, `$11` key, `$12` epoch after, `$13` start
///   of the window), unless there is no key; an expired record is replaced, a live one means the
///   original (for another channel) committed after this transaction looked.
///
/// One row per allocated recipient (a single row with NULL recipient columns when there is
/// none): the envelope's seq, how many devices were locked (read so that every target is locked
/// however the plan joins `allocated` with `locked`), whether the record was written, the device,
/// its seq and its depth before.
const FAN_OUT_SQL: &str = "\
WITH locked AS MATERIALIZED (SELECT id FROM devices WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE), \
envelope AS (INSERT INTO envelopes (id, channel_id, kind, epoch, payload, created_ms, expires_ms) \
    VALUES ($3, $4, $5, $6, $7, $8, $9) RETURNING seq), \
allocated AS (UPDATE devices d SET next_seq = d.next_seq + 1, queue_depth = d.queue_depth + 1 \
    FROM locked l WHERE d.id = l.id AND d.id = ANY($2) \
    RETURNING d.id, d.next_seq - 1 AS seq, d.queue_depth - 1 AS depth), \
queued AS (INSERT INTO queue (device_id, seq, envelope) SELECT a.id, a.seq, e.seq FROM allocated a CROSS JOIN envelope e), \
recorded AS (INSERT INTO idempotency (device_id, key, envelope, envelope_id, epoch_after, created_ms) \
    SELECT $10, $11, e.seq, $3, $12, $8 FROM envelope e WHERE $11 <> ''::BYTEA \
    ON CONFLICT (device_id, key) DO UPDATE SET envelope = EXCLUDED.envelope, envelope_id = EXCLUDED.envelope_id, \
    epoch_after = EXCLUDED.epoch_after, created_ms = EXCLUDED.created_ms WHERE idempotency.created_ms < $13 \
    RETURNING 1) \
SELECT e.seq, (SELECT COUNT(*) FROM locked), EXISTS (SELECT 1 FROM recorded), a.id, a.seq, a.depth \
FROM envelope e LEFT JOIN allocated a ON TRUE";

/// A queue position taken on a device: its sequence number, and its queue's depth before.
struct Allocated {
    device: DeviceId,
    seq: i64,
    depth: i64,
}

/// Takes the next sequence number of every device in `ids`, raising its depth, in one
/// statement; a device that does not exist is left out.
async fn allocate_seqs(tx: &Transaction<'_>, ids: &[&[u8]]) -> Result<Vec<Allocated>, StoreError> {
    let allocated = rows(
        tx,
        "UPDATE devices SET next_seq = next_seq + 1, queue_depth = queue_depth + 1 WHERE id = ANY($1) \
         RETURNING id, next_seq - 1, queue_depth - 1",
        &[&ids],
    )
    .await?;
    allocated
        .iter()
        .map(|r| {
            Ok(Allocated { device: DeviceId(get16(r, 0, "devices.id")?), seq: r.try_get(1)?, depth: r.try_get(2)? })
        })
        .collect()
}

/// Queues the envelope `envelope_seq` at each allocated position, in one statement.
async fn queue_rows(tx: &Transaction<'_>, at: &[Allocated], envelope_seq: i64) -> Result<(), StoreError> {
    let devices: Vec<&[u8]> = at.iter().map(|a| a.device.0.as_slice()).collect();
    let seqs: Vec<i64> = at.iter().map(|a| a.seq).collect();
    exec(
        tx,
        "INSERT INTO queue (device_id, seq, envelope) SELECT d, s, $3 FROM UNNEST($1::BYTEA[], $2::BIGINT[]) AS t(d, s)",
        &[&devices, &seqs, &envelope_seq],
    )
    .await?;
    Ok(())
}

async fn insert_envelope(
    tx: &Transaction<'_>,
    id: &[u8; 16],
    b: &EnqueueBatch,
    kind: EnvelopeKind,
    payload: &[u8],
    expires_ms: Option<u64>,
) -> Result<i64, StoreError> {
    let r = rows(
        tx,
        "INSERT INTO envelopes (id, channel_id, kind, epoch, payload, created_ms, expires_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
        &[
            &id.as_slice(),
            &b.channel.0.as_slice(),
            &kind.as_i64(),
            &u64_to_i64(b.epoch),
            &payload,
            &u64_to_i64(b.now_ms),
            &expires_ms.map(u64_to_i64),
        ],
    )
    .await?;
    let seq = r.first().ok_or(StoreError::Corrupt("envelopes.seq"))?.try_get(0)?;
    Ok(seq)
}

/// What [`FAN_OUT_SQL`] did: the envelope's seq, whether the idempotency record was written, and
/// the positions taken, in device order.
struct FannedOut {
    envelope_seq: i64,
    recorded: bool,
    allocated: Vec<Allocated>,
}

fn fanned_out(rows: &[Row]) -> Result<FannedOut, StoreError> {
    let first = rows.first().ok_or(StoreError::Corrupt("envelopes.seq"))?;
    let mut allocated = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(device) = r.try_get::<_, Option<&[u8]>>(3)? else { continue };
        allocated.push(Allocated {
            device: DeviceId(bytes16(device, "devices.id")?),
            seq: r.try_get(4)?,
            depth: r.try_get(5)?,
        });
    }
    allocated.sort_unstable_by_key(|a| a.device);
    Ok(FannedOut { envelope_seq: first.try_get(0)?, recorded: first.try_get(2)?, allocated })
}

pub(super) async fn enqueue_tx(
    client: &mut Object,
    b: &EnqueueBatch,
    node: &[u8; 8],
    notify_channel: &str,
) -> Result<EnqueueOutcome, StoreError> {
    let tx = begin(client).await?;
    let ch = b.channel.0.as_slice();
    let sender = b.sender.0.as_slice();
    // The channel's row, locked: commits are sequenced and the channel's envelopes ordered.
    let Some(channel) =
        row(&tx, "SELECT epoch, retention_secs FROM channels WHERE id = $1 FOR NO KEY UPDATE", &[&ch]).await?
    else {
        // The original of a retry may have been accepted before the channel went.
        return find_replay(&tx, &b.sender, &b.idempotency_key, b.now_ms).await?.ok_or(StoreError::NotFound("channel"));
    };
    let (current_epoch, retention): (i64, i64) = (channel.try_get(0)?, channel.try_get(1)?);
    let window_start = u64_to_i64(b.now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS));
    let state = row(&tx, STATE_SQL, &[&ch, &sender, &b.idempotency_key, &window_start])
        .await?
        .ok_or(StoreError::Corrupt("channel_members"))?;
    // A retry whose original committed (perhaps while this one waited for the channel) gets the
    // original's answer, as if it had run first.
    if let Some(outcome) = replay_from(&state, 0)? {
        return Ok(outcome);
    }
    if !state.try_get::<_, bool>(4)? {
        return Err(StoreError::NotMember);
    }
    let recipients: Vec<DeviceId> = state
        .try_get::<_, Vec<&[u8]>>(5)?
        .into_iter()
        .map(|d| bytes16(d, "channel_members.device_id").map(DeviceId))
        .collect::<Result<_, _>>()?;

    let expires_ms = b.expiry(i64_to_u64(retention));
    let epoch = b.epoch_after(i64_to_u64(current_epoch))?;
    if b.kind == EnvelopeKind::Commit {
        exec(
            &tx,
            "UPDATE channels SET epoch = $2, group_info = COALESCE($3, group_info) WHERE id = $1",
            &[&ch, &u64_to_i64(epoch), &b.group_info],
        )
        .await?;
    }

    let mut targets: Vec<&[u8]> = recipients.iter().map(|d| d.0.as_slice()).collect();
    targets.extend(b.welcomes.iter().flat_map(|w| &w.devices).map(|d| d.0.as_slice()));
    targets.sort_unstable();
    targets.dedup();
    let recipient_ids: Vec<&[u8]> = recipients.iter().map(|d| d.0.as_slice()).collect();
    let fan_out = rows(
        &tx,
        FAN_OUT_SQL,
        &[
            &targets,
            &recipient_ids,
            &b.envelope_id.as_slice(),
            &ch,
            &b.kind.as_i64(),
            &u64_to_i64(b.epoch),
            &&b.payload[..],
            &u64_to_i64(b.now_ms),
            &expires_ms.map(u64_to_i64),
            &sender,
            &b.idempotency_key,
            &u64_to_i64(epoch),
            &window_start,
        ],
    )
    .await?;
    let FannedOut { envelope_seq, recorded, allocated } = fanned_out(&fan_out)?;
    if !b.idempotency_key.is_empty() && !recorded {
        // The original (for another channel) committed after this transaction looked: it wins,
        // and this one is undone.
        let original = find_replay(&tx, &b.sender, &b.idempotency_key, b.now_ms).await?;
        return original.ok_or(StoreError::Corrupt("idempotency"));
    }
    // Handshake messages are never refused for depth: a group must always be able to remove a
    // device that stopped reading. A refusal rolls the transaction back.
    if b.kind == EnvelopeKind::Application
        && allocated.iter().map(|a| a.depth).max().unwrap_or(0) >= i64::from(b.max_queue_depth)
    {
        return Err(StoreError::QueueFull);
    }
    // A device deleted since the members were read is no longer one, and was not allocated.
    let mut deliveries: Vec<(DeviceId, QueuedEntry)> =
        allocated.iter().map(|a| (a.device, b.entry(i64_to_u64(a.seq), b.envelope_id, b.kind, &b.payload))).collect();
    if deliveries.is_empty() {
        // Nobody else to deliver to (e.g. the first commit of a new group): keep only the
        // sequence number, which an identity column never reuses.
        exec(&tx, "DELETE FROM envelopes WHERE seq = $1", &[&envelope_seq]).await?;
    }

    if let Some(tracking) = &b.tracking {
        // Membership follows the MLS tree: the commit went to the members before it (so a
        // removed device learns of its removal); from now on only the tree's devices receive.
        // Compare-and-swap: two proposals validated against the same state must not both land.
        let swapped = exec(
            &tx,
            "UPDATE channels SET tracker = $2 WHERE id = $1 AND tracker IS NOT DISTINCT FROM $3",
            &[&ch, &tracking.tracker, &tracking.tracker_before],
        )
        .await?;
        if swapped == 0 {
            return Err(StoreError::StaleEpoch { attempted: b.epoch, current: epoch });
        }
        exec(&tx, "DELETE FROM channel_members WHERE channel_id = $1", &[&ch]).await?;
        let members: Vec<&[u8]> = tracking.members.iter().map(|d| d.0.as_slice()).collect();
        exec(
            &tx,
            "INSERT INTO channel_members (channel_id, device_id) SELECT $1, id FROM devices WHERE id = ANY($2) \
             ON CONFLICT DO NOTHING",
            &[&ch, &members],
        )
        .await?;
    }

    for w in b.welcomes.iter().filter(|w| !w.devices.is_empty()) {
        // Stored once, queued to each device it adds, in a statement per step (not per device).
        let mut wid = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut wid);
        let welcome_seq = insert_envelope(&tx, &wid, b, EnvelopeKind::Welcome, &w.payload, expires_ms).await?;
        let mut devices: Vec<&[u8]> = w.devices.iter().map(|d| d.0.as_slice()).collect();
        devices.sort_unstable();
        devices.dedup();
        let allocated = allocate_seqs(&tx, &devices).await?;
        if allocated.len() != devices.len() {
            return Err(StoreError::UnknownDevice);
        }
        exec(
            &tx,
            "INSERT INTO channel_members (channel_id, device_id) SELECT $1, d FROM UNNEST($2::BYTEA[]) AS t(d) \
             ON CONFLICT DO NOTHING",
            &[&ch, &devices],
        )
        .await?;
        queue_rows(&tx, &allocated, welcome_seq).await?;
        for a in &allocated {
            deliveries.push((a.device, b.entry(i64_to_u64(a.seq), wid, EnvelopeKind::Welcome, &w.payload)));
        }
    }

    announce(&tx, node, notify_channel, &deliveries).await?;
    tx.commit().await?;
    Ok(b.accepted(i64_to_u64(envelope_seq), epoch, deliveries))
}
