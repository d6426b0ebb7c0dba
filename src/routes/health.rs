use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::clock::rfc3339;
use crate::error::ApiError;
use crate::routes::AppState;
use crate::store::StoreError;

/// 200 while the store answers, with which store it is and whether WhatsApp
/// is switched off (the business account could not send: `auto`
/// verifications go by SMS). Does
/// little else: it is also the ceiling the benchmark compares the real
/// routes against.
pub async fn check(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.store.healthy().await {
        return Err(ApiError::Store(StoreError::Unavailable));
    }
    let whatsapp = match state.store.whatsapp_off_until(state.clock.now()).await? {
        None => json!({"state": "on"}),
        Some(until) => json!({"state": "off", "until": rfc3339(until)}),
    };
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "store": state.store.kind(),
        "whatsapp": whatsapp,
    })))
}
