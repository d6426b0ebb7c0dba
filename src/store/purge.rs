//! Deleting what is no longer needed: verifications past their retention,
//! and parked statuses that no send ever claimed.
//!
//! sled has no expiry of its own, so each record that must go is indexed
//! by the time it must go, and a background thread walks the index.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use super::{decode, time_key, Parked, Store, StoreError};
use crate::clock::{SharedClock, UnixTime};
use crate::domain::Verification;

/// Keeps the sweeping thread alive; dropping it stops the thread.
pub struct Sweeper {
    _stop: mpsc::Sender<()>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub verifications: usize,
    pub parked: usize,
}

impl Store {
    /// Deletes every verification whose purge time is before `now`, with
    /// its message index, and every parked status first seen before
    /// `parked_before`.
    pub fn purge(&self, now: UnixTime, parked_before: UnixTime) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        for item in self.purge_at.range(..time_key(now, "")) {
            let (key, _) = item?;
            let id = &key[8..];
            if let Some(bytes) = self.verifications.get(id)? {
                let v: Verification = decode(&bytes)?;
                if let Some(message_id) = &v.delivery.message_id {
                    self.messages.remove(message_id.as_bytes())?;
                }
                self.verifications.remove(id)?;
                purged.verifications += 1;
            }
            self.purge_at.remove(key)?;
        }
        for item in self.parked_by_time.range(..time_key(parked_before, "")) {
            let (key, _) = item?;
            let message_id = &key[8..];
            let stale = match self.parked.get(message_id)? {
                Some(bytes) => decode::<Parked>(&bytes)?.first_seen < parked_before,
                None => false,
            };
            if stale {
                self.parked.remove(message_id)?;
                purged.parked += 1;
            }
            self.parked_by_time.remove(key)?;
        }
        Ok(purged)
    }

    /// Purges every `interval` until the returned guard is dropped.
    /// Parked statuses are kept for `parked_for` seconds.
    pub fn start_sweeper(
        &self,
        clock: SharedClock,
        interval: Duration,
        parked_for: i64,
    ) -> std::io::Result<Sweeper> {
        let (stop, stopped) = mpsc::channel::<()>();
        let store = self.clone();
        thread::Builder::new().name("waverify-sweeper".into()).spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let now = clock.now();
            match store.purge(now, now - parked_for) {
                Ok(p) if p == Purged::default() => {}
                Ok(p) => {
                    tracing::info!(verifications = p.verifications, parked = p.parked, "purged")
                }
                Err(error) => tracing::warn!(%error, "purge failed; retrying later"),
            }
        })?;
        Ok(Sweeper { _stop: stop })
    }
}
