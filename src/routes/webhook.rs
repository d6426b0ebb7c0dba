//! The endpoint Meta calls: the registration handshake, and signed status
//! POSTs.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::domain::{
    redact_numbers, Channel, DeliveryError, DeliveryStatus, StatusEvent, VerificationId,
};
use crate::error::ApiError;
use crate::fallback;
use crate::routes::{declared_length, read_limited, AppState};
use crate::store::StatusUpdate;
use crate::whatsapp::payload::{self, StatusReport};
use crate::whatsapp::signature::{self, SignatureError};

/// Meta's bodies can reach about 3 MB.
pub const WEBHOOK_LIMIT: usize = 3 * 1024 * 1024;

/// `GET /webhook?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C`:
/// answers C, as plain text, only when T is the configured token. This
/// request carries no signature and must not be asked for one.
pub async fn handshake(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|_| ApiError::HandshakeRefused)?
        .into_inner();
    let mut query = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        // A field given twice is not Meta's: refused rather than one of
        // the two picked.
        if name.starts_with("hub.") && query.contains_key(&name) {
            tracing::warn!("webhook verification handshake refused: a field repeated");
            return Err(ApiError::HandshakeRefused);
        }
        query.insert(name, value);
    }
    let field = |name: &str| query.get(name).map(String::as_str);
    let token_ok =
        field("hub.verify_token").is_some_and(|t| state.verify_token.matches(t.as_bytes()));
    match (field("hub.mode"), field("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if token_ok && plausible(challenge) => {
            tracing::info!("webhook verification handshake answered");
            Ok(HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body(challenge.to_owned()))
        }
        _ => {
            tracing::warn!("webhook verification handshake refused");
            Err(ApiError::HandshakeRefused)
        }
    }
}

/// Meta's challenges are numbers; anything but a short run of visible
/// ASCII is refused rather than echoed back.
fn plausible(challenge: &str) -> bool {
    (1..=256).contains(&challenge.len()) && challenge.bytes().all(|b| b.is_ascii_graphic())
}

/// `POST /webhook`: checks the signature over the raw bytes, then applies
/// every status in the body, and answers 200 only once the changes are on
/// disk: Meta cannot be asked for a webhook again, so acknowledging one
/// that a crash could still lose would lose it for good.
pub async fn receive(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let refused = |e| match e {
        SignatureError::Missing => ApiError::SignatureMissing(signature::HEADER),
        SignatureError::Malformed => ApiError::SignatureMalformed(signature::HEADER),
        SignatureError::Mismatch => ApiError::SignatureMismatch(signature::HEADER),
    };
    declared_length(&req, WEBHOOK_LIMIT)?;
    let mut headers = req.headers().get_all(signature::HEADER);
    let header = headers.next().map(|v| v.as_bytes());
    if headers.next().is_some() {
        // Two signatures are never Meta's; refuse rather than pick one.
        return Err(ApiError::SignatureMalformed(signature::HEADER));
    }
    // Without a well-formed signature the body is not even read.
    let tag = signature::claimed_tag(header).map_err(refused)?;
    let body = read_limited(&req, body, WEBHOOK_LIMIT).await?;
    state.webhook.matches(&tag, &body).map_err(refused)?;
    let parsed = payload::parse(&body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;

    let now = state.clock.now();
    let (received, skipped_changes) = (parsed.statuses.len(), parsed.skipped_changes);
    let updates = updates(parsed.statuses, now);
    let statuses = updates.len();
    // Durable when it returns: see `Store::record_statuses`.
    let tally = state.store.record_statuses(updates, now).await?;
    let failures: Vec<_> =
        tally.failures.iter().filter(|f| f.channel == Channel::Whatsapp).collect();
    for failure in &failures {
        let (id, key, code) = (&failure.verification, &failure.number_key, failure.code);
        fallback::whatsapp_failed(&state.store, &state.fallback, id, key, code, now).await?;
    }
    if !failures.is_empty() {
        state.store.commit().await?;
    }

    tracing::info!(
        statuses = received,
        applied = tally.applied,
        unchanged = tally.unchanged,
        parked = tally.parked,
        ignored = received - statuses,
        skipped_changes,
        "webhook stored"
    );
    Ok(HttpResponse::Ok().json(Received { received }))
}

/// The answer to a webhook: how many statuses the body held.
#[derive(serde::Serialize)]
struct Received {
    received: usize,
}

/// A reported error as it may be stored: Meta's texts can hold numbers.
fn redacted(error: &DeliveryError) -> DeliveryError {
    DeliveryError {
        code: error.code,
        title: redact_numbers(&error.title),
        details: error.details.as_deref().map(redact_numbers),
    }
}

/// The statuses that are steps of delivery, as the store takes them.
/// Other values (`played`, `deleted`, ...) are counted and dropped.
fn updates(reports: Vec<StatusReport>, now: i64) -> Vec<StatusUpdate> {
    reports
        .into_iter()
        .filter_map(|report| {
            let status = report.status?;
            let failed = status == DeliveryStatus::Failed;
            Some(StatusUpdate {
                message_id: report.message_id,
                channel: Channel::Whatsapp,
                callback: report.callback.as_deref().and_then(VerificationId::parse),
                event: StatusEvent {
                    status,
                    timestamp: report.timestamp.unwrap_or(now),
                    error: if failed { report.error.as_ref().map(redacted) } else { None },
                },
            })
        })
        .collect()
}
