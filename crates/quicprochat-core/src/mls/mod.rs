//! End-to-end encryption with MLS (RFC 9420), on openmls 0.9 and the libcrux
//! crypto provider.
//!
//! One [`MlsClient`] per device holds every group the device is in. All group
//! state lives in the provider's in-memory storage; [`MlsClient::export_state`]
//! snapshots it and [`MlsClient::restore`] brings it back, so the SDK decides
//! where and when state is persisted.
//!
//! Conventions every client follows:
//! - The device's Ed25519 identity key is its MLS signature key, and its
//!   credential is a `BasicCredential` naming username and device id
//!   ([`encode_credential_identity`]). Credentials whose device id does not
//!   match the signature key are refused wherever a member enters a group.
//! - Handshake messages (commits, proposals) travel as MLS `PublicMessage` so
//!   the server can track each group's public state; application messages are
//!   always `PrivateMessage`, their plaintext padded to length buckets first.
//! - Groups carry the ratchet tree in their GroupInfo, so a Welcome is
//!   self-contained and every commit yields a GroupInfo for external joins.
//! - Own commits stay pending until the caller reports that the server
//!   accepted them ([`MlsClient::merge_pending_commit`]) or rejected them
//!   ([`MlsClient::clear_pending_commit`]).
//! - Key packages travel as TLS-serialised `MLSMessage`s with wire format
//!   `mls_key_package`.
//!
//! A group is loaded from storage on first use and kept in memory; openmls
//! writes every change through to storage, so a snapshot is always current.
//! Calls on the same group must not run concurrently: the caller serialises
//! them (e.g. one lock per client).

mod changes;
mod credential;
mod error_map;
mod outcome;
mod padding;
mod state;

use std::fmt;

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    Capabilities, Ciphersuite, ContentType, CredentialType, CredentialWithKey, ExtensionType, GroupId, KeyPackage,
    LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    NewGroupError, PURE_PLAINTEXT_WIRE_FORMAT_POLICY, ProcessedMessageContent, Proposal, ProtocolMessage,
    ProtocolVersion, Sender, SenderRatchetConfiguration, StagedCommit, StagedWelcome,
};
// Exporter secrets (`export_secret`).
use openmls::prelude::{ExportSecretError, MlsGroupStateError};
use openmls_libcrux_crypto::Provider;
use openmls_traits::OpenMlsProvider;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use zeroize::Zeroizing;

use crate::error::CoreError;
use crate::identity::IdentityKeyPair;
use crate::ids::DeviceId;

pub use changes::{ChunkWrite, STATE_CHUNK_LEN, StateChanges, entry_chunks};
pub use credential::{
    CREDENTIAL_IDENTITY_VERSION, CredentialError, MAX_USERNAME_LEN, MemberInfo, decode_credential_identity,
    encode_credential_identity,
};
pub use outcome::{AddOutcome, CommitOutcome, ExternalJoin, JoinedGroup, Processed};
pub use state::{STATE_MAGIC, STATE_VERSION};
// For the channel tracker (`crate::public_group`).
pub(crate) use credential::member_from_parts;
pub(crate) use state::{decode_entries, encode_entries, entries_len};

use error_map::{
    add_members_error, commit_proposals_error, create_message_error, leave_group_error, merge_pending_error,
    process_error, remove_members_error, self_update_error, welcome_error,
};

/// How many past epochs keep their secrets, so application messages sent
/// just before a commit still decrypt after it.
const MAX_PAST_EPOCHS: usize = 5;
/// How far out of order messages of one sender may arrive.
const OUT_OF_ORDER_TOLERANCE: u32 = 32;
/// How many messages of one sender may be skipped at most.
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

/// The MLS ciphersuites quicprochat speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MlsSuite {
    /// `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519` (0x004D): hybrid
    /// X25519 + ML-KEM-768 key encapsulation. The default.
    #[default]
    XWing,
    /// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519` (0x0001), for
    /// interoperability with classic-only clients.
    Classic,
}

impl MlsSuite {
    /// The IANA ciphersuite number.
    pub fn ciphersuite_id(self) -> u16 {
        u16::from(self.ciphersuite())
    }

    /// The suite with this IANA ciphersuite number, if quicprochat speaks it.
    pub fn from_ciphersuite_id(id: u16) -> Option<Self> {
        [Self::XWing, Self::Classic].into_iter().find(|suite| suite.ciphersuite_id() == id)
    }

    fn ciphersuite(self) -> Ciphersuite {
        match self {
            Self::XWing => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Self::Classic => Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
        }
    }
}

/// Signs MLS messages with the device identity key.
struct DeviceSigner(IdentityKeyPair);

impl Signer for DeviceSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// One device's MLS state: every group it is in, its pending commits and its
/// unused key packages.
pub struct MlsClient {
    provider: Provider,
    signer: DeviceSigner,
    credential: CredentialWithKey,
    suite: MlsSuite,
    username: String,
    /// Groups in use, kept between calls (see `with_group`).
    groups: std::sync::Mutex<std::collections::HashMap<Vec<u8>, MlsGroup>>,
    /// What the caller last persisted (see [`Self::state_changes`]).
    persisted: std::sync::Mutex<changes::Persisted>,
}

impl fmt::Debug for MlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MlsClient")
            .field("username", &self.username)
            .field("device_id", &self.signer.0.device_id())
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl MlsClient {
    /// Creates a client with empty state for this device.
    ///
    /// The credential is a `BasicCredential` whose identity encodes
    /// `username` and the device id (see [`encode_credential_identity`]);
    /// `username` must be 1..=255 bytes.
    pub fn new(identity: &IdentityKeyPair, username: &str, suite: MlsSuite) -> Result<Self, CoreError> {
        let provider = Provider::new().map_err(CoreError::MlsCryptoProvider)?;
        let credential = credential::credential_for(username, &identity.device_id())?;
        Ok(Self {
            provider,
            signer: DeviceSigner(identity.clone()),
            credential: CredentialWithKey { credential, signature_key: identity.public_key().to_vec().into() },
            suite,
            username: username.to_owned(),
            groups: std::sync::Mutex::new(std::collections::HashMap::new()),
            persisted: std::sync::Mutex::new(changes::Persisted::default()),
        })
    }

    /// Restores a client from a snapshot made by [`Self::export_state`]:
    /// all groups, pending commits and proposals, and key package private
    /// keys. Fails with [`CoreError::StateIdentityMismatch`] for another
    /// device's snapshot.
    pub fn restore(
        identity: &IdentityKeyPair,
        username: &str,
        suite: MlsSuite,
        state: &[u8],
    ) -> Result<Self, CoreError> {
        let client = Self::new(identity, username, suite)?;
        let values = state::decode(&identity.public_key(), state)?;
        *client.provider.storage().values.write().map_err(|_| CoreError::StorageLockPoisoned)? = values;
        Ok(client)
    }

    /// Restores a client from its storage entries, as persisted from
    /// [`Self::state_changes`] and put back together from their chunks; they
    /// count as persisted, each as the chunks [`StateChanges`] writes for it
    /// (so a store must hold exactly those). The caller vouches that they are
    /// this device's (e.g. they were sealed with its key).
    pub fn restore_entries(
        identity: &IdentityKeyPair,
        username: &str,
        suite: MlsSuite,
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, CoreError> {
        let client = Self::new(identity, username, suite)?;
        let values: std::collections::HashMap<Vec<u8>, Vec<u8>> = entries.into_iter().collect();
        *client.persisted.lock().map_err(|_| CoreError::StorageLockPoisoned)? = changes::Persisted::of(&values);
        *client.provider.storage().values.write().map_err(|_| CoreError::StorageLockPoisoned)? = values;
        Ok(client)
    }

    /// The storage changed since the last [`Self::mark_persisted`] (since
    /// creation or restore from a snapshot: all of it; since
    /// [`Self::restore_entries`]: nothing), as the chunks of entries that
    /// differ. Write them, then report them persisted; changes never
    /// reported come back in the next call.
    pub fn state_changes(&self) -> Result<StateChanges, CoreError> {
        let values = self.provider.storage().values.read().map_err(|_| CoreError::StorageLockPoisoned)?;
        Ok(self.persisted.lock().map_err(|_| CoreError::StorageLockPoisoned)?.changes(&values))
    }

    /// Records that `changes` (from [`Self::state_changes`]) are persisted.
    pub fn mark_persisted(&self, changes: &StateChanges) -> Result<(), CoreError> {
        self.persisted.lock().map_err(|_| CoreError::StorageLockPoisoned)?.apply(changes);
        Ok(())
    }

    /// Snapshots the whole MLS storage: all groups, pending commits and
    /// proposals, and key package private keys. Secret: seal it before
    /// storing it.
    ///
    /// Format, version [`STATE_VERSION`]: magic `"QPCS"`, version byte, the
    /// owner's 32-byte identity key, `u32be` entry count, then the entries
    /// sorted by key, each `u32be(len) key u32be(len) value`. The encoding is
    /// deterministic.
    pub fn export_state(&self) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        let values = self.provider.storage().values.read().map_err(|_| CoreError::StorageLockPoisoned)?;
        state::encode(&self.signer.0.public_key(), &values)
    }

    /// The ciphersuite used for new groups and key packages.
    pub fn suite(&self) -> MlsSuite {
        self.suite
    }

    /// The username in this client's credential.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.signer.0.device_id()
    }

    // ----- key packages -------------------------------------------------

    /// Creates a single-use key package and keeps its private keys.
    ///
    /// Returns a TLS-serialised `MLSMessage` (wire format `mls_key_package`),
    /// the form [`Self::add_members`] accepts.
    pub fn generate_key_package(&self) -> Result<Vec<u8>, CoreError> {
        self.build_key_package(false)
    }

    /// Like [`Self::generate_key_package`], with the `last_resort` extension:
    /// the server hands it out when the pool is empty and it survives being
    /// used for a join.
    pub fn generate_last_resort_key_package(&self) -> Result<Vec<u8>, CoreError> {
        self.build_key_package(true)
    }

    fn build_key_package(&self, last_resort: bool) -> Result<Vec<u8>, CoreError> {
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(self.suite.ciphersuite(), &self.provider, &self.signer, self.credential.clone())
            .map_err(CoreError::KeyPackageCreation)?;
        MlsMessageOut::from(bundle.key_package().clone()).to_bytes().map_err(CoreError::MlsEncode)
    }

    /// Parses and validates a key package for a group of `ciphersuite`.
    fn parse_key_package(&self, bytes: &[u8], ciphersuite: Ciphersuite) -> Result<KeyPackage, CoreError> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(CoreError::MlsDecode)?;
        let found = message.wire_format();
        let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
            return Err(CoreError::UnexpectedMessage { expected: "KeyPackage", found });
        };
        let key_package = key_package
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(CoreError::InvalidKeyPackage)?;
        if key_package.ciphersuite() != ciphersuite {
            return Err(CoreError::CiphersuiteMismatch {
                expected: u16::from(ciphersuite),
                found: u16::from(key_package.ciphersuite()),
            });
        }
        let leaf = key_package.leaf_node();
        credential::member_from_parts(leaf.credential(), leaf.signature_key().as_slice(), 0)?;
        Ok(key_package)
    }

    // ----- groups ---------------------------------------------------------

    /// Creates a group with this device as its only member, at epoch 0.
    pub fn create_group(&self, group_id: &[u8]) -> Result<(), CoreError> {
        MlsGroup::builder()
            .with_group_id(GroupId::from_slice(group_id))
            .ciphersuite(self.suite.ciphersuite())
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchet_configuration())
            .with_capabilities(capabilities())
            .build(&self.provider, &self.signer, self.credential.clone())
            .map(drop)
            .map_err(|error| match error {
                NewGroupError::GroupAlreadyExists => CoreError::GroupExists,
                other => CoreError::MlsCreateGroup(Box::new(other)),
            })
    }

    /// Whether a group with this id is stored.
    pub fn has_group(&self, group_id: &[u8]) -> Result<bool, CoreError> {
        if self.groups.lock().map_err(|_| CoreError::StorageLockPoisoned)?.contains_key(group_id) {
            return Ok(true);
        }
        Ok(MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map_err(CoreError::MlsStorage)?
            .is_some())
    }

    /// Deletes a group's local state (after leaving or being removed).
    pub fn delete_group(&self, group_id: &[u8]) -> Result<(), CoreError> {
        self.evict(group_id)?;
        self.load_group(group_id)?.delete(self.provider.storage()).map_err(CoreError::MlsStorage)
    }

    /// The group's current epoch.
    pub fn epoch(&self, group_id: &[u8]) -> Result<u64, CoreError> {
        self.with_group(group_id, |group| Ok(group.epoch().as_u64()))
    }

    /// Every member of the group, this device included, by leaf index.
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<MemberInfo>, CoreError> {
        self.with_group(group_id, |group| group_members(group))
    }

    /// Whether this device has a commit awaiting the server's verdict.
    pub fn has_pending_commit(&self, group_id: &[u8]) -> Result<bool, CoreError> {
        self.with_group(group_id, |group| Ok(group.pending_commit().is_some()))
    }

    /// Exports a signed GroupInfo of the current epoch (`MLSMessage`, with
    /// ratchet tree and external public key).
    pub fn export_group_info(&self, group_id: &[u8]) -> Result<Vec<u8>, CoreError> {
        self.with_group(group_id, |group| {
            group
                .export_group_info(self.provider.crypto(), &self.signer, true)
                .map_err(|error| CoreError::MlsExportGroupInfo(Box::new(error)))?
                .to_bytes()
                .map_err(CoreError::MlsEncode)
        })
    }

    /// Derives `len` bytes from the current epoch's exporter secret:
    /// `MLS-Exporter(label, context, len)` of RFC 9420 §8.5. Every member of
    /// the epoch derives the same bytes; nobody outside it can.
    ///
    /// Errors: [`CoreError::NotAMember`] once this device was removed,
    /// [`CoreError::MlsExportSecret`] for a `len` over 65535.
    pub fn export_secret(
        &self,
        group_id: &[u8],
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        self.with_group(group_id, |group| {
            group
                .export_secret(self.provider.crypto(), label, context, len)
                .map(Zeroizing::new)
                .map_err(export_secret_error)
        })
    }

    /// Like [`Self::export_secret`], for the epoch this device's pending
    /// commit moves the group to (the current epoch + 1), so a committer can
    /// publish per-epoch values together with its commit.
    ///
    /// Errors: [`CoreError::NoPendingCommit`], [`CoreError::NotAMember`] if
    /// the commit removes this device, [`CoreError::MlsExportSecret`].
    pub fn export_pending_commit_secret(
        &self,
        group_id: &[u8],
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CoreError> {
        self.with_group(group_id, |group| {
            let staged = group.pending_commit().ok_or(CoreError::NoPendingCommit)?;
            staged
                .export_secret(self.provider.crypto(), label, context, len)
                .map(Zeroizing::new)
                .map_err(export_secret_error)
        })
    }

    // ----- commits --------------------------------------------------------

    /// Builds a commit adding one device per key package (each an
    /// `MLSMessage` from [`Self::generate_key_package`]), validating every
    /// key package and its credential first.
    ///
    /// The commit stays **pending**: call [`Self::merge_pending_commit`] once
    /// the server accepted it, or [`Self::clear_pending_commit`] if it was
    /// refused.
    pub fn add_members(&self, group_id: &[u8], key_packages: &[Vec<u8>]) -> Result<AddOutcome, CoreError> {
        self.with_group(group_id, |group| {
            let ciphersuite = group.ciphersuite();
            let key_packages = key_packages
                .iter()
                .map(|bytes| self.parse_key_package(bytes, ciphersuite))
                .collect::<Result<Vec<_>, _>>()?;
            let epoch_before = group.epoch().as_u64();
            let (commit, welcome, group_info) =
                group.add_members(&self.provider, &self.signer, &key_packages).map_err(add_members_error)?;
            let group_info = group_info
                .ok_or(CoreError::Internal("commit produced no GroupInfo despite the ratchet tree extension"))?;
            Ok(AddOutcome {
                commit: to_bytes(&commit)?,
                welcome: to_bytes(&welcome)?,
                group_info: to_bytes(&MlsMessageOut::from(group_info))?,
                epoch_before,
            })
        })
    }

    /// Builds a commit removing these devices. Pending, like
    /// [`Self::add_members`].
    pub fn remove_members(&self, group_id: &[u8], devices: &[DeviceId]) -> Result<CommitOutcome, CoreError> {
        self.with_group(group_id, |group| {
            let members = group_members(group)?;
            let leaves = devices
                .iter()
                .map(|device| {
                    members
                        .iter()
                        .find(|member| member.device_id == *device)
                        .map(|member| LeafNodeIndex::new(member.leaf_index))
                        .ok_or(CoreError::UnknownMember(*device))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let epoch_before = group.epoch().as_u64();
            let (commit, welcome, group_info) =
                group.remove_members(&self.provider, &self.signer, &leaves).map_err(remove_members_error)?;
            commit_outcome(commit, welcome, group_info.map(MlsMessageOut::from), epoch_before)
        })
    }

    /// Builds a commit that rotates this device's leaf keys (post-compromise
    /// security), covering any pending proposals. Pending, like
    /// [`Self::add_members`].
    pub fn self_update(&self, group_id: &[u8]) -> Result<CommitOutcome, CoreError> {
        self.with_group(group_id, |group| {
            let epoch_before = group.epoch().as_u64();
            let bundle = group
                .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
                .map_err(self_update_error)?;
            let (commit, welcome, group_info) = bundle.into_messages();
            commit_outcome(commit, welcome, group_info, epoch_before)
        })
    }

    /// Builds a commit covering the pending proposals (e.g. another
    /// member's leave). Pending, like [`Self::add_members`].
    pub fn commit_pending_proposals(&self, group_id: &[u8]) -> Result<CommitOutcome, CoreError> {
        self.with_group(group_id, |group| {
            let epoch_before = group.epoch().as_u64();
            let (commit, welcome, group_info) =
                group.commit_to_pending_proposals(&self.provider, &self.signer).map_err(commit_proposals_error)?;
            commit_outcome(commit, welcome, group_info.map(MlsMessageOut::from), epoch_before)
        })
    }

    /// Proposes this device's removal. Another member must commit it; this
    /// device learns it left when it processes that commit.
    pub fn leave_group(&self, group_id: &[u8]) -> Result<Vec<u8>, CoreError> {
        self.with_group(group_id, |group| {
            let proposal = group.leave_group(&self.provider, &self.signer).map_err(leave_group_error)?;
            to_bytes(&proposal)
        })
    }

    /// Merges this device's pending commit after the server accepted it;
    /// returns the new epoch.
    pub fn merge_pending_commit(&self, group_id: &[u8]) -> Result<u64, CoreError> {
        self.with_group(group_id, |group| {
            if group.pending_commit().is_none() {
                return Err(CoreError::NoPendingCommit);
            }
            group.merge_pending_commit(&self.provider).map_err(merge_pending_error)?;
            Ok(group.epoch().as_u64())
        })
    }

    /// Drops this device's pending commit after the server refused it. Does
    /// nothing when no commit is pending.
    pub fn clear_pending_commit(&self, group_id: &[u8]) -> Result<(), CoreError> {
        self.with_group(group_id, |group| {
            group.clear_pending_commit(self.provider.storage()).map_err(CoreError::MlsStorage)
        })
    }

    // ----- joining ------------------------------------------------------

    /// Joins a group from a Welcome (`MLSMessage`) encrypted to one of this
    /// device's key packages. The Welcome must carry the ratchet tree.
    ///
    /// Leaf lifetimes in the received tree are not enforced (a member that
    /// never updated its leaf must not lock newcomers out); key package
    /// lifetimes are checked when members are added.
    pub fn join_from_welcome(&self, welcome: &[u8]) -> Result<JoinedGroup, CoreError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(CoreError::MlsDecode)?;
        let found = message.wire_format();
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(CoreError::UnexpectedMessage { expected: "Welcome", found });
        };
        let staged = StagedWelcome::build_from_welcome(&self.provider, &join_config(), welcome)
            .map_err(welcome_error)?
            .skip_lifetime_validation()
            .build()
            .map_err(welcome_error)?;
        let members = staged
            .members()
            .map(|member| credential::member_from_parts(&member.credential, &member.signature_key, member.index.u32()))
            .collect::<Result<Vec<_>, _>>()?;
        let group = staged.into_group(&self.provider).map_err(welcome_error)?;
        Ok(JoinedGroup { group_id: group.group_id().as_slice().to_vec(), epoch: group.epoch().as_u64(), members })
    }

    /// Rejoins a group by external commit, from a GroupInfo (`MLSMessage`,
    /// as kept by the server) of its current epoch: the way back for a
    /// device whose state for the group is lost or hopelessly behind.
    ///
    /// The commit removes this device's old leaf, if the tree still has it,
    /// and is merged at once, replacing any local state of the group. If the
    /// server refuses the commit (the group moved on), fetch the newer
    /// GroupInfo and call this again.
    ///
    /// Members accept an external commit only as such a rejoin (see
    /// [`CoreError::UnauthorizedExternalJoin`]): joining a group for the
    /// first time needs a member's add.
    pub fn join_by_external_commit(&self, group_info: &[u8]) -> Result<ExternalJoin, CoreError> {
        let message = MlsMessageIn::tls_deserialize_exact(group_info).map_err(CoreError::MlsDecode)?;
        let found = message.wire_format();
        let MlsMessageBodyIn::GroupInfo(group_info) = message.extract() else {
            return Err(CoreError::UnexpectedMessage { expected: "GroupInfo", found });
        };
        let group_id = group_info.group_id().clone();
        let epoch_before = group_info.epoch().as_u64();
        let storage = self.provider.storage();
        let complete = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .skip_lifetime_validation()
            .build_group(&self.provider, group_info, self.credential.clone())
            .map_err(|error| CoreError::MlsExternalJoin(Box::new(error)))?
            .leaf_node_parameters(LeafNodeParameters::builder().with_capabilities(capabilities()).build())
            .load_psks(storage)
            .map_err(|error| CoreError::MlsExternalCommit(Box::new(error)))?
            .build(self.provider.rand(), self.provider.crypto(), &self.signer, |_| true)
            .map_err(|error| CoreError::MlsExternalCommit(Box::new(error)))?;
        // Only now that the commit is built, drop the stale state it replaces.
        self.evict(group_id.as_slice())?;
        if let Some(mut stale) = MlsGroup::load(storage, &group_id).map_err(CoreError::MlsStorage)? {
            stale.delete(storage).map_err(CoreError::MlsStorage)?;
        }
        let (group, bundle) =
            complete.finalize(&self.provider).map_err(|error| CoreError::MlsExternalFinalize(Box::new(error)))?;
        let (commit, _welcome, group_info) = bundle.into_messages();
        let group_info = group_info
            .ok_or(CoreError::Internal("external commit produced no GroupInfo despite the ratchet tree extension"))?;
        Ok(ExternalJoin {
            joined: JoinedGroup {
                group_id: group.group_id().as_slice().to_vec(),
                epoch: group.epoch().as_u64(),
                members: group_members(&group)?,
            },
            commit: to_bytes(&commit)?,
            group_info: to_bytes(&group_info)?,
            epoch_before,
        })
    }

    // ----- messages -----------------------------------------------------

    /// Pads and encrypts an application message for the group's current
    /// epoch; returns the `MLSMessage` (`PrivateMessage`).
    pub fn encrypt(&self, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CoreError> {
        self.with_group(group_id, |group| {
            let message = group
                .create_message(&self.provider, &self.signer, &padding::pad(plaintext))
                .map_err(create_message_error)?;
            to_bytes(&message)
        })
    }

    /// Processes an incoming `MLSMessage` of this group.
    ///
    /// Application messages are decrypted and unpadded; commits are
    /// validated (new members' credentials included) and merged; proposals
    /// are stored as pending. A commit or proposal not for the current
    /// epoch, or an application message the group has no secrets for, fails
    /// with [`CoreError::WrongEpoch`] and leaves the state untouched. This
    /// device's own commit fanned back while still pending is merged (the
    /// server accepted it); once merged, it is stale and fails with
    /// `WrongEpoch` like any other.
    pub fn process(&self, group_id: &[u8], message: &[u8]) -> Result<Processed, CoreError> {
        self.with_group(group_id, |group| {
            let message = parse_protocol_message(message)?;
            if message.group_id().as_slice() != group_id {
                return Err(CoreError::WrongGroup);
            }
            let message_epoch = message.epoch().as_u64();
            let group_epoch = group.epoch().as_u64();
            let wrong_epoch = CoreError::WrongEpoch { message_epoch, group_epoch };
            let is_application = message.content_type() == ContentType::Application;
            if (is_application && message_epoch > group_epoch) || (!is_application && message_epoch != group_epoch) {
                return Err(wrong_epoch);
            }

            let processed =
                group.process_message(&self.provider, message).map_err(|error| process_error(error, wrong_epoch))?;
            let epoch = processed.epoch().as_u64();
            let sender = processed.sender().clone();
            let sender_credential = processed.credential().clone();

            match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(message) => {
                    let Sender::Member(leaf) = sender else {
                        return Err(CoreError::Internal("application message from a non-member"));
                    };
                    // The leaf may have changed hands since an older epoch: only
                    // attribute the message if it still holds the credential the
                    // signature was checked against.
                    let member = group
                        .member_at(leaf)
                        .filter(|member| member.credential == sender_credential)
                        .ok_or(CoreError::UnknownSender { leaf_index: leaf.u32() })?;
                    let sender = credential::member_from_parts(&member.credential, &member.signature_key, leaf.u32())?;
                    Ok(Processed::Application { sender, plaintext: padding::unpad(message.into_bytes())?, epoch })
                }
                // Joins go through a member's add commit (or, later, an external
                // commit); a join proposal from outside is never stored, so no
                // later commit can sweep it in.
                ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(CoreError::ExternalProposal),
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    if let Proposal::Add(add) = proposal.proposal() {
                        let leaf = add.key_package().leaf_node();
                        credential::member_from_parts(leaf.credential(), leaf.signature_key().as_slice(), 0)?;
                    }
                    let sender = member_sender(group, &sender)?;
                    group.store_pending_proposal(self.provider.storage(), *proposal).map_err(CoreError::MlsStorage)?;
                    Ok(Processed::Proposal { sender, epoch })
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    self.merge_received_commit(group, &sender, *staged)
                }
                ProcessedMessageContent::OwnPendingCommit => self.merge_own_commit(group),
                ProcessedMessageContent::OwnPrivateMessage => Ok(Processed::OwnMessage { epoch }),
            }
        })
    }

    fn merge_received_commit(
        &self,
        group: &mut MlsGroup,
        sender: &Sender,
        staged: StagedCommit,
    ) -> Result<Processed, CoreError> {
        let committer = member_sender(group, sender)?;
        let effects = CommitEffects::inspect(group, &staged)?;
        let joiner_key = match sender {
            Sender::NewMemberCommit => {
                let key = staged
                    .update_path_leaf_node()
                    .map(|leaf| leaf.signature_key().as_slice().to_vec())
                    .ok_or(CoreError::Internal("external commit without an update path"))?;
                // Only a rejoin: the joiner must replace its own old leaf.
                if !effects.removed.iter().any(|member| member.identity_key.as_slice() == key.as_slice()) {
                    return Err(CoreError::UnauthorizedExternalJoin);
                }
                Some(key)
            }
            _ => None,
        };
        group
            .merge_staged_commit(&self.provider, staged)
            .map_err(|error| CoreError::MlsMergeStaged(Box::new(error)))?;
        let mut added = effects.added(group)?;
        let mut sender_info = committer;
        if let Some(key) = joiner_key {
            let joiner = member_by_key(group, &key)?;
            sender_info = Some(joiner.clone());
            added.push(joiner);
        }
        Ok(Processed::Commit { sender: sender_info, epoch: group.epoch().as_u64(), added, removed: effects.removed })
    }

    fn merge_own_commit(&self, group: &mut MlsGroup) -> Result<Processed, CoreError> {
        let staged = group.pending_commit().ok_or(CoreError::NoPendingCommit)?;
        let effects = CommitEffects::inspect(group, staged)?;
        group.merge_pending_commit(&self.provider).map_err(merge_pending_error)?;
        let own_leaf = group.own_leaf_index();
        let sender = group
            .member_at(own_leaf)
            .map(|member| credential::member_from_parts(&member.credential, &member.signature_key, own_leaf.u32()))
            .transpose()?;
        Ok(Processed::Commit {
            sender,
            epoch: group.epoch().as_u64(),
            added: effects.added(group)?,
            removed: effects.removed,
        })
    }

    /// Runs `f` on the group, loaded from storage on first use and kept in memory after a
    /// success (openmls writes every change through to storage, so the kept group is what a
    /// load would return). After an error the group is dropped and the next call loads it
    /// again, so a failed operation leaves exactly what storage holds. Groups are taken out of
    /// the cache while `f` runs: calls on one group must not overlap anyway (see the module
    /// documentation), and calls on different groups do not wait for each other.
    fn with_group<T>(
        &self,
        group_id: &[u8],
        f: impl FnOnce(&mut MlsGroup) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let cached = self.groups.lock().map_err(|_| CoreError::StorageLockPoisoned)?.remove(group_id);
        let mut group = match cached {
            Some(group) => group,
            None => self.load_group(group_id)?,
        };
        let result = f(&mut group);
        if result.is_ok() {
            self.groups.lock().map_err(|_| CoreError::StorageLockPoisoned)?.insert(group_id.to_vec(), group);
        }
        result
    }

    /// Forgets the kept copy of a group (before its storage is deleted or replaced).
    fn evict(&self, group_id: &[u8]) -> Result<(), CoreError> {
        self.groups.lock().map_err(|_| CoreError::StorageLockPoisoned)?.remove(group_id);
        Ok(())
    }

    fn load_group(&self, group_id: &[u8]) -> Result<MlsGroup, CoreError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map_err(CoreError::MlsStorage)?
            .ok_or(CoreError::UnknownGroup)
    }
}

/// What a staged commit does to the membership, read before merging.
struct CommitEffects {
    removed: Vec<MemberInfo>,
    /// Signature keys of the added members; their leaf indices are known
    /// only after the merge.
    added_keys: Vec<Vec<u8>>,
}

impl CommitEffects {
    /// Reads the commit's adds and removes, refusing new members whose
    /// credentials are invalid (before anything is merged).
    fn inspect(group: &MlsGroup, staged: &StagedCommit) -> Result<Self, CoreError> {
        let removed = staged
            .remove_proposals()
            .map(|remove| member_at(group, remove.remove_proposal().removed()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut added_keys = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            credential::member_from_parts(leaf.credential(), leaf.signature_key().as_slice(), 0)?;
            added_keys.push(leaf.signature_key().as_slice().to_vec());
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            credential::member_from_parts(leaf.credential(), leaf.signature_key().as_slice(), 0)?;
        }
        Ok(Self { removed, added_keys })
    }

    /// The added members as they sit in the merged group.
    fn added(&self, group: &MlsGroup) -> Result<Vec<MemberInfo>, CoreError> {
        self.added_keys.iter().map(|key| member_by_key(group, key)).collect()
    }
}

fn group_members(group: &MlsGroup) -> Result<Vec<MemberInfo>, CoreError> {
    group
        .members()
        .map(|member| {
            credential::member_from_parts(&member.credential, &member.signature_key, member.index.u32())
                .map_err(CoreError::from)
        })
        .collect()
}

fn member_at(group: &MlsGroup, leaf: LeafNodeIndex) -> Result<MemberInfo, CoreError> {
    let member = group.member_at(leaf).ok_or(CoreError::UnknownSender { leaf_index: leaf.u32() })?;
    Ok(credential::member_from_parts(&member.credential, &member.signature_key, leaf.u32())?)
}

fn member_by_key(group: &MlsGroup, signature_key: &[u8]) -> Result<MemberInfo, CoreError> {
    let member = group
        .members()
        .find(|member| member.signature_key == signature_key)
        .ok_or(CoreError::Internal("merged member missing from the tree"))?;
    Ok(credential::member_from_parts(&member.credential, &member.signature_key, member.index.u32())?)
}

/// The member behind a handshake sender; `None` for senders outside the group.
fn member_sender(group: &MlsGroup, sender: &Sender) -> Result<Option<MemberInfo>, CoreError> {
    match sender {
        Sender::Member(leaf) => member_at(group, *leaf).map(Some),
        Sender::External(_) | Sender::NewMemberProposal | Sender::NewMemberCommit => Ok(None),
    }
}

fn parse_protocol_message(bytes: &[u8]) -> Result<ProtocolMessage, CoreError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(CoreError::MlsDecode)?;
    let found = message.wire_format();
    match message.extract() {
        MlsMessageBodyIn::PublicMessage(message) => Ok(message.into()),
        MlsMessageBodyIn::PrivateMessage(message) => Ok(message.into()),
        _ => Err(CoreError::UnexpectedMessage { expected: "PublicMessage or PrivateMessage", found }),
    }
}

fn export_secret_error(error: ExportSecretError) -> CoreError {
    match error {
        ExportSecretError::GroupStateError(MlsGroupStateError::UseAfterEviction) => CoreError::NotAMember,
        other => CoreError::MlsExportSecret(Box::new(other)),
    }
}

fn to_bytes(message: &MlsMessageOut) -> Result<Vec<u8>, CoreError> {
    message.to_bytes().map_err(CoreError::MlsEncode)
}

fn commit_outcome(
    commit: MlsMessageOut,
    welcome: Option<MlsMessageOut>,
    group_info: Option<MlsMessageOut>,
    epoch_before: u64,
) -> Result<CommitOutcome, CoreError> {
    let group_info =
        group_info.ok_or(CoreError::Internal("commit produced no GroupInfo despite the ratchet tree extension"))?;
    Ok(CommitOutcome {
        commit: to_bytes(&commit)?,
        welcome: welcome.as_ref().map(to_bytes).transpose()?,
        group_info: to_bytes(&group_info)?,
        epoch_before,
    })
}

fn capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(vec![MlsSuite::XWing.ciphersuite(), MlsSuite::Classic.ciphersuite()])
        .extensions(vec![ExtensionType::LastResort])
        .credentials(vec![CredentialType::Basic])
        .build()
}

fn sender_ratchet_configuration() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

/// The configuration joiners use; matches what [`MlsClient::create_group`]
/// sets up.
fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet_configuration())
        .build()
}

#[cfg(test)]
mod lifecycle_tests;
#[cfg(test)]
mod tests;
