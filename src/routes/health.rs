use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::routes::AppState;
use crate::store::StoreError;

/// 200 while the store answers. Deliberately does nothing else: it is also
/// the ceiling the benchmark compares the real routes against.
pub async fn check(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.store.healthy() {
        Ok(HttpResponse::Ok().json(json!({"status": "ok"})))
    } else {
        Err(ApiError::Store(StoreError::Unavailable))
    }
}
