//! A verification: one code sent to one number, its tries, and how far its
//! delivery has gone.

use std::collections::BTreeMap;
use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;
use crate::domain::PhoneNumber;

/// 128 random bits as 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VerificationId(String);

impl VerificationId {
    pub fn generate(rng: &SystemRandom) -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 16];
        rng.fill(&mut bytes)?;
        Ok(Self(hex::encode(bytes)))
    }

    /// Accepts only the shape `generate` produces; anything else cannot name
    /// a verification.
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = raw.len() == 32 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Pending,
    Approved,
    Expired,
    MaxAttemptsReached,
    /// The code could not be handed to WhatsApp at all.
    Failed,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Expired => "expired",
            Self::MaxAttemptsReached => "max_attempts_reached",
            Self::Failed => "failed",
        }
    }
}

/// How far a message has got. The declaration order is the order of
/// meaning: a later variant always wins over an earlier one.
///
/// `failed` ranks below `delivered` because a user with several devices can
/// have the message fail on one and arrive on another; Meta then reports
/// `failed` and `delivered` in either order, and the message did arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Created, not yet answered by the Graph API.
    Queued,
    /// The Graph API took the message and gave it an id.
    Accepted,
    Sent,
    Failed,
    Delivered,
    Read,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Accepted => "accepted",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }

    /// The statuses Meta reports by webhook, by their wire names. Any other
    /// value (`played`, `deleted`, ones not yet invented) is not a step of
    /// delivery and is ignored.
    pub fn from_webhook(value: &str) -> Option<Self> {
        match value {
            "sent" => Some(Self::Sent),
            "delivered" => Some(Self::Delivered),
            "read" => Some(Self::Read),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// An error reported for a message, by the Graph API's answer or by a
/// `failed` status. `code` is Meta's error code; it is absent when waverify
/// itself could not reach Meta (a timeout, a refused connection).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeliveryError {
    pub code: Option<i64>,
    pub title: String,
    pub details: Option<String>,
}

/// A status Meta reported for a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub status: DeliveryStatus,
    pub timestamp: UnixTime,
    pub error: Option<DeliveryError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub status: DeliveryStatus,
    pub message_id: Option<String>,
    /// For each status seen, the earliest time Meta gave for it.
    pub timestamps: BTreeMap<DeliveryStatus, UnixTime>,
    pub error: Option<DeliveryError>,
    /// When `error` happened; decides between several errors.
    error_at: Option<UnixTime>,
}

impl Delivery {
    fn queued() -> Self {
        Self {
            status: DeliveryStatus::Queued,
            message_id: None,
            timestamps: BTreeMap::new(),
            error: None,
            error_at: None,
        }
    }

    /// Folds one status into the delivery. The result depends only on the
    /// set of statuses folded in, never on their order or repetition:
    /// the status is the highest seen, each timestamp the earliest seen, and
    /// the error the earliest (then lowest) seen. So duplicates and
    /// reordering by Meta cannot move a delivery backwards. Returns whether
    /// anything changed.
    pub fn apply(&mut self, event: &StatusEvent) -> bool {
        let before = self.clone();
        self.status = self.status.max(event.status);
        self.timestamps
            .entry(event.status)
            .and_modify(|t| *t = (*t).min(event.timestamp))
            .or_insert(event.timestamp);
        if let Some(error) = &event.error {
            self.keep_earliest_error(event.timestamp, error);
        }
        *self != before
    }

    fn keep_earliest_error(&mut self, at: UnixTime, error: &DeliveryError) {
        let candidate = (at, error);
        let replace = match (&self.error_at, &self.error) {
            (Some(t), Some(e)) => candidate < (*t, e),
            _ => true,
        };
        if replace {
            self.error = Some(error.clone());
            self.error_at = Some(at);
        }
    }
}

/// The outcome of a check that was allowed to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    Approved,
    Wrong {
        attempts_left: u32,
    },
    /// That was the last allowed try; the verification is now dead.
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub id: VerificationId,
    pub to: PhoneNumber,
    #[serde(with = "hex_bytes")]
    pub code_tag: Vec<u8>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub attempts_left: u32,
    /// As stored; `status_at` also accounts for expiry.
    pub status: VerificationStatus,
    pub delivery: Delivery,
}

impl Verification {
    pub fn new(
        id: VerificationId,
        to: PhoneNumber,
        code_tag: Vec<u8>,
        now: UnixTime,
        ttl_seconds: i64,
        max_attempts: u32,
    ) -> Self {
        Self {
            id,
            to,
            code_tag,
            created_at: now,
            expires_at: now + ttl_seconds,
            attempts_left: max_attempts,
            status: VerificationStatus::Pending,
            delivery: Delivery::queued(),
        }
    }

    /// The status as it is at `now`: a pending verification past its expiry
    /// is expired even if nothing has written that down yet.
    pub fn status_at(&self, now: UnixTime) -> VerificationStatus {
        match self.status {
            VerificationStatus::Pending if now >= self.expires_at => VerificationStatus::Expired,
            other => other,
        }
    }

    /// Counts one check. `code_matches` must come from a constant-time
    /// comparison. A verification that is no longer pending refuses the
    /// check and reports its status, so a code can never approve twice.
    pub fn check(
        &mut self,
        now: UnixTime,
        code_matches: bool,
    ) -> Result<CheckOutcome, VerificationStatus> {
        match self.status_at(now) {
            VerificationStatus::Pending => {}
            other => {
                self.status = other;
                return Err(other);
            }
        }
        if code_matches {
            self.status = VerificationStatus::Approved;
            return Ok(CheckOutcome::Approved);
        }
        self.attempts_left = self.attempts_left.saturating_sub(1);
        if self.attempts_left == 0 {
            self.status = VerificationStatus::MaxAttemptsReached;
            Ok(CheckOutcome::Exhausted)
        } else {
            Ok(CheckOutcome::Wrong { attempts_left: self.attempts_left })
        }
    }

    /// The Graph API accepted the message under `message_id`.
    pub fn record_accepted(&mut self, message_id: &str) {
        self.link_message(message_id);
        self.delivery.status = self.delivery.status.max(DeliveryStatus::Accepted);
    }

    /// Ties a message id to this verification, if it has none yet. Returns
    /// whether `message_id` is now this verification's message.
    pub fn link_message(&mut self, message_id: &str) -> bool {
        match &self.delivery.message_id {
            Some(known) => known == message_id,
            None => {
                self.delivery.message_id = Some(message_id.to_owned());
                true
            }
        }
    }

    /// The Graph API refused the message, or could not be reached. When
    /// `definitive`, the code cannot arrive and the verification fails;
    /// otherwise (a timeout, where Meta may still have taken the message)
    /// it stays pending so that a code that did arrive can still be used.
    pub fn record_send_failure(&mut self, error: DeliveryError, now: UnixTime, definitive: bool) {
        self.delivery.apply(&StatusEvent {
            status: DeliveryStatus::Failed,
            timestamp: now,
            error: Some(error),
        });
        if definitive && self.status == VerificationStatus::Pending {
            self.status = VerificationStatus::Failed;
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verification(max_attempts: u32) -> Verification {
        let id = VerificationId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let to = PhoneNumber::parse("+15550001234").unwrap();
        Verification::new(id, to, vec![1, 2, 3], 1_000, 600, max_attempts)
    }

    fn event(status: DeliveryStatus, timestamp: i64) -> StatusEvent {
        StatusEvent { status, timestamp, error: None }
    }

    #[test]
    fn right_code_approves_once() {
        let mut v = verification(5);
        assert_eq!(v.check(1_001, true), Ok(CheckOutcome::Approved));
        assert_eq!(v.check(1_002, true), Err(VerificationStatus::Approved));
    }

    #[test]
    fn wrong_codes_run_out() {
        let mut v = verification(3);
        assert_eq!(v.check(1_001, false), Ok(CheckOutcome::Wrong { attempts_left: 2 }));
        assert_eq!(v.check(1_001, false), Ok(CheckOutcome::Wrong { attempts_left: 1 }));
        assert_eq!(v.check(1_001, false), Ok(CheckOutcome::Exhausted));
        assert_eq!(v.check(1_001, true), Err(VerificationStatus::MaxAttemptsReached));
    }

    #[test]
    fn expiry_is_exact() {
        let mut v = verification(5);
        assert_eq!(v.status_at(1_599), VerificationStatus::Pending);
        assert_eq!(v.status_at(1_600), VerificationStatus::Expired);
        assert_eq!(v.check(1_600, true), Err(VerificationStatus::Expired));
        assert_eq!(v.status, VerificationStatus::Expired);
    }

    #[test]
    fn failed_verification_refuses_checks() {
        let mut v = verification(5);
        let error = DeliveryError { code: Some(132001), title: "t".into(), details: None };
        v.record_send_failure(error, 1_000, true);
        assert_eq!(v.check(1_001, true), Err(VerificationStatus::Failed));
        assert_eq!(v.delivery.status, DeliveryStatus::Failed);
    }

    #[test]
    fn delivery_never_moves_backwards() {
        use DeliveryStatus::*;
        let mut d = Delivery::queued();
        assert!(d.apply(&event(Read, 30)));
        assert!(d.apply(&event(Delivered, 20)));
        assert!(d.apply(&event(Sent, 10)));
        assert_eq!(d.status, Read);
        assert!(!d.apply(&event(Sent, 10)), "a duplicate changes nothing");
        assert!(!d.apply(&event(Sent, 15)), "a later duplicate keeps the first time");
        assert_eq!(d.timestamps[&Sent], 10);
    }

    #[test]
    fn delivered_after_failed_wins_and_keeps_the_error() {
        use DeliveryStatus::*;
        let error = DeliveryError { code: Some(131000), title: "x".into(), details: None };
        let mut d = Delivery::queued();
        d.apply(&StatusEvent { status: Failed, timestamp: 5, error: Some(error.clone()) });
        d.apply(&event(Delivered, 6));
        assert_eq!(d.status, Delivered);
        assert_eq!(d.error, Some(error));
    }

    #[test]
    fn accepted_does_not_undo_a_status_that_came_first() {
        let mut v = verification(5);
        v.link_message("wamid.A");
        v.delivery.apply(&event(DeliveryStatus::Delivered, 3));
        v.record_accepted("wamid.A");
        assert_eq!(v.delivery.status, DeliveryStatus::Delivered);
    }

    #[test]
    fn ids_parse_only_in_their_own_shape() {
        let rng = SystemRandom::new();
        let id = VerificationId::generate(&rng).unwrap();
        assert_eq!(VerificationId::parse(id.as_str()), Some(id));
        for bad in ["", "0123", "0123456789ABCDEF0123456789ABCDEF", "../../etc/passwd"] {
            assert_eq!(VerificationId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stored_form_round_trips() {
        let v = verification(5);
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(serde_json::from_slice::<Verification>(&bytes).unwrap(), v);
    }
}
