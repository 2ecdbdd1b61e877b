//! End-to-end tests of quicprochat-rpc: a real server and real clients in one process.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod harness;
mod push;
mod rpc;
mod shutdown;
mod tls;
