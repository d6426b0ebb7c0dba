//! The embedded store: sled, in the data directory, for one process on one
//! machine. Only the store's facade (`store/mod.rs`) calls it.
//!
//! Writes are not durable when a method returns: call [`SledStore::commit`]
//! before acknowledging anything, so that a crash after the answer loses
//! nothing. Concurrent commits share one flush (see `commit.rs`). The
//! exceptions are [`SledStore::record_statuses`], durable when it returns, and
//! a check, made durable by [`SledStore::commit_check`]: both go through the
//! write-ahead log (see `wal.rs`), and what they change is kept in memory
//! and reaches sled later, at the latest at the log's next checkpoint (see
//! `cache.rs`).
//!
//! Verifications and the message index are read and written through
//! `cache.rs`, never through their trees directly.
//!
//! Trees:
//! - `verifications`: verification id -> the verification (postcard)
//! - `messages`: a provider's message id (wamid or SMS SID) -> verification id
//! - `active`: number key (and purpose) -> the id of the number's pending
//!   verification
//! - `idempotency`: Idempotency-Key -> request fingerprint and verification id
//! - `outbox`: verification id ++ send index -> sends not yet answered by
//!   their provider, replayed after a restart
//! - `counters`: window end ++ counter ++ subject -> count, for limits
//! - `parked`: message id -> statuses that arrived before their message
//!   was known (see [`SledStore::record_statuses`])
//! - `parked_by_time`, `wipe_at`, `purge_at`, `fallback_at`: time ++ key,
//!   so that the sweeper and the fallback find what is due
//! - `not_on_whatsapp`: number key -> until when the number goes straight
//!   to SMS
//! - `state`: `whatsapp_off_until` -> until when WhatsApp is switched off

mod cache;
mod commit;
mod counters;
mod fallback;
mod purge;
mod sched;
mod statuses;
mod wal;
mod watchdog;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use crate::clock::UnixTime;
use crate::domain::{
    Channel, Checked, Limit, SendOutcome, StatusEvent, Verification, VerificationId,
    VerificationStatus,
};

use cache::{Locked, Messages, Verifications};
use commit::GroupCommit;

pub use purge::{Purged, Sweeper};
pub use wal::Serving;

use super::{
    resend_refusal, Counter, Failure, IdempotencyRecord, NoResend, NotCreated, ResendRules,
    StatusUpdate, StoreError, Tally,
};

/// A transaction that stopped on purpose, or failed.
enum Stop<T> {
    Because(T),
    Failed(StoreError),
}

impl<T> From<StoreError> for Stop<T> {
    fn from(e: StoreError) -> Self {
        Self::Failed(e)
    }
}

fn finish<T, R>(result: Result<R, TransactionError<Stop<T>>>) -> Result<Result<R, T>, StoreError> {
    match result {
        Ok(r) => Ok(Ok(r)),
        Err(TransactionError::Abort(Stop::Because(t))) => Ok(Err(t)),
        Err(TransactionError::Abort(Stop::Failed(e))) => Err(e),
        Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
    }
}

type TxResult<T, S = std::convert::Infallible> = ConflictableTransactionResult<T, Stop<S>>;

fn fail<S>(e: impl Into<StoreError>) -> ConflictableTransactionError<Stop<S>> {
    ConflictableTransactionError::Abort(Stop::Failed(e.into()))
}

fn stop<S>(because: S) -> ConflictableTransactionError<Stop<S>> {
    ConflictableTransactionError::Abort(Stop::Because(because))
}

/// Statuses kept for a message that no verification has (yet).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Parked {
    first_seen: UnixTime,
    /// Each status with the channel whose provider reported it.
    events: Vec<(Channel, StatusEvent)>,
}

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    verifications: Verifications,
    messages: Messages,
    active: sled::Tree,
    idempotency: sled::Tree,
    outbox: sled::Tree,
    counters: sled::Tree,
    /// Counts of wrong codes, in front of `counters` (see `counters.rs`).
    logged: counters::Logged,
    parked: sled::Tree,
    parked_by_time: sled::Tree,
    wipe_at: sled::Tree,
    purge_at: sled::Tree,
    fallback_at: sled::Tree,
    not_on_whatsapp: sled::Tree,
    state: sled::Tree,
    commit: GroupCommit,
    /// sled's files on disk, synced after a flush (see `commit.rs`).
    files: Option<commit::SharedFiles>,
    /// Where webhook statuses and checks are made durable; `None` for a
    /// store that lives in memory, which flushes instead.
    wal: Option<wal::Wal>,
    /// The heartbeat that tells a stalled sled (see `watchdog.rs`); only a
    /// server's store has one (`watch`).
    watch: Option<Arc<watchdog::Watch>>,
}

/// sled's page cache; its default is 1 GiB.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn time_key(at: UnixTime, suffix: &[u8]) -> Vec<u8> {
    // Big-endian of a non-negative time sorts like the time itself.
    let mut key = (at.max(0) as u64).to_be_bytes().to_vec();
    key.extend_from_slice(suffix);
    key
}

fn outbox_key(id: &VerificationId, index: usize) -> Vec<u8> {
    format!("{id}:{index}").into_bytes()
}

/// Records are stored in postcard's compact binary form: every request
/// decodes and encodes at least one, and JSON cost several times more.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_stdvec(value)?)
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // A new data directory is for this user only: it holds nothing in
        // clear that matters, but nobody else needs to read it.
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
            // Its name, durable before anything in it is relied on.
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            std::fs::File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
        }
        // Every acknowledged write is flushed explicitly (group commit);
        // sled's own timer would only add flushes that nothing waits for.
        // The page cache is bounded, so resident memory stays flat however
        // much the store holds.
        let config = sled::Config::new().path(dir).flush_every_ms(None).cache_capacity(CACHE_BYTES);
        let db = config.open()?;
        let files = commit::SledFiles::open(dir)?;
        let mut store = Self::from_db(db, Some(files))?;
        // Replays what the log holds before anything reads the store.
        store.wal = Some(wal::Wal::open(&dir.join(wal::DIR), &store)?);
        Ok(store)
    }

    /// Starts the heartbeat that tells a stalled sled (see `watchdog.rs`):
    /// a server's store has one. It flushes sled every few seconds, and
    /// sled's I/O threads are shared by every store in a process, so the
    /// unit tests' many stores go without.
    pub fn watch(&mut self) -> Result<(), StoreError> {
        let (state, db) = (self.state.clone(), self.db.clone());
        let beat = move || {
            state.insert("heartbeat", &watchdog::now_bytes()[..])?;
            db.flush().map(drop)
        };
        let (every, stall) = (watchdog::EVERY, watchdog::STALL);
        self.watch =
            Some(Arc::new(watchdog::Watch::start(beat, every, stall, watchdog::exit_on_stall)?));
        Ok(())
    }

    /// `files` is `None` for a store that lives in memory.
    fn from_db(db: sled::Db, files: Option<commit::SharedFiles>) -> Result<Self, StoreError> {
        let verifications = Verifications::new(db.open_tree("verifications")?);
        let messages = Messages::new(db.open_tree("messages")?);
        let parked = db.open_tree("parked")?;
        let parked_by_time = db.open_tree("parked_by_time")?;
        let trees = StatusTrees {
            verifications: verifications.clone(),
            messages: messages.clone(),
            parked: parked.clone(),
            parked_by_time: parked_by_time.clone(),
            logged: false,
        };
        let commit = GroupCommit::start(db.clone(), trees, files.clone());
        let counters = db.open_tree("counters")?;
        Ok(Self {
            verifications,
            messages,
            active: db.open_tree("active")?,
            idempotency: db.open_tree("idempotency")?,
            outbox: db.open_tree("outbox")?,
            counters: counters.clone(),
            logged: counters::Logged::new(counters),
            parked,
            parked_by_time,
            wipe_at: db.open_tree("wipe_at")?,
            purge_at: db.open_tree("purge_at")?,
            fallback_at: db.open_tree("fallback_at")?,
            not_on_whatsapp: db.open_tree("not_on_whatsapp")?,
            state: db.open_tree("state")?,
            commit,
            files,
            wal: None,
            watch: None,
            db,
        })
    }

    /// Waits until every write made before the call is on disk.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.commit.flush().await
    }

    /// Counts a request as being served until the guard is dropped: the
    /// write-ahead log syncs at once when every request served waits for
    /// it. `None` without a log.
    pub fn serving(&self) -> Option<Serving> {
        self.wal.as_ref().map(wal::Wal::serving)
    }

    /// Whether the store answers reads, and has finished a write lately.
    pub fn healthy(&self) -> bool {
        self.db.contains_key(b"health").is_ok() && self.watch.as_ref().is_none_or(|w| w.fresh())
    }

    pub fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        Ok(self.verifications.get(id)?.map(|v| Verification::clone(&v)))
    }

    /// The pending verification of a number, if it has one at `now`.
    pub fn active(
        &self,
        number_key: &str,
        now: UnixTime,
    ) -> Result<Option<Verification>, StoreError> {
        let Some(raw) = self.active.get(number_key)? else { return Ok(None) };
        let Some(id) = std::str::from_utf8(&raw).ok().and_then(VerificationId::parse) else {
            return Ok(None);
        };
        Ok(self.get(&id)?.filter(|v| v.status_at(now) == VerificationStatus::Pending))
    }

    pub fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        match self.idempotency.get(key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores a new verification and queues its first send. Refused when
    /// the number got a pending verification meanwhile, or the
    /// idempotency key was taken meanwhile, so that neither race creates
    /// two.
    pub fn create(
        &self,
        v: &Verification,
        purge_at: UnixTime,
        now: UnixTime,
        idempotency: Option<(&str, &str)>,
        hits: &[(Counter, &str, Limit)],
    ) -> Result<Result<(), NotCreated>, StoreError> {
        let id = v.id.as_str();
        let value = encode(v)?;
        // A transaction reads sled: it must have what memory has of the
        // number's pending verification, if there is one.
        if let Some(raw) = self.active.get(Verification::active_key(&v.number_key, v.purpose))? {
            if let Some(other) = std::str::from_utf8(&raw).ok().and_then(VerificationId::parse) {
                self.verifications.save(&other)?;
            }
        }
        let trees = (
            self.verifications.tree_for_new(),
            &self.active,
            &self.idempotency,
            &self.outbox,
            &self.wipe_at,
            &self.purge_at,
            &self.fallback_at,
            &self.counters,
        );
        finish(trees.transaction(|(vt, at, it, ot, wt, pt, ft, ct)| {
            let active_key = Verification::active_key(&v.number_key, v.purpose);
            if let Some(raw) = at.get(active_key.as_str())? {
                let other = std::str::from_utf8(&raw).ok().and_then(VerificationId::parse);
                if let Some(other) = other {
                    if load(vt, &other)?
                        .is_some_and(|o| o.status_at(now) == VerificationStatus::Pending)
                    {
                        return Err(stop(NotCreated::Active(other)));
                    }
                }
            }
            if let Some((key, fingerprint)) = idempotency {
                if let Some(bytes) = it.get(key)? {
                    return Err(stop(NotCreated::KeyTaken(decode(&bytes).map_err(fail)?)));
                }
                let record = IdempotencyRecord {
                    fingerprint: fingerprint.into(),
                    verification: v.id.clone(),
                };
                it.insert(key, encode(&record).map_err(fail)?)?;
            }
            if let Some(refused) = counters::count_in(ct, hits, now)? {
                return Err(stop(NotCreated::Limited(refused)));
            }
            vt.insert(id, value.as_slice())?;
            at.insert(active_key.as_str(), id)?;
            ot.insert(outbox_key(&v.id, 0), Vec::<u8>::new())?;
            wt.insert(time_key(v.expires_at, id.as_bytes()), Vec::<u8>::new())?;
            pt.insert(time_key(purge_at, id.as_bytes()), Vec::<u8>::new())?;
            if let Some(at) = v.fallback_at {
                ft.insert(time_key(at, id.as_bytes()), Vec::<u8>::new())?;
            }
            Ok(())
        }))
    }

    /// Adds a send of the same code to a pending verification and queues
    /// it, unless the rules refuse. Returns the verification and the new
    /// send's index.
    pub fn resend(
        &self,
        id: &VerificationId,
        now: UnixTime,
        rules: ResendRules,
        idempotency: Option<(&str, &str)>,
        hits: &[(Counter, &str, Limit)],
    ) -> Result<Result<(Verification, usize), NoResend>, StoreError> {
        let mut locked = self.verifications.lock(id);
        let trees = (locked.tree_for_write()?, &self.idempotency, &self.outbox, &self.counters);
        finish(trees.transaction(|(vt, it, ot, ct)| {
            if let Some((key, _)) = idempotency {
                if let Some(bytes) = it.get(key)? {
                    return Err(stop(NoResend::KeyTaken(decode(&bytes).map_err(fail)?)));
                }
            }
            let Some(mut v) = load(vt, id)? else {
                return Err(stop(NoResend::NotPending(VerificationStatus::Expired)));
            };
            if let Some(refusal) = resend_refusal(&v, now, rules) {
                return Err(stop(refusal));
            }
            if let Some(refused) = counters::count_in(ct, hits, now)? {
                return Err(stop(NoResend::Limited(refused)));
            }
            let index = v.add_send(now);
            if let Some((key, fingerprint)) = idempotency {
                let record =
                    IdempotencyRecord { fingerprint: fingerprint.into(), verification: id.clone() };
                it.insert(key, encode(&record).map_err(fail)?)?;
                v.idempotency_keys.push(key.to_owned());
            }
            save(vt, &v)?;
            ot.insert(outbox_key(id, index), Vec::<u8>::new())?;
            Ok((v, index))
        }))
    }

    /// Applies `change` to a verification atomically: the verification's
    /// lock is held from the read to the write (see `cache.rs`), so two
    /// concurrent checks take turns and can never both use the same try.
    /// A verification that `change` ends leaves the number free for a new
    /// one. Returns `None` when no verification has this id.
    pub fn update<T>(
        &self,
        id: &VerificationId,
        change: impl FnMut(&mut Verification) -> T,
    ) -> Result<Option<(T, Arc<Verification>)>, StoreError> {
        self.update_in(id, false, change)
    }

    /// A check of a code. `judge` sees the verification and returns its
    /// answer and, if the check counts, what it leaves of the verification
    /// (see [`Verification::judge`]); the verification's lock is held from
    /// the read to the write, so two checks take turns and never use the
    /// same try. A check that leaves the verification pending changes it in
    /// memory only, in place (copied only if a reader still holds it), and
    /// [`SledStore::commit_check`] then makes that durable through the
    /// write-ahead log. A check that ends it, or any check in a store
    /// without a log, writes it to sled as `update` does.
    pub fn check<T>(
        &self,
        id: &VerificationId,
        judge: impl FnOnce(&Verification) -> (T, Option<Checked>),
    ) -> Result<Option<(T, Arc<Verification>)>, StoreError> {
        // A store without a log (in memory) flushes sled instead.
        self.check_in(id, self.wal.is_some(), judge)
    }

    fn check_in<T>(
        &self,
        id: &VerificationId,
        logged: bool,
        judge: impl FnOnce(&Verification) -> (T, Option<Checked>),
    ) -> Result<Option<(T, Arc<Verification>)>, StoreError> {
        let mut locked = self.verifications.lock(id);
        let Some(before) = locked.get()? else { return Ok(None) };
        let (result, checked) = judge(&before);
        let Some(checked) = checked else { return Ok(Some((result, before))) };
        if logged && checked.status == VerificationStatus::Pending {
            let v = locked.change_logged(before, |v| v.absorb_check(checked))?;
            return Ok(Some((result, v)));
        }
        let mut v = Verification::clone(&before);
        if !v.absorb_check(checked) {
            return Ok(Some((result, before)));
        }
        Ok(Some((result, self.store_change(locked, v, logged)?)))
    }

    fn update_in<T>(
        &self,
        id: &VerificationId,
        logged: bool,
        mut change: impl FnMut(&mut Verification) -> T,
    ) -> Result<Option<(T, Arc<Verification>)>, StoreError> {
        let mut locked = self.verifications.lock(id);
        let Some(before) = locked.get()? else { return Ok(None) };
        let mut v = Verification::clone(&before);
        let result = change(&mut v);
        if v == *before {
            return Ok(Some((result, before)));
        }
        Ok(Some((result, self.store_change(locked, v, logged)?)))
    }

    /// Stores a changed verification whose lock is held: in memory only
    /// if `logged` and it is still pending, otherwise in sled. A change
    /// that ends it frees its number.
    fn store_change(
        &self,
        mut locked: Locked<'_>,
        v: Verification,
        logged: bool,
    ) -> Result<Arc<Verification>, StoreError> {
        // A verification that ends frees its number in sled below: sled
        // must have the end first, or a flush could keep the number free
        // while the verification comes back pending.
        let v = if logged && v.status == VerificationStatus::Pending {
            locked.put_logged(v)?
        } else {
            locked.put(v)?
        };
        drop(locked);
        if v.status != VerificationStatus::Pending {
            self.release(&v)?;
        }
        Ok(v)
    }

    /// Frees the number of a verification that is over.
    fn release(&self, v: &Verification) -> Result<(), StoreError> {
        let _ = self.active.compare_and_swap(
            Verification::active_key(&v.number_key, v.purpose),
            Some(v.id.as_str()),
            None as Option<&[u8]>,
        )?;
        Ok(())
    }

    /// Sends queued and not yet answered, oldest first: what a restart
    /// must send again.
    pub fn outbox(&self) -> Result<Vec<(VerificationId, usize)>, StoreError> {
        let mut queued = Vec::new();
        for item in self.outbox.iter() {
            let (key, _) = item?;
            let text = String::from_utf8_lossy(&key);
            let parsed = text
                .split_once(':')
                .and_then(|(id, i)| Some((VerificationId::parse(id)?, i.parse().ok()?)));
            match parsed {
                Some(entry) => queued.push(entry),
                None => {
                    self.outbox.remove(key)?;
                }
            }
        }
        Ok(queued)
    }

    /// Takes a send off the outbox without recording anything.
    pub fn unqueue(&self, id: &VerificationId, index: usize) -> Result<(), StoreError> {
        self.outbox.remove(outbox_key(id, index))?;
        Ok(())
    }

    /// Records what the Graph API said to one send, takes it off the
    /// outbox, and applies any statuses for its message that came first.
    pub fn record_send(
        &self,
        id: &VerificationId,
        index: usize,
        outcome: &SendOutcome,
        now: UnixTime,
    ) -> Result<Option<Verification>, StoreError> {
        let mut locked = self.verifications.lock(id);
        let message_id = match outcome {
            SendOutcome::Accepted { message_id } => Some(message_id.as_str()),
            _ => None,
        };
        let (messages, message_locked) = self.messages.lock_for_write(message_id);
        let trees = (locked.tree_for_write()?, messages, &self.parked, &self.outbox);
        let result = finish(trees.transaction(|(vt, mt, pt, ot)| {
            ot.remove(outbox_key(id, index))?;
            let Some(mut v) = load(vt, id)? else { return Ok(None) };
            v.record_send(index, outcome, now);
            if let SendOutcome::Accepted { message_id } = outcome {
                if v.sends.get(index).and_then(|a| a.delivery.message_id.as_deref())
                    == Some(message_id)
                {
                    mt.insert(message_id.as_str(), id.as_str())?;
                    if let Some(bytes) = pt.remove(message_id.as_str())? {
                        let parked: Parked = decode(&bytes).map_err(fail)?;
                        let channel = v.sends[index].channel;
                        for (_, event) in parked.events.iter().filter(|(c, _)| *c == channel) {
                            v.sends[index].delivery.apply(event);
                        }
                    }
                }
            }
            save(vt, &v)?;
            Ok(Some(v))
        }));
        let v = result?.unwrap_or_else(|never: std::convert::Infallible| match never {});
        drop(message_locked);
        drop(locked);
        if let Some(v) = &v {
            if v.status != VerificationStatus::Pending {
                self.release(v)?;
            }
        }
        Ok(v)
    }

    /// Applies the statuses of one webhook body and returns once they are
    /// on disk. Each status is applied on its own, without a transaction
    /// (see `statuses.rs`).
    ///
    /// A status is matched by its message id; failing that, by the
    /// verification id in `biz_opaque_callback_data`, which covers a status
    /// that overtakes the Graph API's own answer and a send whose answer
    /// never came. A status that matches nothing is parked, and applied by
    /// [`SledStore::record_send`] if its message turns up later; Meta cannot be
    /// asked for it again.
    ///
    /// A body is applied in the caller's thread, then appended to the
    /// write-ahead log, whose thread takes every record waiting, writes
    /// them and syncs once (see `wal.rs`): under load one `fdatasync`
    /// serves many webhooks, and sled is not flushed for them. A store
    /// without a log (in memory) flushes sled instead, on the group
    /// commit's thread.
    pub async fn record_statuses(
        &self,
        updates: Vec<StatusUpdate>,
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        if updates.is_empty() {
            return Ok(Tally::default());
        }
        match &self.wal {
            Some(wal) => wal.apply(&self.status_trees(true), updates, now).await,
            None => self.commit.apply(updates, now).await,
        }
    }

    /// The same without waiting for the disk, in the caller's thread.
    pub fn apply_statuses(
        &self,
        updates: &[StatusUpdate],
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        self.status_trees(false).apply_each(updates, now)
    }

    /// With `logged`, what statuses change is kept in memory, for the
    /// write-ahead log's records to make durable (see `cache.rs`).
    fn status_trees(&self, logged: bool) -> StatusTrees {
        StatusTrees {
            logged,
            verifications: self.verifications.clone(),
            messages: self.messages.clone(),
            parked: self.parked.clone(),
            parked_by_time: self.parked_by_time.clone(),
        }
    }
}

/// The trees a webhook writes.
#[derive(Clone)]
pub(crate) struct StatusTrees {
    verifications: Verifications,
    messages: Messages,
    /// Changes are kept in memory until a checkpoint, rather than written
    /// to sled; only for statuses the write-ahead log records.
    logged: bool,
    parked: sled::Tree,
    parked_by_time: sled::Tree,
}

fn load<S>(vt: &TransactionalTree, id: &VerificationId) -> TxResult<Option<Verification>, S> {
    match vt.get(id.as_str())? {
        Some(bytes) => Ok(Some(decode(&bytes).map_err(fail)?)),
        None => Ok(None),
    }
}

fn save<S>(vt: &TransactionalTree, v: &Verification) -> TxResult<(), S> {
    vt.insert(v.id.as_str(), encode(v).map_err(fail)?)?;
    Ok(())
}

#[cfg(test)]
mod tests;
