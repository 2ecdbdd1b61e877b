//! A private `qpc-server` in a temporary directory, in this process: for `qpc demo` and for
//! playbooks that are given no server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use quicprochat_sdk::{ClientConfig, KdfStrength, Trust};
use quicprochat_server::RunningServer;

/// A server on a free loopback port, its data and the clients' state in one temp dir.
#[derive(Debug)]
pub struct PrivateServer {
    dir: tempfile::TempDir,
    server: Option<RunningServer>,
    addr: SocketAddr,
    cert: Vec<u8>,
}

impl PrivateServer {
    /// Starts the server.
    pub async fn start() -> anyhow::Result<PrivateServer> {
        let dir = tempfile::tempdir().context("creating a temp dir")?;
        let config = quicprochat_server::ServerConfig::new("127.0.0.1:0".parse()?, dir.path().join("server"));
        let server = quicprochat_server::start(config).await.context("starting the private server")?;
        let addr = server.local_addr();
        let cert = server.certificate_der().to_vec();
        Ok(PrivateServer { dir, server: Some(server), addr, cert })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's data dir (database, certificate).
    pub fn server_dir(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    /// The temp dir everything lives in.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A client for account `name`: the certificate pinned, state in the temp dir. The accounts
    /// are throwaway, so the password KDF is the fast one (usable in debug builds too).
    pub fn client_config(&self, name: &str) -> ClientConfig {
        let mut c =
            ClientConfig::new(self.addr, Trust::PinnedCertificate(self.cert.clone()), self.dir.path().join(name));
        c.kdf = KdfStrength::InsecureTestOnly;
        c
    }

    /// Stops the server; the temp dir stays until `self` is dropped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await.context("stopping the private server")?;
        }
        Ok(())
    }
}
