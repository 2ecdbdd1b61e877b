//! Disappearing messages on this device: messages whose timer ran out are deleted when the
//! history is read and by a background timer that wakes for the next expiry.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::client::{Inner, QpcClient};
use crate::error::Result;
use crate::store::now_ms;
use crate::{ClientEvent, SdkError};

/// Longest the timer sleeps without looking (a safety net; it is woken when a message with a
/// timer is stored).
const IDLE_CHECK: Duration = Duration::from_secs(60);

impl QpcClient {
    /// Deletes every stored message whose timer ran out, tells subscribers, and returns when the
    /// next one is due (Unix ms).
    pub(crate) fn purge_expired(&self) -> Result<Option<u64>> {
        let account = self.account()?;
        let (gone, next) = {
            let mut local = account.lock()?;
            let gone = local.store.purge_expired(now_ms())?;
            (gone, local.store.next_expiry()?)
        };
        for (conversation, message) in gone {
            let _ = self.inner.events.send(ClientEvent::MessageExpired { conversation, message });
        }
        Ok(next)
    }

    /// Starts the background timer. It holds only a weak reference, so dropping the client
    /// still ends it (and the task set aborts it).
    pub(crate) fn spawn_expiry_timer(&self) -> Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wakeup = Arc::clone(&self.inner.expiry_wakeup);
        let mut tasks = self.inner.tasks.lock().map_err(|_| SdkError::Poisoned)?;
        tasks.spawn(async move {
            loop {
                let next = {
                    let Some(inner) = weak.upgrade() else { return };
                    match (QpcClient { inner }).purge_expired() {
                        Ok(next) => next,
                        Err(e) => {
                            tracing::warn!(error = %e, "deleting expired messages failed");
                            None
                        }
                    }
                };
                let wait = next.map_or(IDLE_CHECK, |at| Duration::from_millis(at.saturating_sub(now_ms())));
                // A wake-up sent while purging is kept as a permit, so none is lost.
                tokio::select! {
                    () = tokio::time::sleep(wait.min(IDLE_CHECK)) => {}
                    () = wakeup.notified() => {}
                }
            }
        });
        Ok(())
    }
}
