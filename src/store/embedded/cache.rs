//! Decoded verifications and message index entries kept in memory, in
//! front of their sled trees.
//!
//! A webhook or a check reads a verification, and a webhook first finds it
//! by its message id: with sled alone that is two tree lookups and a
//! decode, which cost a webhook more than its signature and its JSON
//! together.
//!
//! The cache is exact, never stale: every write of a verification is
//! made while holding the lock of the verification's shard (see
//! [`Verifications::lock`]), and leaves the shard holding the value it
//! wrote or nothing. A reader that misses reads sled while holding the
//! same lock, so no write can land between its read and its fill. This is
//! also what makes a read-modify-write atomic: two checks of one
//! verification take turns, without a compare-and-swap.
//!
//! A change that a record of the write-ahead log makes durable (a check,
//! a webhook's status) is kept in memory only, marked unsaved, and
//! written to sled later: by the log's checkpoint before it deletes the
//! record, before a transaction reads the verification from sled, or
//! when the entry is pushed out of memory. Until then memory, not sled,
//! has the verification as it is, and everything reads it here.
//!
//! Both are bounded, so memory stays flat: a shard that is full drops an
//! entry, whichever its map yields first, before it takes a new one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{decode, encode, StoreError};
use crate::domain::{Verification, VerificationId};

const SHARDS: usize = 64;

/// At most this many decoded verifications are kept (about 1 KiB each).
const VERIFICATIONS: usize = 64 * 1024;

/// At most this many message index entries are kept.
const MESSAGES: usize = 64 * 1024;

/// Keys are hashed with foldhash, seeded at random, rather than SipHash:
/// on a check, hashing the verification's id and its number's counter key
/// cost more than the lookups. foldhash is only minimally resistant to
/// keys chosen to collide, and no key here can be chosen: ids are random
/// and made here, counter keys are keyed hashes of numbers, and message
/// ids come only in webhooks whose signature was checked.
type Hasher = foldhash::fast::RandomState;

type Map<V> = HashMap<Box<[u8]>, V, Hasher>;

/// Maps split by key into independently locked shards.
pub(super) struct Shards<V> {
    shards: Box<[Mutex<Map<V>>]>,
    per_shard: usize,
    hasher: Hasher,
}

impl<V> Shards<V> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: Hasher::default(),
        }
    }

    pub(super) fn lock(&self, key: &[u8]) -> MutexGuard<'_, Map<V>> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];
        // The maps hold no invariant a panic could break halfway.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn per_shard(&self) -> usize {
        self.per_shard
    }

    /// Every shard in turn, locked.
    pub(super) fn each(&self, mut f: impl FnMut(&mut Map<V>)) {
        for shard in &self.shards {
            f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// Inserts into a shard; returns the entry dropped to make room, if one
/// was.
pub(super) fn insert<V>(
    map: &mut Map<V>,
    per_shard: usize,
    key: &[u8],
    value: V,
) -> Option<(Box<[u8]>, V)> {
    if let Some(held) = map.get_mut(key) {
        *held = value;
        return None;
    }
    let mut dropped = None;
    if map.len() >= per_shard {
        if let Some(victim) = map.keys().next().cloned() {
            dropped = map.remove_entry(&victim);
        }
    }
    map.insert(key.into(), value);
    dropped
}

/// A verification as memory has it, and whether sled has it yet.
#[derive(Clone)]
struct Entry {
    v: Arc<Verification>,
    unsaved: bool,
}

/// The `verifications` tree and its cache. Nothing else writes the tree.
#[derive(Clone)]
pub(super) struct Verifications {
    tree: sled::Tree,
    cache: Arc<Shards<Entry>>,
}

/// One verification's shard, locked: every read and write of it goes
/// through here while it is held.
pub(super) struct Locked<'a> {
    tree: &'a sled::Tree,
    shard: MutexGuard<'a, Map<Entry>>,
    per_shard: usize,
    id: &'a str,
}

impl Verifications {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self::with_capacity(tree, VERIFICATIONS)
    }

    pub(super) fn with_capacity(tree: sled::Tree, capacity: usize) -> Self {
        Self { tree, cache: Arc::new(Shards::new(capacity)) }
    }

    pub(super) fn lock<'a>(&'a self, id: &'a VerificationId) -> Locked<'a> {
        let id = id.as_str();
        let shard = self.cache.lock(id.as_bytes());
        Locked { tree: &self.tree, shard, per_shard: self.cache.per_shard, id }
    }

    pub(super) fn get(&self, id: &VerificationId) -> Result<Option<Arc<Verification>>, StoreError> {
        self.lock(id).get()
    }

    /// The tree, to add a verification that nothing can know of yet.
    pub(super) fn tree_for_new(&self) -> &sled::Tree {
        &self.tree
    }

    /// Writes what memory has of one verification and sled does not.
    pub(super) fn save(&self, id: &VerificationId) -> Result<(), StoreError> {
        self.lock(id).save()
    }

    /// Writes every verification that memory has and sled does not to
    /// sled (without a flush), one at a time under its shard's lock.
    pub(super) fn save_all(&self) -> Result<(), StoreError> {
        let mut ids = Vec::new();
        self.cache.each(|shard| {
            ids.extend(shard.iter().filter(|(_, e)| e.unsaved).map(|(k, _)| k.clone()));
        });
        for key in ids {
            let Some(id) = std::str::from_utf8(&key).ok().and_then(VerificationId::parse) else {
                continue;
            };
            self.save(&id)?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

impl Locked<'_> {
    pub(super) fn get(&mut self) -> Result<Option<Arc<Verification>>, StoreError> {
        if let Some(e) = self.shard.get(self.id.as_bytes()) {
            return Ok(Some(e.v.clone()));
        }
        let Some(bytes) = self.tree.get(self.id)? else { return Ok(None) };
        let v = Arc::new(decode::<Verification>(&bytes)?);
        self.keep(Entry { v: v.clone(), unsaved: false })?;
        Ok(Some(v))
    }

    /// Puts an entry in the shard. If that pushes out one that sled does
    /// not have yet, it is written to sled first.
    fn keep(&mut self, entry: Entry) -> Result<(), StoreError> {
        let dropped = insert(&mut self.shard, self.per_shard, self.id.as_bytes(), entry);
        if let Some((key, dropped)) = dropped.filter(|(_, e)| e.unsaved) {
            if let Err(e) = write(self.tree, &key, &dropped.v) {
                // Kept, so that nothing is lost: the shard runs over its
                // size until sled takes writes again.
                self.shard.insert(key, dropped);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes `v` (whose id is the locked one) to sled and keeps it.
    pub(super) fn put(&mut self, v: Verification) -> Result<Arc<Verification>, StoreError> {
        debug_assert_eq!(v.id.as_str(), self.id);
        let v = Arc::new(v);
        if let Err(e) = write(self.tree, self.id.as_bytes(), &v) {
            // What memory had stays if sled never had it; otherwise sled
            // is read again.
            if self.shard.get(self.id.as_bytes()).is_some_and(|e| !e.unsaved) {
                self.shard.remove(self.id.as_bytes());
            }
            return Err(e);
        }
        self.keep(Entry { v: v.clone(), unsaved: false })?;
        Ok(v)
    }

    /// Keeps `v` in memory only. For a change that a record in the
    /// write-ahead log makes durable: the log's checkpoint writes it to
    /// sled (`save_all`) before it deletes that record.
    pub(super) fn put_logged(&mut self, v: Verification) -> Result<Arc<Verification>, StoreError> {
        debug_assert_eq!(v.id.as_str(), self.id);
        let v = Arc::new(v);
        self.keep(Entry { v: v.clone(), unsaved: true })?;
        Ok(v)
    }

    /// Changes `v`, the verification as `get` just returned it, in memory
    /// only, as `put_logged` does, and in place unless a reader still holds
    /// it: nothing is copied. Nothing can fail once `change` has begun, so
    /// nothing is ever left half-changed. `change` returns whether it
    /// changed anything.
    pub(super) fn change_logged(
        &mut self,
        v: Arc<Verification>,
        change: impl FnOnce(&mut Verification) -> bool,
    ) -> Result<Arc<Verification>, StoreError> {
        debug_assert_eq!(v.id.as_str(), self.id);
        let Some(entry) = self.shard.get_mut(self.id.as_bytes()) else {
            // Not in memory (`get` under the same lock puts it there): a
            // copy, as `put_logged` keeps it.
            let mut copy = Verification::clone(&v);
            return if change(&mut copy) { self.put_logged(copy) } else { Ok(v) };
        };
        // `v` is the shard's own value; dropping it leaves the shard the
        // only holder unless a reader has one.
        drop(v);
        if change(Arc::make_mut(&mut entry.v)) {
            entry.unsaved = true;
        }
        Ok(entry.v.clone())
    }

    fn save(&mut self) -> Result<(), StoreError> {
        if let Some(entry) = self.shard.get_mut(self.id.as_bytes()).filter(|e| e.unsaved) {
            write(self.tree, self.id.as_bytes(), &entry.v)?;
            entry.unsaved = false;
        }
        Ok(())
    }

    pub(super) fn remove(&mut self) -> Result<(), StoreError> {
        self.shard.remove(self.id.as_bytes());
        self.tree.remove(self.id)?;
        Ok(())
    }

    /// The tree, for a transaction that reads and writes this
    /// verification: sled is given what only memory had, and memory
    /// forgets it, so whatever the transaction does, the next read goes
    /// to sled, once the lock is released.
    pub(super) fn tree_for_write(&mut self) -> Result<&sled::Tree, StoreError> {
        self.save()?;
        self.shard.remove(self.id.as_bytes());
        Ok(self.tree)
    }
}

fn write(tree: &sled::Tree, key: &[u8], v: &Verification) -> Result<(), StoreError> {
    tree.insert(key, encode(v)?)?;
    Ok(())
}

/// The `messages` tree (message id -> verification id) and its cache,
/// under the same rule as verifications: every write of an entry holds
/// its shard's lock, and so does a read that goes to sled. The cache also
/// remembers ids that sled has no entry for (`None`): statuses for
/// messages of no verification come again and again.
#[derive(Clone)]
pub(super) struct Messages {
    tree: sled::Tree,
    cache: Arc<Shards<Option<VerificationId>>>,
}

impl Messages {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self { tree, cache: Arc::new(Shards::new(MESSAGES)) }
    }

    pub(super) fn get(&self, message_id: &str) -> Result<Option<VerificationId>, StoreError> {
        let key = message_id.as_bytes();
        let mut shard = self.cache.lock(key);
        if let Some(id) = shard.get(key) {
            return Ok(id.clone());
        }
        let raw = self.tree.get(key)?;
        let id = raw.and_then(|raw| std::str::from_utf8(&raw).ok().and_then(VerificationId::parse));
        insert(&mut shard, self.cache.per_shard, key, id.clone());
        Ok(id)
    }

    /// The tree, for a transaction that may set the entry of
    /// `message_id`, which is forgotten here and stays locked until the
    /// returned guard is dropped.
    pub(super) fn lock_for_write(
        &self,
        message_id: Option<&str>,
    ) -> (&sled::Tree, Option<MutexGuard<'_, Map<Option<VerificationId>>>>) {
        let guard = message_id.map(|m| {
            let mut shard = self.cache.lock(m.as_bytes());
            shard.remove(m.as_bytes());
            shard
        });
        (&self.tree, guard)
    }

    pub(super) fn insert(&self, message_id: &str, id: &VerificationId) -> Result<(), StoreError> {
        let key = message_id.as_bytes();
        let mut shard = self.cache.lock(key);
        shard.remove(key);
        self.tree.insert(key, id.as_str())?;
        insert(&mut shard, self.cache.per_shard, key, Some(id.clone()));
        Ok(())
    }

    pub(super) fn remove(&self, message_id: &str) -> Result<(), StoreError> {
        let key = message_id.as_bytes();
        let mut shard = self.cache.lock(key);
        shard.remove(key);
        self.tree.remove(key)?;
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    #[cfg(test)]
    pub(super) fn tree_is_set(&self, message_id: &str) -> bool {
        self.tree.contains_key(message_id).unwrap()
    }
}
