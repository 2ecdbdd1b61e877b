//! What MLS operations hand back to the caller.
//!
//! `Debug` shows sizes, never message bytes or plaintext.

use std::fmt;

use super::MemberInfo;

/// The result of [`MlsClient::add_members`](super::MlsClient::add_members). The commit is pending locally.
#[derive(Clone, PartialEq, Eq)]
pub struct AddOutcome {
    /// The commit (`MLSMessage`, `PublicMessage`) for the existing members.
    pub commit: Vec<u8>,
    /// The Welcome (`MLSMessage`) for the added devices.
    pub welcome: Vec<u8>,
    /// The GroupInfo of the new epoch (`MLSMessage`, with ratchet tree and
    /// external public key), for the server to keep.
    pub group_info: Vec<u8>,
    /// The epoch the commit was built for; the server accepts it only while
    /// the channel is still there.
    pub epoch_before: u64,
}

/// The result of a commit that may or may not add members (remove,
/// self-update, committing proposals). The commit is pending locally.
#[derive(Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The commit (`MLSMessage`, `PublicMessage`).
    pub commit: Vec<u8>,
    /// A Welcome, when the commit adds members (from committed proposals).
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo of the new epoch (`MLSMessage`).
    pub group_info: Vec<u8>,
    /// The epoch the commit was built for.
    pub epoch_before: u64,
}

/// A group joined from a Welcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedGroup {
    /// The MLS group id (the channel id for quicprochat channels).
    pub group_id: Vec<u8>,
    /// The epoch joined at.
    pub epoch: u64,
    /// Every member, this device included.
    pub members: Vec<MemberInfo>,
}

/// The result of [`MlsClient::join_by_external_commit`](super::MlsClient::join_by_external_commit). Unlike other
/// commits, an external commit is merged at once (openmls has no pending
/// state for it).
#[derive(Clone, PartialEq, Eq)]
pub struct ExternalJoin {
    /// The group as joined (epoch after the commit).
    pub joined: JoinedGroup,
    /// The external commit (`MLSMessage`, `PublicMessage`) for the members.
    pub commit: Vec<u8>,
    /// The GroupInfo of the new epoch (`MLSMessage`).
    pub group_info: Vec<u8>,
    /// The epoch the commit was built for.
    pub epoch_before: u64,
}

impl fmt::Debug for ExternalJoin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalJoin")
            .field("joined", &self.joined)
            .field("commit_len", &self.commit.len())
            .field("group_info_len", &self.group_info.len())
            .field("epoch_before", &self.epoch_before)
            .finish()
    }
}

/// What processing an incoming message did.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Processed {
    /// A decrypted application message.
    Application {
        /// Who sent it.
        sender: MemberInfo,
        /// The plaintext, padding removed.
        plaintext: Vec<u8>,
        /// The epoch it was sent in.
        epoch: u64,
    },
    /// A commit, already merged.
    Commit {
        /// The committer (`None` only for external senders).
        sender: Option<MemberInfo>,
        /// The new epoch.
        epoch: u64,
        /// Members the commit added (leaf indices in the new tree).
        added: Vec<MemberInfo>,
        /// Members the commit removed (as they were before it), possibly
        /// this device: then the group is no longer usable.
        removed: Vec<MemberInfo>,
    },
    /// A proposal, stored as pending until a commit covers it. Sending
    /// application messages fails with [`CoreError::PendingProposals`](crate::error::CoreError::PendingProposals) until
    /// then.
    Proposal {
        /// The proposer (`None` for senders outside the group).
        sender: Option<MemberInfo>,
        /// The epoch of the proposal.
        epoch: u64,
    },
    /// An application message this device sent itself, fanned back to it.
    /// There is nothing to do: its sender cannot decrypt it.
    OwnMessage {
        /// The epoch it was sent in.
        epoch: u64,
    },
}

impl fmt::Debug for Processed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Application { sender, plaintext, epoch } => f
                .debug_struct("Application")
                .field("sender", sender)
                .field("plaintext_len", &plaintext.len())
                .field("epoch", epoch)
                .finish(),
            Self::Commit { sender, epoch, added, removed } => f
                .debug_struct("Commit")
                .field("sender", sender)
                .field("epoch", epoch)
                .field("added", added)
                .field("removed", removed)
                .finish(),
            Self::Proposal { sender, epoch } => {
                f.debug_struct("Proposal").field("sender", sender).field("epoch", epoch).finish()
            }
            Self::OwnMessage { epoch } => f.debug_struct("OwnMessage").field("epoch", epoch).finish(),
        }
    }
}

impl fmt::Debug for AddOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddOutcome")
            .field("commit_len", &self.commit.len())
            .field("welcome_len", &self.welcome.len())
            .field("group_info_len", &self.group_info.len())
            .field("epoch_before", &self.epoch_before)
            .finish()
    }
}

impl fmt::Debug for CommitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitOutcome")
            .field("commit_len", &self.commit.len())
            .field("welcome_len", &self.welcome.as_ref().map(Vec::len))
            .field("group_info_len", &self.group_info.len())
            .field("epoch_before", &self.epoch_before)
            .finish()
    }
}
