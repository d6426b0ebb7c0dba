//! Wall-clock time, injected so that rules about expiry can be tested
//! without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Unix time in whole seconds.
pub type UnixTime = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_at(now: UnixTime) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(now)))
    }

    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }

    pub fn set(&self, now: UnixTime) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

/// Formats a unix time as RFC 3339 in UTC, e.g. `2026-12-04T16:35:10Z`.
pub fn rfc3339(t: UnixTime) -> String {
    Rfc3339(t).to_string()
}

/// A unix time that displays and serializes as RFC 3339 in UTC, without
/// allocating: what the API's answers are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub UnixTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use time::format_description::well_known::Rfc3339 as Format;
        // The longest form (a six-digit year with its sign) fits easily.
        let mut buffer = [0u8; 40];
        let mut out = &mut buffer[..];
        let written = time::OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|d| d.format_into(&mut out, &Format).ok())
            .and_then(|n| std::str::from_utf8(&buffer[..n]).ok());
        f.write_str(written.unwrap_or("1970-01-01T00:00:00Z"))
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_402_110), "2026-12-04T16:35:10Z");
        assert_eq!(
            serde_json::to_string(&Rfc3339(1_796_402_110)).unwrap(),
            "\"2026-12-04T16:35:10Z\""
        );
    }

    #[test]
    fn rfc3339_of_a_time_out_of_range_is_the_epoch() {
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MIN), "1970-01-01T00:00:00Z");
    }
}
