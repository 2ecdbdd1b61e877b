//! How a client reaches its server and where it keeps its state.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How the server's certificate is trusted.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Exactly this certificate (DER), as written by a dev-mode server to `server-cert.der`.
    PinnedCertificate(Vec<u8>),
    /// Certificates signed by one of these CAs (DER).
    CaCertificates(Vec<Vec<u8>>),
}

/// Cost of the password hashing (Argon2id) that protects the account and OPAQUE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KdfStrength {
    /// Production parameters.
    #[default]
    Production,
    /// Cheap parameters for tests only: never use them for real accounts.
    InsecureTestOnly,
}

/// Client configuration.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server UDP address.
    pub server: SocketAddr,
    /// TLS server name (for CA-signed certificates; ignored by pinning).
    pub server_name: String,
    /// Certificate trust.
    pub trust: Trust,
    /// This account's state directory (identity, MLS state, messages).
    pub state_dir: PathBuf,
    /// Password hashing cost.
    pub kdf: KdfStrength,
    /// Label for this device, shown to the account's other devices.
    pub device_name: String,
    /// How long the push stream may stay quiet before the client also long-polls
    /// (`FetchWait`), so a lost notification cannot leave messages waiting. Default 20 s.
    pub push_quiet: std::time::Duration,
}

impl ClientConfig {
    /// A configuration with production defaults.
    pub fn new(server: SocketAddr, trust: Trust, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            server,
            server_name: "localhost".into(),
            trust,
            state_dir: state_dir.into(),
            kdf: KdfStrength::Production,
            device_name: "qpc".into(),
            push_quiet: std::time::Duration::from_secs(20),
        }
    }
}
