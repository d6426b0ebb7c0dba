//! Counters for limits, one per window: the key starts with the window's
//! end, so the sweeper drops ended windows with one range scan.

use sled::transaction::TransactionalTree;

use super::{finish, stop, time_key, SledStore, TxResult};
use crate::clock::UnixTime;
use crate::domain::Limit;
use crate::store::{Counter, Refused, StoreError};

pub(super) fn key(counter: Counter, subject: &str, limit: Limit, now: UnixTime) -> Vec<u8> {
    let mut suffix = vec![counter.tag()];
    suffix.extend_from_slice(subject.as_bytes());
    time_key(limit.window_end(now), &suffix)
}

pub(super) fn read(bytes: Option<sled::IVec>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok()).map_or(0, u64::from_be_bytes)
}

/// Counts one event against every hit inside a transaction, or, if any
/// is at its maximum, counts nothing and returns the refusal with the
/// longest wait.
pub(super) fn count_in<S>(
    tree: &TransactionalTree,
    hits: &[(Counter, &str, Limit)],
    now: UnixTime,
) -> TxResult<Option<Refused>, S> {
    let mut refused: Option<Refused> = None;
    let mut writes = Vec::with_capacity(hits.len());
    for &(counter, subject, limit) in hits {
        let key = key(counter, subject, limit, now);
        let count = read(tree.get(&key)?);
        if count >= limit.max {
            let wait = Refused { counter, retry_after: limit.retry_after(now) };
            if refused.is_none_or(|r| r.retry_after < wait.retry_after) {
                refused = Some(wait);
            }
        }
        writes.push((key, count + 1));
    }
    if refused.is_none() {
        for (key, count) in writes {
            tree.insert(key, &count.to_be_bytes())?;
        }
    }
    Ok(refused)
}

impl SledStore {
    /// Counts one event against every `(counter, subject, limit)`, all or
    /// nothing: if any is already at its maximum, nothing is counted and
    /// the refusal with the longest wait is returned.
    pub fn count(
        &self,
        hits: &[(Counter, &str, Limit)],
        now: UnixTime,
    ) -> Result<Result<(), Refused>, StoreError> {
        finish(self.counters.transaction(|tree| match count_in(tree, hits, now)? {
            Some(refused) => Err(stop(refused)),
            None => Ok(()),
        }))
    }

    /// How many events the current window of a counter holds.
    pub fn counted(
        &self,
        counter: Counter,
        subject: &str,
        limit: Limit,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        Ok(read(self.counters.get(key(counter, subject, limit, now))?))
    }

    /// Counts one event, whatever the count already is.
    pub fn add(
        &self,
        counter: Counter,
        subject: &str,
        limit: Limit,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.counters.update_and_fetch(key(counter, subject, limit, now), |old| {
            Some((read(old.map(sled::IVec::from)) + 1).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    pub(super) fn purge_counters(&self, now: UnixTime) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.counters.range(..time_key(now + 1, b"")) {
            let (key, _) = item?;
            self.counters.remove(key)?;
            removed += 1;
        }
        Ok(removed)
    }
}
