//! Server integration tests: a real `qpc-server` on 127.0.0.1:0, spoken to over QUIC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod at_rest;
mod binary;
mod blobs;
mod cluster;
mod cluster_processes;
mod coverage_auth;
mod coverage_delivery;
mod coverage_directory;
mod coverage_keys;
mod delivery;
mod directory;
mod harness;
mod limits;
mod pg;
mod postgres_server;
mod protocol;
mod store_conformance;
