//! `qpc`: a thin shell over `quicprochat-sdk`. Parses arguments, connects, runs one command.

mod cli;
mod commands;
mod demo;
mod local_server;
mod repl;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QPC_LOG")
        .unwrap_or_else(|_| "warn,quicprochat_server=error".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qpc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
