//! Fixed windows for counting: an hour, a day, a minute, aligned to the
//! unix epoch (UTC), so every instance and every restart agrees on them.

use crate::clock::UnixTime;

/// At most `max` events per window of `seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub seconds: i64,
    pub max: u64,
}

impl Limit {
    pub const fn per(seconds: i64, max: u64) -> Self {
        Self { seconds, max }
    }

    /// When the window holding `now` ends.
    pub fn window_end(self, now: UnixTime) -> UnixTime {
        now - now.rem_euclid(self.seconds) + self.seconds
    }

    /// Seconds from `now` until the window holding it ends: what a client
    /// refused by this limit is told to wait.
    pub fn retry_after(self, now: UnixTime) -> i64 {
        self.window_end(now) - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_and_roll_over_exactly() {
        let hour = Limit::per(3600, 10);
        assert_eq!(hour.window_end(7200), 10_800);
        assert_eq!(hour.window_end(10_799), 10_800);
        assert_eq!(hour.window_end(10_800), 14_400);
        assert_eq!(hour.retry_after(10_799), 1);
        assert_eq!(hour.retry_after(7200), 3600);
    }
}
