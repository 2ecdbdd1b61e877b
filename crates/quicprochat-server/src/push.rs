//! Online devices: push handles of subscribed connections and long-poll waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quicprochat_proto::event;
use quicprochat_proto::v1;
use quicprochat_rpc::PushSender;
use tokio::sync::Notify;

use crate::store::{DeviceId, QueuedEntry};

/// Envelopes up to this size travel inline in the push; larger ones only announce their seq.
pub const INLINE_PUSH_LIMIT: usize = 64 * 1024;

/// Routes fresh queue entries to the connections that wait for them.
#[derive(Default)]
pub struct PushHub {
    subscribers: Mutex<HashMap<DeviceId, Vec<PushSender>>>,
    waiters: Mutex<HashMap<DeviceId, Arc<Notify>>>,
}

impl std::fmt::Debug for PushHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushHub").finish_non_exhaustive()
    }
}

impl PushHub {
    /// Pushes this device's new entries to its subscribed connections from now on.
    pub fn subscribe(&self, device: DeviceId, sender: PushSender) {
        if let Ok(mut subs) = self.subscribers.lock() {
            let list = subs.entry(device).or_default();
            list.retain(|s| !s.is_closed() && s.connection_id() != sender.connection_id());
            list.push(sender);
        }
    }

    /// Forgets every subscription of a closed connection.
    pub fn connection_closed(&self, connection_id: u64) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.retain(|_, list| {
                list.retain(|s| s.connection_id() != connection_id && !s.is_closed());
                !list.is_empty()
            });
        }
    }

    /// Stops pushing to a device (revoked or deleted).
    pub fn forget_device(&self, device: &DeviceId) {
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.remove(device);
        }
        if let Ok(mut w) = self.waiters.lock()
            && let Some(n) = w.remove(device)
        {
            n.notify_waiters();
        }
    }

    /// The notifier long-polls of `device` wait on.
    pub fn waiter(&self, device: DeviceId) -> Arc<Notify> {
        match self.waiters.lock() {
            Ok(mut w) => Arc::clone(w.entry(device).or_insert_with(|| Arc::new(Notify::new()))),
            Err(_) => Arc::new(Notify::new()),
        }
    }

    /// Whether any live connection is subscribed for `device`.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.subscribers
            .lock()
            .map(|s| s.get(device).is_some_and(|l| l.iter().any(|x| !x.is_closed())))
            .unwrap_or(false)
    }

    /// Announces a new queue entry: wakes long-polls and pushes a `MessageNotification`.
    pub fn deliver(&self, device: DeviceId, entry: &QueuedEntry) {
        if let Ok(w) = self.waiters.lock()
            && let Some(n) = w.get(&device)
        {
            n.notify_waiters();
        }
        let inline = entry.payload.len() <= INLINE_PUSH_LIMIT;
        let note = v1::MessageNotification {
            seq: entry.seq,
            channel_id: entry.channel.0.to_vec().into(),
            envelope: inline.then(|| crate::wire::queued_to_proto(entry)),
        };
        self.push_to(device, event::MESSAGE_NOTIFICATION, &note);
    }

    /// Pushes any event to the device's subscribed connections (dropped if none is online).
    pub fn push_event<M: quicprochat_proto::Message>(&self, device: DeviceId, event_type: u16, message: &M) {
        self.push_to(device, event_type, message);
    }

    fn push_to<M: quicprochat_proto::Message>(&self, device: DeviceId, event_type: u16, note: &M) {
        let Ok(mut subs) = self.subscribers.lock() else { return };
        if let Some(list) = subs.get_mut(&device) {
            list.retain(|s| {
                match s.try_push(event_type, note) {
                    Ok(()) => true,
                    // A full queue drops this notification only: the entry is durable and the
                    // client catches up with Peek. A closed connection is forgotten.
                    Err(_) => !s.is_closed(),
                }
            });
        }
    }
}
