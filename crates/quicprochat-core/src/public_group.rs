//! Server-side tracking of a channel's MLS group from its public handshake
//! messages (SPEC §4.3, target design).
//!
//! Clients send commits and proposals as MLS `PublicMessage`s (see
//! [`crate::mls`]), so the server can follow each channel's group without
//! any private key: a [`ChannelTracker`] wraps openmls's `PublicGroup` and
//!
//! - starts from a signed GroupInfo carrying the ratchet tree
//!   ([`ChannelTracker::from_group_info`]): the channel creator uploads the
//!   GroupInfo of epoch 0 (from [`MlsClient::export_group_info`] right after
//!   [`MlsClient::create_group`]) or the one its first commit produced;
//! - validates every handshake message of the current epoch
//!   ([`ChannelTracker::process`]): the sender's signature under the key its
//!   leaf holds, the epoch, the proposals (valid key packages, removals of
//!   existing members, no duplicates, …), the update path, and the
//!   quicprochat credential of every leaf that enters the tree; a valid
//!   commit is merged and reported with the membership it yields;
//! - checks that a GroupInfo a member uploads with a commit describes the
//!   tracked epoch ([`ChannelTracker::check_group_info`]);
//! - round-trips through bytes ([`ChannelTracker::to_bytes`],
//!   [`ChannelTracker::restore`]) so the server can keep it in its store,
//!   updated in the same transaction as the channel's epoch.
//!
//! What a tracker cannot check: the confirmation and membership tags (they
//! are MACs under epoch secrets only members hold), so a member can make a
//! commit whose secrets do not match what it announced; the other members
//! then refuse it and must rejoin. The tracker vouches for *who* changed the
//! group and *how* the tree changed, which is what routing needs.
//! External commits are accepted only as a rejoin of an existing device
//! (the same rule as [`MlsClient::process`]).
//!
//! [`MlsClient::export_group_info`]: crate::mls::MlsClient::export_group_info
//! [`MlsClient::create_group`]: crate::mls::MlsClient::create_group
//! [`MlsClient::process`]: crate::mls::MlsClient::process

use std::fmt;

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    GroupId, LeafNode, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn, OpenMlsSignaturePublicKey,
    ProcessedMessageContent, Proposal, ProposalStore, ProtocolMessage, PublicGroup, PublicProcessMessageError, Sender,
    StageCommitError, StagedCommit, ValidationError, Verifiable,
};
use openmls_libcrux_crypto::CryptoProvider;
use openmls_traits::types::SignatureScheme;

use crate::error::CoreError;
mod storage;

use storage::TrackerStorage;
pub use storage::TrackerStorageError;

use crate::mls::{MemberInfo, MlsSuite, decode_entries, encode_entries, entries_len, member_from_parts};

/// Magic bytes opening a tracker snapshot.
pub const TRACKER_MAGIC: [u8; 4] = *b"QPCT";
/// Current tracker snapshot version.
pub const TRACKER_VERSION: u8 = 1;

const FORMAT: &str = "channel tracker snapshot";

/// The public state of one channel's MLS group, as the server follows it.
pub struct ChannelTracker {
    crypto: CryptoProvider,
    storage: TrackerStorage,
    group: PublicGroup,
}

/// What an accepted handshake message did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tracked {
    /// A proposal, now pending until a commit of this epoch covers it.
    Proposal {
        /// The proposing member.
        sender: MemberInfo,
        /// The epoch it was made in (the tracker's current one).
        epoch: u64,
    },
    /// A commit, merged: the tracker is at the new epoch.
    Commit(TrackedCommit),
}

/// The membership change of an accepted commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedCommit {
    /// Who committed: a member, or for an external rejoin the device as it
    /// sits in the new tree.
    pub committer: MemberInfo,
    /// The epoch the commit was made for.
    pub epoch_before: u64,
    /// The new epoch.
    pub epoch: u64,
    /// Members the commit added (leaf indices in the new tree); a rejoining
    /// device appears here and in `removed`.
    pub added: Vec<MemberInfo>,
    /// Members the commit removed, as they were before it.
    pub removed: Vec<MemberInfo>,
    /// Every member after the commit, by leaf index.
    pub members: Vec<MemberInfo>,
}

impl fmt::Debug for ChannelTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Like the ids' `Debug`: enough of the group id to tell channels apart.
        let group_id = self.group.group_id().as_slice();
        f.debug_struct("ChannelTracker")
            .field("group_id", &hex::encode(&group_id[..group_id.len().min(4)]))
            .field("epoch", &self.epoch())
            .field("members", &self.group.members().count())
            .finish_non_exhaustive()
    }
}

impl ChannelTracker {
    /// Starts tracking the group of channel `channel_id` from a GroupInfo
    /// (`MLSMessage`) that carries the ratchet tree, as every quicprochat
    /// GroupInfo does.
    ///
    /// Checks the GroupInfo's signature by its signer's leaf, the tree
    /// against the tree hash, every leaf (signatures, lifetimes, no duplicate
    /// keys) and every member's credential. The GroupInfo itself is trusted
    /// to be the channel's: the server takes it from the channel's creator.
    pub fn from_group_info(channel_id: &[u8], group_info: &[u8]) -> Result<Self, CoreError> {
        let group_info = parse_group_info(group_info)?;
        if group_info.group_id().as_slice() != channel_id {
            return Err(CoreError::WrongGroup);
        }
        let suite = u16::from(group_info.ciphersuite());
        if MlsSuite::from_ciphersuite_id(suite).is_none() {
            return Err(CoreError::UnsupportedCiphersuite(suite));
        }
        let tree = group_info.extensions().ratchet_tree().ok_or(CoreError::MissingRatchetTree)?.ratchet_tree().clone();
        let crypto = CryptoProvider::new().map_err(CoreError::MlsCryptoProvider)?;
        let storage = TrackerStorage::default();
        let (group, _) = PublicGroup::from_external(&crypto, &storage, tree, group_info, ProposalStore::new())
            .map_err(|error| match error {
                openmls::prelude::CreationFromExternalError::InvalidGroupInfoSignature => {
                    CoreError::InvalidMessageSignature
                }
                other => CoreError::InvalidGroupInfo(Box::new(other)),
            })?;
        let tracker = Self { crypto, storage, group };
        tracker.members()?;
        Ok(tracker)
    }

    /// Restores a tracker from [`Self::to_bytes`].
    pub fn restore(bytes: &[u8]) -> Result<Self, CoreError> {
        let (magic, rest) = bytes.split_at_checked(4).ok_or(CoreError::Truncated { format: FORMAT })?;
        if magic != TRACKER_MAGIC {
            return Err(CoreError::BadMagic { format: FORMAT });
        }
        let (&version, rest) = rest.split_first().ok_or(CoreError::Truncated { format: FORMAT })?;
        if version != TRACKER_VERSION {
            return Err(CoreError::UnsupportedVersion { format: FORMAT, version });
        }
        let (&id_len, rest) = rest.split_first().ok_or(CoreError::Truncated { format: FORMAT })?;
        let (group_id, rest) =
            rest.split_at_checked(usize::from(id_len)).ok_or(CoreError::Truncated { format: FORMAT })?;
        let storage = TrackerStorage::from_entries(decode_entries(rest, FORMAT)?);
        let group = PublicGroup::load(&storage, &GroupId::from_slice(group_id))
            .map_err(CoreError::TrackerStorage)?
            .ok_or(CoreError::MalformedState { reason: "tracker snapshot holds no group" })?;
        // The group's own context names its id; a snapshot filed under another id would not
        // be found again after `to_bytes` (found by fuzzing).
        if group.group_id().as_slice() != group_id {
            return Err(CoreError::MalformedState { reason: "tracker snapshot's group has another id" });
        }
        let crypto = CryptoProvider::new().map_err(CoreError::MlsCryptoProvider)?;
        Ok(Self { crypto, storage, group })
    }

    /// Serialises the tracker, pending proposals included. Public data
    /// only: no secrets.
    ///
    /// Format, version [`TRACKER_VERSION`]: magic `"QPCT"`, version byte,
    /// `u8` group id length, group id, then openmls's public group storage
    /// entries encoded as in an MLS state snapshot (`u32be` count, entries
    /// sorted by key, each `u32be(len) key u32be(len) value`).
    /// Deterministic.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CoreError> {
        let group_id = self.group.group_id().as_slice();
        let id_len = u8::try_from(group_id.len())
            .map_err(|_| CoreError::InvalidIdLength { expected: usize::from(u8::MAX), actual: group_id.len() })?;
        let values = self.storage.entries().map_err(CoreError::TrackerStorage)?;
        let mut out = Vec::with_capacity(6 + group_id.len() + entries_len(&values));
        out.extend_from_slice(&TRACKER_MAGIC);
        out.push(TRACKER_VERSION);
        out.push(id_len);
        out.extend_from_slice(group_id);
        encode_entries(&mut out, &values)?;
        Ok(out)
    }

    /// The MLS group id (the channel id).
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The tracked epoch: the only one whose handshake messages are
    /// accepted.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The group's ciphersuite.
    pub fn suite(&self) -> Result<MlsSuite, CoreError> {
        let id = u16::from(self.group.ciphersuite());
        MlsSuite::from_ciphersuite_id(id).ok_or(CoreError::UnsupportedCiphersuite(id))
    }

    /// Every member, by leaf index.
    pub fn members(&self) -> Result<Vec<MemberInfo>, CoreError> {
        self.group
            .members()
            .map(|member| Ok(member_from_parts(&member.credential, &member.signature_key, member.index.u32())?))
            .collect()
    }

    /// Validates a handshake message (`MLSMessage`, `PublicMessage`) of the
    /// current epoch. A proposal is stored as pending; a commit is merged
    /// and its membership change returned. On any error the tracker is left
    /// as it was.
    ///
    /// Errors: [`CoreError::UnexpectedMessage`] (not a `PublicMessage`),
    /// [`CoreError::WrongGroup`], [`CoreError::WrongEpoch`] (stale or future
    /// commit), [`CoreError::UnknownSender`], [`CoreError::InvalidMessageSignature`]
    /// (forged), [`CoreError::InvalidCredential`] (a new leaf's credential),
    /// [`CoreError::ExternalProposal`], [`CoreError::UnauthorizedExternalJoin`],
    /// and [`CoreError::TrackerRefused`] for any other invalid commit or
    /// proposal, with openmls's reason as source.
    pub fn process(&mut self, message: &[u8]) -> Result<Tracked, CoreError> {
        let message = MlsMessageIn::tls_deserialize_exact(message).map_err(CoreError::MlsDecode)?;
        let found = message.wire_format();
        let MlsMessageBodyIn::PublicMessage(message) = message.extract() else {
            return Err(CoreError::UnexpectedMessage { expected: "PublicMessage", found });
        };
        let sender_leaf = match message.sender() {
            Sender::Member(leaf) => Some(leaf.u32()),
            _ => None,
        };
        let message = ProtocolMessage::from(message);
        if message.group_id() != self.group.group_id() {
            return Err(CoreError::WrongGroup);
        }
        let epoch_before = self.epoch();
        let message_epoch = message.epoch().as_u64();
        if message_epoch != epoch_before {
            return Err(CoreError::WrongEpoch { message_epoch, group_epoch: epoch_before });
        }

        let processed = self.group.process_message(&self.crypto, message).map_err(|error| {
            process_error(error, sender_leaf, CoreError::WrongEpoch { message_epoch, group_epoch: epoch_before })
        })?;
        let sender = processed.sender().clone();
        match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let sender = self.member_sender(&sender)?;
                match proposal.proposal() {
                    Proposal::Add(add) => check_leaf(add.key_package().leaf_node())?,
                    Proposal::Update(update) => check_leaf(update.leaf_node())?,
                    _ => {}
                }
                self.group.add_proposal(&self.storage, *proposal).map_err(CoreError::TrackerStorage)?;
                Ok(Tracked::Proposal { sender, epoch: epoch_before })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.merge_commit(&sender, *staged, epoch_before).map(Tracked::Commit)
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(CoreError::ExternalProposal),
            _ => Err(CoreError::Internal("a public group yielded neither a proposal nor a commit")),
        }
    }

    /// Checks that `group_info` (`MLSMessage`) describes the tracked epoch:
    /// signed by a current member, with this group context, confirmation
    /// tag and ratchet tree. Call it after [`Self::process`] merged a
    /// commit, on the GroupInfo the committer uploaded with it, before
    /// keeping that GroupInfo for external joins.
    ///
    /// Errors: [`CoreError::WrongGroup`], [`CoreError::WrongEpoch`],
    /// [`CoreError::UnknownSender`], [`CoreError::InvalidMessageSignature`],
    /// [`CoreError::MissingRatchetTree`] and [`CoreError::GroupInfoMismatch`].
    pub fn check_group_info(&self, group_info: &[u8]) -> Result<(), CoreError> {
        let group_info = parse_group_info(group_info)?;
        if group_info.group_id() != self.group.group_id() {
            return Err(CoreError::WrongGroup);
        }
        let group_epoch = self.epoch();
        let message_epoch = group_info.epoch().as_u64();
        if message_epoch != group_epoch {
            return Err(CoreError::WrongEpoch { message_epoch, group_epoch });
        }
        let tree = group_info.extensions().ratchet_tree().ok_or(CoreError::MissingRatchetTree)?;
        if encode(tree.ratchet_tree())? != encode(&self.group.export_ratchet_tree())? {
            return Err(CoreError::GroupInfoMismatch);
        }
        // GroupInfoTBS (RFC 9420 §12.4.3) ends with the confirmation tag and
        // the signer's leaf index (uint32).
        let signed = group_info.unsigned_payload().map_err(CoreError::MlsDecode)?;
        let (rest, signer) =
            signed.split_last_chunk::<4>().ok_or(CoreError::Internal("GroupInfoTBS shorter than its signer"))?;
        let signer = u32::from_be_bytes(*signer);
        if !rest.ends_with(&encode(self.group.confirmation_tag())?) {
            return Err(CoreError::GroupInfoMismatch);
        }
        let leaf =
            self.group.leaf(LeafNodeIndex::new(signer)).ok_or(CoreError::UnknownSender { leaf_index: signer })?;
        let key = OpenMlsSignaturePublicKey::from_signature_key(leaf.signature_key().clone(), SignatureScheme::ED25519);
        let verified = group_info.verify(&self.crypto, &key).map_err(|_| CoreError::InvalidMessageSignature)?;
        if verified.group_context() != self.group.group_context() {
            return Err(CoreError::GroupInfoMismatch);
        }
        Ok(())
    }

    fn merge_commit(
        &mut self,
        sender: &Sender,
        staged: StagedCommit,
        epoch_before: u64,
    ) -> Result<TrackedCommit, CoreError> {
        let removed = staged
            .remove_proposals()
            .map(|remove| self.member_at(remove.remove_proposal().removed()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut added_keys = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            check_leaf(leaf)?;
            added_keys.push(leaf.signature_key().as_slice().to_vec());
        }
        for update in staged.update_proposals() {
            check_leaf(update.update_proposal().leaf_node())?;
        }
        let path_key = match staged.update_path_leaf_node() {
            Some(leaf) => {
                check_leaf(leaf)?;
                Some(leaf.signature_key().as_slice().to_vec())
            }
            None => None,
        };
        let committer = match sender {
            Sender::Member(leaf) => CommitterBefore::Member(self.member_at(*leaf)?),
            Sender::NewMemberCommit => {
                let key = path_key.ok_or(CoreError::Internal("external commit without an update path"))?;
                // Only a rejoin: the joiner must replace its own old leaf.
                if !removed.iter().any(|member| member.identity_key.as_slice() == key.as_slice()) {
                    return Err(CoreError::UnauthorizedExternalJoin);
                }
                CommitterBefore::Rejoin(key)
            }
            Sender::External(_) | Sender::NewMemberProposal => {
                return Err(CoreError::Internal("commit from a sender that cannot commit"));
            }
        };

        self.group.merge_commit(&self.storage, staged).map_err(|error| CoreError::TrackerMerge(Box::new(error)))?;

        let members = self.members()?;
        let by_key = |key: &[u8]| {
            members
                .iter()
                .find(|member| member.identity_key.as_slice() == key)
                .cloned()
                .ok_or(CoreError::Internal("merged member missing from the tree"))
        };
        let mut added = added_keys.iter().map(|key| by_key(key)).collect::<Result<Vec<_>, _>>()?;
        let committer = match committer {
            CommitterBefore::Member(member) => {
                // An update path may have moved nothing but keys: report the
                // committer as it sits in the new tree.
                members.iter().find(|m| m.leaf_index == member.leaf_index).cloned().unwrap_or(member)
            }
            CommitterBefore::Rejoin(key) => {
                let joiner = by_key(&key)?;
                added.push(joiner.clone());
                joiner
            }
        };
        Ok(TrackedCommit { committer, epoch_before, epoch: self.epoch(), added, removed, members })
    }

    fn member_at(&self, leaf: LeafNodeIndex) -> Result<MemberInfo, CoreError> {
        let node = self.group.leaf(leaf).ok_or(CoreError::UnknownSender { leaf_index: leaf.u32() })?;
        Ok(member_from_parts(node.credential(), node.signature_key().as_slice(), leaf.u32())?)
    }

    fn member_sender(&self, sender: &Sender) -> Result<MemberInfo, CoreError> {
        match sender {
            Sender::Member(leaf) => self.member_at(*leaf),
            Sender::NewMemberProposal | Sender::External(_) | Sender::NewMemberCommit => {
                Err(CoreError::ExternalProposal)
            }
        }
    }
}

/// The committer as known before the merge.
enum CommitterBefore {
    Member(MemberInfo),
    /// An external rejoin, by the signature key of its new leaf.
    Rejoin(Vec<u8>),
}

/// Refuses a leaf entering the tree with a credential that does not follow
/// the quicprochat encoding or does not match its key.
fn check_leaf(leaf: &LeafNode) -> Result<(), CoreError> {
    member_from_parts(leaf.credential(), leaf.signature_key().as_slice(), 0)?;
    Ok(())
}

fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, CoreError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(CoreError::MlsDecode)?;
    let found = message.wire_format();
    match message.extract() {
        MlsMessageBodyIn::GroupInfo(group_info) => Ok(group_info),
        _ => Err(CoreError::UnexpectedMessage { expected: "GroupInfo", found }),
    }
}

fn encode(value: &impl openmls::prelude::tls_codec::Serialize) -> Result<Vec<u8>, CoreError> {
    value.tls_serialize_detached().map_err(CoreError::MlsDecode)
}

/// Maps the cases the server acts on to typed variants; keeps the rest as
/// the source of [`CoreError::TrackerRefused`].
fn process_error(error: PublicProcessMessageError, sender_leaf: Option<u32>, wrong_epoch: CoreError) -> CoreError {
    match &error {
        PublicProcessMessageError::ValidationError(ValidationError::WrongEpoch)
        | PublicProcessMessageError::InvalidCommit(StageCommitError::EpochMismatch) => wrong_epoch,
        PublicProcessMessageError::ValidationError(ValidationError::WrongGroupId) => CoreError::WrongGroup,
        PublicProcessMessageError::ValidationError(ValidationError::InvalidSignature) => {
            CoreError::InvalidMessageSignature
        }
        PublicProcessMessageError::ValidationError(ValidationError::UnknownMember) => {
            CoreError::UnknownSender { leaf_index: sender_leaf.unwrap_or(u32::MAX) }
        }
        PublicProcessMessageError::UnauthorizedExternalCommitMessage => CoreError::UnauthorizedExternalJoin,
        _ => CoreError::TrackerRefused(Box::new(error)),
    }
}

#[cfg(test)]
mod tests;
