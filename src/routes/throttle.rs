//! Per-minute limits on the callers of send-code and check-code: one per
//! API key and one per client address. They protect the service, not a
//! number, so they live in memory and start afresh with the process.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use actix_web::HttpRequest;

use crate::clock::UnixTime;
use crate::domain::Limit;

/// Whose calls are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// The API key, shared by every address that uses it.
    ApiKey,
    /// One client address; `None` when the peer's is unknown.
    Address(Option<IpAddr>),
}

/// Counts in fixed windows; forgets windows that ended.
pub struct ClientLimiter {
    limit: Limit,
    counts: Mutex<HashMap<Subject, (UnixTime, u64)>>,
}

/// How many subjects are remembered before ended windows are swept out.
const SWEEP_ABOVE: usize = 10_000;

impl ClientLimiter {
    pub fn per_minute(max: u64) -> Self {
        Self { limit: Limit::per(60, max), counts: Mutex::new(HashMap::new()) }
    }

    /// Counts a call by `subject`, allowed `share` times the limit;
    /// `Err(retry_after)` past it.
    pub fn hit(&self, subject: Subject, now: UnixTime, share: u64) -> Result<(), i64> {
        let end = self.limit.window_end(now);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > SWEEP_ABOVE {
            counts.retain(|_, (window_end, _)| *window_end > now);
        }
        let entry = counts.entry(subject).or_insert((end, 0));
        if entry.0 != end {
            *entry = (end, 0);
        }
        if entry.1 >= self.limit.max.saturating_mul(share) {
            return Err(self.limit.retry_after(now));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// The caller's address: the last entry of the trusted proxy's header
/// when one is configured (the entry that proxy itself added; earlier
/// entries are whatever the client claimed), otherwise the peer address.
pub fn client_address(req: &HttpRequest, trusted_header: Option<&str>) -> Option<IpAddr> {
    if let Some(name) = trusted_header {
        let from_header = req
            .headers()
            .get_all(name)
            .last()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok());
        if from_header.is_some() {
            return from_header;
        }
    }
    req.peer_addr().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn counts_per_subject_and_rolls_over() {
        let limiter = ClientLimiter::per_minute(2);
        let a = Subject::Address(Some("192.0.2.1".parse().unwrap()));
        let b = Subject::Address(None);
        assert_eq!(limiter.hit(a, 60, 1), Ok(()));
        assert_eq!(limiter.hit(a, 119, 1), Ok(()));
        assert_eq!(limiter.hit(a, 119, 1), Err(1));
        assert_eq!(limiter.hit(b, 119, 1), Ok(()));
        assert_eq!(limiter.hit(a, 120, 1), Ok(()));
        assert_eq!(limiter.hit(Subject::ApiKey, 120, 3), Ok(()));
    }

    #[test]
    fn the_trusted_header_is_read_only_when_configured() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.9:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 203.0.113.7"))
            .to_http_request();
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_address(&req, None), Some(peer));
        assert_eq!(
            client_address(&req, Some("x-forwarded-for")),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(client_address(&req, Some("x-real-ip")), Some(peer), "absent header: the peer");
    }
}
