//! A real server in the test process and the real `qpc` binary against it: one-shot runs and
//! REPL sessions driven through stdin, awaited on their output with timeouts.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a REPL line is awaited before the test fails.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `qpc` binary with a private HOME and no inherited qpc settings.
pub fn qpc_command(home: &Path, password: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qpc"));
    cmd.env("QPC_PASSWORD", password)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("NO_COLOR", "1")
        .env_remove("QPC_SERVER")
        .env_remove("QPC_USERNAME")
        .env_remove("QPC_STATE_DIR")
        .env_remove("QPC_CA_CERT")
        .env_remove("QPC_EXPORT_PASSWORD");
    cmd
}

/// Runs `qpc` to completion.
pub fn qpc(args: &[&str], password: &str, home: &Path) -> Output {
    qpc_command(home, password).args(args).output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A dev server on a free port, on a runtime of its own, with a HOME for the clients.
pub struct TestServer {
    runtime: tokio::runtime::Runtime,
    server: Option<quicprochat_server::RunningServer>,
    _dir: tempfile::TempDir,
    pub home: tempfile::TempDir,
    pub addr: String,
    pub cert: PathBuf,
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let config = quicprochat_server::ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path());
        let server = runtime.block_on(quicprochat_server::start(config)).unwrap();
        let addr = server.local_addr().to_string();
        let cert = dir.path().join(quicprochat_server::files::DEV_CERT);
        TestServer { runtime, server: Some(server), _dir: dir, home: tempfile::tempdir().unwrap(), addr, cert }
    }

    /// `--server … --ca-cert … --username user` followed by `rest`.
    pub fn args(&self, user: &str, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> =
            vec!["--server".into(), self.addr.clone(), "--ca-cert".into(), self.cert.display().to_string()];
        args.extend(["--username".into(), user.into()]);
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Runs a one-shot command as `user`.
    pub fn run(&self, user: &str, password: &str, rest: &[&str]) -> Output {
        let args = self.args(user, rest);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        qpc(&refs, password, self.home.path())
    }

    /// Runs a one-shot command as `user` and fails the test unless it succeeds; its stdout.
    pub fn ok(&self, user: &str, password: &str, rest: &[&str]) -> String {
        let out = self.run(user, password, rest);
        assert!(out.status.success(), "qpc {rest:?} as {user} failed: {}\n{}", stdout(&out), stderr(&out));
        stdout(&out)
    }

    /// Starts a REPL as `user` and waits until it is logged in.
    pub fn repl(&self, user: &str, password: &str) -> Repl {
        self.repl_with_env(user, password, &[])
    }

    /// Starts a REPL as `user` with these extra environment variables.
    pub fn repl_with_env(&self, user: &str, password: &str, env: &[(&str, &str)]) -> Repl {
        let mut child = qpc_command(self.home.path(), password)
            .envs(env.iter().copied())
            .args(self.args(user, &["repl"]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (pipe, prefix) in [(Box::new(out) as Box<dyn std::io::Read + Send>, ""), (Box::new(err), "[stderr] ")] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        let mut repl = Repl {
            name: user.to_owned(),
            child,
            stdin: Some(stdin),
            lines,
            backlog: Vec::new(),
            transcript: Vec::new(),
        };
        repl.expect(&format!("Logged in as {user}"));
        repl
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}

/// A running REPL.
pub struct Repl {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Lines not yet matched by an `expect`, in order.
    backlog: Vec<String>,
    transcript: Vec<String>,
}

impl Repl {
    /// Types a line.
    pub fn send(&mut self, line: &str) {
        self.transcript.push(format!("> {line}"));
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for an output line containing `needle` (earlier unmatched lines count too) and
    /// returns it.
    pub fn expect(&mut self, needle: &str) -> String {
        if let Some(i) = self.backlog.iter().position(|l| l.contains(needle)) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + EXPECT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                    self.backlog.push(line);
                }
                Err(_) => panic!(
                    "{}: no line containing {needle:?} within {EXPECT_TIMEOUT:?}; transcript:\n{}",
                    self.name,
                    self.transcript.join("\n")
                ),
            }
        }
    }

    /// Types a line and waits for `needle`.
    pub fn run(&mut self, line: &str, needle: &str) -> String {
        self.send(line);
        self.expect(needle)
    }

    /// Closes stdin and waits for the process to end.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXPECT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; transcript:\n{}",
                self.name,
                self.transcript.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/quit`, and the exit status.
    pub fn quit(mut self) -> ExitStatus {
        self.send("/quit");
        self.finish()
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The short id a line starts with (`a1b2c3 [alice] hello`) or ends a `sent … to …` with.
pub fn id_in(line: &str) -> String {
    let line = line.trim_start_matches("[stderr] ");
    let word = match line.strip_prefix("sent ") {
        Some(rest) => rest.split_whitespace().next(),
        None => line.split_whitespace().next(),
    };
    let id = word.unwrap().to_owned();
    assert!(id.len() >= 6 && id.bytes().all(|b| b.is_ascii_hexdigit()), "no message id in {line:?}");
    id
}
