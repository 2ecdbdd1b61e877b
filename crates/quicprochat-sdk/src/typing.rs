//! Typing indicators on this device: who is typing where, and when that stops counting.
//!
//! A member's client sends "started" while its user types (again every few seconds, see
//! [`crate::ConversationHandle::typing`]) and "stopped" when they stop. Indicators are
//! ephemeral, so a "stopped" can be lost (the sender went offline, the push was missed): the
//! tracker ends an indicator by itself after [`TYPING_TIMEOUT`] without a refresh, and when
//! the typist's message arrives. Subscribers see one `Typing { started: true }` when someone
//! starts and one `Typing { started: false }` when they stop, however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::client::{Inner, QpcClient};
use crate::error::Result;
use crate::{ClientEvent, ConversationId, SdkError};

/// How long a typing indicator lasts without a refresh.
pub const TYPING_TIMEOUT: Duration = Duration::from_secs(6);

/// Who is typing, and until when. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub(crate) struct TypingTracker {
    active: HashMap<(ConversationId, String), Instant>,
}

impl TypingTracker {
    /// Passes an inbound event through; returns what subscribers should see instead: nothing
    /// for a refresh of an indicator already shown, a stop before the typist's own message.
    pub fn observe(&mut self, event: ClientEvent, now: Instant) -> Vec<ClientEvent> {
        match event {
            ClientEvent::Typing { conversation, username, started: true } => {
                let fresh = self.active.insert((conversation, username.clone()), now + TYPING_TIMEOUT).is_none();
                if fresh { vec![ClientEvent::Typing { conversation, username, started: true }] } else { Vec::new() }
            }
            ClientEvent::Typing { conversation, username, started: false } => {
                match self.active.remove(&(conversation, username.clone())) {
                    Some(_) => vec![ClientEvent::Typing { conversation, username, started: false }],
                    None => Vec::new(),
                }
            }
            ClientEvent::MessageReceived { conversation, message } => {
                let mut out = Vec::with_capacity(2);
                if self.active.remove(&(conversation, message.sender.clone())).is_some() {
                    out.push(ClientEvent::Typing { conversation, username: message.sender.clone(), started: false });
                }
                out.push(ClientEvent::MessageReceived { conversation, message });
                out
            }
            other => vec![other],
        }
    }

    /// Ends the indicators whose time ran out by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<ClientEvent> {
        let mut ended: Vec<(ConversationId, String)> =
            self.active.iter().filter(|(_, until)| **until <= now).map(|(key, _)| key.clone()).collect();
        ended.sort();
        ended
            .into_iter()
            .map(|key| {
                self.active.remove(&key);
                ClientEvent::Typing { conversation: key.0, username: key.1, started: false }
            })
            .collect()
    }

    /// When the next indicator runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.values().min().copied()
    }
}

impl QpcClient {
    /// Sends an inbound event to subscribers, through the typing tracker.
    pub(crate) fn emit_inbound(&self, event: ClientEvent) {
        let started = matches!(event, ClientEvent::Typing { started: true, .. });
        let events = match self.inner.typing.lock() {
            Ok(mut tracker) => tracker.observe(event, Instant::now()),
            Err(_) => vec![event],
        };
        for event in events {
            let _ = self.inner.events.send(event);
        }
        if started {
            self.inner.typing_wakeup.notify_one();
        }
    }

    /// Starts the task that ends typing indicators nobody refreshed. It holds only a weak
    /// reference, so dropping the client ends it (and the task set aborts it).
    pub(crate) fn spawn_typing_timer(&self) -> Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wakeup = Arc::clone(&self.inner.typing_wakeup);
        let mut tasks = self.inner.tasks.lock().map_err(|_| SdkError::Poisoned)?;
        tasks.spawn(async move {
            loop {
                let next = {
                    let Some(inner) = weak.upgrade() else { return };
                    let (ended, next) = match inner.typing.lock() {
                        Ok(mut tracker) => (tracker.expire(Instant::now()), tracker.next_deadline()),
                        Err(_) => return,
                    };
                    for event in ended {
                        let _ = inner.events.send(event);
                    }
                    next
                };
                // A wake-up sent meanwhile is kept as a permit, so none is lost.
                match next {
                    Some(at) => tokio::select! {
                        () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                        () = wakeup.notified() => {}
                    },
                    None => wakeup.notified().await,
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: ConversationId = ConversationId([1; 16]);

    fn typing(started: bool) -> ClientEvent {
        ClientEvent::Typing { conversation: HERE, username: "bob".into(), started }
    }

    fn started(events: &[ClientEvent]) -> Vec<bool> {
        events
            .iter()
            .map(|e| match e {
                ClientEvent::Typing { started, .. } => *started,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_start_is_shown_once_and_ends_by_itself() {
        let t0 = Instant::now();
        let mut tracker = TypingTracker::default();
        assert_eq!(started(&tracker.observe(typing(true), t0)), [true]);
        // A refresh is not shown again, but pushes the end out.
        assert!(tracker.observe(typing(true), t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(tracker.next_deadline(), Some(t0 + Duration::from_secs(4) + TYPING_TIMEOUT));
        assert!(tracker.expire(t0 + TYPING_TIMEOUT).is_empty());
        assert_eq!(started(&tracker.expire(t0 + Duration::from_secs(4) + TYPING_TIMEOUT)), [false]);
        assert_eq!(tracker.next_deadline(), None);
        // A stop for an indicator that already ended is not shown twice.
        assert!(tracker.observe(typing(false), t0 + Duration::from_secs(11)).is_empty());
    }

    #[test]
    fn an_explicit_stop_ends_it_once() {
        let t0 = Instant::now();
        let mut tracker = TypingTracker::default();
        tracker.observe(typing(true), t0);
        assert_eq!(started(&tracker.observe(typing(false), t0)), [false]);
        assert!(tracker.expire(t0 + TYPING_TIMEOUT).is_empty());
    }
}
