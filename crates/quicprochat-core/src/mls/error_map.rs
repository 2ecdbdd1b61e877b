//! Mapping openmls errors to [`CoreError`]: the cases callers act on
//! (pending commit, pending proposals, evicted, wrong epoch, …) become typed
//! variants; everything else is kept whole as the source of a per-operation
//! variant.

use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::{
    AddMembersError, CommitToPendingProposalsError, CreateMessageError, LeaveGroupError, MergePendingCommitError,
    MlsGroupStateError, ProcessMessageError, RemoveMembersError, SelfUpdateError, ValidationError, WelcomeError,
};
use openmls_memory_storage::MemoryStorageError;

use crate::error::CoreError;

fn group_state_error(error: &MlsGroupStateError) -> Option<CoreError> {
    match error {
        MlsGroupStateError::PendingCommit => Some(CoreError::PendingCommit),
        MlsGroupStateError::NoPendingCommit => Some(CoreError::NoPendingCommit),
        MlsGroupStateError::PendingProposal => Some(CoreError::PendingProposals),
        MlsGroupStateError::UseAfterEviction => Some(CoreError::NotAMember),
        _ => None,
    }
}

pub(super) fn add_members_error(error: AddMembersError<MemoryStorageError>) -> CoreError {
    match &error {
        AddMembersError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsAddMembers(Box::new(error)))
}

pub(super) fn remove_members_error(error: RemoveMembersError<MemoryStorageError>) -> CoreError {
    match &error {
        RemoveMembersError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsRemoveMembers(Box::new(error)))
}

pub(super) fn self_update_error(error: SelfUpdateError<MemoryStorageError>) -> CoreError {
    match &error {
        SelfUpdateError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsSelfUpdate(Box::new(error)))
}

pub(super) fn commit_proposals_error(error: CommitToPendingProposalsError<MemoryStorageError>) -> CoreError {
    match &error {
        CommitToPendingProposalsError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsCommitProposals(Box::new(error)))
}

pub(super) fn leave_group_error(error: LeaveGroupError<MemoryStorageError>) -> CoreError {
    match &error {
        LeaveGroupError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsLeave(Box::new(error)))
}

pub(super) fn merge_pending_error(error: MergePendingCommitError<MemoryStorageError>) -> CoreError {
    match &error {
        MergePendingCommitError::MlsGroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsMergePending(Box::new(error)))
}

pub(super) fn create_message_error(error: CreateMessageError) -> CoreError {
    match &error {
        CreateMessageError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsCreateMessage(Box::new(error)))
}

pub(super) fn welcome_error(error: WelcomeError<MemoryStorageError>) -> CoreError {
    match error {
        WelcomeError::NoMatchingKeyPackage => CoreError::NoMatchingKeyPackage,
        WelcomeError::GroupAlreadyExists => CoreError::GroupExists,
        other => CoreError::MlsWelcome(Box::new(other)),
    }
}

pub(super) fn process_error(error: ProcessMessageError<MemoryStorageError>, wrong_epoch: CoreError) -> CoreError {
    match &error {
        ProcessMessageError::ValidationError(ValidationError::WrongEpoch | ValidationError::NoPastEpochData) => {
            Some(wrong_epoch)
        }
        // openmls reports a past epoch whose secrets were dropped as "too
        // distant in the past", like a generation beyond the out-of-order
        // window: for a past epoch, both mean its secrets are gone.
        ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
            MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInThePast),
        )) if matches!(wrong_epoch, CoreError::WrongEpoch { message_epoch, group_epoch } if message_epoch < group_epoch) => {
            Some(wrong_epoch)
        }
        ProcessMessageError::ValidationError(ValidationError::WrongGroupId) => Some(CoreError::WrongGroup),
        ProcessMessageError::ValidationError(ValidationError::InvalidSignature) => {
            Some(CoreError::InvalidMessageSignature)
        }
        ProcessMessageError::GroupStateError(state) => group_state_error(state),
        _ => None,
    }
    .unwrap_or_else(|| CoreError::MlsProcess(Box::new(error)))
}
