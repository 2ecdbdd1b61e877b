#!/usr/bin/env python3
"""Times the SQLite store's fan-out statements alone, on the store's own schema.

Builds a database from the migrations in crates/quicprochat-server/src/store/sqlite.rs, one
channel of MEMBERS devices whose queues each hold BACKLOG unacknowledged envelopes (a device
offline for a while), then times, per message, the depth check and sequence numbers as the
store ran them before session 5 (count each recipient's queue rows, then bump next_seq) and as
it runs them now (one UPDATE of the per-device counters that returns the depths). Nothing is
synced (synchronous = OFF): this is the statements' cost, not the disk's.

    MEMBERS=100 BACKLOG=1000 scripts/fanout-statements.py
"""
import os
import re
import sqlite3
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "crates/quicprochat-server/src/store/sqlite.rs")
MEMBERS = int(os.environ.get("MEMBERS", "100"))
BACKLOG = int(os.environ.get("BACKLOG", "1000"))
ROUNDS = 50

MEMBERS_OF = "SELECT device_id FROM channel_members WHERE channel_id = ?1 AND device_id <> ?2"
BEFORE = [
    "SELECT 1 FROM channel_members m WHERE m.channel_id = ?1 AND m.device_id <> ?2 "
    "AND (SELECT COUNT(*) FROM queue q WHERE q.device_id = m.device_id) >= 10000 LIMIT 1",
    f"UPDATE devices SET next_seq = next_seq + 1 WHERE id IN ({MEMBERS_OF})",
]
NOW = [
    f"UPDATE devices SET next_seq = next_seq + 1, queue_depth = queue_depth + 1 WHERE id IN ({MEMBERS_OF}) "
    "RETURNING queue_depth - 1",
]


def schema():
    text = open(SOURCE).read()
    text = text[text.index("const MIGRATIONS"):text.index("IDEMPOTENCY_WINDOW_MS")]
    return re.findall(r'r#"(.*?)"#', text, re.S)


def timed(db, statements, args):
    for _ in range(5):
        for sql in statements:
            list(db.execute(sql, args))
    started = time.perf_counter()
    for _ in range(ROUNDS):
        for sql in statements:
            list(db.execute(sql, args))
    return (time.perf_counter() - started) / ROUNDS * 1000


def main():
    with tempfile.TemporaryDirectory() as dir:
        db = sqlite3.connect(os.path.join(dir, "store.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("PRAGMA foreign_keys = ON")
        for migration in schema():
            db.executescript(migration)
        channel, sender = b"c" * 16, (0).to_bytes(16, "big")
        db.execute("BEGIN")
        db.execute("INSERT INTO channels (id, kind, epoch, created_ms) VALUES (?, 1, 1, 0)", (channel,))
        for i in range(MEMBERS):
            device = i.to_bytes(16, "big")
            db.execute("INSERT INTO users (id, username, opaque_record, created_ms) VALUES (?, ?, x'00', 0)",
                       (device, f"user{i}"))
            db.execute("INSERT INTO devices (id, user_id, identity_key, name, created_ms) VALUES (?, ?, ?, 'd', 0)",
                       (device, device, os.urandom(32)))
            db.execute("INSERT INTO channel_members VALUES (?, ?)", (channel, device))
        for _ in range(BACKLOG):
            db.execute("INSERT INTO envelopes (id, channel_id, kind, epoch, payload, created_ms) "
                       "VALUES (?, ?, 1, 1, zeroblob(256), 0)", (os.urandom(16), channel))
            seq = db.execute("SELECT last_insert_rowid()").fetchone()[0]
            list(db.execute(NOW[0], (channel, sender)))
            db.execute(f"INSERT INTO queue (device_id, seq, envelope) SELECT id, next_seq - 1, ?3 FROM devices "
                       f"WHERE id IN ({MEMBERS_OF})", (channel, sender, seq))
        db.execute("COMMIT")
        db.execute("BEGIN")
        before = timed(db, BEFORE, (channel, sender))
        now = timed(db, NOW, (channel, sender))
        db.execute("ROLLBACK")
        print(f"| {MEMBERS} | {BACKLOG} | {before:.2f} ms | {now:.2f} ms |")


if __name__ == "__main__":
    main()
