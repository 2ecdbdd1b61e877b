//! A server under test in its own process: started from this binary (`serve <role>`),
//! optionally pinned to CPUs with `taskset`, its CPU time and memory read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::report::ProcessUsage;

/// `/proc/<pid>/stat` counts CPU time in these ticks (USER_HZ, fixed at 100 by the Linux ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// A running server process; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate, for clients to pin.
    pub cert_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `qpc-bench serve <role>` in a fresh temp dir and waits for `READY <addr>`.
    pub async fn spawn(role: &str, pin: Option<&str>) -> anyhow::Result<Self> {
        Self::spawn_with(role, pin, &[]).await
    }

    /// Like [`Self::spawn`], with extra environment for the server process.
    pub async fn spawn_with(role: &str, pin: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let mut command = match pin {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        command
            .arg("serve")
            .arg(role)
            .arg("--dir")
            .arg(dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting the {role} server"))?;
        let pid = child.id().context("the server process has no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .context("the server did not start within 60 s")??
            .context("the server exited before it was ready")?;
        let addr = ready.strip_prefix("READY ").context("unexpected first line from the server")?.parse()?;
        let cert_der = std::fs::read(dir.path().join(quicprochat_rpc::tls::DEV_CERT_FILE))?;
        Ok(Self { child, pid, addr, cert_der, _dir: dir })
    }

    /// CPU time used so far and memory resident now.
    pub fn usage(&self) -> anyhow::Result<ProcessUsage> {
        usage_of(self.pid)
    }

    /// Stops it: closing stdin asks for a clean shutdown; kill if it does not come.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(std::time::Duration::from_secs(15), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

fn usage_of(pid: u32) -> anyhow::Result<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?) };
    let cpu_secs = (ticks(11)? + ticks(12)?) / TICKS_PER_SEC;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcessUsage { cpu_secs, rss_kib })
}

/// `after - before` for CPU; `after`'s memory.
pub fn delta(before: ProcessUsage, after: ProcessUsage) -> ProcessUsage {
    ProcessUsage { cpu_secs: after.cpu_secs - before.cpu_secs, rss_kib: after.rss_kib }
}

/// Whether `path` looks like a directory we may use (for the CLI's data dir argument).
pub fn ensure_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}
