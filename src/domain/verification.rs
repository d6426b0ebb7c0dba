//! A verification: one code sent to one number, its tries, and how far its
//! delivery has gone.

use std::collections::BTreeMap;
use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;

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
    /// The login backend ended it.
    Canceled,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Expired => "expired",
            Self::MaxAttemptsReached => "max_attempts_reached",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
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
    pub fn queued() -> Self {
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
        if !self.changed_by(event) {
            return false;
        }
        self.status = self.status.max(event.status);
        self.timestamps
            .entry(event.status)
            .and_modify(|t| *t = (*t).min(event.timestamp))
            .or_insert(event.timestamp);
        if let Some(error) = &event.error {
            if self.takes_error(event.timestamp, error) {
                self.error = Some(error.clone());
                self.error_at = Some(event.timestamp);
            }
        }
        true
    }

    /// Whether [`Delivery::apply`] would change anything: a higher status,
    /// an earlier (or first) time for its status, or an earlier error.
    pub fn changed_by(&self, event: &StatusEvent) -> bool {
        event.status > self.status
            || self.timestamps.get(&event.status).is_none_or(|&t| event.timestamp < t)
            || event.error.as_ref().is_some_and(|e| self.takes_error(event.timestamp, e))
    }

    fn takes_error(&self, at: UnixTime, error: &DeliveryError) -> bool {
        match (&self.error_at, &self.error) {
            (Some(t), Some(e)) => (at, error) < (*t, e),
            _ => true,
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

/// One send of the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub channel: Channel,
    pub sent_at: UnixTime,
    pub delivery: Delivery,
}

/// Where one send goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Whatsapp,
    Sms,
}

/// What the login backend asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelChoice {
    #[default]
    Whatsapp,
    Sms,
    /// WhatsApp first, SMS when WhatsApp cannot deliver.
    Auto,
}

/// Why the number is being verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    #[default]
    Login,
    /// Confirming by SMS a number that will get its login codes over
    /// WhatsApp from then on.
    EnrolWhatsapp,
}

/// The keyed hash of the code sent on one channel. Each channel gets its
/// own code, so an approval tells which channel's code the user typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeTag {
    pub channel: Channel,
    #[serde(with = "hex_bytes")]
    pub tag: Vec<u8>,
}

/// Everything a new verification starts from.
pub struct NewVerification {
    pub id: VerificationId,
    pub to_masked: String,
    pub number_key: String,
    pub code_tags: Vec<CodeTag>,
    pub secret: Vec<u8>,
    pub choice: ChannelChoice,
    pub purpose: Purpose,
    pub first_channel: Channel,
    pub now: UnixTime,
    pub ttl_seconds: i64,
    pub max_attempts: u32,
    /// For `auto`, how long WhatsApp has to deliver before SMS takes over.
    pub fallback_after: Option<i64>,
}

/// What a check leaves of a verification: the tries left, the status,
/// and the channel whose code approved it. A check changes nothing else,
/// except that a verification it ends drops its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub attempts_left: u32,
    pub status: VerificationStatus,
    pub approved_channel: Option<Channel>,
}

/// What the Graph API said to one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Accepted {
        message_id: String,
    },
    /// `definitive`: the message certainly was not taken. After a timeout
    /// Meta may still have taken it and may still deliver.
    Failed {
        error: DeliveryError,
        definitive: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub id: VerificationId,
    /// The number as the API shows it; the number itself is only in
    /// `secret`.
    pub to_masked: String,
    /// A keyed hash of the number: what limits count by.
    pub number_key: String,
    pub code_tags: Vec<CodeTag>,
    pub choice: ChannelChoice,
    pub purpose: Purpose,
    /// Which channel's code approved the verification.
    pub approved_channel: Option<Channel>,
    /// For `auto`: when SMS takes over if WhatsApp has not delivered;
    /// `None` once it has, or when there is nothing to fall back to.
    pub fallback_at: Option<UnixTime>,
    /// The number and the codes, sealed; needed only to send again, and
    /// dropped as soon as the verification is over.
    #[serde(default, with = "opt_hex_bytes")]
    pub secret: Option<Vec<u8>>,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub attempts_left: u32,
    /// As stored; `status_at` also accounts for expiry.
    pub status: VerificationStatus,
    pub sends: Vec<Attempt>,
    /// The `Idempotency-Key` the verification was created or resent
    /// under, deleted with it.
    #[serde(default)]
    pub idempotency_keys: Vec<String>,
}

impl Verification {
    pub fn new(n: NewVerification) -> Self {
        let fallback_at = match (n.choice, n.first_channel, n.fallback_after) {
            (ChannelChoice::Auto, Channel::Whatsapp, Some(after)) => {
                // Never past the code's expiry: a fallback then is useless.
                Some((n.now + after).min(n.now + n.ttl_seconds - 1))
            }
            _ => None,
        };
        Self {
            id: n.id,
            to_masked: n.to_masked,
            number_key: n.number_key,
            code_tags: n.code_tags,
            choice: n.choice,
            purpose: n.purpose,
            approved_channel: None,
            fallback_at,
            secret: Some(n.secret),
            created_at: n.now,
            expires_at: n.now + n.ttl_seconds,
            attempts_left: n.max_attempts,
            status: VerificationStatus::Pending,
            sends: vec![Attempt {
                channel: n.first_channel,
                sent_at: n.now,
                delivery: Delivery::queued(),
            }],
            idempotency_keys: Vec::new(),
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

    /// The delivery of the latest send.
    pub fn delivery(&self) -> &Delivery {
        // `new` creates the first send and nothing removes one.
        &self.sends.last().expect("a verification has at least one send").delivery
    }

    pub fn last_sent_at(&self) -> UnixTime {
        self.sends.last().map_or(self.created_at, |a| a.sent_at)
    }

    /// Ends the verification with `status`, dropping what only a pending
    /// verification needs.
    fn finish(&mut self, status: VerificationStatus) {
        self.status = status;
        self.secret = None;
        self.fallback_at = None;
    }

    /// Counts one check. `matched` is the channel whose code was typed,
    /// found by constant-time comparisons, or `None` for a wrong code. A
    /// verification that is no longer pending refuses the check and reports
    /// its status, so a code can never approve twice.
    pub fn check(
        &mut self,
        now: UnixTime,
        matched: Option<Channel>,
    ) -> Result<CheckOutcome, VerificationStatus> {
        let (outcome, checked) = self.judge(now, matched);
        self.absorb_check(checked);
        outcome
    }

    /// What [`Verification::check`] would answer and leave behind, without
    /// changing anything: a store applies the result with
    /// [`Verification::absorb_check`], in place when it can.
    pub fn judge(
        &self,
        now: UnixTime,
        matched: Option<Channel>,
    ) -> (Result<CheckOutcome, VerificationStatus>, Checked) {
        let mut after = self.checked();
        match self.status_at(now) {
            VerificationStatus::Pending => {}
            other => {
                after.status = other;
                return (Err(other), after);
            }
        }
        if let Some(channel) = matched {
            after.approved_channel = Some(channel);
            after.status = VerificationStatus::Approved;
            return (Ok(CheckOutcome::Approved), after);
        }
        after.attempts_left = self.attempts_left.saturating_sub(1);
        if after.attempts_left == 0 {
            after.status = VerificationStatus::MaxAttemptsReached;
            (Ok(CheckOutcome::Exhausted), after)
        } else {
            (Ok(CheckOutcome::Wrong { attempts_left: after.attempts_left }), after)
        }
    }

    /// The fields a check changes, as they are.
    pub fn checked(&self) -> Checked {
        Checked {
            attempts_left: self.attempts_left,
            status: self.status,
            approved_channel: self.approved_channel,
        }
    }

    /// Brings in what a check left behind (`attempts_left`, and the status
    /// it ended the verification with, if it did), as a merge that only
    /// ever moves forward: attempts never come back, and only a pending
    /// verification takes the check's end. Every other write moves these
    /// fields the same way (none adds attempts, none makes a verification
    /// pending again), so merging a check that this verification already
    /// reflects, or one older than what it reflects, changes nothing. This
    /// is also how a logged check is replayed. Returns whether anything
    /// changed.
    pub fn absorb_check(&mut self, checked: Checked) -> bool {
        let mut changed = false;
        if checked.attempts_left < self.attempts_left {
            self.attempts_left = checked.attempts_left;
            changed = true;
        }
        if self.status == VerificationStatus::Pending
            && checked.status != VerificationStatus::Pending
        {
            if checked.status == VerificationStatus::Approved {
                self.approved_channel = checked.approved_channel;
            }
            self.finish(checked.status);
            changed = true;
        }
        changed
    }

    /// Ends a pending verification at the login backend's request.
    pub fn cancel(&mut self, now: UnixTime) -> Result<(), VerificationStatus> {
        match self.status_at(now) {
            VerificationStatus::Pending => {
                self.finish(VerificationStatus::Canceled);
                Ok(())
            }
            other => {
                self.finish(other);
                Err(other)
            }
        }
    }

    /// Drops the sealed number and code of a verification past its expiry.
    pub fn wipe_if_over(&mut self, now: UnixTime) {
        let status = self.status_at(now);
        if status != VerificationStatus::Pending {
            self.finish(status);
        }
    }

    /// Starts another send of the same code on the latest send's channel.
    pub fn add_send(&mut self, now: UnixTime) -> usize {
        let channel = self.sends.last().map_or(Channel::Whatsapp, |a| a.channel);
        self.add_send_on(channel, now)
    }

    fn add_send_on(&mut self, channel: Channel, now: UnixTime) -> usize {
        self.sends.push(Attempt { channel, sent_at: now, delivery: Delivery::queued() });
        self.sends.len() - 1
    }

    /// Whether an `auto` verification should go to SMS now: it is pending,
    /// has not gone to SMS yet, no WhatsApp send was delivered or read, and
    /// either the deadline passed, a WhatsApp send failed, or WhatsApp is
    /// switched off. A `delivered` that comes after the SMS went out
    /// changes nothing: the SMS is never recalled, and never sent twice.
    pub fn fallback_due(&self, now: UnixTime, whatsapp_off: bool) -> bool {
        let Some(deadline) = self.fallback_at else { return false };
        let whatsapp = || self.sends.iter().filter(|a| a.channel == Channel::Whatsapp);
        self.status_at(now) == VerificationStatus::Pending
            && !self.sends.iter().any(|a| a.channel == Channel::Sms)
            && !whatsapp().any(|a| a.delivery.status >= DeliveryStatus::Delivered)
            && (now >= deadline
                || whatsapp_off
                || whatsapp().any(|a| a.delivery.status == DeliveryStatus::Failed))
    }

    /// Sends the SMS code, if a fallback is due; returns the new send's
    /// index.
    pub fn fall_back(&mut self, now: UnixTime, whatsapp_off: bool) -> Option<usize> {
        if !self.fallback_due(now, whatsapp_off) {
            return None;
        }
        self.fallback_at = None;
        Some(self.add_send_on(Channel::Sms, now))
    }

    /// Records what the Graph API said to send number `index`.
    pub fn record_send(&mut self, index: usize, outcome: &SendOutcome, now: UnixTime) {
        let Some(attempt) = self.sends.get_mut(index) else { return };
        match outcome {
            SendOutcome::Accepted { message_id } => {
                if attempt.delivery.message_id.is_none() {
                    attempt.delivery.message_id = Some(message_id.clone());
                }
                attempt.delivery.status = attempt.delivery.status.max(DeliveryStatus::Accepted);
            }
            SendOutcome::Failed { error, definitive } => {
                attempt.delivery.apply(&StatusEvent {
                    status: DeliveryStatus::Failed,
                    timestamp: now,
                    error: Some(error.clone()),
                });
                // The code cannot arrive when no send ever got a message
                // out, every one failed, and no other channel is left to try.
                let nothing_else_out = self.fallback_at.is_none()
                    && self.sends.iter().all(|a| {
                        a.delivery.message_id.is_none()
                            && a.delivery.status == DeliveryStatus::Failed
                    });
                if *definitive && nothing_else_out && self.status == VerificationStatus::Pending {
                    self.finish(VerificationStatus::Failed);
                }
            }
        }
    }

    /// The send whose message is `message_id`. Failing that, with
    /// `claim`, the latest send with no message id yet takes it: the id
    /// came back in `biz_opaque_callback_data` before (or instead of) the
    /// Graph API's answer.
    ///
    /// Only a send on `channel` matches: a provider reports only its own
    /// messages, and its secret must not vouch for the other channel's.
    pub fn send_for_message(
        &mut self,
        message_id: &str,
        channel: Channel,
        claim: bool,
    ) -> Option<usize> {
        let on_channel = |a: &Attempt| a.channel == channel;
        if let Some(i) = self
            .sends
            .iter()
            .position(|a| on_channel(a) && a.delivery.message_id.as_deref() == Some(message_id))
        {
            return Some(i);
        }
        if !claim {
            return None;
        }
        let i =
            self.sends.iter().rposition(|a| on_channel(a) && a.delivery.message_id.is_none())?;
        self.sends[i].delivery.message_id = Some(message_id.to_owned());
        Some(i)
    }

    /// The key under which a number's pending verification is found: one
    /// per number and purpose, so an enrolment and a login do not collide.
    pub fn active_key(number_key: &str, purpose: Purpose) -> String {
        match purpose {
            Purpose::Login => number_key.to_owned(),
            Purpose::EnrolWhatsapp => format!("{number_key}|enrol"),
        }
    }

    pub fn message_ids(&self) -> impl Iterator<Item = &str> {
        self.sends.iter().filter_map(|a| a.delivery.message_id.as_deref())
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

mod opt_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| hex::decode(t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(choice: ChannelChoice, max_attempts: u32) -> Verification {
        Verification::new(NewVerification {
            id: VerificationId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            to_masked: "+1555*****234".to_owned(),
            number_key: "nk".into(),
            code_tags: vec![CodeTag { channel: Channel::Whatsapp, tag: vec![1, 2, 3] }],
            secret: vec![9],
            choice,
            purpose: Purpose::Login,
            first_channel: Channel::Whatsapp,
            now: 1_000,
            ttl_seconds: 600,
            max_attempts,
            fallback_after: Some(30),
        })
    }

    fn verification(max_attempts: u32) -> Verification {
        new(ChannelChoice::Whatsapp, max_attempts)
    }

    fn event(status: DeliveryStatus, timestamp: i64) -> StatusEvent {
        StatusEvent { status, timestamp, error: None }
    }

    fn refusal() -> SendOutcome {
        let error = DeliveryError { code: Some(132001), title: "t".into(), details: None };
        SendOutcome::Failed { error, definitive: true }
    }

    #[test]
    fn right_code_approves_once_and_drops_the_secret() {
        let mut v = verification(5);
        assert_eq!(v.check(1_001, Some(Channel::Whatsapp)), Ok(CheckOutcome::Approved));
        assert_eq!(v.secret, None);
        assert_eq!(v.check(1_002, Some(Channel::Whatsapp)), Err(VerificationStatus::Approved));
    }

    #[test]
    fn wrong_codes_run_out() {
        let mut v = verification(3);
        assert_eq!(v.check(1_001, None), Ok(CheckOutcome::Wrong { attempts_left: 2 }));
        assert_eq!(v.check(1_001, None), Ok(CheckOutcome::Wrong { attempts_left: 1 }));
        assert_eq!(v.check(1_001, None), Ok(CheckOutcome::Exhausted));
        assert_eq!(
            v.check(1_001, Some(Channel::Whatsapp)),
            Err(VerificationStatus::MaxAttemptsReached)
        );
        assert_eq!(v.secret, None);
    }

    #[test]
    fn a_logged_check_merges_forward_only() {
        // What the check logged: one try used, then approval.
        let mut checked = verification(5);
        checked.check(1_001, None).unwrap();
        let wrong = checked.checked();
        checked.check(1_002, Some(Channel::Whatsapp)).unwrap();
        let approved = checked.checked();

        // Merged into a copy from before the check: it catches up.
        let mut behind = verification(5);
        assert!(behind.absorb_check(wrong));
        assert_eq!(behind.attempts_left, 4);
        assert!(behind.absorb_check(approved));
        assert_eq!(behind.status, VerificationStatus::Approved);
        assert_eq!(behind.approved_channel, Some(Channel::Whatsapp));
        assert_eq!(behind.secret, None);
        assert!(!behind.absorb_check(approved), "idempotent");

        // Merged into a copy that is further on (more tries used, another
        // send made): nothing goes back.
        let mut ahead = verification(5);
        for _ in 0..3 {
            ahead.check(1_001, None).unwrap();
        }
        ahead.add_send(1_003);
        let before = ahead.clone();
        assert!(!ahead.absorb_check(wrong));
        assert_eq!(ahead, before);

        // An ended verification keeps its own end.
        let mut canceled = verification(5);
        canceled.cancel(1_001).unwrap();
        canceled.absorb_check(approved);
        assert_eq!(
            (canceled.status, canceled.approved_channel),
            (VerificationStatus::Canceled, None)
        );
    }

    #[test]
    fn expiry_is_exact() {
        let mut v = verification(5);
        assert_eq!(v.status_at(1_599), VerificationStatus::Pending);
        assert_eq!(v.status_at(1_600), VerificationStatus::Expired);
        assert_eq!(v.check(1_600, Some(Channel::Whatsapp)), Err(VerificationStatus::Expired));
        assert_eq!(v.status, VerificationStatus::Expired);
    }

    #[test]
    fn cancel_ends_a_pending_verification_only() {
        let mut v = verification(5);
        assert_eq!(v.cancel(1_001), Ok(()));
        assert_eq!((v.status, v.secret.is_none()), (VerificationStatus::Canceled, true));
        assert_eq!(v.cancel(1_002), Err(VerificationStatus::Canceled));
        assert_eq!(v.check(1_002, Some(Channel::Whatsapp)), Err(VerificationStatus::Canceled));
    }

    #[test]
    fn a_refused_only_send_fails_the_verification() {
        let mut v = verification(5);
        v.record_send(0, &refusal(), 1_000);
        assert_eq!(v.check(1_001, Some(Channel::Whatsapp)), Err(VerificationStatus::Failed));
        assert_eq!(v.delivery().status, DeliveryStatus::Failed);
    }

    #[test]
    fn a_refused_resend_leaves_the_first_send_usable() {
        let mut v = verification(5);
        v.record_send(0, &SendOutcome::Accepted { message_id: "wamid.1".into() }, 1_000);
        let second = v.add_send(1_060);
        v.record_send(second, &refusal(), 1_060);
        assert_eq!(v.status, VerificationStatus::Pending);
        assert_eq!(v.delivery().status, DeliveryStatus::Failed, "the latest send's delivery");
    }

    #[test]
    fn a_timed_out_send_keeps_the_verification_pending() {
        let mut v = verification(5);
        let error = DeliveryError { code: None, title: "timeout".into(), details: None };
        v.record_send(0, &SendOutcome::Failed { error, definitive: false }, 1_000);
        assert_eq!(v.status, VerificationStatus::Pending);
        assert_eq!(
            v.send_for_message("wamid.late", Channel::Whatsapp, true),
            Some(0),
            "its message id can still be claimed"
        );
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
        let i = v.send_for_message("wamid.A", Channel::Whatsapp, true).unwrap();
        v.sends[i].delivery.apply(&event(DeliveryStatus::Delivered, 3));
        v.record_send(i, &SendOutcome::Accepted { message_id: "wamid.A".into() }, 4);
        assert_eq!(v.delivery().status, DeliveryStatus::Delivered);
    }

    #[test]
    fn statuses_find_their_own_send() {
        let mut v = verification(5);
        v.record_send(0, &SendOutcome::Accepted { message_id: "wamid.1".into() }, 1_000);
        let second = v.add_send(1_060);
        v.record_send(second, &SendOutcome::Accepted { message_id: "wamid.2".into() }, 1_060);
        assert_eq!(v.send_for_message("wamid.1", Channel::Whatsapp, false), Some(0));
        assert_eq!(v.send_for_message("wamid.2", Channel::Whatsapp, true), Some(1));
        assert_eq!(
            v.send_for_message("wamid.3", Channel::Whatsapp, true),
            None,
            "no send is free to claim it"
        );
        assert_eq!(v.send_for_message("wamid.1", Channel::Sms, false), None, "another channel's");
    }

    #[test]
    fn auto_falls_back_once_on_failure_or_deadline_never_after_delivery() {
        let mut v = new(ChannelChoice::Auto, 5);
        assert_eq!(v.fallback_at, Some(1_030));
        assert!(!v.fallback_due(1_029, false));
        assert!(v.fallback_due(1_029, true), "WhatsApp switched off");
        assert!(v.fallback_due(1_030, false), "the deadline");
        let sms = v.fall_back(1_030, false).unwrap();
        assert_eq!(v.sends[sms].channel, Channel::Sms);
        assert_eq!(v.fall_back(1_031, false), None, "never twice");
        assert_eq!(v.add_send(1_100), 2, "a resend goes on the SMS channel");
        assert_eq!(v.sends[2].channel, Channel::Sms);

        let mut delivered = new(ChannelChoice::Auto, 5);
        delivered.sends[0].delivery.apply(&event(DeliveryStatus::Delivered, 1_010));
        assert!(!delivered.fallback_due(1_500, false), "delivered in time");

        let mut failed = new(ChannelChoice::Auto, 5);
        let error = DeliveryError { code: Some(131026), title: "x".into(), details: None };
        failed.record_send(0, &SendOutcome::Failed { error, definitive: true }, 1_001);
        assert_eq!(failed.status, VerificationStatus::Pending, "SMS can still carry it");
        assert!(failed.fallback_due(1_001, false));
        assert!(!new(ChannelChoice::Whatsapp, 5).fallback_due(2_000, true), "only auto falls back");
    }

    #[test]
    fn the_fallback_deadline_never_passes_expiry() {
        let template = new(ChannelChoice::Auto, 5);
        let v = Verification::new(NewVerification {
            id: template.id.clone(),
            to_masked: template.to_masked.clone(),
            number_key: template.number_key.clone(),
            code_tags: template.code_tags.clone(),
            secret: vec![],
            choice: ChannelChoice::Auto,
            purpose: Purpose::Login,
            first_channel: Channel::Whatsapp,
            now: 0,
            ttl_seconds: 60,
            max_attempts: 5,
            fallback_after: Some(600),
        });
        assert_eq!(v.fallback_at, Some(59));
    }

    #[test]
    fn approval_names_the_channel() {
        let mut v = new(ChannelChoice::Auto, 5);
        assert_eq!(v.check(1_001, Some(Channel::Sms)), Ok(CheckOutcome::Approved));
        assert_eq!(v.approved_channel, Some(Channel::Sms));
        assert_eq!(v.fallback_at, None);
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
