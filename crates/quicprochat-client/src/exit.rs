//! Exit codes of `qpc`, in one place (documented in `docs/cli.md`).
//!
//! | code | meaning                                                      |
//! |------|--------------------------------------------------------------|
//! | 0    | success                                                      |
//! | 1    | any other error (refused by the server, not found, local I/O) |
//! | 2    | usage error (bad arguments, missing input)                   |
//! | 3    | authentication failed (wrong username or password, wrong archive password) |
//! | 4    | network failure (server unreachable, connection lost, timeout) |
//! | 5    | a transcript archive failed verification (modified, cut off, not an archive) |

use std::fmt;
use std::process::ExitCode;

use quicprochat_sdk::SdkError;

/// Why `qpc` failed, as its exit status tells a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Anything not classified below.
    Other = 1,
    /// The command line or input was wrong.
    Usage = 2,
    /// Wrong username or password (on the server, or for the local account file), or a
    /// transcript archive that does not open with the password given.
    Auth = 3,
    /// The server could not be reached or stopped answering.
    Network = 4,
    /// A transcript archive is not intact: modified, cut off, malformed or not an archive.
    InvalidArchive = 5,
}

impl Failure {
    /// The failure an error chain stands for: the first error in it that says.
    pub fn of(error: &anyhow::Error) -> Failure {
        if error.downcast_ref::<UsageError>().is_some() {
            return Failure::Usage;
        }
        if error.downcast_ref::<NetworkError>().is_some() {
            return Failure::Network;
        }
        error.chain().find_map(classify).unwrap_or(Failure::Other)
    }

    /// The process exit status.
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

fn classify(error: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    if error.is::<UsageError>() {
        return Some(Failure::Usage);
    }
    if error.is::<NetworkError>() {
        return Some(Failure::Network);
    }
    match error.downcast_ref::<SdkError>()? {
        SdkError::InvalidCredentials
        | SdkError::LocalAccountLocked(_)
        | SdkError::NotLoggedIn
        | SdkError::ArchiveWrongPassword => Some(Failure::Auth),
        SdkError::Transport(_) | SdkError::Timeout => Some(Failure::Network),
        e if e.is_invalid_archive() => Some(Failure::InvalidArchive),
        _ => None,
    }
}

/// The command line or input is wrong (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The server could not be reached (exit code 4).
#[derive(Debug)]
pub struct NetworkError(pub String);

impl fmt::Display for NetworkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetworkError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_through_context() {
        let auth = anyhow::Error::new(SdkError::InvalidCredentials).context("logging in");
        assert_eq!(Failure::of(&auth), Failure::Auth);
        let net = anyhow::Error::new(SdkError::Timeout).context("sending");
        assert_eq!(Failure::of(&net), Failure::Network);
        let usage = anyhow::Error::new(UsageError("a username is required".into()));
        assert_eq!(Failure::of(&usage), Failure::Usage);
        assert_eq!(Failure::of(&anyhow::anyhow!("no group named x")), Failure::Other);
        assert_eq!(Failure::of(&anyhow::Error::new(SdkError::UsernameTaken)), Failure::Other);
        let tampered = anyhow::Error::new(SdkError::ArchiveTampered { record: 2 }).context("verifying a.qpca");
        assert_eq!(Failure::of(&tampered), Failure::InvalidArchive);
        assert_eq!(Failure::of(&anyhow::Error::new(SdkError::ArchiveTruncated)), Failure::InvalidArchive);
        assert_eq!(Failure::of(&anyhow::Error::new(SdkError::ArchiveWrongPassword)), Failure::Auth);
    }
}
