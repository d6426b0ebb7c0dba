//! Counters for limits, one per window: the key starts with the window's
//! end, so the sweeper drops ended windows with one range scan.
//!
//! Sends are counted in sled, in the transaction that makes the send. A
//! number's wrong codes are counted in memory ([`Logged`]) and made
//! durable by the write-ahead log, in the record of the check that counted
//! them; they reach sled at the log's checkpoints, before the records that
//! carry them are deleted.

use std::sync::Arc;

use sled::transaction::TransactionalTree;

use super::cache::{insert, Shards};
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

/// Whether a counter is kept by [`Logged`] rather than in sled.
pub(super) fn logged(counter: Counter) -> bool {
    matches!(counter, Counter::NumberFailedChecksPerHour)
}

/// At most this many logged counters are kept in memory; past that, one
/// is written to sled and dropped for each new one.
const LOGGED: usize = 64 * 1024;

/// A count, and whether sled has it yet.
#[derive(Clone, Copy)]
struct Count {
    count: u64,
    unsaved: bool,
}

/// The logged counters, in memory in front of the `counters` tree. Every
/// read and write of one holds its shard's lock, and a count missing from
/// memory is read from sled under that lock, so memory is never behind
/// sled.
#[derive(Clone)]
pub(super) struct Logged {
    tree: sled::Tree,
    cache: Arc<Shards<Count>>,
}

impl Logged {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self { tree, cache: Arc::new(Shards::new(LOGGED)) }
    }

    fn with<T>(&self, key: &[u8], f: impl FnOnce(&mut Count) -> T) -> Result<T, StoreError> {
        let mut shard = self.cache.lock(key);
        if let Some(count) = shard.get_mut(key) {
            return Ok(f(count));
        }
        let mut count = Count { count: read(self.tree.get(key)?), unsaved: false };
        let result = f(&mut count);
        if let Some((victim, dropped)) = insert(&mut shard, self.cache.per_shard(), key, count) {
            if dropped.unsaved {
                if let Err(e) = self.raise(&victim, dropped.count) {
                    // Kept, so that it is not lost: the shard runs over
                    // its size until sled takes writes again.
                    shard.insert(victim, dropped);
                    return Err(e.into());
                }
            }
        }
        Ok(result)
    }

    pub(super) fn counted(&self, key: &[u8]) -> Result<u64, StoreError> {
        self.with(key, |c| c.count)
    }

    /// Counts one more; returns the new count.
    pub(super) fn add(&self, key: &[u8]) -> Result<u64, StoreError> {
        self.with(key, |c| {
            c.count += 1;
            c.unsaved = true;
            c.count
        })
    }

    /// Raises a count in sled to at least `count`. A count only grows in
    /// its window, so writes that cross never take it back.
    fn raise(&self, key: &[u8], count: u64) -> Result<u64, sled::Error> {
        let saved = self.tree.update_and_fetch(key, |old| {
            Some(read(old.map(sled::IVec::from)).max(count).to_be_bytes().to_vec())
        })?;
        Ok(read(saved))
    }

    /// Raises a count, in sled and in memory, to at least what a logged
    /// record left.
    pub(super) fn merge(&self, key: &[u8], count: u64) -> Result<(), StoreError> {
        let mut shard = self.cache.lock(key);
        let saved = self.raise(key, count)?;
        if let Some(c) = shard.get_mut(key) {
            c.count = c.count.max(saved);
        }
        Ok(())
    }

    /// Writes every count that sled does not have yet to sled (unflushed),
    /// one at a time under its shard's lock, as verifications are saved.
    pub(super) fn save(&self) -> Result<(), sled::Error> {
        let mut keys = Vec::new();
        self.cache.each(|shard| {
            keys.extend(shard.iter().filter(|(_, c)| c.unsaved).map(|(k, _)| k.clone()));
        });
        for key in keys {
            let mut shard = self.cache.lock(&key);
            if let Some(c) = shard.get_mut(&key).filter(|c| c.unsaved) {
                self.raise(&key, c.count)?;
                c.unsaved = false;
            }
        }
        Ok(())
    }

    /// Drops the counts of windows that ended at or before `now`.
    fn purge(&self, now: UnixTime) {
        let end = time_key(now + 1, b"");
        self.cache.each(|shard| shard.retain(|key, _| key[..] >= end[..]));
    }
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
        let key = key(counter, subject, limit, now);
        if logged(counter) {
            return self.logged.counted(&key);
        }
        Ok(read(self.counters.get(key)?))
    }

    pub(super) fn purge_counters(&self, now: UnixTime) -> Result<usize, StoreError> {
        self.logged.purge(now);
        let mut removed = 0;
        for item in self.counters.range(..time_key(now + 1, b"")) {
            let (key, _) = item?;
            self.counters.remove(key)?;
            removed += 1;
        }
        Ok(removed)
    }
}
