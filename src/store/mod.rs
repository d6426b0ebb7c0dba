//! State behind one small type with domain methods. Nothing outside this
//! module knows that sled is underneath.
//!
//! Writes are not durable when a method returns: call [`Store::commit`]
//! before acknowledging anything, so that a crash after the answer loses
//! nothing. Concurrent commits share one flush (see `commit.rs`).

mod commit;

use std::path::Path;

use crate::domain::{StatusEvent, Verification, VerificationId};

use commit::GroupCommit;

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

/// What became of one status reported by Meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    Applied,
    /// Already known: a duplicate, or a status that changes nothing.
    Unchanged,
    /// No verification has this message.
    Unknown,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    verifications: sled::Tree,
    /// message id (Meta's wamid) -> verification id
    messages: sled::Tree,
    commit: GroupCommit,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(Self {
            verifications: db.open_tree("verifications")?,
            messages: db.open_tree("messages")?,
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

    pub fn insert(&self, v: &Verification) -> Result<(), StoreError> {
        self.verifications.insert(v.id.as_str(), serde_json::to_vec(v)?)?;
        Ok(())
    }

    pub fn get(&self, id: &VerificationId) -> Result<Option<Verification>, StoreError> {
        match self.verifications.get(id.as_str())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
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
            let mut v: Verification = serde_json::from_slice(&old)?;
            let before = v.clone();
            let result = change(&mut v);
            if v == before {
                return Ok(Some((result, v)));
            }
            let new = serde_json::to_vec(&v)?;
            if self.verifications.compare_and_swap(id.as_str(), Some(old), Some(new))?.is_ok() {
                return Ok(Some((result, v)));
            }
        }
    }

    /// Records that the Graph API accepted a verification's message.
    pub fn record_accepted(
        &self,
        id: &VerificationId,
        message_id: &str,
    ) -> Result<Option<Verification>, StoreError> {
        let updated = self.update(id, |v| v.record_accepted(message_id))?;
        self.messages.insert(message_id, id.as_str())?;
        Ok(updated.map(|(_, v)| v))
    }

    /// Applies one status Meta reported. The message is found by its id;
    /// failing that, by the verification id waverify put in
    /// `biz_opaque_callback_data`, which covers a status that overtakes the
    /// Graph API's own answer and a send whose answer never came.
    pub fn record_status(
        &self,
        message_id: &str,
        callback: Option<&VerificationId>,
        event: &StatusEvent,
    ) -> Result<StatusOutcome, StoreError> {
        let known = self.messages.get(message_id)?;
        let id = match (&known, callback) {
            (Some(raw), _) => match std::str::from_utf8(raw).ok().and_then(VerificationId::parse) {
                Some(id) => id,
                None => return Ok(StatusOutcome::Unknown),
            },
            (None, Some(id)) => id.clone(),
            (None, None) => return Ok(StatusOutcome::Unknown),
        };
        let updated =
            self.update(&id, |v| v.link_message(message_id) && v.delivery.apply(event))?;
        let outcome = match updated {
            None => StatusOutcome::Unknown,
            Some((true, _)) => StatusOutcome::Applied,
            Some((false, v)) if v.delivery.message_id.as_deref() == Some(message_id) => {
                StatusOutcome::Unchanged
            }
            Some((false, _)) => StatusOutcome::Unknown,
        };
        if known.is_none() && outcome != StatusOutcome::Unknown {
            self.messages.insert(message_id, id.as_str())?;
        }
        Ok(outcome)
    }
}
