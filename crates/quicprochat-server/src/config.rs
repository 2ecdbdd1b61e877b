//! Server configuration: command-line flags > `QPC_*` environment > `qpc-server.toml` > defaults.
//!
//! `main.rs` parses flags and environment (clap) into a [`Overrides`], reads the optional
//! TOML file into a [`FileConfig`], and [`resolve`] merges them into a [`ServerConfig`],
//! refusing insecure combinations in production mode.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::ServerConfig;
use crate::at_rest::{self, DbKey};
use crate::ratelimit::Rate;
use crate::store::{PostgresOptions, StoreBackend};

/// Default config file, read from the working directory when present.
pub const DEFAULT_CONFIG_FILE: &str = "qpc-server.toml";
/// Default UDP listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7000";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {field}: {problem}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// Production mode was asked for with an unsafe or incomplete configuration.
    #[error("production mode refuses to start: {0}")]
    NotProductionReady(String),
}

/// The TOML file. Every field is optional; unknown fields are an error (typos must not pass
/// silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// UDP address for QUIC.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// TLS certificate file (PEM or DER).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key file (PEM or DER).
    pub tls_key: Option<PathBuf>,
    /// Production mode.
    pub production: Option<bool>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// TCP address for the Prometheus endpoint (off when absent).
    pub metrics_listen: Option<String>,
    /// File holding the `db_key` (64 hex characters). `QPC_DB_KEY` takes precedence.
    pub db_key_file: Option<PathBuf>,
    /// `sqlite` (default) or `postgres`.
    pub store: Option<String>,
    /// PostgreSQL connection URL, for `store = "postgres"`.
    pub db_url: Option<String>,
    /// Most PostgreSQL connections this node opens.
    pub db_max_connections: Option<usize>,
    /// Service limits.
    #[serde(default)]
    pub limits: FileLimits,
}

/// `[limits]` of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Session lifetime in seconds.
    pub session_ttl_secs: Option<u64>,
    /// Largest envelope payload in bytes.
    pub max_payload_bytes: Option<usize>,
    /// Most envelopes per device queue.
    pub max_queue_depth: Option<u32>,
    /// Enqueues per device per minute.
    pub enqueue_per_minute: Option<u32>,
    /// Enqueue burst per device.
    pub enqueue_burst: Option<u32>,
    /// `RegisterStart` / `LoginStart` / `Resume` per client IP address per minute.
    pub auth_per_minute: Option<u32>,
    /// Burst of the above.
    pub auth_burst: Option<u32>,
    /// Directory and key lookups per account per minute.
    pub lookup_per_minute: Option<u32>,
    /// Burst of the above.
    pub lookup_burst: Option<u32>,
    /// Key package low-water mark.
    pub key_package_low_water: Option<u32>,
    /// Seconds between purges of expired envelopes.
    pub gc_interval_secs: Option<u64>,
    /// Largest blob in bytes.
    pub max_blob_bytes: Option<u64>,
    /// Seconds a blob is kept.
    pub blob_retention_secs: Option<u64>,
}

/// Values from flags or environment (clap resolves flag > environment); `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `QPC_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` / `QPC_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--tls-cert` / `QPC_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key` / `QPC_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// `--production` / `QPC_PRODUCTION`.
    pub production: Option<bool>,
    /// `--log-format` / `QPC_LOG_FORMAT`.
    pub log_format: Option<String>,
    /// `--metrics-listen` / `QPC_METRICS_LISTEN`.
    pub metrics_listen: Option<String>,
    /// `QPC_DB_KEY`: the key itself (never a flag: command lines are visible to other users).
    pub db_key: Option<SecretText>,
    /// `--db-key-file` / `QPC_DB_KEY_FILE`.
    pub db_key_file: Option<PathBuf>,
    /// `--store` / `QPC_STORE`.
    pub store: Option<String>,
    /// `--db-url` / `QPC_DB_URL` (may hold a password: prefer the environment or the file).
    pub db_url: Option<SecretText>,
}

/// Secret text from the environment, zeroized on drop; `Debug` never shows it.
#[derive(Clone, Default)]
pub struct SecretText(pub Zeroizing<String>);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The merged result: the server configuration plus process-level settings.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What `start` needs.
    pub server: ServerConfig,
    /// Production mode was asked for (and its checks passed).
    pub production: bool,
    /// `text` or `json`.
    pub log_format: String,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// Reads `path`, or returns the empty file config when `path` is the default and absent.
pub fn read_file(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(FileConfig::default()),
        Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
    }
}

/// Parses TOML text.
pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
}

/// Merges overrides, file and defaults; applies the production checks.
pub fn resolve(over: Overrides, file: FileConfig) -> Result<Resolved, ConfigError> {
    let listen_text = over.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| ConfigError::Invalid { field: "listen", problem: format!("{listen_text:?} is not IP:PORT") })?;
    let data_dir = over.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let tls_cert = over.tls_cert.or(file.tls_cert);
    let tls_key = over.tls_key.or(file.tls_key);
    let production = over.production.or(file.production).unwrap_or(false);
    let log_format = over.log_format.or(file.log_format).unwrap_or_else(|| "text".to_owned());
    let metrics_listen = match over.metrics_listen.or(file.metrics_listen) {
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
            field: "metrics_listen",
            problem: format!("{text:?} is not IP:PORT"),
        })?),
        None => None,
    };
    if !matches!(log_format.as_str(), "text" | "json") {
        return Err(ConfigError::Invalid { field: "log_format", problem: "must be \"text\" or \"json\"".into() });
    }

    let mut config = ServerConfig::new(listen, data_dir);
    config.tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid { field: "tls", problem: "tls_cert and tls_key go together".into() });
        }
    };
    apply_limits(&mut config, &file.limits)?;
    config.db_key = match (over.db_key, over.db_key_file.or(file.db_key_file)) {
        (Some(text), _) => Some(parse_db_key(&text.0)?),
        (None, Some(path)) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?,
            );
            Some(parse_db_key(&text)?)
        }
        (None, None) => None,
    };
    config.store = resolve_store(
        over.store.or(file.store),
        over.db_url.map(|u| u.0.to_string()).or(file.db_url),
        file.db_max_connections,
    )?;
    // With the embedded store the db_key encrypts the database file, which needs SQLCipher;
    // with PostgreSQL it seals the cluster secrets kept in the database, and the database's
    // own storage is the operator's to encrypt.
    let embedded = matches!(config.store, crate::store::StoreBackend::Sqlite);
    if embedded && config.db_key.is_some() && !at_rest::DATABASE_ENCRYPTION {
        return Err(ConfigError::Invalid {
            field: "db_key",
            problem: "this build cannot encrypt its database: rebuild qpc-server with `--features sqlcipher`".into(),
        });
    }

    if production {
        if config.tls.is_none() {
            return Err(ConfigError::NotProductionReady(
                "a real TLS certificate and key are required (--tls-cert, --tls-key); dev mode's self-signed \
                 certificate is not allowed"
                    .into(),
            ));
        }
        if config.db_key.is_none() {
            return Err(ConfigError::NotProductionReady(if at_rest::DATABASE_ENCRYPTION || !embedded {
                "encryption at rest is required: set QPC_DB_KEY or db_key_file (64 hex characters)".into()
            } else {
                "encryption at rest is required and this build has none: rebuild with `--features sqlcipher` \
                 and set QPC_DB_KEY or db_key_file"
                    .into()
            }));
        }
    }
    Ok(Resolved { server: config, production, log_format, metrics_listen })
}

/// The storage backend: `sqlite` needs nothing, `postgres` needs a `db_url`.
fn resolve_store(
    store: Option<String>,
    db_url: Option<String>,
    max_connections: Option<usize>,
) -> Result<StoreBackend, ConfigError> {
    match store.as_deref().unwrap_or("sqlite") {
        "sqlite" => match db_url {
            Some(_) => {
                Err(ConfigError::Invalid { field: "db_url", problem: "only used with store = \"postgres\"".into() })
            }
            None => Ok(StoreBackend::Sqlite),
        },
        "postgres" => {
            let url = db_url.ok_or_else(|| ConfigError::Invalid {
                field: "db_url",
                problem: "store = \"postgres\" needs db_url (--db-url, QPC_DB_URL): postgres://user@host:5432/database"
                    .into(),
            })?;
            let mut options = PostgresOptions::new(url);
            if let Some(n) = max_connections {
                if n == 0 {
                    return Err(ConfigError::Invalid {
                        field: "db_max_connections",
                        problem: "must be greater than 0".into(),
                    });
                }
                options.max_connections = n;
            }
            Ok(StoreBackend::Postgres(options))
        }
        other => Err(ConfigError::Invalid {
            field: "store",
            problem: format!("{other:?} is neither \"sqlite\" nor \"postgres\""),
        }),
    }
}

fn parse_db_key(text: &str) -> Result<DbKey, ConfigError> {
    DbKey::from_hex(text).map_err(|e| ConfigError::Invalid { field: "db_key", problem: e.to_string() })
}

fn apply_limits(config: &mut ServerConfig, l: &FileLimits) -> Result<(), ConfigError> {
    let positive = |field: &'static str, v: u64| {
        if v == 0 { Err(ConfigError::Invalid { field, problem: "must be greater than 0".into() }) } else { Ok(v) }
    };
    let limits = &mut config.limits;
    if let Some(v) = l.session_ttl_secs {
        limits.session_ttl = Duration::from_secs(positive("limits.session_ttl_secs", v)?);
    }
    if let Some(v) = l.max_payload_bytes {
        if !(1024..=64 * 1024 * 1024).contains(&v) {
            return Err(ConfigError::Invalid {
                field: "limits.max_payload_bytes",
                problem: "must be between 1 KiB and 64 MiB".into(),
            });
        }
        limits.max_payload = v;
    }
    if let Some(v) = l.max_queue_depth {
        limits.max_queue_depth = positive("limits.max_queue_depth", u64::from(v))? as u32;
    }
    let rate = |fields: (&'static str, &'static str), per_minute: Option<u32>, burst: Option<u32>, current: Rate| {
        let per_minute = positive(fields.0, u64::from(per_minute.unwrap_or(current.per_minute)))?;
        let burst = positive(fields.1, u64::from(burst.unwrap_or(current.burst)))?;
        // Both came from `u32`s.
        Ok::<_, ConfigError>(Rate {
            per_minute: u32::try_from(per_minute).unwrap_or(u32::MAX),
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
        })
    };
    limits.enqueue_rate = rate(
        ("limits.enqueue_per_minute", "limits.enqueue_burst"),
        l.enqueue_per_minute,
        l.enqueue_burst,
        limits.enqueue_rate,
    )?;
    limits.auth_rate =
        rate(("limits.auth_per_minute", "limits.auth_burst"), l.auth_per_minute, l.auth_burst, limits.auth_rate)?;
    limits.lookup_rate = rate(
        ("limits.lookup_per_minute", "limits.lookup_burst"),
        l.lookup_per_minute,
        l.lookup_burst,
        limits.lookup_rate,
    )?;
    if let Some(v) = l.key_package_low_water {
        limits.key_package_low_water = v;
    }
    if let Some(v) = l.max_blob_bytes {
        limits.max_blob_bytes = positive("limits.max_blob_bytes", v)?;
    }
    if let Some(v) = l.blob_retention_secs {
        limits.blob_retention = Duration::from_secs(positive("limits.blob_retention_secs", v)?);
    }
    if let Some(v) = l.gc_interval_secs {
        limits.gc_interval = Duration::from_secs(positive("limits.gc_interval_secs", v)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        parse_file(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let f = file("listen = \"127.0.0.1:7100\"\ndata_dir = \"/srv/qpc\"\n[limits]\nmax_queue_depth = 50\n");
        let over = Overrides { listen: Some("127.0.0.1:7200".into()), ..Default::default() };
        let r = resolve(over, f).unwrap();
        assert_eq!(r.server.listen.to_string(), "127.0.0.1:7200");
        assert_eq!(r.server.data_dir, PathBuf::from("/srv/qpc"));
        assert_eq!(r.server.limits.max_queue_depth, 50);
        assert_eq!(r.server.limits.enqueue_rate, Rate { per_minute: 100, burst: 20 });
        let d = resolve(Overrides::default(), FileConfig::default()).unwrap();
        assert_eq!(d.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(d.log_format, "text");
    }

    #[test]
    fn the_store_is_sqlite_unless_postgres_is_chosen_with_a_url() {
        assert!(matches!(
            resolve(Overrides::default(), FileConfig::default()).unwrap().server.store,
            StoreBackend::Sqlite
        ));
        let url = "postgres://qpc:secret@db.internal:5432/qpc";
        let from_file = resolve(
            Overrides::default(),
            file(&format!("store = \"postgres\"\ndb_url = \"{url}\"\ndb_max_connections = 4\n")),
        )
        .unwrap();
        let StoreBackend::Postgres(options) = &from_file.server.store else { panic!("postgres expected") };
        assert_eq!((options.url.as_str(), options.max_connections), (url, 4));
        assert!(!format!("{from_file:?}").contains("secret"), "the URL's password is never printed");
        let over = Overrides {
            store: Some("postgres".into()),
            db_url: Some(SecretText(Zeroizing::new("postgres://flag@127.0.0.1/test".into()))),
            ..Default::default()
        };
        let StoreBackend::Postgres(options) =
            resolve(over, file(&format!("db_url = \"{url}\"\n"))).unwrap().server.store
        else {
            panic!("postgres expected")
        };
        assert_eq!(options.url, "postgres://flag@127.0.0.1/test");
        let no_url = resolve(Overrides { store: Some("postgres".into()), ..Default::default() }, FileConfig::default());
        assert!(matches!(no_url, Err(ConfigError::Invalid { field: "db_url", .. })));
        let stray_url = resolve(Overrides::default(), file(&format!("db_url = \"{url}\"\n")));
        assert!(matches!(stray_url, Err(ConfigError::Invalid { field: "db_url", .. })));
        let unknown = resolve(Overrides { store: Some("mysql".into()), ..Default::default() }, FileConfig::default());
        assert!(matches!(unknown, Err(ConfigError::Invalid { field: "store", .. })));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(matches!(parse_file("lisen = 1", Path::new("x.toml")), Err(ConfigError::Parse { .. })));
        let bad = resolve(Overrides { listen: Some("nowhere".into()), ..Default::default() }, FileConfig::default());
        assert!(matches!(bad, Err(ConfigError::Invalid { field: "listen", .. })));
        let half = resolve(Overrides { tls_cert: Some("c.pem".into()), ..Default::default() }, FileConfig::default());
        assert!(matches!(half, Err(ConfigError::Invalid { field: "tls", .. })));
        let zero = resolve(Overrides::default(), file("[limits]\nmax_queue_depth = 0\n"));
        assert!(matches!(zero, Err(ConfigError::Invalid { field: "limits.max_queue_depth", .. })));
    }

    #[test]
    fn production_refuses_dev_certificates_and_missing_encryption() {
        let dev = resolve(Overrides { production: Some(true), ..Default::default() }, FileConfig::default());
        assert!(matches!(dev, Err(ConfigError::NotProductionReady(m)) if m.contains("TLS")));
        let with_tls = Overrides {
            production: Some(true),
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..Default::default()
        };
        assert!(
            matches!(resolve(with_tls.clone(), FileConfig::default()), Err(ConfigError::NotProductionReady(m)) if m.contains("QPC_DB_KEY"))
        );
        let key = || Some(SecretText(Zeroizing::new("5a".repeat(32))));
        let complete = resolve(Overrides { db_key: key(), ..with_tls }, FileConfig::default());
        if at_rest::DATABASE_ENCRYPTION {
            let resolved = complete.unwrap();
            assert!(resolved.production && resolved.server.db_key.is_some());
        } else {
            assert!(
                matches!(complete, Err(ConfigError::Invalid { field: "db_key", problem }) if problem.contains("sqlcipher"))
            );
        }
    }

    #[test]
    fn db_keys_come_from_the_environment_or_a_file_and_are_never_printed() {
        let malformed = Overrides { db_key: Some(SecretText(Zeroizing::new("secret".into()))), ..Default::default() };
        assert!(!format!("{malformed:?}").contains("secret"));
        assert!(matches!(resolve(malformed, FileConfig::default()), Err(ConfigError::Invalid { field: "db_key", .. })));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.key");
        std::fs::write(&path, format!("{}\n", "5a".repeat(32))).unwrap();
        let from_file =
            resolve(Overrides::default(), file(&format!("db_key_file = {:?}\n", path.display().to_string())));
        if at_rest::DATABASE_ENCRYPTION {
            assert!(from_file.unwrap().server.db_key.is_some());
        } else {
            assert!(matches!(from_file, Err(ConfigError::Invalid { field: "db_key", .. })));
        }
        let missing = resolve(
            Overrides { db_key_file: Some(dir.path().join("absent")), ..Default::default() },
            FileConfig::default(),
        );
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
    }
}
