//! State behind one small type with domain methods. Nothing outside this
//! module knows that sled is underneath.
//!
//! Writes are not durable when a method returns: call [`Store::commit`]
//! before acknowledging anything, so that a crash after the answer loses
//! nothing. Concurrent commits share one flush (see `commit.rs`).
//!
//! Trees:
//! - `verifications`: verification id -> the verification (JSON)
//! - `messages`: Meta's message id -> verification id
//! - `parked`: message id -> statuses that arrived before their message
//!   was known (see [`Store::record_statuses`])
//! - `parked_by_time`: first-seen time ++ message id, to purge parked
//!   statuses nobody claims
//! - `purge_at`: purge time ++ verification id, to delete verifications
//!   once their retention is over

mod commit;
mod purge;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use crate::clock::UnixTime;
use crate::domain::{StatusEvent, Verification, VerificationId};

use commit::GroupCommit;

pub use purge::Sweeper;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("a stored record could not be decoded: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("the store does not answer reads")]
    Unavailable,
    #[error("the flush thread is gone")]
    CommitterGone,
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Self::Sled(e),
        }
    }
}

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

fn abort(e: impl Into<StoreError>) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e.into())
}

/// One status Meta reported, ready to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub message_id: String,
    /// The verification id waverify sent as `biz_opaque_callback_data`.
    pub callback: Option<VerificationId>,
    pub event: StatusEvent,
}

/// What became of the statuses of one webhook body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub applied: usize,
    /// Already known: duplicates, or statuses that change nothing.
    pub unchanged: usize,
    /// For messages not known (yet): kept until their send is recorded.
    pub parked: usize,
}

/// Statuses kept for a message that no verification has (yet).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Parked {
    first_seen: UnixTime,
    events: Vec<StatusEvent>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    verifications: sled::Tree,
    messages: sled::Tree,
    parked: sled::Tree,
    parked_by_time: sled::Tree,
    purge_at: sled::Tree,
    commit: GroupCommit,
}

fn time_key(at: UnixTime, suffix: &str) -> Vec<u8> {
    // Big-endian of a non-negative time sorts like the time itself.
    let mut key = (at.max(0) as u64).to_be_bytes().to_vec();
    key.extend_from_slice(suffix.as_bytes());
    key
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Self {
            verifications: db.open_tree("verifications")?,
            messages: db.open_tree("messages")?,
            parked: db.open_tree("parked")?,
            parked_by_time: db.open_tree("parked_by_time")?,
            purge_at: db.open_tree("purge_at")?,
            commit: GroupCommit::start(db.clone()),
            db,
        })
    }

    /// Waits until every write made before the call is on disk.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.commit.flush().await
    }

    /// Whether the store answers reads.
    pub fn healthy(&self) -> bool {
        self.db.contains_key(b"health").is_ok()
    }

    /// Stores a new verification, to be deleted at `purge_at`.
    pub fn insert(&self, v: &Verification, purge_at: UnixTime) -> Result<(), StoreError> {
        let id = v.id.as_str();
        let value = encode(v)?;
        (&self.verifications, &self.purge_at).transaction(|(vt, pt)| {
            vt.insert(id, value.as_slice())?;
            pt.insert(time_key(purge_at, id), Vec::<u8>::new())?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        match self.verifications.get(id.as_str())? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Applies `change` to a verification atomically: the read and the
    /// write are one compare-and-swap, retried if another request wrote in
    /// between, so two concurrent checks can never both use the same try.
    /// `change` may therefore run more than once and must not have side
    /// effects. Returns `None` when no verification has this id.
    pub fn update<T>(
        &self,
        id: &VerificationId,
        mut change: impl FnMut(&mut Verification) -> T,
    ) -> Result<Option<(T, Verification)>, StoreError> {
        loop {
            let Some(old) = self.verifications.get(id.as_str())? else { return Ok(None) };
            let mut v: Verification = decode(&old)?;
            let before = v.clone();
            let result = change(&mut v);
            if v == before {
                return Ok(Some((result, v)));
            }
            let new = encode(&v)?;
            if self.verifications.compare_and_swap(id.as_str(), Some(old), Some(new))?.is_ok() {
                return Ok(Some((result, v)));
            }
        }
    }

    /// Records that the Graph API accepted a verification's message, and
    /// applies any statuses for it that arrived first.
    pub fn record_accepted(
        &self,
        id: &VerificationId,
        message_id: &str,
    ) -> Result<Option<Verification>, StoreError> {
        let trees = (&self.verifications, &self.messages, &self.parked);
        let result = trees.transaction(|(vt, mt, pt)| {
            let Some(mut v) = load(vt, id)? else { return Ok(None) };
            v.record_accepted(message_id);
            if v.delivery.message_id.as_deref() == Some(message_id) {
                mt.insert(message_id, id.as_str())?;
                if let Some(bytes) = pt.remove(message_id)? {
                    let parked: Parked = decode(&bytes).map_err(abort)?;
                    for event in &parked.events {
                        v.delivery.apply(event);
                    }
                }
            }
            save(vt, &v)?;
            Ok(Some(v))
        })?;
        Ok(result)
    }

    /// Applies the statuses of one webhook body, all or nothing: a body
    /// either leaves every change it makes, or (on a storage failure) none.
    ///
    /// A status is matched by its message id; failing that, by the
    /// verification id in `biz_opaque_callback_data`, which covers a status
    /// that overtakes the Graph API's own answer and a send whose answer
    /// never came. A status that matches nothing is parked, and applied by
    /// [`Store::record_accepted`] if its message turns up later; Meta cannot
    /// be asked for it again.
    pub fn record_statuses(
        &self,
        updates: &[StatusUpdate],
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        if updates.is_empty() {
            return Ok(Tally::default());
        }
        let trees = (&self.verifications, &self.messages, &self.parked, &self.parked_by_time);
        let tally = trees.transaction(|(vt, mt, pt, ptt)| {
            let mut tally = Tally::default();
            for update in updates {
                if let Some(changed) = apply_to_verification(vt, mt, update)? {
                    if changed {
                        tally.applied += 1;
                    } else {
                        tally.unchanged += 1;
                    }
                } else {
                    park(pt, ptt, update, now)?;
                    tally.parked += 1;
                }
            }
            Ok(tally)
        })?;
        Ok(tally)
    }
}

fn load(vt: &TransactionalTree, id: &VerificationId) -> TxResult<Option<Verification>> {
    match vt.get(id.as_str())? {
        Some(bytes) => Ok(Some(decode(&bytes).map_err(abort)?)),
        None => Ok(None),
    }
}

fn save(vt: &TransactionalTree, v: &Verification) -> TxResult<()> {
    vt.insert(v.id.as_str(), encode(v).map_err(abort)?)?;
    Ok(())
}

/// `Some(changed)` when the status belongs to a verification, `None` when
/// no verification claims its message.
fn apply_to_verification(
    vt: &TransactionalTree,
    mt: &TransactionalTree,
    update: &StatusUpdate,
) -> TxResult<Option<bool>> {
    let indexed = mt
        .get(update.message_id.as_bytes())?
        .and_then(|raw| std::str::from_utf8(&raw).ok().and_then(VerificationId::parse));
    let Some(id) = indexed.clone().or_else(|| update.callback.clone()) else { return Ok(None) };
    let Some(mut v) = load(vt, &id)? else { return Ok(None) };
    if !v.link_message(&update.message_id) {
        return Ok(None);
    }
    let changed = v.delivery.apply(&update.event);
    if indexed.is_none() {
        mt.insert(update.message_id.as_bytes(), id.as_str())?;
        save(vt, &v)?;
    } else if changed {
        save(vt, &v)?;
    }
    Ok(Some(changed))
}

fn park(
    pt: &TransactionalTree,
    ptt: &TransactionalTree,
    update: &StatusUpdate,
    now: UnixTime,
) -> TxResult<()> {
    let key = update.message_id.as_bytes();
    let mut parked: Parked = match pt.get(key)? {
        Some(bytes) => decode(&bytes).map_err(abort)?,
        None => {
            ptt.insert(time_key(now, &update.message_id), Vec::<u8>::new())?;
            Parked { first_seen: now, events: Vec::new() }
        }
    };
    if !parked.events.contains(&update.event) {
        parked.events.push(update.event.clone());
        pt.insert(key, encode(&parked).map_err(abort)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
