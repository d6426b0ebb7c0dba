//! Test numbers: each one makes the stand-in behave one way.

use std::time::Duration;

/// What the stand-in does with a message to a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// sent, delivered, then read.
    DeliveredAndRead,
    /// sent and delivered; never read.
    DeliveredNotRead,
    /// Accepted, then failed with 131026 (not on WhatsApp).
    NotOnWhatsApp,
    /// Accepted, then failed with 131056 (pair rate limit).
    PairRateLimited,
    /// Refused at once with 132001 (template missing in that language).
    TemplateMissing,
    /// sent at once, delivered only after a long delay, then read.
    SlowDelivery,
}

/// The table the README documents. Every other number behaves like the
/// first row.
pub const TEST_NUMBERS: &[(&str, Outcome)] = &[
    ("+15550100001", Outcome::DeliveredAndRead),
    ("+15550100002", Outcome::DeliveredNotRead),
    ("+15550100003", Outcome::NotOnWhatsApp),
    ("+15550100004", Outcome::PairRateLimited),
    ("+15550100005", Outcome::TemplateMissing),
    ("+15550100006", Outcome::SlowDelivery),
];

/// What the SMS stand-in does with a message to a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsOutcome {
    Delivered,
    /// Accepted, then undelivered with 30003 (unreachable handset).
    Undelivered,
    /// Refused at once with 21211 (invalid 'To' number).
    Refused,
}

/// The SMS table the README documents; every other number is delivered.
pub const SMS_TEST_NUMBERS: &[(&str, SmsOutcome)] =
    &[("+15550100008", SmsOutcome::Undelivered), ("+15550100009", SmsOutcome::Refused)];

impl SmsOutcome {
    pub fn for_number(e164: &str) -> Self {
        SMS_TEST_NUMBERS
            .iter()
            .find(|(number, _)| *number == e164)
            .map_or(Self::Delivered, |(_, outcome)| *outcome)
    }
}

impl Outcome {
    /// The outcome for a number given as the Graph API gets it (digits).
    pub fn for_digits(digits: &str) -> Self {
        TEST_NUMBERS
            .iter()
            .find(|(number, _)| &number[1..] == digits)
            .map_or(Self::DeliveredAndRead, |(_, outcome)| *outcome)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeliveredAndRead => "delivered_and_read",
            Self::DeliveredNotRead => "delivered_not_read",
            Self::NotOnWhatsApp => "failed_131026",
            Self::PairRateLimited => "failed_131056",
            Self::TemplateMissing => "refused_132001",
            Self::SlowDelivery => "slow_delivery",
        }
    }
}

/// When the stand-in reports each status, counted from the send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub sent: Duration,
    pub delivered: Duration,
    pub read: Duration,
    /// When a slow delivery is finally delivered.
    pub slow_delivered: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            sent: Duration::from_millis(200),
            delivered: Duration::from_millis(700),
            read: Duration::from_secs(3),
            slow_delivered: Duration::from_secs(45),
        }
    }
}

/// One status the stand-in will report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub after: Duration,
    pub status: &'static str,
    /// `(code, title, details)` for a failure.
    pub error: Option<(i64, &'static str, &'static str)>,
}

impl Outcome {
    /// The statuses this outcome produces, in the order sent.
    pub fn steps(self, t: &Timing) -> Vec<Step> {
        let step = |after, status| Step { after, status, error: None };
        match self {
            Self::DeliveredAndRead => vec![
                step(t.sent, "sent"),
                step(t.delivered, "delivered"),
                step(t.read, "read"),
            ],
            Self::DeliveredNotRead => vec![step(t.sent, "sent"), step(t.delivered, "delivered")],
            Self::NotOnWhatsApp => vec![Step {
                after: t.sent,
                status: "failed",
                error: Some((
                    131026,
                    "Message undeliverable",
                    "Unable to deliver message: the recipient is not a WhatsApp user or has not accepted the terms.",
                )),
            }],
            Self::PairRateLimited => vec![Step {
                after: t.sent,
                status: "failed",
                error: Some((
                    131056,
                    "(Business Account, Consumer Account) pair rate limit hit",
                    "Too many messages sent from this phone number to the same phone number in a short period of time.",
                )),
            }],
            Self::TemplateMissing => Vec::new(),
            Self::SlowDelivery => vec![
                step(t.sent, "sent"),
                step(t.slow_delivered, "delivered"),
                step(t.slow_delivered + t.read, "read"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_numbers_are_valid_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for (number, outcome) in TEST_NUMBERS {
            assert!(crate::domain::PhoneNumber::parse(number).is_ok(), "{number}");
            assert!(seen.insert(outcome.as_str()), "{number}");
            assert_eq!(Outcome::for_digits(&number[1..]), *outcome);
        }
        assert_eq!(Outcome::for_digits("15550009999"), Outcome::DeliveredAndRead);
    }
}
