//! The storage a [`ChannelTracker`](super::ChannelTracker) keeps its
//! `PublicGroup` in.
//!
//! openmls's `MemoryStorage` unwraps the JSON decoding of what it reads, so
//! a tracker snapshot with one corrupted value would panic inside
//! `PublicGroup::load` (found by the `tracker_restore` fuzz target). This
//! storage implements only what a public group needs
//! ([`PublicStorageProvider`]) and turns every undecodable value into
//! [`TrackerStorageError::Corrupt`].
//!
//! Keys and values are laid out as `MemoryStorage` lays them out (label,
//! JSON of the key, `u16be` storage version; JSON values; a proposal queue
//! as a JSON list of JSON-encoded refs), so snapshots written before this
//! storage existed restore unchanged.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, Entity, traits};
use serde::Serialize;
use thiserror::Error;

const TREE_LABEL: &str = "Tree";
const GROUP_CONTEXT_LABEL: &str = "GroupContext";
const INTERIM_TRANSCRIPT_HASH_LABEL: &str = "InterimTranscriptHash";
const CONFIRMATION_TAG_LABEL: &str = "ConfirmationTag";
const QUEUED_PROPOSAL_LABEL: &str = "QueuedProposal";
const PROPOSAL_QUEUE_REFS_LABEL: &str = "ProposalQueueRefs";

/// Why the tracker's storage failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrackerStorageError {
    /// A stored value does not decode as what its key says it is.
    #[error("stored {label} value is corrupt")]
    Corrupt {
        /// Which kind of value.
        label: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The proposal queue names a proposal that is not stored.
    #[error("the proposal queue names a proposal that is not stored")]
    MissingProposal,
    /// A value could not be encoded.
    #[error("encoding a value for storage failed")]
    Encode(#[source] serde_json::Error),
    /// A thread panicked while holding the storage lock.
    #[error("tracker storage lock poisoned")]
    LockPoisoned,
}

/// Key-value storage of one public group, every read fallible.
#[derive(Debug, Default)]
pub(crate) struct TrackerStorage {
    values: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
}

type Result<T> = std::result::Result<T, TrackerStorageError>;

impl TrackerStorage {
    /// A storage holding `values`, as read from a snapshot.
    pub(crate) fn from_entries(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        Self { values: RwLock::new(values) }
    }

    /// Read access to every entry, for serialisation.
    pub(crate) fn entries(&self) -> Result<RwLockReadGuard<'_, HashMap<Vec<u8>, Vec<u8>>>> {
        self.values.read().map_err(|_| TrackerStorageError::LockPoisoned)
    }

    fn entries_mut(&self) -> Result<RwLockWriteGuard<'_, HashMap<Vec<u8>, Vec<u8>>>> {
        self.values.write().map_err(|_| TrackerStorageError::LockPoisoned)
    }

    fn write<V: Serialize>(&self, label: &str, key: &impl Serialize, value: &V) -> Result<()> {
        let key = storage_key(label, key)?;
        let value = encode(value)?;
        self.entries_mut()?.insert(key, value);
        Ok(())
    }

    fn read<V: Entity<CURRENT_VERSION>>(&self, label: &'static str, key: &impl Serialize) -> Result<Option<V>> {
        let key = storage_key(label, key)?;
        self.entries()?.get(&key).map(|value| decode(label, value)).transpose()
    }

    fn delete(&self, label: &str, key: &impl Serialize) -> Result<()> {
        let key = storage_key(label, key)?;
        self.entries_mut()?.remove(&key);
        Ok(())
    }

    /// The proposal refs queued for `group_id`, as their JSON encodings.
    fn queue(&self, group_id: &impl Serialize) -> Result<Vec<Vec<u8>>> {
        let key = storage_key(PROPOSAL_QUEUE_REFS_LABEL, group_id)?;
        self.entries()?
            .get(&key)
            .map(|list| decode(PROPOSAL_QUEUE_REFS_LABEL, list))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn set_queue(&self, group_id: &impl Serialize, queue: &[Vec<u8>]) -> Result<()> {
        let key = storage_key(PROPOSAL_QUEUE_REFS_LABEL, group_id)?;
        let mut values = self.entries_mut()?;
        if queue.is_empty() {
            values.remove(&key);
        } else {
            values.insert(key, encode(&queue)?);
        }
        Ok(())
    }
}

/// `label ‖ JSON(key) ‖ u16be(version)`, as openmls's memory storage builds
/// its keys.
fn storage_key(label: &str, key: &impl Serialize) -> Result<Vec<u8>> {
    let mut out = label.as_bytes().to_vec();
    serde_json::to_writer(&mut out, key).map_err(TrackerStorageError::Encode)?;
    out.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
    Ok(out)
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(TrackerStorageError::Encode)
}

fn decode<V: serde::de::DeserializeOwned>(label: &'static str, bytes: &[u8]) -> Result<V> {
    serde_json::from_slice(bytes).map_err(|source| TrackerStorageError::Corrupt { label, source })
}

impl PublicStorageProvider<CURRENT_VERSION> for TrackerStorage {
    type PublicError = TrackerStorageError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        tree: &T,
    ) -> Result<()> {
        self.write(TREE_LABEL, group_id, tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        hash: &H,
    ) -> Result<()> {
        self.write(INTERIM_TRANSCRIPT_HASH_LABEL, group_id, hash)
    }

    fn write_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        context: &C,
    ) -> Result<()> {
        self.write(GROUP_CONTEXT_LABEL, group_id, context)
    }

    fn write_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        tag: &T,
    ) -> Result<()> {
        self.write(CONFIRMATION_TAG_LABEL, group_id, tag)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
        proposal: &P,
    ) -> Result<()> {
        self.write(QUEUED_PROPOSAL_LABEL, &(group_id, proposal_ref), proposal)?;
        let mut queue = self.queue(group_id)?;
        queue.push(encode(proposal_ref)?);
        self.set_queue(group_id, &queue)
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<(R, P)>> {
        self.queue(group_id)?
            .iter()
            .map(|encoded_ref| {
                let proposal_ref: R = decode(PROPOSAL_QUEUE_REFS_LABEL, encoded_ref)?;
                let proposal: Option<P> = self.read(QUEUED_PROPOSAL_LABEL, &(group_id, &proposal_ref))?;
                Ok((proposal_ref, proposal.ok_or(TrackerStorageError::MissingProposal)?))
            })
            .collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>> {
        self.read(TREE_LABEL, group_id)
    }

    fn group_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<C>> {
        self.read(GROUP_CONTEXT_LABEL, group_id)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<H>> {
        self.read(INTERIM_TRANSCRIPT_HASH_LABEL, group_id)
    }

    fn confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, T: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>> {
        self.read(CONFIRMATION_TAG_LABEL, group_id)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.delete(TREE_LABEL, group_id)
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.delete(CONFIRMATION_TAG_LABEL, group_id)
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.delete(GROUP_CONTEXT_LABEL, group_id)
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.delete(INTERIM_TRANSCRIPT_HASH_LABEL, group_id)
    }

    fn remove_proposal<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        proposal_ref: &R,
    ) -> Result<()> {
        let encoded_ref = encode(proposal_ref)?;
        let mut queue = self.queue(group_id)?;
        if let Some(position) = queue.iter().position(|queued| *queued == encoded_ref) {
            queue.remove(position);
        }
        self.set_queue(group_id, &queue)?;
        self.delete(QUEUED_PROPOSAL_LABEL, &(group_id, proposal_ref))
    }

    fn clear_proposal_queue<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        for encoded_ref in self.queue(group_id)? {
            let proposal_ref: R = decode(PROPOSAL_QUEUE_REFS_LABEL, &encoded_ref)?;
            self.delete(QUEUED_PROPOSAL_LABEL, &(group_id, &proposal_ref))?;
        }
        self.set_queue(group_id, &[])
    }
}
