//! send-code, status poll and check-code.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::clock::{rfc3339, UnixTime};
use crate::domain::{
    CheckOutcome, Code, DeliveryError, DeliveryStatus, PhoneNumber, Verification, VerificationId,
    VerificationStatus,
};
use crate::error::ApiError;
use crate::routes::{read_json, AppState, Authenticated};
use crate::whatsapp::{GraphClient, SendError, Sent};

/// Request bodies on `/v1` are tiny; anything larger is refused unread.
const JSON_LIMIT: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendCodeRequest {
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    code: String,
}

/// A verification as the API shows it.
#[derive(Debug, Serialize)]
pub struct VerificationView {
    pub id: String,
    pub status: VerificationStatus,
    pub channel: &'static str,
    pub to: String,
    pub created_at: String,
    pub expires_at: String,
    pub attempts_left: u32,
    pub delivery: DeliveryView,
}

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub status: DeliveryStatus,
    pub message_id: Option<String>,
    pub timestamps: BTreeMap<DeliveryStatus, String>,
    pub error: Option<DeliveryError>,
}

impl VerificationView {
    pub fn new(v: &Verification, now: UnixTime) -> Self {
        Self {
            id: v.id.to_string(),
            status: v.status_at(now),
            channel: "whatsapp",
            to: v.to.masked(),
            created_at: rfc3339(v.created_at),
            expires_at: rfc3339(v.expires_at),
            attempts_left: v.attempts_left,
            delivery: DeliveryView {
                status: v.delivery.status,
                message_id: v.delivery.message_id.clone(),
                timestamps: v.delivery.timestamps.iter().map(|(s, t)| (*s, rfc3339(*t))).collect(),
                error: v.delivery.error.clone(),
            },
        }
    }
}

/// `POST /v1/verifications`: create a verification and send its code.
pub async fn send_code(
    _: Authenticated,
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    graph: web::Data<GraphClient>,
) -> Result<HttpResponse, ApiError> {
    let request: SendCodeRequest = read_json(&req, body, JSON_LIMIT).await?;
    let to = PhoneNumber::parse(&request.to)?;

    let (verification, code) = new_verification(&state, to)?;
    let purge_at = verification.expires_at + state.retention_seconds;
    state.store.insert(&verification, purge_at)?;

    let sent = graph.send_code(&verification.to, &code, &verification.id).await;
    drop(code);
    let verification = record_send(&state, &verification.id, sent)?;
    state.store.commit().await?;

    tracing::info!(
        verification_id = %verification.id,
        delivery = verification.delivery.status.as_str(),
        "verification created"
    );
    let now = state.clock.now();
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/verifications/{}", verification.id)))
        .json(VerificationView::new(&verification, now)))
}

fn new_verification(state: &AppState, to: PhoneNumber) -> Result<(Verification, Code), ApiError> {
    let rng_failed = || ApiError::Internal(anyhow::anyhow!("the system CSPRNG failed"));
    let code = Code::generate(&state.rng).map_err(|_| rng_failed())?;
    let id = VerificationId::generate(&state.rng).map_err(|_| rng_failed())?;
    let tag = state.codes.tag(id.as_str(), to.e164(), &code);
    let now = state.clock.now();
    let v = Verification::new(id, to, tag, now, state.code_ttl_seconds, state.max_attempts);
    Ok((v, code))
}

/// Writes down what the Graph API said. A refused or failed send shows in
/// the resource's delivery, never as an error of this request.
fn record_send(
    state: &AppState,
    id: &VerificationId,
    sent: Result<Sent, SendError>,
) -> Result<Verification, ApiError> {
    let updated = match sent {
        Ok(sent) => {
            if sent.message_status.as_deref().is_some_and(|s| s != "accepted") {
                tracing::warn!(
                    verification_id = %id,
                    message_status = sent.message_status.as_deref(),
                    "graph api holds the message"
                );
            }
            state.store.record_accepted(id, &sent.message_id)?
        }
        Err(error) => {
            log_send_failure(id, &error);
            let now = state.clock.now();
            let shown = error.to_delivery_error();
            let definitive = error.is_definitive();
            state
                .store
                .update(id, |v| v.record_send_failure(shown.clone(), now, definitive))?
                .map(|(_, v)| v)
        }
    };
    updated.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("verification {id} vanished")))
}

fn log_send_failure(id: &VerificationId, error: &SendError) {
    let class = error.class();
    let (code, http_status, fbtrace_id) = match error {
        SendError::Meta { code, http_status, fbtrace_id, .. } => {
            (Some(*code), Some(*http_status), fbtrace_id.as_deref())
        }
        SendError::BadAnswer { http_status, .. } => (None, Some(*http_status), None),
        SendError::Timeout(_) | SendError::Unreachable(_) => (None, None, None),
    };
    if class.needs_operator() {
        tracing::error!(verification_id = %id, class = class.as_str(), code, http_status, fbtrace_id, reason = %error, "send refused: check the configuration");
    } else {
        tracing::warn!(verification_id = %id, class = class.as_str(), code, http_status, fbtrace_id, reason = %error, "send failed");
    }
}

/// `GET /v1/verifications/{id}`: the verification as it is now.
pub async fn get(
    _: Authenticated,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = VerificationId::parse(&path).ok_or(ApiError::VerificationNotFound)?;
    let verification = state.store.get(&id)?.ok_or(ApiError::VerificationNotFound)?;
    Ok(HttpResponse::Ok().json(VerificationView::new(&verification, state.clock.now())))
}

/// `POST /v1/verifications/{id}/check`: is this the code?
pub async fn check(
    _: Authenticated,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let request: CheckRequest = read_json(&req, body, JSON_LIMIT).await?;
    let id = VerificationId::parse(&path).ok_or(ApiError::VerificationNotFound)?;
    let code = Code::parse(&request.code).map_err(|_| ApiError::InvalidCode)?;

    let now = state.clock.now();
    let (outcome, verification) = state
        .store
        .update(&id, |v| {
            // Compared whatever the status, so that the time taken does not
            // depend on it.
            let matches = state.codes.matches(v.id.as_str(), v.to.e164(), &code, &v.code_tag);
            v.check(now, matches)
        })?
        .ok_or(ApiError::VerificationNotFound)?;
    let outcome = outcome.map_err(ApiError::NotPending)?;
    state.store.commit().await?;

    let result = match outcome {
        CheckOutcome::Approved => "approved",
        CheckOutcome::Wrong { .. } => "wrong",
        CheckOutcome::Exhausted => "exhausted",
    };
    tracing::info!(verification_id = %id, result, "code checked");
    Ok(HttpResponse::Ok().json(VerificationView::new(&verification, now)))
}
