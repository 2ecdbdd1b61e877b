//! `qpc`: a thin shell over `quicprochat-sdk`. Parses arguments, connects, runs one command,
//! and maps failures to the exit codes of `exit.rs`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod cli;
mod command;
mod commands;
mod complete;
mod demo;
mod execute;
mod exit;
mod ids;
mod local_server;
mod playbook;
mod private_server;
mod progress;
mod repl;
mod style;
mod tui;
mod view;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QPC_LOG")
        .unwrap_or_else(|_| "warn,quicprochat_server=error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // Usage errors exit with 2 here (clap's convention, and ours: see exit.rs).
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qpc: {e:#}");
            exit::Failure::of(&e).code()
        }
    }
}
