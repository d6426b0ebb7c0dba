//! What limits count, shared by both stores.

use crate::domain::Limit;

/// What is counted. Subjects are keyed hashes of numbers, never numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    NumberSendsPerHour,
    NumberSendsPerDay,
    NumberFailedChecksPerHour,
    DailySendBudget,
}

impl Counter {
    /// A short, stable name for keys.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Self::NumberSendsPerHour => 1,
            Self::NumberSendsPerDay => 2,
            Self::NumberFailedChecksPerHour => 3,
            Self::DailySendBudget => 4,
        }
    }
}

/// The counters one send to a number counts against, whatever its
/// channel: the number's hour and day, and the daily budget.
pub fn send_hits<'a>(
    limits: &crate::settings::LimitSettings,
    number_key: &'a str,
) -> [(Counter, &'a str, Limit); 3] {
    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;
    [
        (Counter::NumberSendsPerHour, number_key, Limit::per(HOUR, limits.number_sends_per_hour)),
        (Counter::NumberSendsPerDay, number_key, Limit::per(DAY, limits.number_sends_per_day)),
        (Counter::DailySendBudget, "all", Limit::per(DAY, limits.daily_send_budget)),
    ]
}

/// A limit said no; it allows again in `retry_after` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub counter: Counter,
    pub retry_after: i64,
}
