//! The SQLite store's one writer connection: group commit, and checkpoints beside it.
//!
//! Every write is queued and committed in groups (see [`Writer`]); the WAL is copied back into
//! the database file by a thread of its own (see [`Checkpointer`]), so that no write waits for
//! a checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// Most writes committed in one transaction; the rest wait for the next.
const MAX_GROUP: usize = 256;

/// The writer connection and the writes waiting for it.
///
/// Group commit: every write is queued, then a task on the blocking pool takes the connection
/// and runs the queued writes (up to [`MAX_GROUP`]) in one `IMMEDIATE` transaction, each inside its own savepoint,
/// and commits once. A write that fails is rolled back to its savepoint and answered with its
/// error; the others are answered when the commit is durable (or all with the commit's error).
///
/// One task is scheduled at a time: a write queued while one is scheduled and has not yet
/// taken the queue rides with it; a write queued after it took the queue schedules the next.
pub(super) struct Writer {
    /// Shared with the checkpointer, which holds it while it copies the WAL's last frames.
    pub(super) connection: Arc<Mutex<WriterConnection>>,
    pub(super) queue: Mutex<Vec<Box<dyn Write>>>,
    /// A commit task is scheduled and has not taken the queue yet.
    scheduled: AtomicBool,
    /// Dropped after the connection: stopping it closes the connection's last handle.
    checkpointer: Checkpointer,
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
    /// `connection` must sync its commits (`synchronous = FULL`); the `checkpointer`
    /// connection, on the same database, runs the checkpoints beside it (see [`Checkpointer`]).
    pub(super) fn new(connection: Connection, checkpointer: Connection) -> Result<Self, StoreError> {
        let connection = Arc::new(Mutex::new(WriterConnection { conn: connection, syncs: true }));
        let checkpointer = Checkpointer::start(checkpointer, Arc::clone(&connection))?;
        Ok(Self { connection, queue: Mutex::new(Vec::new()), scheduled: AtomicBool::new(false), checkpointer })
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
                drop(conn);
                self.checkpointer.nudge();
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

/// Runs `group` in one transaction, each write in its own savepoint, commits, and answers.
fn commit_group(conn: &mut WriterConnection, group: Vec<Box<dyn Write>>) {
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
            broken = Some(StoreError::NotCommitted("the transaction was rolled back by SQLite".into()));
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

fn answer(group: Vec<Box<dyn Write>>, committed: Result<(), &StoreError>) {
    for write in group {
        write.answer(committed);
    }
}

/// At most one checkpoint beside the writer per interval. Its sync of the database file
/// competes with the writer's syncs of the WAL: at 8 pairs × 4 in flight (`relay --raw`),
/// 200 ms gave 10–20 % fewer messages/s than the writer's own checkpoints, 3 s 0–10 % more
/// (a longer WAL), 1 s 10–15 % more.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Once the WAL holds this many frames (4 KiB pages: 4 MiB, SQLite's default automatic
/// checkpoint), the checkpointer copies the last ones while holding the writer, so that the
/// next write starts the WAL over from its beginning.
const RESTART_FRAMES: i64 = 1000;

/// The writer's own automatic checkpoint, kept as a backstop (64 MiB of WAL) should the
/// checkpointer not keep up.
pub(super) const WRITER_AUTOCHECKPOINT_FRAMES: i64 = 16_384;

/// Copies the WAL back into the database file on a connection and thread of its own, so that
/// no write waits for it.
///
/// SQLite's automatic checkpoint runs on the connection that commits, right after its commit:
/// with one writer, every write queued meanwhile waits while pages are copied and the database
/// file is synced (an 8–10 ms sync, twice a second under load, on the machine of
/// `docs/benchmarks.md`). Here the writer only nudges this thread after its commits, and it
/// runs a `PASSIVE` checkpoint, which blocks neither the writer nor the readers, at most once
/// per [`CHECKPOINT_INTERVAL`]. A checkpoint beside a busy writer never quite reaches the WAL's
/// end, and SQLite starts the WAL over only once all of it is copied; so when the WAL holds
/// [`RESTART_FRAMES`], the checkpointer copies the few frames committed since while holding the
/// writer connection.
struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(conn: Connection, writer: Arc<Mutex<WriterConnection>>) -> Result<Self, StoreError> {
        let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("qpc-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&conn, &writer, &nudged))
            .map_err(StoreError::Io)?;
        Ok(Self { nudge: Some(nudge), thread: Some(thread) })
    }

    /// Tells the thread that something was committed (never blocks).
    fn nudge(&self) {
        if let Some(nudge) = &self.nudge {
            // Full means a nudge is already waiting; gone means the thread stopped (logged there).
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel stops the thread after its checkpoint in progress, if any.
        drop(self.nudge.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the SQLite checkpoint thread panicked");
        }
    }
}

/// Waits for a commit, then checkpoints, at most once per [`CHECKPOINT_INTERVAL`], until the
/// writer is dropped. Commits during a checkpoint leave a nudge for the next one.
fn checkpoint_loop(conn: &Connection, writer: &Mutex<WriterConnection>, nudged: &Receiver<()>) {
    let mut last: Option<Instant> = None;
    loop {
        if nudged.recv().is_err() {
            return;
        }
        if let Some(until) = last.map(|last| last + CHECKPOINT_INTERVAL) {
            // Commits meanwhile are covered by the checkpoint after the wait.
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match nudged.recv_timeout(left) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        last = Some(Instant::now());
        if let Err(e) = checkpoint(conn, writer) {
            tracing::warn!(error = %e, "background WAL checkpoint failed; the writer's own checkpoint remains");
        }
    }
}

/// One `PASSIVE` checkpoint beside the writer, then, when the WAL is long, one more holding it.
fn checkpoint(conn: &Connection, writer: &Mutex<WriterConnection>) -> Result<(), StoreError> {
    let frames = passive_checkpoint(conn)?;
    metrics::histogram!("qpc_store_wal_frames").record(frames as f64);
    if frames >= RESTART_FRAMES {
        let _held = writer.lock().map_err(|_| StoreError::Worker("connection lock poisoned".into()))?;
        passive_checkpoint(conn)?;
    }
    Ok(())
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)`; the number of frames in the WAL.
fn passive_checkpoint(conn: &Connection) -> Result<i64, StoreError> {
    // Columns: busy (always 0 for PASSIVE), frames in the WAL, frames copied back.
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in WAL mode whose own automatic checkpoint is off, and a second connection.
    fn wal_pair(dir: &std::path::Path) -> (Connection, Connection) {
        let path = dir.join("db");
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (v BLOB)").unwrap();
        (writer, Connection::open(&path).unwrap())
    }

    fn insert(conn: &Connection, rows: usize) {
        for _ in 0..rows {
            conn.execute("INSERT INTO t (v) VALUES (zeroblob(3000))", []).unwrap();
        }
    }

    #[test]
    fn a_checkpointed_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, checkpointer) = wal_pair(dir.path());
        let writer = Mutex::new(WriterConnection { conn: writer, syncs: true });

        // Copied back in full, the WAL starts over from its beginning at the next write.
        insert(&writer.lock().unwrap().conn, RESTART_FRAMES as usize);
        assert!(passive_checkpoint(&checkpointer).unwrap() >= RESTART_FRAMES);
        checkpoint(&checkpointer, &writer).unwrap();
        insert(&writer.lock().unwrap().conn, 1);
        let frames = passive_checkpoint(&checkpointer).unwrap();
        assert!(frames < 10, "the WAL started over: {frames} frames");
        let rows: i64 = checkpointer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1 + RESTART_FRAMES);
    }

    #[test]
    fn commits_are_checkpointed_in_the_background_until_the_writer_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (conn, checkpointer) = wal_pair(dir.path());
        let file_len = || std::fs::metadata(dir.path().join("db")).unwrap().len();
        let empty = file_len();
        let writer = Writer::new(conn, checkpointer).unwrap();

        insert(&writer.connection.lock().unwrap().conn, 50);
        writer.checkpointer.nudge();
        let deadline = Instant::now() + Duration::from_secs(10);
        while file_len() < empty + 50 * 3000 {
            assert!(Instant::now() < deadline, "the rows never reached the database file");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Dropping the writer stops the thread (the drop joins it): with both connections closed,
        // SQLite folds the WAL in and deletes it.
        drop(writer);
        assert!(!dir.path().join("db-wal").exists(), "a connection is still open");
    }
}
