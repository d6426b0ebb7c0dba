//! Forgetting on time: a verification's sealed number and code once it is
//! over, the whole verification once its retention is over, parked
//! statuses that no send claimed, and counters whose window has ended.
//!
//! sled has no expiry of its own, so each record that must go is indexed
//! by the time it must go, and a background thread walks the indexes.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use super::{decode, time_key, Parked, SledStore, StoreError};
use crate::clock::{SharedClock, UnixTime};
use crate::domain::{Verification, VerificationId};

/// Keeps the sweeping thread alive; dropping it stops the thread.
pub struct Sweeper {
    _stop: mpsc::Sender<()>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub wiped: usize,
    pub verifications: usize,
    pub parked: usize,
    pub counters: usize,
}

fn id_of(key: &[u8]) -> Option<VerificationId> {
    std::str::from_utf8(key.get(8..)?).ok().and_then(VerificationId::parse)
}

impl SledStore {
    /// Does everything that is due at `now`; parked statuses first seen
    /// before `parked_before` go too.
    pub fn purge(&self, now: UnixTime, parked_before: UnixTime) -> Result<Purged, StoreError> {
        let mut purged = Purged::default();
        for item in self.wipe_at.range(..time_key(now + 1, b"")) {
            let (key, _) = item?;
            if let Some(id) = id_of(&key) {
                let wiped = self.update(&id, |v| v.wipe_if_over(now))?;
                purged.wiped += usize::from(wiped.is_some());
            }
            self.wipe_at.remove(key)?;
        }
        for item in self.purge_at.range(..time_key(now, b"")) {
            let (key, _) = item?;
            if let Some(id) = id_of(&key) {
                purged.verifications += usize::from(self.forget(&id)?);
            }
            self.purge_at.remove(key)?;
        }
        for item in self.parked_by_time.range(..time_key(parked_before, b"")) {
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
        purged.counters = self.purge_counters(now)?;
        self.purge_not_on_whatsapp(now)?;
        Ok(purged)
    }

    /// Deletes a verification and everything that points to it; returns
    /// whether there was one.
    fn forget(&self, id: &VerificationId) -> Result<bool, StoreError> {
        let mut locked = self.verifications.lock(id);
        let Some(v) = locked.get()? else { return Ok(false) };
        for message_id in v.message_ids() {
            self.messages.remove(message_id)?;
        }
        for key in &v.idempotency_keys {
            self.idempotency.remove(key.as_bytes())?;
        }
        let _ = self.active.compare_and_swap(
            Verification::active_key(&v.number_key, v.purpose).as_bytes(),
            Some(v.id.as_str().as_bytes()),
            None as Option<&[u8]>,
        )?;
        for index in 0..v.sends.len() {
            self.outbox.remove(super::outbox_key(&v.id, index))?;
        }
        locked.remove()?;
        Ok(true)
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
                Ok(p) => tracing::info!(
                    wiped = p.wiped,
                    verifications = p.verifications,
                    parked = p.parked,
                    counters = p.counters,
                    "purged"
                ),
                Err(error) => tracing::warn!(%error, "purge failed; retrying later"),
            }
        })?;
        Ok(Sweeper { _stop: stop })
    }
}
