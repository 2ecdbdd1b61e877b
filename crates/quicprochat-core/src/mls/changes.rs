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
//! storage once: [`StateChanges`] and, once reported persisted, [`Persisted`] share that copy. The
//! copy it replaces is not wiped and freed but kept for the next round, which writes the next
//! copy over it: a large entry then costs one comparison and one copy per operation.

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
    /// Copies replaced by the last [`Self::apply`], to be overwritten by the next
    /// [`Self::changes`]; any left over are wiped at the next `apply`.
    spare: Vec<Zeroizing<Vec<u8>>>,
}

impl Persisted {
    /// A copy of `values`, all of them persisted.
    pub fn of(values: &HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let entries = values.iter().map(|(k, v)| (k.clone(), Arc::new(Zeroizing::new(v.clone())))).collect();
        Self { entries, spare: Vec::new() }
    }

    /// The differences from `values` (the storage now), sorted by key.
    pub fn changes(&mut self, values: &HashMap<Vec<u8>, Vec<u8>>) -> StateChanges {
        let mut upserts: Vec<(Vec<u8>, SharedValue)> = Vec::new();
        for (key, value) in values {
            if self.entries.get(key).is_none_or(|old| old.as_slice() != value.as_slice()) {
                upserts.push((key.clone(), Arc::new(self.copy_of(value))));
            }
        }
        let mut deletes: Vec<Vec<u8>> = self.entries.keys().filter(|key| !values.contains_key(*key)).cloned().collect();
        upserts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        deletes.sort_unstable();
        StateChanges { upserts, deletes }
    }

    /// Records `changes` as persisted, sharing their copies of the values.
    pub fn apply(&mut self, changes: &StateChanges) {
        self.spare.clear();
        for (key, value) in &changes.upserts {
            if let Some(old) = self.entries.insert(key.clone(), Arc::clone(value))
                && let Ok(old) = Arc::try_unwrap(old)
            {
                self.spare.push(old);
            }
        }
        for key in &changes.deletes {
            self.entries.remove(key);
        }
    }

    /// A secret copy of `value`, written over the smallest spare copy that holds it without
    /// growing (growing would free the old buffer unwiped) and is at most twice its size. Whatever
    /// the spare held beyond `value` stays in its capacity until the copy is dropped, which wipes
    /// the whole capacity.
    fn copy_of(&mut self, value: &[u8]) -> Zeroizing<Vec<u8>> {
        let fit = self
            .spare
            .iter()
            .enumerate()
            .filter(|(_, spare)| (value.len()..=value.len().saturating_mul(2)).contains(&spare.capacity()))
            .min_by_key(|(_, spare)| spare.capacity())
            .map(|(i, _)| i);
        match fit {
            Some(i) => {
                let mut copy = self.spare.swap_remove(i);
                copy.clear();
                copy.extend_from_slice(value);
                copy
            }
            None => Zeroizing::new(value.to_vec()),
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

    #[test]
    fn a_replaced_copy_is_overwritten_by_the_next_change() {
        let mut persisted = Persisted::of(&map(&[(b"a", &[1; 1000])]));
        let first = persisted.changes(&map(&[(b"a", &[2; 1000])]));
        persisted.apply(&first);
        drop(first);
        assert_eq!(persisted.spare.len(), 1);
        let spare_at = persisted.spare[0].as_ptr();

        // A shorter value goes into the spare buffer; its old tail is not part of the value.
        let second = persisted.changes(&map(&[(b"a", &[3; 600])]));
        let (_, value) = second.upserts().next().unwrap();
        assert_eq!(value, &[3; 600][..]);
        assert_eq!(value.as_ptr(), spare_at);
        assert!(persisted.spare.is_empty());

        // Not reported persisted: the same change comes back, in a fresh copy.
        let again = persisted.changes(&map(&[(b"a", &[3; 600])]));
        assert_eq!(again.upserts().next().unwrap().1, &[3; 600][..]);
        persisted.apply(&again);
        assert!(persisted.changes(&map(&[(b"a", &[3; 600])])).is_empty());
        // Spares of one round are wiped at the next.
        persisted.apply(&StateChanges::default());
        assert!(persisted.spare.is_empty());
    }
}
