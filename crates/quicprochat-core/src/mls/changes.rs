//! Incremental persistence of a client's MLS storage.
//!
//! openmls keeps a client's state (groups, pending commits and proposals, key package private
//! keys) as key/value entries in its storage provider. Instead of snapshotting all of them
//! after every operation, a caller asks for the entries that changed since it last persisted
//! ([`super::MlsClient::state_changes`]), writes them in the same transaction as whatever else
//! the operation changed, and then reports them persisted
//! ([`super::MlsClient::mark_persisted`]). A failed write is simply not reported: the same
//! changes (and any later ones) come back next time.
//!
//! Finding the changes compares the storage with a copy of what was last persisted: a pass over
//! memory, far cheaper than encoding, sealing and writing every entry again.
//!
//! Entries can be large (a group of 1000 X-Wing members keeps about 23 MB of past epochs' message
//! secrets in one entry, rewritten by every message), so a changed value is copied out of the
//! storage once: [`StateChanges`] and, once reported persisted, [`Persisted`] share that copy, and
//! it is wiped once, when neither needs it any more.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// A copy of a storage value, secret, wiped when the last holder drops it.
type SharedValue = Arc<Zeroizing<Vec<u8>>>;

/// Entries of a client's MLS storage changed since the last persist: each key is opaque, each
/// value secret.
#[derive(Default)]
pub struct StateChanges {
    pub(super) upserts: Vec<(Vec<u8>, SharedValue)>,
    pub(super) deletes: Vec<Vec<u8>>,
}

impl StateChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }

    /// Entries written or replaced: `(key, value)`. Values are secret: seal them before they
    /// touch a disk.
    pub fn upserts(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.upserts.iter().map(|(key, value)| (key.as_slice(), value.as_slice()))
    }

    /// Keys of entries deleted.
    pub fn deletes(&self) -> impl Iterator<Item = &[u8]> {
        self.deletes.iter().map(Vec::as_slice)
    }
}

/// Shows counts, never keys or values.
impl fmt::Debug for StateChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateChanges")
            .field("upserts", &self.upserts.len())
            .field("deletes", &self.deletes.len())
            .finish()
    }
}

/// What was last persisted, entry by entry.
#[derive(Default)]
pub(super) struct Persisted {
    entries: HashMap<Vec<u8>, SharedValue>,
}

impl Persisted {
    /// A copy of `values`, all of them persisted.
    pub fn of(values: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self { entries: values.iter().map(|(k, v)| (k.clone(), Arc::new(Zeroizing::new(v.clone())))).collect() }
    }

    /// The differences from `values` (the storage now), sorted by key.
    pub fn changes(&self, values: &HashMap<Vec<u8>, Vec<u8>>) -> StateChanges {
        let mut upserts: Vec<(Vec<u8>, SharedValue)> = values
            .iter()
            .filter(|(key, value)| self.entries.get(*key).is_none_or(|old| old.as_slice() != value.as_slice()))
            .map(|(key, value)| (key.clone(), Arc::new(Zeroizing::new(value.clone()))))
            .collect();
        let mut deletes: Vec<Vec<u8>> = self.entries.keys().filter(|key| !values.contains_key(*key)).cloned().collect();
        upserts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        deletes.sort_unstable();
        StateChanges { upserts, deletes }
    }

    /// Records `changes` as persisted, sharing their copies of the values.
    pub fn apply(&mut self, changes: &StateChanges) {
        for (key, value) in &changes.upserts {
            self.entries.insert(key.clone(), Arc::clone(value));
        }
        for key in &changes.deletes {
            self.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&[u8], &[u8])]) -> HashMap<Vec<u8>, Vec<u8>> {
        entries.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn changes_are_what_differs_until_reported_persisted() {
        let mut persisted = Persisted::of(&map(&[(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]));
        let now = map(&[(b"a", b"1"), (b"b", b"two"), (b"d", b"4")]);
        let changes = persisted.changes(&now);
        let upserts: Vec<_> = changes.upserts().collect();
        assert_eq!(upserts, vec![(&b"b"[..], &b"two"[..]), (&b"d"[..], &b"4"[..])]);
        assert_eq!(changes.deletes().collect::<Vec<_>>(), vec![&b"c"[..]]);
        // Not reported: the same changes come back.
        assert_eq!(persisted.changes(&now).upserts().count(), 2);
        persisted.apply(&changes);
        assert!(persisted.changes(&now).is_empty());
        // The persisted copy is the one handed out, not another.
        assert!(changes.upserts.iter().all(|(key, value)| Arc::ptr_eq(value, &persisted.entries[key])));
        assert_eq!(format!("{changes:?}"), "StateChanges { upserts: 2, deletes: 1 }");
    }
}
