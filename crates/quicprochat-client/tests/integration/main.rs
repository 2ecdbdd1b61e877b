//! `qpc` as a person or a script uses it: the real binary against a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod export;
mod harness;
mod oneshot;
mod playbook;
mod repl;
