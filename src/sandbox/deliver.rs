//! Reports statuses back to waverify's own webhook, signed as Meta signs
//! them, retrying as Meta retries.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Outcome, Sandbox};
use crate::whatsapp::signature;

const ATTEMPTS: u32 = 5;

pub(super) fn schedule(
    sandbox: Arc<Sandbox>,
    outcome: Outcome,
    message_id: &str,
    digits: &str,
    callback: Option<String>,
) {
    let message_id = message_id.to_owned();
    let digits = digits.to_owned();
    // Runs on the worker that took the send; `awc::Client` is per worker.
    actix_web::rt::spawn(async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
        let mut elapsed = Duration::ZERO;
        for step in outcome.steps(&sandbox.timing) {
            actix_web::rt::time::sleep(step.after.saturating_sub(elapsed)).await;
            elapsed = step.after;
            let body = status_body(&sandbox, &message_id, &digits, callback.as_deref(), step);
            post(&client, &sandbox, body).await;
        }
    });
}

fn status_body(
    sandbox: &Sandbox,
    message_id: &str,
    digits: &str,
    callback: Option<&str>,
    step: super::numbers::Step,
) -> Vec<u8> {
    let mut status = json!({
        "id": message_id,
        "status": step.status,
        "timestamp": sandbox.clock.now().to_string(),
        "recipient_id": digits,
        "pricing": {"billable": true, "pricing_model": "PMP", "category": "authentication"},
    });
    if let Some(callback) = callback {
        status["biz_opaque_callback_data"] = json!(callback);
    }
    if let Some((code, title, details)) = step.error {
        status["errors"] = json!([{
            "code": code, "title": title, "message": title,
            "error_data": {"details": details}
        }]);
    }
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000000", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "100000000000001"},
            "statuses": [status]
        }}]}]
    });
    body.to_string().into_bytes()
}

async fn post(client: &awc::Client, sandbox: &Sandbox, body: Vec<u8>) {
    let header = signature::sign(sandbox.app_secret.expose().as_bytes(), &body);
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        let result = client
            .post(&sandbox.webhook_url)
            .insert_header(("content-type", "application/json"))
            .insert_header((signature::HEADER, header.as_str()))
            .send_body(body.clone())
            .await;
        match result {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(
                    attempt,
                    status = response.status().as_u16(),
                    "sandbox webhook refused"
                )
            }
            Err(error) => tracing::warn!(attempt, %error, "sandbox webhook not delivered"),
        }
        actix_web::rt::time::sleep(backoff).await;
        backoff *= 2;
    }
}
