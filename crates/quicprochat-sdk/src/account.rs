//! The account file: this device's identity key and the local storage key, sealed with the
//! account password (Argon2id + ChaCha20-Poly1305), written atomically with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use quicprochat_core::identity::IdentityKeyPair;
use quicprochat_core::keystore::{KdfParams, open_with_password, seal_with_password};
use zeroize::Zeroizing;

use crate::SdkError;
use crate::config::KdfStrength;
use crate::error::Result;

/// File name of the account file inside the state dir.
pub(crate) const ACCOUNT_FILE: &str = "account.key";
const FORMAT_VERSION: u8 = 1;

/// Secrets of this device's account.
pub(crate) struct AccountSecrets {
    pub username: String,
    pub identity: IdentityKeyPair,
    pub storage_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AccountSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSecrets").field("username", &self.username).finish_non_exhaustive()
    }
}

pub(crate) fn kdf_params(strength: KdfStrength) -> KdfParams {
    match strength {
        KdfStrength::Production => KdfParams::default(),
        KdfStrength::InsecureTestOnly => KdfParams::light(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SdkError + '_ {
    move |source| SdkError::Io { path: path.to_path_buf(), source }
}

/// Opens the account file, or creates a fresh identity if there is none.
pub(crate) fn open_or_create(
    dir: &Path,
    username: &str,
    password: &[u8],
    strength: KdfStrength,
) -> Result<AccountSecrets> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let path = dir.join(ACCOUNT_FILE);
    match std::fs::read(&path) {
        Ok(sealed) => {
            let plain = open_with_password(password, &sealed).map_err(|e| match e {
                quicprochat_core::CoreError::WrongPassword => SdkError::LocalAccountLocked(dir.to_path_buf()),
                other => SdkError::Crypto(other),
            })?;
            let secrets = decode(&plain)?;
            if secrets.username != username {
                return Err(SdkError::StateMismatch { found: secrets.username, expected: username.to_owned() });
            }
            Ok(secrets)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut storage_key = Zeroizing::new([0u8; 32]);
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, storage_key.as_mut());
            let secrets = AccountSecrets {
                username: username.to_owned(),
                identity: IdentityKeyPair::generate(&mut rand_core::OsRng),
                storage_key,
            };
            let sealed = seal_with_password(&mut rand_core::OsRng, password, &encode(&secrets), &kdf_params(strength))?;
            write_atomic(&path, &sealed)?;
            Ok(secrets)
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn encode(s: &AccountSecrets) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(65 + s.username.len()));
    out.push(FORMAT_VERSION);
    out.extend_from_slice(s.identity.secret_bytes().as_slice());
    out.extend_from_slice(s.storage_key.as_slice());
    out.extend_from_slice(s.username.as_bytes());
    out
}

fn decode(b: &[u8]) -> Result<AccountSecrets> {
    if b.len() < 65 || b[0] != FORMAT_VERSION {
        return Err(SdkError::Protocol("unsupported account file"));
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&b[1..33]);
    let mut storage_key = Zeroizing::new([0u8; 32]);
    storage_key.copy_from_slice(&b[33..65]);
    let username = String::from_utf8(b[65..].to_vec()).map_err(|_| SdkError::Protocol("account file username"))?;
    Ok(AccountSecrets { username, identity: IdentityKeyPair::from_secret_bytes(&secret), storage_key })
}

/// Writes `bytes` to `path` via a temp file and rename, mode 0600.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
