//! State behind one type with domain methods. Two stores implement it:
//! sled, embedded, for one process on one machine (the default), and
//! Redis, shared by any number of instances (`WAVERIFY_STORE=redis://...`).
//! Nothing outside this module knows which one it talks to.
//!
//! Writes are not always durable when a method returns: call
//! [`Store::commit`] before acknowledging anything, so that a crash after
//! the answer loses nothing. [`Store::record_statuses`] is durable when it
//! returns.

mod counter;
mod embedded;
mod shared;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, UnixTime};
use crate::domain::{
    Channel, Checked, Limit, SendOutcome, StatusEvent, Verification, VerificationId,
    VerificationStatus,
};
use crate::settings::{Settings, StoreSettings};

pub use counter::{send_hits, Counter, Refused};
pub use embedded::{Purged, Serving, SledStore};
pub use shared::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a stored record could not be decoded: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("write-ahead log: {0}")]
    Log(#[from] std::io::Error),
    #[error(
        "the store is unavailable: it does not answer, or its writes have not succeeded lately"
    )]
    Unavailable,
    #[error(
        "no answer from Redis within {0} s (a rediss:// URL to a server without TLS, or the \
         reverse, looks like this)"
    )]
    ConnectTimeout(u64),
    #[error("the flush thread is gone")]
    CommitterGone,
}

/// One status Meta reported, ready to be recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub message_id: String,
    /// Whose provider reported it.
    pub channel: Channel,
    /// The verification id waverify sent as `biz_opaque_callback_data`.
    pub callback: Option<VerificationId>,
    pub event: StatusEvent,
}

/// What became of the statuses of one webhook body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub applied: usize,
    /// Already known: duplicates, or statuses that change nothing.
    pub unchanged: usize,
    /// For messages not known (yet): kept until their send is recorded.
    pub parked: usize,
    /// `failed` statuses applied, for the fallback to act on.
    pub failures: Vec<Failure>,
}

/// A send that failed, as the fallback needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub verification: VerificationId,
    pub number_key: String,
    pub channel: Channel,
    pub code: Option<i64>,
}

/// An `Idempotency-Key` and what it was first used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// A hash of the request it came with.
    pub fingerprint: String,
    pub verification: VerificationId,
}

/// Why a new verification was not created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCreated {
    /// The number already has a pending verification.
    Active(VerificationId),
    /// The idempotency key was taken meanwhile.
    KeyTaken(IdempotencyRecord),
    /// A send limit said no.
    Limited(Refused),
}

/// Why a send was not added to a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoResend {
    NotPending(VerificationStatus),
    /// The idempotency key was taken meanwhile, by another request.
    KeyTaken(IdempotencyRecord),
    /// A send limit said no.
    Limited(Refused),
    /// Every allowed send was made; the verification is tried until it
    /// expires, at `until`.
    MaxSends {
        until: UnixTime,
    },
    /// Too soon after the last send; possible again at `at`.
    Cooldown {
        at: UnixTime,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendRules {
    pub cooldown: i64,
    pub max_sends: usize,
}

/// Why a resend of `v` would be refused at `now`, if it would.
pub fn resend_refusal(v: &Verification, now: UnixTime, rules: ResendRules) -> Option<NoResend> {
    let status = v.status_at(now);
    if status != VerificationStatus::Pending {
        return Some(NoResend::NotPending(status));
    }
    if v.sends.len() >= rules.max_sends {
        return Some(NoResend::MaxSends { until: v.expires_at });
    }
    let at = v.last_sent_at() + rules.cooldown;
    (now < at).then_some(NoResend::Cooldown { at })
}

#[derive(Clone)]
enum Backend {
    Sled(SledStore),
    Redis(RedisStore),
}

/// Keeps the embedded store's sweeping thread alive; the shared store
/// needs none (its keys expire by themselves).
pub struct Sweeper {
    _thread: Option<embedded::Sweeper>,
}

/// A queued send: its verification and the send's index.
pub type QueuedSend = (VerificationId, usize);

/// The store, whichever one the settings chose.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// What the embedded store's outbox held when it opened, until it is
    /// handed out.
    left_queued: Arc<Mutex<Option<Vec<QueuedSend>>>>,
}

impl Store {
    /// Opens the store the settings name: sled in the data directory, or a
    /// connection to Redis.
    pub fn open(settings: &Settings) -> Result<Self, StoreError> {
        let mut left_queued = None;
        let backend = match &settings.store {
            StoreSettings::Sled => {
                let mut store = SledStore::open(&settings.data_dir)?;
                store.watch()?;
                left_queued = Some(store.outbox()?);
                Backend::Sled(store)
            }
            StoreSettings::Redis { url, prefix } => {
                // A send is in flight for at most two provider timeouts and
                // a pause; an instance that holds one much longer is gone.
                let timeout = settings
                    .sms
                    .as_ref()
                    .map_or(settings.graph.timeout, |sms| sms.timeout.max(settings.graph.timeout));
                let lease = 2 * timeout.as_secs() as i64 + 30;
                let parked_ttl = settings.retention.as_secs() as i64;
                Backend::Redis(RedisStore::connect(url.expose(), prefix, parked_ttl, lease)?)
            }
        };
        Ok(Self { backend, left_queued: Arc::new(Mutex::new(left_queued)) })
    }

    /// `sled` or `redis`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sled(_) => "sled",
            Backend::Redis(_) => "redis",
        }
    }

    /// Waits until every write made before the call is durable. On Redis
    /// each write is as durable as the server's `appendfsync` makes it
    /// when it is answered, so there is nothing left to wait for.
    pub async fn commit(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.commit().await,
            Backend::Redis(_) => Ok(()),
        }
    }

    /// Counts a request as being served, for as long as the guard lives:
    /// on sled, the write-ahead log syncs without waiting for more records
    /// once every request being served waits for it.
    pub fn serving(&self) -> Option<Serving> {
        match &self.backend {
            Backend::Sled(s) => s.serving(),
            Backend::Redis(_) => None,
        }
    }

    /// Whether the store answers.
    pub async fn healthy(&self) -> bool {
        match &self.backend {
            Backend::Sled(s) => s.healthy(),
            Backend::Redis(r) => r.healthy().await,
        }
    }

    pub async fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.get(id),
            Backend::Redis(r) => r.get(id).await,
        }
    }

    /// The pending verification filed under `active_key` (see
    /// [`Verification::active_key`]), if it has one at `now`.
    pub async fn active(
        &self,
        active_key: &str,
        now: UnixTime,
    ) -> Result<Option<Verification>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.active(active_key, now),
            Backend::Redis(r) => r.active(active_key, now).await,
        }
    }

    pub async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.idempotency(key),
            Backend::Redis(r) => r.idempotency(key).await,
        }
    }

    /// Stores a new verification, counts its send against `hits` and
    /// queues it. Refused when the number got a pending verification
    /// meanwhile, or the idempotency key was taken meanwhile, so that
    /// neither race creates two; or when a limit says no. Only a send that
    /// is made is counted.
    pub async fn create(
        &self,
        v: &Verification,
        purge_at: UnixTime,
        now: UnixTime,
        idempotency: Option<(&str, &str)>,
        hits: &[(Counter, &str, Limit)],
    ) -> Result<Result<(), NotCreated>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.create(v, purge_at, now, idempotency, hits),
            Backend::Redis(r) => r.create(v, purge_at, now, idempotency, hits).await,
        }
    }

    /// Adds a send of the same code to a pending verification, counts it
    /// against `hits` and queues it, unless the rules or a limit refuse.
    /// Returns the verification and the new send's index.
    pub async fn resend(
        &self,
        id: &VerificationId,
        now: UnixTime,
        rules: ResendRules,
        idempotency: Option<(&str, &str)>,
        hits: &[(Counter, &str, Limit)],
    ) -> Result<Result<(Verification, usize), NoResend>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.resend(id, now, rules, idempotency, hits),
            Backend::Redis(r) => r.resend(id, now, rules, idempotency, hits).await,
        }
    }

    /// Applies `change` to a verification atomically: the read and the
    /// write are one compare-and-swap, retried if another request (or
    /// instance) wrote in between, so two concurrent checks can never both
    /// use the same try. `change` may therefore run more than once and must
    /// not have side effects. A verification that `change` ends leaves the
    /// number free for a new one. `None` when no verification has this id.
    pub async fn update<T>(
        &self,
        id: &VerificationId,
        change: impl FnMut(&mut Verification) -> T,
    ) -> Result<Option<(T, Arc<Verification>)>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.update(id, change),
            Backend::Redis(r) => Ok(r.update(id, change).await?.map(|(t, v)| (t, Arc::new(v)))),
        }
    }

    /// A check of a code: `judge` gets the verification and the current
    /// count of `counter` for its number, read afresh on every try, and
    /// returns its answer and, if the check counts, what it leaves of the
    /// verification (see [`Verification::judge`]). The read and the write
    /// are one step, so two checks never use the same try.
    pub async fn check<T>(
        &self,
        id: &VerificationId,
        (counter, limit): (Counter, Limit),
        now: UnixTime,
        mut judge: impl FnMut(&Verification, u64) -> (T, Option<Checked>),
    ) -> Result<Option<(T, Arc<Verification>)>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => {
                let checked =
                    s.check(id, |v| match s.counted(counter, &v.number_key, limit, now) {
                        Ok(count) => {
                            let (answer, checked) = judge(v, count);
                            (Ok(answer), checked)
                        }
                        Err(e) => (Err(e), None),
                    })?;
                checked.map(|(answer, v)| answer.map(|a| (a, v))).transpose()
            }
            Backend::Redis(r) => {
                let updated = r
                    .update_with_count(id, (counter, limit), now, |v, count| {
                        let (answer, checked) = judge(v, count);
                        if let Some(checked) = checked {
                            v.absorb_check(checked);
                        }
                        answer
                    })
                    .await?;
                Ok(updated.map(|(t, v)| (t, Arc::new(v))))
            }
        }
    }

    /// Queued sends that no running sender holds: on sled, everything
    /// that was queued when the store opened (handed out once); on Redis, sends whose
    /// instance has held them past their lease. Called at start-up and
    /// then every so often.
    pub async fn claim_queued(&self) -> Result<Vec<(VerificationId, usize)>, StoreError> {
        match &self.backend {
            Backend::Sled(_) => {
                let mut left = self.left_queued.lock().unwrap_or_else(|e| e.into_inner());
                Ok(left.take().unwrap_or_default())
            }
            Backend::Redis(r) => r.claim_queued().await,
        }
    }

    /// Takes a send off the outbox without recording anything.
    pub async fn unqueue(&self, id: &VerificationId, index: usize) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.unqueue(id, index),
            Backend::Redis(r) => r.unqueue(id, index).await,
        }
    }

    /// Records what the provider said to one send, takes it off the
    /// outbox, and applies any statuses for its message that came first.
    pub async fn record_send(
        &self,
        id: &VerificationId,
        index: usize,
        outcome: &SendOutcome,
        now: UnixTime,
    ) -> Result<Option<Verification>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.record_send(id, index, outcome, now),
            Backend::Redis(r) => r.record_send(id, index, outcome, now).await,
        }
    }

    /// Applies the statuses of one webhook body and returns once they are
    /// durable. A status is matched by its message id, failing that by the
    /// verification id in `biz_opaque_callback_data`; a status that
    /// matches nothing is parked, and applied when its send is recorded.
    pub async fn record_statuses(
        &self,
        updates: Vec<StatusUpdate>,
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        if updates.is_empty() {
            return Ok(Tally::default());
        }
        match &self.backend {
            Backend::Sled(s) => s.record_statuses(updates, now).await,
            Backend::Redis(r) => r.record_statuses(updates).await,
        }
    }

    /// Counts one event against every `(counter, subject, limit)`, all or
    /// nothing: if any is already at its maximum, nothing is counted and
    /// the refusal with the longest wait is returned.
    pub async fn count(
        &self,
        hits: &[(Counter, &str, Limit)],
        now: UnixTime,
    ) -> Result<Result<(), Refused>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.count(hits, now),
            Backend::Redis(r) => r.count(hits, now).await,
        }
    }

    /// How many events the current window of a counter holds.
    pub async fn counted(
        &self,
        counter: Counter,
        subject: &str,
        limit: Limit,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.counted(counter, subject, limit, now),
            Backend::Redis(r) => r.counted(counter, subject, limit, now).await,
        }
    }

    /// Makes a check durable: the verification as `update` left it and,
    /// for a wrong code, one more count of `wrong_try` for its number.
    pub async fn commit_check(
        &self,
        v: &Verification,
        wrong_try: Option<(Counter, Limit)>,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => {
                let counted = wrong_try
                    .map(|(counter, limit)| s.add_counted(counter, &v.number_key, limit, now))
                    .transpose()?;
                s.commit_check(v, counted).await
            }
            Backend::Redis(r) => match wrong_try {
                Some((counter, limit)) => r.add(counter, &v.number_key, limit, now).await,
                None => Ok(()),
            },
        }
    }

    /// Asks for the fallback of `id` to be considered at `at`.
    pub async fn schedule_fallback(
        &self,
        id: &VerificationId,
        at: UnixTime,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.schedule_fallback(id, at),
            Backend::Redis(r) => r.schedule_fallback(id, at).await,
        }
    }

    /// The verifications whose fallback is due by `now`. On sled they leave
    /// the schedule at once; on Redis each is taken by one instance under a
    /// lease, and leaves the schedule with [`Store::fallback_done`], so that
    /// an instance that stops half-way leaves it to another.
    pub async fn due_fallbacks(&self, now: UnixTime) -> Result<Vec<VerificationId>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.due_fallbacks(now),
            Backend::Redis(r) => r.due_fallbacks(now).await,
        }
    }

    /// The fallback of `id` was dealt with: done, or not due after all.
    pub async fn fallback_done(&self, id: &VerificationId) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(_) => Ok(()),
            Backend::Redis(r) => r.fallback_done(id).await,
        }
    }

    /// Adds the SMS send and queues it, if the fallback is due; returns the
    /// verification and the new send's index.
    pub async fn fall_back(
        &self,
        id: &VerificationId,
        now: UnixTime,
        whatsapp_off: bool,
    ) -> Result<Option<(Verification, usize)>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.fall_back(id, now, whatsapp_off),
            Backend::Redis(r) => r.fall_back(id, now, whatsapp_off).await,
        }
    }

    pub async fn remember_not_on_whatsapp(
        &self,
        number_key: &str,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.remember_not_on_whatsapp(number_key, until),
            Backend::Redis(r) => r.remember_not_on_whatsapp(number_key, until, now).await,
        }
    }

    pub async fn not_on_whatsapp(
        &self,
        number_key: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.not_on_whatsapp(number_key, now),
            Backend::Redis(r) => r.not_on_whatsapp(number_key, now).await,
        }
    }

    /// Until when WhatsApp is switched off, if it is at `now`.
    pub async fn whatsapp_off_until(&self, now: UnixTime) -> Result<Option<UnixTime>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.whatsapp_off_until(now),
            Backend::Redis(r) => r.whatsapp_off_until(now).await,
        }
    }

    /// Switches WhatsApp off until `until` (never shortening a longer
    /// pause). Returns whether it was on: the caller logs the switch once.
    pub async fn switch_whatsapp_off(
        &self,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.switch_whatsapp_off(until, now),
            Backend::Redis(r) => r.switch_whatsapp_off(until, now).await,
        }
    }

    /// Purges what is due every `interval` until the returned guard is
    /// dropped (sled; Redis keys expire by themselves). Parked statuses
    /// are kept for `parked_for` seconds.
    pub fn start_sweeper(
        &self,
        clock: SharedClock,
        interval: Duration,
        parked_for: i64,
    ) -> std::io::Result<Sweeper> {
        let thread = match &self.backend {
            Backend::Sled(s) => Some(s.start_sweeper(clock, interval, parked_for)?),
            Backend::Redis(_) => None,
        };
        Ok(Sweeper { _thread: thread })
    }
}
