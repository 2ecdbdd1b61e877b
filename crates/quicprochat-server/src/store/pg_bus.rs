//! The cluster side of [`PostgresStore`]: the bus on `LISTEN`/`NOTIFY` and the rate-limit
//! buckets shared by the nodes (see [`crate::cluster`] and `docs/cluster.md`).

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use super::{PostgresStore, StoreError};
use crate::cluster::{Cluster, ClusterError, ClusterEvent};
use crate::ratelimit::Rate;

/// Events announced by other nodes, buffered for the listener's consumer.
const EVENT_BUFFER: usize = 4096;

/// One token, in the thousandths the buckets count in.
const TOKEN: i64 = 1000;

impl PostgresStore {
    /// Listens, on a dedicated connection, for the events other nodes on this database announce
    /// (every enqueue announces its queue entries when it commits; revocations, low key package
    /// pools and ephemeral envelopes right after they happen), until `shutdown`. A lost
    /// connection is re-established with backoff; what was announced meanwhile is not replayed
    /// (clients catch up with `Peek`, long-polls time out, bound sessions are re-checked against
    /// the store by [`crate::middleware::SessionCheck`]). When the consumer lags by more than the
    /// buffer, events are dropped the same way and counted.
    pub fn listen_cluster(&self, shutdown: CancellationToken) -> (mpsc::Receiver<ClusterEvent>, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let (config, own, channel) = (self.config.clone(), hex::encode(self.node), self.channel.clone());
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match listen(&config, &own, &channel, &tx, &shutdown).await {
                    Ok(Listening::Stop) => return,
                    Ok(Listening::Lost) => tracing::warn!("cluster notifications: connection closed; reconnecting"),
                    Err(e) => tracing::warn!(error = %e, "cluster notifications: connection failed; reconnecting"),
                }
                failures = (failures + 1).min(6);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100 << failures)) => {}
                }
            }
        });
        (rx, task)
    }
}

enum Listening {
    /// Shut down, or nobody consumes any more.
    Stop,
    /// The connection ended.
    Lost,
}

async fn listen(
    config: &tokio_postgres::Config,
    own: &str,
    channel: &str,
    out: &mpsc::Sender<ClusterEvent>,
    shutdown: &CancellationToken,
) -> Result<Listening, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let statement = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
    let subscribe = client.batch_execute(&statement);
    tokio::pin!(subscribe);
    let mut subscribed = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(Listening::Stop),
            done = &mut subscribe, if !subscribed => {
                done?;
                subscribed = true;
                tracing::debug!("listening for other nodes' events");
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    let Some(event) = ClusterEvent::parse(note.payload(), own) else { continue };
                    match out.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            metrics::counter!("qpc_cluster_events_dropped_total", "reason" => "lagging").increment(1);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Listening::Stop),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(Listening::Lost),
            },
        }
    }
}

#[async_trait]
impl Cluster for PostgresStore {
    async fn publish(&self, event: &ClusterEvent) -> Result<(), ClusterError> {
        let payloads = event.encode(&hex::encode(self.node))?;
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT pg_notify($1, $2)").await.map_err(StoreError::from)?;
        for text in payloads {
            client.execute(&statement, &[&self.channel, &text]).await.map_err(StoreError::from)?;
        }
        Ok(())
    }

    async fn take_token(
        &self,
        class: &str,
        key: &[u8],
        rate: Rate,
        now_ms: u64,
    ) -> Result<Result<(), u64>, ClusterError> {
        let capacity = i64::from(rate.burst) * TOKEN;
        let per_minute = i64::from(rate.per_minute.max(1));
        // Refill is capped at what fills an empty bucket, so the product cannot overflow.
        let fill_ms = (capacity * 60 + per_minute - 1) / per_minute + 1;
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let fresh_granted = capacity >= TOKEN;
        let fresh_tokens = if fresh_granted { capacity - TOKEN } else { capacity };
        // One statement, atomic under the row lock: refill by the time since the last take
        // (never backwards when node clocks differ), then take a token if there is one.
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO rate_buckets AS b (class, key, milli_tokens, updated_ms, granted) \
                 VALUES ($1, $2, $6, $4, $7) \
                 ON CONFLICT (class, key) DO UPDATE SET \
                 milli_tokens = CASE \
                   WHEN LEAST($3, b.milli_tokens + LEAST(GREATEST($4 - b.updated_ms, 0), $8) * $5 / 60) >= 1000 \
                   THEN LEAST($3, b.milli_tokens + LEAST(GREATEST($4 - b.updated_ms, 0), $8) * $5 / 60) - 1000 \
                   ELSE LEAST($3, b.milli_tokens + LEAST(GREATEST($4 - b.updated_ms, 0), $8) * $5 / 60) END, \
                 granted = LEAST($3, b.milli_tokens + LEAST(GREATEST($4 - b.updated_ms, 0), $8) * $5 / 60) >= 1000, \
                 updated_ms = GREATEST(b.updated_ms, $4) \
                 RETURNING milli_tokens, granted",
            )
            .await
            .map_err(StoreError::from)?;
        let row = client
            .query_one(
                &statement,
                &[&class, &key, &capacity, &now, &per_minute, &fresh_tokens, &fresh_granted, &fill_ms],
            )
            .await
            .map_err(StoreError::from)?;
        let (left, granted): (i64, bool) =
            (row.try_get(0).map_err(StoreError::from)?, row.try_get(1).map_err(StoreError::from)?);
        if granted {
            return Ok(Ok(()));
        }
        let missing = u64::try_from(TOKEN - left.clamp(0, TOKEN)).unwrap_or(0);
        Ok(Err((missing * 60).div_ceil(u64::from(rate.per_minute.max(1)))))
    }

    async fn purge_buckets(&self, class: &str, before_ms: u64) -> Result<u64, ClusterError> {
        let client = self.client().await?;
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        Ok(client
            .execute("DELETE FROM rate_buckets WHERE class = $1 AND updated_ms < $2", &[&class, &before])
            .await
            .map_err(StoreError::from)?)
    }
}
