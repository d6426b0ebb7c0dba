//! `POST /webhook/sms`: the SMS provider's signed delivery statuses.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::domain::{Channel, DeliveryStatus, StatusEvent, VerificationId};
use crate::error::ApiError;
use crate::routes::{read_limited, AppState};
use crate::sms;
use crate::sms::signature::SignatureError;
use crate::store::StatusUpdate;

/// Status callbacks are a few hundred bytes of form fields.
const LIMIT: usize = 64 * 1024;

pub async fn receive(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(settings) = &state.sms else { return Err(ApiError::RouteNotFound) };
    let body = read_limited(&req, body, LIMIT).await?;
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::InvalidBody(format!("not a form body: {e}")))?;
    let header = req.headers().get(sms::signature::HEADER).map(|v| v.as_bytes());
    // The provider signs the URL it was given: the configured callback
    // address with the query string waverify added to it.
    let url = match req.query_string() {
        "" => settings.callback_url(),
        query => format!("{}?{query}", settings.callback_url()),
    };
    let token = settings.auth_token.expose();
    let header_name = sms::signature::HEADER;
    sms::signature::verify(token, &url, &params, header).map_err(|e| match e {
        SignatureError::Missing => ApiError::SignatureMissing(header_name),
        SignatureError::Malformed => ApiError::SignatureMalformed(header_name),
        SignatureError::Mismatch => ApiError::SignatureMismatch(header_name),
    })?;

    let field = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let present = |name: &str| field(name).filter(|v| !v.is_empty());
    let (Some(message_id), Some(reported)) = (present("MessageSid"), present("MessageStatus"))
    else {
        return Err(ApiError::InvalidBody("MessageSid and MessageStatus are required".into()));
    };
    let Some(status) = sms::status(reported) else {
        return Ok(HttpResponse::Ok().finish());
    };
    let now = state.clock.now();
    let error = (status == DeliveryStatus::Failed)
        .then(|| sms::callback_error(reported, field("ErrorCode").filter(|c| !c.is_empty())));
    let callback = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.iter().find(|(k, _)| k == "verification").map(|(_, v)| v.clone()))
        .and_then(|v| VerificationId::parse(&v));
    let update = StatusUpdate {
        message_id: message_id.to_owned(),
        channel: Channel::Sms,
        callback,
        event: StatusEvent { status, timestamp: now, error },
    };
    let tally = state.store.record_statuses(vec![update], now).await?;
    tracing::info!(
        status = reported,
        applied = tally.applied,
        parked = tally.parked,
        "sms status stored"
    );
    Ok(HttpResponse::Ok().finish())
}
