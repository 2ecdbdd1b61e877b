//! Zero-config: find the local dev server on 127.0.0.1:7000, or start one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use quicprochat_sdk::{ClientConfig, QpcClient, Trust};

/// Where the zero-config server listens.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7000";

/// `$XDG_DATA_HOME/quicprochat` (or `~/.local/share/quicprochat`).
pub fn data_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("quicprochat");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/quicprochat")
}

/// The zero-config server's data dir.
pub fn server_dir() -> PathBuf {
    data_root().join("server")
}

/// Connects to the local dev server, starting it first if nothing answers.
pub async fn connect_or_start(mut config: ClientConfig) -> anyhow::Result<QpcClient> {
    let dir = server_dir();
    let cert_path = dir.join(quicprochat_server::files::DEV_CERT);
    if let Ok(cert) = std::fs::read(&cert_path) {
        config.trust = Trust::PinnedCertificate(cert);
        if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), QpcClient::connect(config.clone())).await {
            return Ok(client);
        }
    }
    eprintln!("qpc: no server answers on {}; starting a local dev server (data in {})", config.server, dir.display());
    spawn_server(config.server, &dir)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(cert) = std::fs::read(&cert_path) {
            config.trust = Trust::PinnedCertificate(cert);
            if let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_secs(2), QpcClient::connect(config.clone())).await
            {
                return Ok(client);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(crate::exit::NetworkError(format!(
                "the local server did not come up on {} (see {})",
                config.server,
                dir.join("server.log").display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `qpc-server` (found next to this executable) in the background, detached from us.
fn spawn_server(addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("locating qpc")?;
    let server = exe.with_file_name(format!("qpc-server{}", std::env::consts::EXE_SUFFIX));
    if !server.exists() {
        bail!("qpc-server not found next to qpc ({}); build it with `cargo build --bin qpc-server`", server.display());
    }
    let log = std::fs::File::create(dir.join("server.log")).context("creating server.log")?;
    std::process::Command::new(server)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting qpc-server")?;
    Ok(())
}
