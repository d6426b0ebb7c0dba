//! Logging through tracing-subscriber, and one span per request.
//!
//! The span carries the method, the path (never the query string: the
//! webhook handshake puts the verify token there) and a request id that is
//! also sent back as `X-Request-Id`. A path holds only verification ids
//! when clients use the API as documented; one that put a phone number or a
//! code in it would not see it logged, nor could a path forge log lines
//! (see `LoggedPath`). The route pattern is not looked up: that costs a
//! second regex walk of the routing table on every request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::routes::AppState;

/// Installs the global subscriber. A second call (tests start many apps in
/// one process) keeps the first.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
    // Request ids count up from a random start, so that two runs, or two
    // instances behind one load balancer, do not hand out the same ids.
    let mut start = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut start).is_ok() {
        let _ = NEXT_REQUEST.compare_exchange(
            1,
            u64::from_le_bytes(start),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

pub async fn trace_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = format!("{:016x}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed));
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %LoggedPath(req.path()),
        request_id = %request_id,
    );
    let started = Instant::now();
    // Counted while its handler runs: the write-ahead log needs to know
    // when every request in the server waits for it.
    let serving = req.app_data::<web::Data<AppState>>().and_then(|state| state.store.serving());
    let mut response = next.call(req).instrument(span.clone()).await?;
    drop(serving);
    let latency_us = started.elapsed().as_micros() as u64;
    tracing::info!(parent: &span, status = response.status().as_u16(), latency_us, "request finished");
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(response)
}

/// A request's path as it is logged (formatted only if the span is).
///
/// The path is the client's, unauthenticated, so what is logged of it is
/// made harmless: numbers are masked (a run that looks like a phone number
/// as `[number]`, then every digit of a segment that still has four or
/// more, which covers codes and numbers written with other separators);
/// control characters, line separators and bidirectional overrides are
/// escaped, so that a decoded `%0a` cannot start a forged log line nor
/// `%1b` drive a terminal; and only the first `MAX_LOGGED_PATH` characters
/// are kept.
struct LoggedPath<'a>(&'a str);

/// Characters of a path that are logged; the rest is cut, with `…`.
const MAX_LOGGED_PATH: usize = 256;

impl std::fmt::Display for LoggedPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = String::new();
        for (i, segment) in self.0.split('/').enumerate() {
            if i > 0 {
                shown.push('/');
            }
            if shown.chars().count() > MAX_LOGGED_PATH {
                break;
            }
            if crate::domain::VerificationId::parse(segment).is_some() {
                shown.push_str(segment);
            } else {
                // Decoded first, so that `%2b1%20555...` is seen as a number.
                let masked = crate::domain::redact_numbers(&percent_decoded(segment));
                if masked.chars().filter(char::is_ascii_digit).count() >= 4 {
                    shown.extend(masked.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }));
                } else {
                    shown.push_str(&masked);
                }
            }
        }
        for (n, c) in shown.chars().enumerate() {
            if n == MAX_LOGGED_PATH {
                return f.write_str("…");
            }
            if unsafe_in_a_log(c) {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Characters that would let text in a log line pass for something else:
/// controls (line breaks and terminal escapes among them), Unicode line
/// and paragraph separators, and bidirectional overrides.
fn unsafe_in_a_log(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `%XX` escapes replaced by their bytes (invalid ones kept as they are).
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.filter(|_| bytes[i] == b'%').and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::LoggedPath;

    #[test]
    fn request_ids_count_from_a_random_start() {
        // No request goes through this process's unit tests, so the count
        // is still at its first value until `init` moves it.
        super::init("off");
        let first = super::NEXT_REQUEST.load(std::sync::atomic::Ordering::Relaxed);
        assert_ne!(first, 1, "request ids start at 1 again");
    }

    #[test]
    fn numbers_in_a_path_are_masked_and_ids_kept() {
        let id = "0123456789abcdef0123456789abcdef";
        let path = format!("/v1/verifications/{id}/check");
        assert_eq!(LoggedPath(&path).to_string(), path);
        assert_eq!(
            LoggedPath("/v1/verifications/+15550100001").to_string(),
            "/v1/verifications/[number]"
        );
        assert_eq!(LoggedPath("/v1/x/15550100001/y").to_string(), "/v1/x/[number]/y");
        assert_eq!(LoggedPath("/x/%2b1%20555%20123%204567").to_string(), "/x/[number]");
        assert_eq!(LoggedPath("/x/100%25/%zz").to_string(), "/x/100%/%zz");
        assert_eq!(LoggedPath("/x/%2b1%5f555%5f0100%5f001").to_string(), "/x/+#_###_####_###");
        assert_eq!(LoggedPath("/v1/verifications/123456").to_string(), "/v1/verifications/######");
        assert_eq!(LoggedPath("/sandbox/graph/v21.0").to_string(), "/sandbox/graph/v21.0");
    }

    #[test]
    fn nothing_in_a_path_can_forge_a_log_line_or_reach_a_terminal() {
        let logged = LoggedPath(
            "/x%0a2026-12-05T00:00:00Z%20ERROR%20forged%0d%1b[31mred/%00/%e2%80%a8/%e2%80%ae",
        )
        .to_string();
        assert!(!logged.chars().any(super::unsafe_in_a_log), "{logged:?}");
        assert!(logged.contains("\\u{a}") && logged.contains("\\u{1b}"), "{logged:?}");
        assert!(logged.contains("\\u{2028}") && logged.contains("\\u{202e}"), "{logged:?}");
    }

    #[test]
    fn long_paths_are_cut() {
        let path = format!("/{}", "a".repeat(70_000));
        let logged = LoggedPath(&path).to_string();
        assert_eq!(logged.chars().count(), super::MAX_LOGGED_PATH + 1);
        assert!(logged.ends_with('…'));
    }
}
