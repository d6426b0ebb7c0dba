//! What the fallback to SMS keeps: when each `auto` verification's
//! WhatsApp deadline falls, the numbers known not to be on WhatsApp, and
//! whether WhatsApp is switched off for everyone.

use sled::Transactional;

use super::{finish, load, outbox_key, save, time_key, SledStore, StoreError};
use crate::clock::UnixTime;
use crate::domain::{Verification, VerificationId};

const WHATSAPP_OFF_UNTIL: &[u8] = b"whatsapp_off_until";

fn read_time(bytes: Option<sled::IVec>) -> Option<UnixTime> {
    bytes.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok()).map(i64::from_be_bytes)
}

impl SledStore {
    /// Asks for the fallback of `id` to be considered at `at` (now, after a
    /// failure; the deadline is filed when the verification is created).
    pub fn schedule_fallback(&self, id: &VerificationId, at: UnixTime) -> Result<(), StoreError> {
        self.fallback_at.insert(time_key(at, id.as_str().as_bytes()), Vec::<u8>::new())?;
        Ok(())
    }

    /// Takes every verification whose fallback is due by `now` off the
    /// schedule.
    pub fn due_fallbacks(&self, now: UnixTime) -> Result<Vec<VerificationId>, StoreError> {
        let mut due = Vec::new();
        for item in self.fallback_at.range(..time_key(now + 1, b"")) {
            let (key, _) = item?;
            let id = key
                .get(8..)
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(VerificationId::parse);
            if let Some(id) = id.filter(|id| !due.contains(id)) {
                due.push(id);
            }
            self.fallback_at.remove(key)?;
        }
        Ok(due)
    }

    /// Adds the SMS send and queues it, if the fallback is due; returns the
    /// verification and the new send's index.
    pub fn fall_back(
        &self,
        id: &VerificationId,
        now: UnixTime,
        whatsapp_off: bool,
    ) -> Result<Option<(Verification, usize)>, StoreError> {
        let mut locked = self.verifications.lock(id);
        let trees = (locked.tree_for_write()?, &self.outbox);
        let result = finish(trees.transaction(|(vt, ot)| {
            let Some(mut v) = load(vt, id)? else { return Ok(None) };
            let Some(index) = v.fall_back(now, whatsapp_off) else { return Ok(None) };
            save(vt, &v)?;
            ot.insert(outbox_key(id, index), Vec::<u8>::new())?;
            Ok(Some((v, index)))
        }));
        Ok(result?.unwrap_or_else(|never: std::convert::Infallible| match never {}))
    }

    pub fn remember_not_on_whatsapp(
        &self,
        number_key: &str,
        until: UnixTime,
    ) -> Result<(), StoreError> {
        self.not_on_whatsapp.insert(number_key, &until.to_be_bytes())?;
        Ok(())
    }

    pub fn not_on_whatsapp(&self, number_key: &str, now: UnixTime) -> Result<bool, StoreError> {
        Ok(read_time(self.not_on_whatsapp.get(number_key)?).is_some_and(|until| now < until))
    }

    /// Until when WhatsApp is switched off, if it is at `now`.
    pub fn whatsapp_off_until(&self, now: UnixTime) -> Result<Option<UnixTime>, StoreError> {
        Ok(read_time(self.state.get(WHATSAPP_OFF_UNTIL)?).filter(|until| now < *until))
    }

    /// Switches WhatsApp off until `until` (never shortening a longer
    /// pause). Returns whether it was on: the caller logs the switch once.
    pub fn switch_whatsapp_off(&self, until: UnixTime, now: UnixTime) -> Result<bool, StoreError> {
        let mut was_on = false;
        self.state.update_and_fetch(WHATSAPP_OFF_UNTIL, |old| {
            let old = old.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(i64::from_be_bytes);
            was_on = old.is_none_or(|o| o <= now);
            Some(old.map_or(until, |o| o.max(until)).to_be_bytes().to_vec())
        })?;
        Ok(was_on)
    }

    pub(super) fn purge_not_on_whatsapp(&self, now: UnixTime) -> Result<(), StoreError> {
        for item in self.not_on_whatsapp.iter() {
            let (key, value) = item?;
            if read_time(Some(value)).is_none_or(|until| until <= now) {
                self.not_on_whatsapp.remove(key)?;
            }
        }
        Ok(())
    }
}
