//! Incremental persistence of a client's MLS storage.
//!
//! openmls keeps a client's state (groups, pending commits and proposals, key package private
//! keys) as key/value entries in its storage provider. Instead of snapshotting all of them
//! after every operation, a caller asks for what changed since it last persisted
//! ([`super::MlsClient::state_changes`]), writes it in the same transaction as whatever else
//! the operation changed, and then reports it persisted ([`super::MlsClient::mark_persisted`]).
//! A failed write is simply not reported: the same changes (and any later ones) come back next
//! time.
//!
//! # Chunks
//!
//! Entries can be large, and the largest change a little at a time: a group of 1000 X-Wing
//! members keeps about 23 MB of past epochs' message secrets in one entry, which openmls
//! rewrites after every message sent or received, but the past epochs come first in it and only
//! the current epoch's secrets at its end change. So each value is persisted as chunks of
//! [`STATE_CHUNK_LEN`] bytes (the last one shorter, an empty value one empty chunk), and a
//! change names only the chunks that differ: a message in that group writes a chunk or two
//! instead of 23 MB.
//!
//! The chunking is fixed by the value alone: chunk `i` is bytes `i·L .. (i+1)·L`. A persisted
//! entry is its chunks `0..n`, the last one marked last ([`ChunkWrite::last`]) so that a store
//! can authenticate where a value ends; when a value grows or shrinks across a chunk boundary,
//! the chunk that gains or loses the mark is written again, and a shrunk value's surplus chunks
//! are cut off ([`StateChanges::truncations`]).
//!
//! Finding the changes compares the storage with a copy of what was last persisted, chunk by
//! chunk: a pass over memory, far cheaper than encoding, sealing and writing every entry again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// Bytes per chunk of a persisted entry (see the module documentation). Part of the persisted
/// format: a store holds entries chunked at this length, and changing it would need a store to
/// re-chunk what it holds.
pub const STATE_CHUNK_LEN: usize = 16 * 1024;

/// A copy of a chunk, secret, wiped when the last holder drops it.
type SharedChunk = Arc<Zeroizing<Vec<u8>>>;

/// One chunk to write (insert or replace): chunk `index` of the entry `key`.
#[derive(Clone, Copy)]
pub struct ChunkWrite<'a> {
    /// The entry's key (opaque).
    pub key: &'a [u8],
    /// Which chunk, from 0.
    pub index: u32,
    /// Whether it is the entry's last chunk.
    pub last: bool,
    /// Its bytes: secret, seal them before they touch a disk.
    pub bytes: &'a [u8],
}

/// Shows the position, never the key or the bytes.
impl fmt::Debug for ChunkWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkWrite")
            .field("index", &self.index)
            .field("last", &self.last)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// What changed in a client's MLS storage since the last persist, as chunks (see the module
/// documentation): chunks to write, entries that now have fewer chunks, entries deleted.
#[derive(Default)]
pub struct StateChanges {
    writes: Vec<(Vec<u8>, u32, bool, SharedChunk)>,
    truncations: Vec<(Vec<u8>, u32)>,
    deletes: Vec<Vec<u8>>,
}

impl StateChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.truncations.is_empty() && self.deletes.is_empty()
    }

    /// Chunks to write or replace, sorted by key and index.
    pub fn writes(&self) -> impl Iterator<Item = ChunkWrite<'_>> {
        self.writes.iter().map(|(key, index, last, bytes)| ChunkWrite {
            key,
            index: *index,
            last: *last,
            bytes: bytes.as_slice(),
        })
    }

    /// Entries that shrank: `(key, count)`, delete their chunks from index `count` on.
    pub fn truncations(&self) -> impl Iterator<Item = (&[u8], u32)> {
        self.truncations.iter().map(|(key, count)| (key.as_slice(), *count))
    }

    /// Keys of entries deleted: delete all their chunks.
    pub fn deletes(&self) -> impl Iterator<Item = &[u8]> {
        self.deletes.iter().map(Vec::as_slice)
    }

    /// Bytes of all chunks to write.
    pub fn bytes_written(&self) -> usize {
        self.writes.iter().map(|(_, _, _, bytes)| bytes.len()).sum()
    }
}

/// Shows counts, never keys or values.
impl fmt::Debug for StateChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateChanges")
            .field("writes", &self.writes.len())
            .field("bytes", &self.bytes_written())
            .field("truncations", &self.truncations.len())
            .field("deletes", &self.deletes.len())
            .finish()
    }
}

/// The chunks of `value`: at least one, the last one possibly shorter (or empty).
fn chunks(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    value.chunks(STATE_CHUNK_LEN).chain(value.is_empty().then_some(empty))
}

/// The chunks the whole entry `key` = `value` is persisted as: what [`StateChanges`] writes
/// for an entry new to the store, and what a store holding it whole must write instead.
pub fn entry_chunks<'a>(key: &'a [u8], value: &'a [u8]) -> impl Iterator<Item = ChunkWrite<'a>> {
    let count = chunks(value).count();
    chunks(value).enumerate().map(move |(index, bytes)| ChunkWrite {
        key,
        // A value of 64 TiB cannot be in memory.
        index: u32::try_from(index).unwrap_or(u32::MAX),
        last: index + 1 == count,
        bytes,
    })
}

/// What was last persisted, entry by entry and chunk by chunk. A chunk not known to be
/// persisted (`None`) differs from every value.
#[derive(Default)]
pub(super) struct Persisted {
    entries: HashMap<Vec<u8>, Vec<Option<SharedChunk>>>,
}

impl Persisted {
    /// A copy of `values`, all of them persisted.
    pub fn of(values: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let entries = values
            .iter()
            .map(|(key, value)| {
                let chunks = chunks(value).map(|chunk| Some(Arc::new(Zeroizing::new(chunk.to_vec())))).collect();
                (key.clone(), chunks)
            })
            .collect();
        Self { entries }
    }

    /// The differences from `values` (the storage now), sorted by key (and chunk).
    pub fn changes(&self, values: &HashMap<Vec<u8>, Vec<u8>>) -> StateChanges {
        let mut changes = StateChanges::default();
        for (key, value) in values {
            let old = self.entries.get(key).map_or(&[][..], Vec::as_slice);
            let mut count = 0;
            for chunk in entry_chunks(key, value) {
                count = chunk.index + 1;
                let at = chunk.index as usize;
                let same = old.get(at).and_then(Option::as_ref).is_some_and(|persisted| {
                    persisted.as_slice() == chunk.bytes && (at + 1 == old.len()) == chunk.last
                });
                if !same {
                    let copy = Arc::new(Zeroizing::new(chunk.bytes.to_vec()));
                    changes.writes.push((key.clone(), chunk.index, chunk.last, copy));
                }
            }
            if old.len() > count as usize {
                changes.truncations.push((key.clone(), count));
            }
        }
        changes.deletes = self.entries.keys().filter(|key| !values.contains_key(*key)).cloned().collect();
        changes.writes.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        changes.truncations.sort_unstable();
        changes.deletes.sort_unstable();
        changes
    }

    /// Records `changes` as persisted, sharing their copies of the chunks.
    pub fn apply(&mut self, changes: &StateChanges) {
        for (key, index, _, chunk) in &changes.writes {
            let chunks = self.entries.entry(key.clone()).or_default();
            let index = *index as usize;
            if chunks.len() <= index {
                chunks.resize(index + 1, None);
            }
            chunks[index] = Some(Arc::clone(chunk));
        }
        for (key, count) in &changes.truncations {
            if let Some(chunks) = self.entries.get_mut(key) {
                chunks.truncate(*count as usize);
            }
        }
        for key in &changes.deletes {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const L: usize = STATE_CHUNK_LEN;

    /// Persisted chunks as a store keeps them: `(key, index)` → `(last, bytes)`.
    pub(in crate::mls) type Table = std::collections::BTreeMap<(Vec<u8>, u32), (bool, Vec<u8>)>;

    fn map(entries: &[(&[u8], &[u8])]) -> HashMap<Vec<u8>, Vec<u8>> {
        entries.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    /// `(key, index, last, len)` of each write.
    fn writes(changes: &StateChanges) -> Vec<(Vec<u8>, u32, bool, usize)> {
        changes.writes().map(|w| (w.key.to_vec(), w.index, w.last, w.bytes.len())).collect()
    }

    /// Rebuilds each entry from a table of persisted chunks, as a store reads it back.
    pub(in crate::mls) fn reassemble(table: &Table) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut out: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for ((key, _), (_, bytes)) in table {
            out.entry(key.clone()).or_default().extend_from_slice(bytes);
        }
        out
    }

    /// Applies `changes` to a table of persisted chunks, as a store writes them.
    pub(in crate::mls) fn write_to(table: &mut Table, changes: &StateChanges) {
        for w in changes.writes() {
            table.insert((w.key.to_vec(), w.index), (w.last, w.bytes.to_vec()));
        }
        for (key, count) in changes.truncations() {
            table.retain(|(k, index), _| k != key || *index < count);
        }
        for key in changes.deletes() {
            table.retain(|(k, _), _| k != key);
        }
    }

    #[test]
    fn changes_are_what_differs_until_reported_persisted() {
        let mut persisted = Persisted::of(&map(&[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]));
        let now = map(&[(b"a", b"1"), (b"b", b"two"), (b"d", b"")]);
        let changes = persisted.changes(&now);
        assert_eq!(writes(&changes), vec![(b"b".to_vec(), 0, true, 3), (b"d".to_vec(), 0, true, 0)]);
        assert_eq!(changes.deletes().collect::<Vec<_>>(), vec![&b"c"[..]]);
        // Not reported: the same changes come back.
        assert_eq!(persisted.changes(&now).writes().count(), 2);
        persisted.apply(&changes);
        assert!(persisted.changes(&now).is_empty());
        assert_eq!(format!("{changes:?}"), "StateChanges { writes: 2, bytes: 3, truncations: 0, deletes: 1 }");
    }

    #[test]
    fn a_change_at_the_end_of_a_large_value_writes_its_last_chunk() {
        let mut value = vec![7u8; 5 * L + 100];
        let mut persisted = Persisted::of(&map(&[(b"secrets", &value)]));
        value[5 * L + 50] = 8;
        let changes = persisted.changes(&map(&[(b"secrets", &value)]));
        assert_eq!(writes(&changes), vec![(b"secrets".to_vec(), 5, true, 100)]);
        assert_eq!(changes.bytes_written(), 100);
        persisted.apply(&changes);
        // A change in the middle writes that chunk alone.
        value[2 * L] = 9;
        let changes = persisted.changes(&map(&[(b"secrets", &value)]));
        assert_eq!(writes(&changes), vec![(b"secrets".to_vec(), 2, false, L)]);
    }

    #[test]
    fn growing_and_shrinking_across_a_boundary_moves_the_last_mark() {
        let mut table = std::collections::BTreeMap::new();
        let mut persisted = Persisted::default();
        let first = map(&[(b"k", &vec![1u8; 2 * L][..])]);
        let changes = persisted.changes(&first);
        assert_eq!(writes(&changes), vec![(b"k".to_vec(), 0, false, L), (b"k".to_vec(), 1, true, L)]);
        write_to(&mut table, &changes);
        persisted.apply(&changes);
        assert_eq!(reassemble(&table), first);

        // One byte more: chunk 1 is no longer last and is written again with its new mark.
        let grown = map(&[(b"k", &vec![1u8; 2 * L + 1][..])]);
        let changes = persisted.changes(&grown);
        assert_eq!(writes(&changes), vec![(b"k".to_vec(), 1, false, L), (b"k".to_vec(), 2, true, 1)]);
        write_to(&mut table, &changes);
        persisted.apply(&changes);
        assert_eq!(reassemble(&table), grown);

        // Back to one chunk: chunk 0 becomes last, the others are cut off.
        let shrunk = map(&[(b"k", &vec![1u8; 10][..])]);
        let changes = persisted.changes(&shrunk);
        assert_eq!(writes(&changes), vec![(b"k".to_vec(), 0, true, 10)]);
        assert_eq!(changes.truncations().collect::<Vec<_>>(), vec![(&b"k"[..], 1)]);
        write_to(&mut table, &changes);
        persisted.apply(&changes);
        assert_eq!(reassemble(&table), shrunk);
        assert!(table.values().filter(|(last, _)| *last).count() == 1);
        assert!(persisted.changes(&shrunk).is_empty());

        // Emptied: one empty chunk, so the entry still exists.
        let empty = map(&[(b"k", b"")]);
        let changes = persisted.changes(&empty);
        assert_eq!(writes(&changes), vec![(b"k".to_vec(), 0, true, 0)]);
        write_to(&mut table, &changes);
        persisted.apply(&changes);
        assert_eq!(reassemble(&table), empty);

        let changes = persisted.changes(&HashMap::new());
        assert_eq!(changes.deletes().collect::<Vec<_>>(), vec![&b"k"[..]]);
        write_to(&mut table, &changes);
        assert!(table.is_empty());
    }

    #[test]
    fn a_write_that_skips_chunks_leaves_them_unpersisted() {
        let mut persisted = Persisted::default();
        let value = map(&[(b"k", &vec![1u8; 3 * L][..])]);
        let all = persisted.changes(&value);
        // Report only the last chunk persisted (as if a caller filtered the changes).
        let partial = StateChanges { writes: all.writes[2..].to_vec(), ..Default::default() };
        persisted.apply(&partial);
        let again = persisted.changes(&value);
        assert_eq!(again.writes().map(|w| w.index).collect::<Vec<_>>(), vec![0, 1]);
    }
}
