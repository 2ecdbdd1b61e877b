//! Effects that reach every node: each is applied to this node's connections and announced on
//! the cluster bus (when there is one), and the events other nodes announce are applied here the
//! same way. On a single node only the local half runs.

use std::sync::Arc;

use quicprochat_proto::{event, v1};
use tokio::sync::mpsc;

use crate::cluster::ClusterEvent;
use crate::state::AppState;
use crate::store::{DeviceId, QueuedEntry};

/// Revokes sessions on every node: calls on connections bound to them are refused (and the
/// connection unbound) until `until_ms`; `devices` (deleted with them) get no more pushes.
pub async fn revoke_sessions(state: &AppState, sessions: Vec<[u8; 32]>, until_ms: u64, devices: Vec<DeviceId>) {
    let event = ClusterEvent::SessionsRevoked { sessions, until_ms, devices };
    apply(state, &event);
    announce(state, &event).await;
}

/// Tells `device`, wherever it is connected, that its key package pool is low.
pub async fn key_packages_low(state: &AppState, device: DeviceId, pool_size: u32) {
    let event = ClusterEvent::KeyPackagesLow { device, pool_size };
    apply(state, &event);
    announce(state, &event).await;
}

/// Pushes an ephemeral envelope to whichever of `devices` are online, on any node.
pub async fn ephemeral(state: &AppState, devices: Vec<DeviceId>, entry: QueuedEntry) {
    let event = ClusterEvent::Ephemeral { devices, entry };
    apply(state, &event);
    announce(state, &event).await;
}

/// Announces `event` to the other nodes. A failure is logged and counted, not returned: the
/// effect on this node happened, and the others catch up as after a lost notification.
async fn announce(state: &AppState, event: &ClusterEvent) {
    let Some(cluster) = &state.cluster else { return };
    if let Err(e) = cluster.publish(event).await {
        metrics::counter!("qpc_cluster_events_dropped_total", "reason" => "publish").increment(1);
        tracing::warn!(error = %e, "announcing an event to the other nodes failed");
    }
}

/// This node's part of `event`.
fn apply(state: &AppState, event: &ClusterEvent) {
    match event {
        // Announced by the enqueue transaction itself; another node's entries are read back
        // from the store first (see `run`).
        ClusterEvent::Delivered(_) => {}
        ClusterEvent::SessionsRevoked { sessions, until_ms, devices } => {
            state.revoked.revoke_all(sessions.iter().copied(), *until_ms);
            for device in devices {
                state.hub.forget_device(device);
            }
        }
        ClusterEvent::KeyPackagesLow { device, pool_size } => {
            state.hub.push_event(*device, event::KEY_PACKAGES_LOW, &v1::KeyPackagesLow { pool_size: *pool_size });
        }
        ClusterEvent::Ephemeral { devices, entry } => {
            for device in devices {
                state.hub.deliver(*device, entry);
            }
        }
    }
}

/// Applies the events other nodes announce to this node's connections, until the listener
/// stops. Announced queue entries are read from the store and pushed (and wake long-polls).
pub async fn run(state: Arc<AppState>, mut events: mpsc::Receiver<ClusterEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            ClusterEvent::Delivered(deliveries) => deliver_remote(&state, deliveries).await,
            other => apply(&state, &other),
        }
    }
}

/// Reads the entries another node queued, all in one call (a fan-out to a large group names
/// hundreds of them), and pushes each to its device's connections here.
async fn deliver_remote(state: &AppState, deliveries: Vec<(DeviceId, u64)>) {
    match state.store.queued_at(deliveries, state.clock.now_ms()).await {
        Ok(found) => {
            for (device, entry) in &found {
                state.hub.deliver(*device, entry);
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading deliveries announced by another node failed"),
    }
}
