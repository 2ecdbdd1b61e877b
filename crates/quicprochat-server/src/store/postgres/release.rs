//! An envelope's payload goes with the last queue entry naming it, without a lock that every
//! recipient's ack of the envelope queues on.
//!
//! The payload is stored once (`envelopes`) and named by one queue entry per recipient (`queue`).
//! Whatever deletes entries (an ack, a device's or an account's deletion) must delete the
//! envelopes that lost their last one. Locking each envelope's row for that decision made the
//! acks of one envelope run one after another, each holding its device's row while it waited: an
//! enqueue to a thousand devices then waited for the whole line of acks. Instead a transaction
//! that deleted entries, before it commits ([`release`]):
//!
//! 1. deletes the released envelopes that no queue entry it can see names any more;
//! 2. of the others, notes those whose remaining entries are all locked, by transactions deleting
//!    them that have not committed yet (`FOR KEY SHARE SKIP LOCKED` finds no free entry). Each of
//!    those saw this one's entries, so if all commit, none deletes the envelope in step 1;
//!
//! and after its commit ([`settle`]) waits for the transactions holding the noted envelopes'
//! entries and deletes those envelopes if no entry names them any more.
//!
//! Of the transactions deleting an envelope's last entries, the last one to run step 2 finds the
//! others' entries either deleted and committed (invisible: its step 1 deletes the envelope) or
//! locked (it settles the envelope after its commit). An envelope's entries are all inserted
//! with it, by the enqueue that creates it, so an envelope with no entry keeps none.
//!
//! A [`settle`] that fails (the database unreachable) is retried by the node's next purge; a node
//! that stops between a commit and its settle leaves envelopes that every node's first purge after
//! it starts deletes ([`sweep`]).

use deadpool_postgres::{GenericClient, Object, Transaction};
use tokio_postgres::Row;

use super::{StoreError, begin, exec, rows};

/// Deletes the queues of `devices`, whose rows the caller has locked (no enqueue adds to them
/// meanwhile) and is about to delete; returns the envelopes they named, for [`release`].
pub(super) async fn delete_queues(tx: &Transaction<'_>, devices: &[&[u8]]) -> Result<Vec<i64>, StoreError> {
    named(&rows(tx, "DELETE FROM queue WHERE device_id = ANY($1) RETURNING envelope", &[&devices]).await?)
}

/// The envelopes that deleted queue entries named (`RETURNING envelope`), each once, in order.
pub(super) fn named(deleted: &[Row]) -> Result<Vec<i64>, StoreError> {
    let mut seqs: Vec<i64> = deleted.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
    seqs.sort_unstable();
    seqs.dedup();
    Ok(seqs)
}

/// Steps 1 and 2 for the envelopes `seqs`, some of whose entries this transaction deleted: deletes
/// those no entry names any more, and returns those to [`settle`] after the commit.
pub(super) async fn release(tx: &Transaction<'_>, seqs: &[i64]) -> Result<Vec<i64>, StoreError> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    // The statement's parts share one snapshot: an envelope `gone` keeps its entries in the
    // outer query's view, so it is left out by name.
    rows(
        tx,
        "WITH gone AS (DELETE FROM envelopes e WHERE e.seq = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.envelope = e.seq) RETURNING e.seq) \
         SELECT r.seq FROM UNNEST($1::BIGINT[]) AS r(seq) \
         WHERE NOT EXISTS (SELECT 1 FROM gone g WHERE g.seq = r.seq) \
         AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.envelope = r.seq LIMIT 1 FOR KEY SHARE SKIP LOCKED)",
        &[&seqs],
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get(0)?))
    .collect()
}

/// Step 3, after the commit of the transaction whose [`release`] returned `seqs`: waits for the
/// transactions deleting their remaining entries, then deletes the envelopes no entry names.
pub(super) async fn settle(client: &mut Object, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let tx = begin(client).await?;
    // Entries whose deleter committed meanwhile are skipped; one whose deleter rolled back stays,
    // and so does its envelope.
    rows(&tx, "SELECT 1 FROM queue WHERE envelope = ANY($1) FOR KEY SHARE", &[&seqs]).await?;
    exec(
        &tx,
        "DELETE FROM envelopes e WHERE e.seq = ANY($1) AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.envelope = e.seq)",
        &[&seqs],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes every envelope that no queue entry names (those a stopped node did not settle); how
/// many. Reads the whole `envelopes` table.
pub(super) async fn sweep<C: GenericClient>(c: &C) -> Result<u64, StoreError> {
    exec(c, "DELETE FROM envelopes e WHERE NOT EXISTS (SELECT 1 FROM queue q WHERE q.envelope = e.seq)", &[]).await
}
