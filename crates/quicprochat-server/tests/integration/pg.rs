//! The machine's PostgreSQL for tests: a fresh schema per test, dropped afterwards.
//!
//! The server is `QPC_TEST_DATABASE_URL`, else `postgres@127.0.0.1:5432/test` (trust auth), else
//! the same as `root`. When none answers, a Postgres test prints that it was skipped and passes
//! unless `CI` is set: then it fails, so CI never goes green without having run them.

use std::time::Duration;

use quicprochat_server::store::{PostgresOptions, PostgresStore};

/// URLs tried in order when `QPC_TEST_DATABASE_URL` is not set.
const DEFAULT_URLS: &[&str] = &["postgres://postgres@127.0.0.1:5432/test", "postgres://root@127.0.0.1:5432/test"];

/// A reachable PostgreSQL and a schema of its own, dropped when this is dropped.
pub struct PgSchema {
    pub url: String,
    pub schema: String,
}

impl PgSchema {
    /// A fresh schema on the test PostgreSQL, or `None` (after saying so) when there is none and
    /// `CI` is not set. `test` names the test in the skip message.
    pub async fn fresh(test: &str) -> Option<Self> {
        let candidates: Vec<String> = match std::env::var("QPC_TEST_DATABASE_URL") {
            Ok(url) => vec![url],
            Err(_) => DEFAULT_URLS.iter().map(|u| u.to_string()).collect(),
        };
        let mut failures = Vec::new();
        for url in candidates {
            match tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, tokio_postgres::NoTls))
                .await
            {
                Ok(Ok((client, connection))) => {
                    drop(client);
                    drop(connection);
                    let mut id = [0u8; 8];
                    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
                    return Some(Self { url, schema: format!("qpc_test_{}", hex::encode(id)) });
                }
                Ok(Err(e)) => failures.push(format!("{url}: {e}")),
                Err(_) => failures.push(format!("{url}: timed out")),
            }
        }
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but no PostgreSQL is reachable for {test}: {}", failures.join("; "));
        }
        eprintln!("SKIPPED {test}: no PostgreSQL reachable ({}); set CI=1 to make this an error", failures.join("; "));
        None
    }

    /// Store options for this schema.
    pub fn options(&self) -> PostgresOptions {
        let mut options = PostgresOptions::new(self.url.clone());
        options.schema = Some(self.schema.clone());
        options.max_connections = 8;
        options
    }

    /// A store on this schema (migrated).
    pub async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.options()).await.unwrap()
    }

    /// A plain client whose search path is this schema, for checks on what is stored.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(&format!("SET search_path TO {}", self.schema)).await.unwrap();
        client
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop may run inside a runtime (or while unwinding): use a thread with its own.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test schema {}", self.schema);
        }
    }
}
