//! The SQLite store's one writer connection and its group commit (see [`Writer`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// Most writes committed in one transaction; the rest wait for the next.
const MAX_GROUP: usize = 256;

/// The writer connection and the writes waiting for it.
///
/// Group commit: every write is queued, then a task on the blocking pool takes the connection
/// and runs the queued writes (up to [`MAX_GROUP`]) in one `IMMEDIATE` transaction, each inside
/// its own savepoint unless it is alone, and commits once. A write that fails is rolled back
/// (to its savepoint, or whole when alone) and answered with its error; the others are
/// answered when the commit is durable (or all with the commit's error).
///
/// One task is scheduled at a time: a write queued while one is scheduled and has not yet
/// taken the queue rides with it; a write queued after it took the queue schedules the next.
pub(super) struct Writer {
    pub(super) connection: Mutex<WriterConnection>,
    pub(super) queue: Mutex<Vec<Box<dyn Write>>>,
    /// A commit task is scheduled and has not taken the queue yet.
    scheduled: AtomicBool,
}

/// The connection and whether its commits sync (`synchronous = FULL`).
pub(super) struct WriterConnection {
    conn: Connection,
    syncs: bool,
}

/// How a write must reach the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Synced before the caller hears of it.
    Synced,
    /// Committed without a sync of its own: a power cut may lose it (not a crash of the process).
    Relaxed,
}

/// A queued write: runs once inside the group's transaction, answers once.
pub(super) trait Write: Send {
    /// Whether the write needs its commit synced.
    fn durability(&self) -> Durability;
    /// Runs the write; whether it succeeded (a failed one is rolled back to its savepoint).
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: the write's own error, or its result once `committed` says the
    /// group's transaction is durable.
    fn answer(self: Box<Self>, committed: Result<(), &StoreError>);
}

struct Queued<T, F> {
    durability: Durability,
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Write for Queued<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn apply(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else { return false };
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), &StoreError>) {
        let answer = match (self.result, committed) {
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(e)) => Err(StoreError::NotCommitted(e.to_string())),
            (None, Ok(())) => Err(StoreError::NotCommitted("the write did not run".into())),
        };
        // The caller may have gone (its request was cancelled): nothing to tell.
        let _ = self.reply.send(answer);
    }
}

impl Writer {
    /// `connection` must sync its commits (`synchronous = FULL`).
    pub(super) fn new(connection: Connection) -> Self {
        Self {
            connection: Mutex::new(WriterConnection { conn: connection, syncs: true }),
            queue: Mutex::new(Vec::new()),
            scheduled: AtomicBool::new(false),
        }
    }

    /// Queues `work` and waits for its answer: its result once the group it ran in is
    /// committed (and, for [`Durability::Synced`], synced).
    pub(super) async fn write<T, F>(self: &Arc<Self>, durability: Durability, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Box::new(Queued { durability, work: Some(work), result: None, reply }))?;
        answer.await.map_err(|_| StoreError::Worker("the writer stopped before answering".into()))?
    }

    /// Queues `write` and makes sure a commit task will take it.
    fn submit(self: &Arc<Self>, write: Box<dyn Write>) -> Result<(), StoreError> {
        self.queue.lock().map_err(|_| StoreError::Worker("write queue lock poisoned".into()))?.push(write);
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            let writer = Arc::clone(self);
            // Detached: a caller that stops waiting cancels nobody's commit.
            drop(tokio::task::spawn_blocking(move || writer.commit_queued()));
        }
        Ok(())
    }

    /// Takes the connection and commits the queued writes, a group at a time (blocking; on the
    /// blocking pool).
    fn commit_queued(&self) {
        loop {
            let mut conn = match self.connection.lock() {
                Ok(conn) => conn,
                Err(_) => {
                    self.scheduled.store(false, Ordering::SeqCst);
                    return self.answer_all(&StoreError::Worker("connection lock poisoned".into()));
                }
            };
            // From here on a newly queued write schedules the next task; what is queued now is ours.
            self.scheduled.store(false, Ordering::SeqCst);
            let (group, more) = match self.queue.lock() {
                Ok(mut queue) => {
                    let take = queue.len().min(MAX_GROUP);
                    let group: Vec<Box<dyn Write>> = queue.drain(..take).collect();
                    (group, !queue.is_empty())
                }
                Err(_) => return,
            };
            if !group.is_empty() {
                commit_group(&mut conn, group);
            }
            // Writes beyond this group that no task was scheduled for are this task's too.
            if !more || self.scheduled.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Answers every queued write with `error` (the connection is unusable).
    fn answer_all(&self, error: &StoreError) {
        if let Ok(mut queue) = self.queue.lock() {
            answer(queue.drain(..).collect(), Err(error));
        }
    }
}

/// Runs `group` in one transaction (each write in its own savepoint when there are several),
/// commits, and answers.
fn commit_group(conn: &mut WriterConnection, mut group: Vec<Box<dyn Write>>) {
    metrics::histogram!("qpc_store_group_commit_size").record(group.len() as f64);
    let sync = group.iter().any(|w| w.durability() == Durability::Synced);
    if conn.syncs != sync {
        if let Err(e) = conn.conn.pragma_update(None, "synchronous", if sync { "FULL" } else { "NORMAL" }) {
            return answer(group, Err(&e.into()));
        }
        conn.syncs = sync;
    }
    let mut tx = match conn.conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return answer(group, Err(&e.into())),
    };
    if let [write] = group.as_mut_slice() {
        // Alone in its group, a write needs no savepoint of its own: if it fails, the whole
        // transaction is rolled back and its own error is its answer. (A savepoint keeps the
        // original of every page it changes until released: dozens of pages for a fan-out.)
        let committed = if !write.apply(&tx) {
            drop(tx);
            Ok(())
        } else if tx.is_autocommit() {
            Err(rolled_back_by_sqlite())
        } else {
            tx.commit().map_err(StoreError::from)
        };
        return answer(group, committed.as_ref().map(|_| ()));
    }
    let mut done = Vec::with_capacity(group.len());
    let mut broken = None;
    for mut write in group {
        if broken.is_some() {
            done.push(write);
            continue;
        }
        match tx.savepoint() {
            Ok(mut savepoint) => {
                if write.apply(&savepoint) {
                    if let Err(e) = savepoint.commit() {
                        broken = Some(StoreError::from(e));
                    }
                } else {
                    savepoint.set_drop_behavior(rusqlite::DropBehavior::Rollback);
                    if let Err(e) = savepoint.finish() {
                        broken = Some(StoreError::from(e));
                    }
                }
            }
            Err(e) => broken = Some(e.into()),
        }
        // Some failures (a full disk, an I/O error) end the whole transaction: what ran
        // before is gone, and what follows must not run outside it.
        if broken.is_none() && tx.is_autocommit() {
            broken = Some(rolled_back_by_sqlite());
        }
        done.push(write);
    }
    let committed = match broken {
        Some(e) => {
            drop(tx);
            Err(e)
        }
        None => tx.commit().map_err(StoreError::from),
    };
    answer(done, committed.as_ref().map(|_| ()));
}

/// Some failures (a full disk, an I/O error) make SQLite roll the whole transaction back.
fn rolled_back_by_sqlite() -> StoreError {
    StoreError::NotCommitted("the transaction was rolled back by SQLite".into())
}

fn answer(group: Vec<Box<dyn Write>>, committed: Result<(), &StoreError>) {
    for write in group {
        write.answer(committed);
    }
}
