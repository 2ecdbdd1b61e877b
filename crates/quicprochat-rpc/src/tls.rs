//! TLS for qpc/2: TLS 1.3 only, ALPN `qpc/2`, the ring provider; server certificates
//! (generated, loaded from DER or PEM) and the two ways a client trusts a server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use zeroize::Zeroizing;

use crate::Error;
use crate::options::TransportOptions;

/// The ALPN protocol id of this wire protocol.
pub const ALPN: &[u8] = b"qpc/2";

/// File name of the development certificate inside its directory.
pub const DEV_CERT_FILE: &str = "server-cert.der";
/// File name of the development private key inside its directory (mode 0600 on Unix).
pub const DEV_KEY_FILE: &str = "server-key.der";

/// A server's certificate chain and private key.
///
/// The key is wiped from memory on drop and never printed by `Debug`.
pub struct ServerCertificate {
    /// DER of the end-entity certificate; this is what a client pins.
    pub cert_der: Vec<u8>,
    /// DER of the intermediate certificates sent after the end-entity one (often empty).
    pub intermediates_der: Vec<Vec<u8>>,
    key: Zeroizing<PrivateKeyDer<'static>>,
}

/// The name most call sites use: in development the server certificate is self-signed.
pub type DevCertificate = ServerCertificate;

impl ServerCertificate {
    /// Builds a certificate from DER parts. The key may be PKCS#8, SEC1 or PKCS#1; whether it
    /// matches the certificate is checked when a [`server_config`] is built.
    pub fn from_der(cert_der: Vec<u8>, intermediates_der: Vec<Vec<u8>>, key_der: &[u8]) -> Result<Self, Error> {
        let key = PrivateKeyDer::try_from(key_der).map_err(|_| Error::UnrecognisedPrivateKey)?.clone_key();
        Ok(Self { cert_der, intermediates_der, key: Zeroizing::new(key) })
    }

    /// DER of the private key (PKCS#8 for generated keys).
    pub fn key_der(&self) -> &[u8] {
        self.key.secret_der()
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.cert_der)
            .chain(&self.intermediates_der)
            .map(|der| CertificateDer::from(der.clone()))
            .collect()
    }
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert_der_len", &self.cert_der.len())
            .field("intermediates", &self.intermediates_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Generates a self-signed ECDSA P-256 certificate valid for `names` (DNS names or IP
/// addresses, e.g. `["localhost", "127.0.0.1"]`).
pub fn generate_self_signed(names: &[String]) -> Result<DevCertificate, Error> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    let key_der = Zeroizing::new(certified.key_pair.serialize_der());
    ServerCertificate::from_der(certified.cert.der().to_vec(), Vec::new(), &key_der)
}

/// Loads `DIR/server-cert.der` and `DIR/server-key.der`, or, when neither exists, generates a
/// self-signed certificate for `localhost`, `127.0.0.1` and `::1`, writes it there (creating
/// `dir`; the key file with mode 0600 on Unix) and returns it. The flag tells whether it was
/// generated. When only one of the two files exists, nothing is overwritten and an error says
/// which one is missing.
pub fn load_or_generate_dev_certificate(dir: &Path) -> Result<(DevCertificate, bool), Error> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = read_file(&cert_path)?;
            let key = Zeroizing::new(read_file(&key_path)?);
            Ok((ServerCertificate::from_der(cert, Vec::new(), &key)?, false))
        }
        (false, false) => {
            let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
            let cert = generate_self_signed(&names)?;
            std::fs::create_dir_all(dir).map_err(|source| Error::File {
                action: "create directory",
                path: dir.to_path_buf(),
                source,
            })?;
            write_private_file(&key_path, cert.key_der())?;
            std::fs::write(&cert_path, &cert.cert_der).map_err(|source| Error::File {
                action: "write",
                path: cert_path.clone(),
                source,
            })?;
            Ok((cert, true))
        }
        (true, false) => Err(Error::IncompleteCertificatePair { present: cert_path, missing: key_path }),
        (false, true) => Err(Error::IncompleteCertificatePair { present: key_path, missing: cert_path }),
    }
}

/// Loads a certificate chain and its private key, each file either PEM or DER (detected by a
/// `-----BEGIN` marker). A PEM certificate file may hold the whole chain, end-entity first.
pub fn load_pem_or_der_certificate(cert: &Path, key: &Path) -> Result<ServerCertificate, Error> {
    let cert_bytes = read_file(cert)?;
    let key_bytes = Zeroizing::new(read_file(key)?);

    let mut chain: Vec<Vec<u8>> = if looks_like_pem(&cert_bytes) {
        CertificateDer::pem_slice_iter(&cert_bytes)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|source| pem_error(cert, source))?
    } else {
        vec![cert_bytes]
    };
    if chain.is_empty() {
        return Err(Error::InvalidKeyMaterial { path: cert.to_path_buf(), problem: "no certificate found" });
    }
    let leaf = chain.remove(0);

    if looks_like_pem(&key_bytes) {
        let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| pem_error(key, source))?;
        Ok(ServerCertificate { cert_der: leaf, intermediates_der: chain, key: Zeroizing::new(key_der) })
    } else {
        ServerCertificate::from_der(leaf, chain, &key_bytes).map_err(|_| Error::InvalidKeyMaterial {
            path: key.to_path_buf(),
            problem: "not a PKCS#8, SEC1 or PKCS#1 private key",
        })
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN")
}

fn pem_error(path: &Path, source: rustls::pki_types::pem::Error) -> Error {
    Error::Pem { path: path.to_path_buf(), source }
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::File { action: "read", path: path.to_path_buf(), source })
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    let err = |action, source| Error::File { action, path: PathBuf::from(path), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| err("create", e))?;
    file.write_all(contents).map_err(|e| err("write", e))?;
    file.sync_all().map_err(|e| err("sync", e))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the QUIC server configuration: TLS 1.3 only, ALPN `qpc/2`, no client certificates,
/// no 0-RTT, and the stream limits, idle timeout and keep-alive of `opts`. Clients may not open
/// unidirectional streams.
pub fn server_config(cert: &ServerCertificate, opts: &TransportOptions) -> Result<quinn::ServerConfig, Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain(), cert.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = opts.transport_config()?;
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(opts.max_concurrent_bidi_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// How a client decides to trust the server's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Trust exactly this end-entity certificate (DER). The handshake fails unless the server
    /// presents it byte for byte; the handshake signature is still verified with its key. Name
    /// and validity period are deliberately not checked: the pin is the trust anchor.
    Pinned(Vec<u8>),
    /// Trust these CA certificates (DER) with normal WebPKI verification, including the server
    /// name.
    Roots(Vec<Vec<u8>>),
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerTrust::Pinned(der) => write!(f, "Pinned({} bytes)", der.len()),
            ServerTrust::Roots(roots) => write!(f, "Roots({} certificates)", roots.len()),
        }
    }
}

/// Builds the QUIC client configuration with default [`TransportOptions`].
pub fn client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, Error> {
    client_config_with(trust, &TransportOptions::default())
}

/// Builds the QUIC client configuration: TLS 1.3 only, ALPN `qpc/2`, no 0-RTT, the idle timeout
/// and keep-alive of `opts`. The server may open one unidirectional stream (the push stream)
/// and no bidirectional ones.
pub fn client_config_with(trust: &ServerTrust, opts: &TransportOptions) -> Result<quinn::ClientConfig, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut tls = match trust {
        ServerTrust::Pinned(der) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerCertificate {
                pinned: CertificateDer::from(der.clone()),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        ServerTrust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for der in roots {
                store.add(CertificateDer::from(der.clone()))?;
            }
            if store.is_empty() {
                return Err(Error::NoTrustAnchors);
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;

    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = opts.transport_config()?;
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(1));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Reads certificates from PEM (any number) or DER (one) bytes; empty if none parse.
pub fn parse_certificates(bytes: &[u8]) -> Vec<Vec<u8>> {
    if looks_like_pem(bytes) {
        CertificateDer::pem_slice_iter(bytes).filter_map(Result::ok).map(|c| c.to_vec()).collect()
    } else if bytes.is_empty() {
        Vec::new()
    } else {
        vec![bytes.to_vec()]
    }
}

/// Accepts exactly one end-entity certificate and verifies handshake signatures with its key.
#[derive(Debug)]
struct PinnedServerCertificate {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered, so a TLS 1.2 signature is a protocol violation.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    #[test]
    fn generated_certificate_builds_configs() {
        let cert = generate_self_signed(&names()).unwrap();
        assert!(!cert.cert_der.is_empty());
        assert!(!cert.key_der().is_empty());
        assert!(format!("{cert:?}").contains("<redacted>"));
        server_config(&cert, &TransportOptions::default()).unwrap();
        client_config(&ServerTrust::Pinned(cert.cert_der.clone())).unwrap();
        client_config(&ServerTrust::Roots(vec![cert.cert_der.clone()])).unwrap();
        assert!(matches!(client_config(&ServerTrust::Roots(Vec::new())), Err(Error::NoTrustAnchors)));
    }

    #[test]
    fn dev_certificate_is_generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("tls");
        let (first, generated) = load_or_generate_dev_certificate(&sub).unwrap();
        assert!(generated);
        let (second, generated) = load_or_generate_dev_certificate(&sub).unwrap();
        assert!(!generated);
        assert_eq!(first.cert_der, second.cert_der);
        assert_eq!(first.key_der(), second.key_der());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(sub.join(DEV_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn half_a_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DEV_CERT_FILE), b"x").unwrap();
        let err = load_or_generate_dev_certificate(dir.path()).unwrap_err();
        assert!(matches!(err, Error::IncompleteCertificatePair { .. }));
    }

    #[test]
    fn pem_and_der_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(names()).unwrap();
        let pem_cert = dir.path().join("cert.pem");
        let pem_key = dir.path().join("key.pem");
        std::fs::write(&pem_cert, certified.cert.pem()).unwrap();
        std::fs::write(&pem_key, certified.key_pair.serialize_pem()).unwrap();
        let loaded = load_pem_or_der_certificate(&pem_cert, &pem_key).unwrap();
        assert_eq!(loaded.cert_der, certified.cert.der().to_vec());
        assert_eq!(loaded.key_der(), certified.key_pair.serialize_der());
        server_config(&loaded, &TransportOptions::default()).unwrap();

        let der_cert = dir.path().join("cert.der");
        let der_key = dir.path().join("key.der");
        std::fs::write(&der_cert, certified.cert.der()).unwrap();
        std::fs::write(&der_key, certified.key_pair.serialize_der()).unwrap();
        let loaded = load_pem_or_der_certificate(&der_cert, &der_key).unwrap();
        assert_eq!(loaded.cert_der, certified.cert.der().to_vec());

        std::fs::write(&der_key, b"not a key").unwrap();
        assert!(matches!(load_pem_or_der_certificate(&der_cert, &der_key), Err(Error::InvalidKeyMaterial { .. })));
        std::fs::write(&pem_cert, b"-----BEGIN NOTHING-----\n").unwrap();
        assert!(load_pem_or_der_certificate(&pem_cert, &pem_key).is_err());
    }
}
