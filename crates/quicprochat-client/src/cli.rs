//! Command-line surface of `qpc`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// qpc — the quicprochat client: end-to-end encrypted messaging over QUIC.
#[derive(Debug, Parser)]
#[command(name = "qpc", version, about)]
pub struct Cli {
    /// Server address HOST:PORT. Without it, qpc uses 127.0.0.1:7000 and starts a local
    /// dev server there if nothing answers.
    #[arg(long, env = "QPC_SERVER", global = true)]
    pub server: Option<String>,
    /// Certificate to trust (DER or PEM): a CA, or the server's own self-signed certificate.
    #[arg(long, env = "QPC_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Account state directory (default: $XDG_DATA_HOME/quicprochat/<username>).
    #[arg(long, env = "QPC_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Username.
    #[arg(long, short = 'u', env = "QPC_USERNAME", global = true)]
    pub username: Option<String>,
    /// Password (prefer QPC_PASSWORD or the prompt: command lines are visible to other users).
    #[arg(long, env = "QPC_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// Print machine-readable JSON (for `recv`, `whoami`, `list`, `export` and `export verify`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the server to answer when connecting.
    #[arg(long, env = "QPC_CONNECT_TIMEOUT", global = true, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// What to do (default: the interactive REPL).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-shot commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account on the server.
    Register,
    /// Log in (and fetch waiting messages).
    Login,
    /// Send a message to a user (creating the DM first if needed) or to a group.
    Send {
        /// Recipient username.
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        to: Option<String>,
        /// Group name (as created or listed on this device).
        #[arg(long)]
        group: Option<String>,
        /// The message.
        text: String,
    },
    /// Print messages that arrive: waits up to SECS for the first one.
    Recv {
        /// Seconds to wait for the first message.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Open (or create) the direct conversation with USER.
    Dm {
        /// The other user.
        user: String,
    },
    /// Create, grow, shrink or leave a group.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Who is logged in (username, user id, device id).
    Whoami,
    /// Print the safety number to compare with USER out of band.
    Verify {
        /// The other user.
        user: String,
    },
    /// List this device's conversations.
    List,
    /// Export stored messages to an encrypted transcript archive, or verify one (`export verify`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Export {
        #[command(subcommand)]
        action: Option<ExportAction>,
        /// Only this conversation: @user for a DM, #group (or its name) for a group. Default: all.
        #[arg(long, value_name = "@USER|#GROUP")]
        conversation: Option<String>,
        /// The archive file to write (replaced if it exists).
        #[arg(long, value_name = "FILE", required = true)]
        out: Option<PathBuf>,
    },
    /// Interactive session (the default).
    Repl,
    /// A self-contained tour on a private server in a temporary directory.
    Demo,
    /// Full-screen terminal interface (sidebar, messages, input bar; keyboard only).
    Tui,
    /// Scripted conversations between several users, with assertions.
    Playbook {
        #[command(subcommand)]
        action: PlaybookAction,
    },
}

/// `qpc playbook …`
#[derive(Debug, Subcommand)]
pub enum PlaybookAction {
    /// Run the steps of FILE (YAML); without --server, on a private server in a temp dir.
    Run {
        /// The playbook.
        file: PathBuf,
        /// Use the zero-config local server (127.0.0.1:7000) instead of a private one.
        #[arg(long, conflicts_with = "server")]
        zero_config: bool,
    },
}

/// `qpc export …`
#[derive(Debug, Subcommand)]
pub enum ExportAction {
    /// Decrypt FILE and check its chain of records; needs only the archive's password.
    Verify {
        /// The archive.
        file: PathBuf,
    },
}

/// `qpc group …`
#[derive(Debug, Subcommand)]
pub enum GroupAction {
    /// Create group NAME with these members.
    Create {
        /// Local name of the group.
        name: String,
        /// Usernames to add.
        users: Vec<String>,
    },
    /// Add USER to group NAME.
    Invite {
        /// The group.
        name: String,
        /// Who to add.
        user: String,
    },
    /// Remove USER from group NAME.
    Remove {
        /// The group.
        name: String,
        /// Who to remove.
        user: String,
    },
    /// Leave group NAME.
    Leave {
        /// The group.
        name: String,
    },
}

/// Parses `HOST:PORT`, resolving names.
pub fn resolve_server(s: &str) -> anyhow::Result<(SocketAddr, String)> {
    use std::net::ToSocketAddrs;
    let addr = s
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve server {s}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("server {s} resolves to no address"))?;
    let host = s.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(s).to_owned();
    Ok((addr, host))
}
