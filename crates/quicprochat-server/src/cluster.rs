//! What the nodes of a cluster share beyond the store: an event bus and rate-limit buckets.
//!
//! A node announces on the bus what another node needs to act on for the devices and sessions
//! connected to it: queue entries committed (push them, wake long-polls), sessions revoked
//! (refuse and unbind them), key package pools running low, and ephemeral envelopes (typing
//! indicators), which are never stored. Every event is sent to every node; each acts on its
//! own connections and ignores its own announcements.
//!
//! This module is the bus's codec: one text line per notification (PostgreSQL `NOTIFY`
//! payloads are text below [`MAX_NOTIFY_PAYLOAD`] bytes), split into several notifications when
//! one event names more devices than fit. Pure: no I/O, tested by round trips.

use async_trait::async_trait;

use crate::ratelimit::Rate;
use crate::store::{ChannelId, DeviceId, EnvelopeKind, QueuedEntry, StoreError};

/// Longest notification payload PostgreSQL accepts (it refuses 8000 bytes and more).
pub const MAX_NOTIFY_PAYLOAD: usize = 7999;

/// Length of a node id in an announcement (8 random bytes, hex).
const NODE_ID_HEX: usize = 16;

/// An event one node tells the others.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// New queue entries `(device, seq)` were committed.
    Delivered(Vec<(DeviceId, u64)>),
    /// Sessions were revoked (logout, device revoked, account deleted): refuse them until
    /// `until_ms`. `devices` were deleted with them and get no more pushes.
    SessionsRevoked {
        /// SHA-256 hashes of the session tokens.
        sessions: Vec<[u8; 32]>,
        /// When the sessions would have expired anyway.
        until_ms: u64,
        /// Devices deleted with the sessions.
        devices: Vec<DeviceId>,
    },
    /// A device's key package pool fell below the low-water mark.
    KeyPackagesLow {
        /// The device.
        device: DeviceId,
        /// Packages left in its pool.
        pool_size: u32,
    },
    /// An ephemeral envelope (never stored) for the online ones of `devices`.
    Ephemeral {
        /// Recipient devices.
        devices: Vec<DeviceId>,
        /// The envelope, with seq 0.
        entry: QueuedEntry,
    },
}

/// Why an event cannot travel on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusError {
    /// The event's fixed part alone is longer than one notification may be.
    #[error("cluster event of {len} bytes exceeds the notification limit of {MAX_NOTIFY_PAYLOAD}")]
    TooLarge {
        /// Bytes the smallest notification of this event would need.
        len: usize,
    },
}

/// Why publishing or a shared bucket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The event cannot be encoded for the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The database behind the bus or the buckets failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the nodes of a cluster share besides the [`crate::store::Store`]. `None` in
/// [`crate::state::AppState`] on a single node, whose in-memory push hub, revocation list and
/// rate limiters are then the whole truth.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// Announces `event` to the other nodes (at most once each; lost if a node is not listening).
    async fn publish(&self, event: &ClusterEvent) -> Result<(), ClusterError>;

    /// Takes one token from the cluster-wide bucket `(class, key)` filled at `rate`: `Ok(Ok(()))`
    /// when granted, `Ok(Err(ms))` with the wait until a token is available.
    async fn take_token(
        &self,
        class: &str,
        key: &[u8],
        rate: Rate,
        now_ms: u64,
    ) -> Result<Result<(), u64>, ClusterError>;

    /// Forgets buckets of `class` untouched since `before_ms` (full again by then).
    async fn purge_buckets(&self, class: &str, before_ms: u64) -> Result<u64, ClusterError>;
}

impl ClusterEvent {
    /// The notification payloads announcing this event from node `node` (16 hex digits).
    pub fn encode(&self, node: &str) -> Result<Vec<String>, BusError> {
        let (header, items): (String, Vec<String>) = match self {
            ClusterEvent::Delivered(deliveries) => (
                format!("{node} d"),
                deliveries.iter().map(|(device, seq)| format!("{}:{seq}", hex::encode(device.0))).collect(),
            ),
            ClusterEvent::SessionsRevoked { sessions, until_ms, devices } => (
                format!("{node} r {until_ms}"),
                sessions
                    .iter()
                    .map(|s| format!("s{}", hex::encode(s)))
                    .chain(devices.iter().map(|d| format!("d{}", hex::encode(d.0))))
                    .collect(),
            ),
            ClusterEvent::KeyPackagesLow { device, pool_size } => {
                (format!("{node} k {} {pool_size}", hex::encode(device.0)), Vec::new())
            }
            ClusterEvent::Ephemeral { devices, entry } => (
                format!(
                    "{node} t {} {} {} {} {} {}",
                    hex::encode(entry.channel.0),
                    hex::encode(entry.envelope_id),
                    entry.kind.as_i64(),
                    entry.epoch,
                    entry.created_ms,
                    hex::encode(&entry.payload),
                ),
                devices.iter().map(|d| hex::encode(d.0)).collect(),
            ),
        };
        pack(header, &items)
    }

    /// The event in a notification payload, or `None` for this node's own announcements
    /// (`own`) and anything malformed.
    pub fn parse(payload: &str, own: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let node = parts.next()?;
        if node == own || node.len() != NODE_ID_HEX {
            return None;
        }
        match parts.next()? {
            "d" => {
                let deliveries: Vec<_> = parts
                    .filter_map(|item| {
                        let (device, seq) = item.split_once(':')?;
                        Some((device_id(device)?, seq.parse().ok()?))
                    })
                    .collect();
                (!deliveries.is_empty()).then_some(ClusterEvent::Delivered(deliveries))
            }
            "r" => {
                let until_ms = parts.next()?.parse().ok()?;
                let (mut sessions, mut devices) = (Vec::new(), Vec::new());
                for item in parts {
                    match item.split_at_checked(1)? {
                        ("s", hash) => sessions.push(<[u8; 32]>::try_from(hex::decode(hash).ok()?.as_slice()).ok()?),
                        ("d", device) => devices.push(device_id(device)?),
                        _ => return None,
                    }
                }
                Some(ClusterEvent::SessionsRevoked { sessions, until_ms, devices })
            }
            "k" => {
                let device = device_id(parts.next()?)?;
                let pool_size = parts.next()?.parse().ok()?;
                Some(ClusterEvent::KeyPackagesLow { device, pool_size })
            }
            "t" => {
                let channel = ChannelId(bytes16(parts.next()?)?);
                let envelope_id = bytes16(parts.next()?)?;
                let kind = EnvelopeKind::from_i64(parts.next()?.parse().ok()?)?;
                let epoch = parts.next()?.parse().ok()?;
                let created_ms = parts.next()?.parse().ok()?;
                let payload = hex::decode(parts.next()?).ok()?;
                let devices = parts.map(device_id).collect::<Option<Vec<_>>>()?;
                let entry =
                    QueuedEntry { seq: 0, channel, envelope_id, kind, epoch, payload: payload.into(), created_ms };
                Some(ClusterEvent::Ephemeral { devices, entry })
            }
            _ => None,
        }
    }
}

/// Packs `items` after `header` into as few payloads as fit [`MAX_NOTIFY_PAYLOAD`]; each payload
/// repeats the header, so it is an event of its own.
fn pack(header: String, items: &[String]) -> Result<Vec<String>, BusError> {
    let longest = items.iter().map(|i| i.len() + 1).max().unwrap_or(0);
    if header.len() + longest > MAX_NOTIFY_PAYLOAD {
        return Err(BusError::TooLarge { len: header.len() + longest });
    }
    let mut out = Vec::new();
    let mut current = header.clone();
    let mut filled = false;
    for item in items {
        if current.len() + 1 + item.len() > MAX_NOTIFY_PAYLOAD {
            out.push(std::mem::replace(&mut current, header.clone()));
        }
        current.push(' ');
        current.push_str(item);
        filled = true;
    }
    if filled || items.is_empty() {
        out.push(current);
    }
    Ok(out)
}

fn bytes16(text: &str) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(hex::decode(text).ok()?.as_slice()).ok()
}

fn device_id(text: &str) -> Option<DeviceId> {
    bytes16(text).map(DeviceId)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "0102030405060708";
    const OTHER: &str = "ffffffffffffffff";

    fn round_trip(event: &ClusterEvent) -> Vec<ClusterEvent> {
        let payloads = event.encode(NODE).unwrap();
        assert!(payloads.iter().all(|p| p.len() <= MAX_NOTIFY_PAYLOAD));
        assert!(payloads.iter().all(|p| ClusterEvent::parse(p, NODE).is_none()), "own announcements are ignored");
        payloads.iter().map(|p| ClusterEvent::parse(p, OTHER).unwrap()).collect()
    }

    fn entry(payload: Vec<u8>) -> QueuedEntry {
        QueuedEntry {
            seq: 0,
            channel: ChannelId([3; 16]),
            envelope_id: [4; 16],
            kind: EnvelopeKind::Application,
            epoch: 7,
            payload: payload.into(),
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn every_event_round_trips() {
        let events = [
            ClusterEvent::Delivered(vec![(DeviceId([7; 16]), 42), (DeviceId([8; 16]), 1)]),
            ClusterEvent::SessionsRevoked { sessions: vec![[1; 32], [2; 32]], until_ms: 99, devices: vec![] },
            ClusterEvent::SessionsRevoked { sessions: vec![[1; 32]], until_ms: 5, devices: vec![DeviceId([9; 16])] },
            ClusterEvent::KeyPackagesLow { device: DeviceId([5; 16]), pool_size: 3 },
            ClusterEvent::Ephemeral {
                devices: vec![DeviceId([1; 16]), DeviceId([2; 16])],
                entry: entry(vec![0, 1, 2]),
            },
        ];
        for event in &events {
            assert_eq!(round_trip(event), vec![event.clone()]);
        }
    }

    #[test]
    fn large_events_are_split_into_events_that_fit() {
        let deliveries: Vec<_> = (0..1000u64).map(|i| (DeviceId([i as u8; 16]), i)).collect();
        let parts = round_trip(&ClusterEvent::Delivered(deliveries.clone()));
        assert!(parts.len() > 1);
        let joined: Vec<_> = parts
            .into_iter()
            .flat_map(|p| match p {
                ClusterEvent::Delivered(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joined, deliveries);

        let sessions: Vec<[u8; 32]> = (0..500u32).map(|i| [i as u8; 32]).collect();
        let revoked = ClusterEvent::SessionsRevoked { sessions: sessions.clone(), until_ms: 1, devices: vec![] };
        let parts = round_trip(&revoked);
        let joined: Vec<_> = parts
            .into_iter()
            .flat_map(|p| match p {
                ClusterEvent::SessionsRevoked { sessions, until_ms: 1, .. } => sessions,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joined, sessions);

        let devices: Vec<_> = (0..600u32).map(|i| DeviceId([i as u8; 16])).collect();
        let typing = ClusterEvent::Ephemeral { devices: devices.clone(), entry: entry(vec![9; 512]) };
        let parts = round_trip(&typing);
        assert!(parts.len() > 1);
        assert!(
            parts.iter().all(|p| matches!(p, ClusterEvent::Ephemeral { entry: e, .. } if *e == entry(vec![9; 512])))
        );
    }

    #[test]
    fn an_ephemeral_envelope_too_large_for_a_notification_is_refused() {
        let typing = ClusterEvent::Ephemeral { devices: vec![DeviceId([1; 16])], entry: entry(vec![0; 4000]) };
        assert!(matches!(typing.encode(NODE), Err(BusError::TooLarge { .. })));
    }

    #[test]
    fn malformed_payloads_are_ignored() {
        for junk in [
            "",
            "0102",
            "0102030405060708",
            "0102030405060708 x",
            "0102030405060708 d zz:1",
            "0102030405060708 r notanumber",
            "0102030405060708 r 5 q00",
            "0102030405060708 k 0505 3",
            "0102030405060708 t 00 00 1 1 1 00",
        ] {
            assert_eq!(ClusterEvent::parse(junk, OTHER), None, "{junk:?}");
        }
    }
}
