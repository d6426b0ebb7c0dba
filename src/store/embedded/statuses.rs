//! Applying a webhook body's statuses key by key, without a sled
//! transaction.
//!
//! In sled 0.34 every transaction, even one that only reads, holds a lock
//! that stops every other operation on the store while it runs, and
//! writes out sled's current I/O buffer (and syncs its range) before it
//! commits. Under webhook load that cost more than everything else a
//! webhook does. A status needs none of it:
//! - its verification is read, changed and written back under the
//!   verification's lock (see `cache.rs`), which every write of it holds;
//! - a message's index entry is set once, and always to the same
//!   verification;
//! - a status for an unknown message is added to the message's parked set
//!   with a compare-and-swap, and then the index is read again. Recording
//!   a send (`SledStore::record_send`) is a transaction, so it runs entirely
//!   before or entirely after each of these steps: either it finds the
//!   parked status and applies it, or the second read finds the index
//!   entry it wrote and the status is applied directly. Both may happen;
//!   a status applied twice changes nothing more.
//!
//! A body is no longer applied all or nothing: a crash in the middle can
//! leave some of its statuses applied and others not. Each status is a
//! fact of its own and applying it again changes nothing, and the body was
//! not answered, so Meta sends it again; once answered, it is in the
//! write-ahead log and is replayed whole.

use super::{decode, encode, time_key, Failure, Parked, StatusTrees, StatusUpdate, StoreError};
use super::{Tally, Verification};
use crate::clock::UnixTime;
use crate::domain::DeliveryStatus;

/// `Some((changed, failure))` when the status belongs to a verification,
/// `None` when no verification claims its message.
type Applied = Option<(bool, Option<Failure>)>;

impl StatusTrees {
    /// Applies the statuses of one body, each on its own.
    pub(super) fn apply_each(
        &self,
        updates: &[StatusUpdate],
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        let mut tally = Tally::default();
        for update in updates {
            let mut applied = self.apply_to_verification(update)?;
            if applied.is_none() && self.park(update, now)? {
                // The send may have been recorded between the lookup and
                // the parking: then it is known now.
                applied = self.apply_to_verification(update)?;
            }
            match applied {
                Some((true, failure)) => {
                    tally.applied += 1;
                    tally.failures.extend(failure);
                }
                Some((false, _)) => tally.unchanged += 1,
                None => tally.parked += 1,
            }
        }
        Ok(tally)
    }

    fn apply_to_verification(&self, update: &StatusUpdate) -> Result<Applied, StoreError> {
        let message_id = update.message_id.as_str();
        let indexed = self.messages.get(message_id)?;
        let Some(id) = indexed.clone().or_else(|| update.callback.clone()) else {
            return Ok(None);
        };
        let mut locked = self.verifications.lock(&id);
        let Some(mut current) = locked.get()? else { return Ok(None) };
        let known = current.sends.iter().position(|a| {
            a.channel == update.channel && a.delivery.message_id.as_deref() == Some(message_id)
        });
        let (index, changed) = match known {
            // The usual case, and most often a repeat, which copies
            // nothing. With a log, a new status is applied where the
            // verification lies in memory: nothing after it can fail.
            Some(index) => {
                let changed = current.sends[index].delivery.changed_by(&update.event);
                let apply = |v: &mut Verification| v.sends[index].delivery.apply(&update.event);
                if changed && self.logged {
                    current = locked.change_logged(current, apply)?;
                } else if changed {
                    let mut v = Verification::clone(&current);
                    apply(&mut v);
                    locked.put(v)?;
                }
                (index, changed)
            }
            None => {
                let claim = indexed.is_none();
                let mut v = Verification::clone(&current);
                let Some(index) = v.send_for_message(message_id, update.channel, claim) else {
                    return Ok(None);
                };
                let changed = v.sends[index].delivery.apply(&update.event);
                // The send takes its message id here, and gets an index
                // entry in sled below: sled must have the verification's
                // side first, or a flush could keep the entry without it.
                locked.put(v)?;
                self.messages.insert(message_id, &id)?;
                (index, changed)
            }
        };
        drop(locked);
        let failed = changed && update.event.status == DeliveryStatus::Failed;
        let failure = failed.then(|| Failure {
            verification: current.id.clone(),
            number_key: current.number_key.clone(),
            channel: current.sends[index].channel,
            code: update.event.error.as_ref().and_then(|e| e.code),
        });
        Ok(Some((changed, failure)))
    }

    /// Keeps a status for a message no verification claims (yet). Returns
    /// whether it was new.
    fn park(&self, update: &StatusUpdate, now: UnixTime) -> Result<bool, StoreError> {
        let key = update.message_id.as_bytes();
        let entry = (update.channel, update.event.clone());
        loop {
            let old = self.parked.get(key)?;
            let mut parked: Parked = match &old {
                Some(bytes) => decode(bytes)?,
                None => Parked { first_seen: now, events: Vec::new() },
            };
            if parked.events.contains(&entry) {
                return Ok(false);
            }
            if old.is_none() {
                self.parked_by_time.insert(time_key(now, key), Vec::<u8>::new())?;
            }
            parked.events.push(entry.clone());
            let new = encode(&parked)?;
            if self.parked.compare_and_swap(key, old, Some(new))?.is_ok() {
                return Ok(true);
            }
        }
    }
}
