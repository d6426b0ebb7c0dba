//! Logging through tracing-subscriber, and one span per request.
//!
//! The span carries the method, the path (never the query string: the
//! webhook handshake puts the verify token there; paths hold nothing
//! secret, only verification ids) and a request id that is also sent back
//! as `X-Request-Id`. The route pattern is not looked up: that costs a
//! second regex walk of the routing table on every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

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
        path = %req.path(),
        request_id = %request_id,
    );
    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let latency_us = started.elapsed().as_micros() as u64;
    tracing::info!(parent: &span, status = response.status().as_u16(), latency_us, "request finished");
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(response)
}
