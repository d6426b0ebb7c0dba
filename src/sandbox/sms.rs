//! The stand-in of the SMS provider's
//! `POST /2010-04-01/Accounts/{sid}/Messages.json`, and its status
//! callbacks, signed as the provider signs them.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

use super::numbers::SmsOutcome;
use super::{Sandbox, SandboxMessage};
use crate::clock::rfc3339;
use crate::domain::PhoneNumber;
use crate::routes::{read_limited, SecretDigest};
use crate::sms::signature;

fn refusal(status: StatusCode, code: i64, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    }))
}

pub(super) async fn messages(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let Some(settings) = sandbox.sms.clone() else {
        return refusal(StatusCode::NOT_FOUND, 20404, "The requested resource was not found");
    };
    let expected = format!("{}:{}", settings.account_sid, settings.auth_token.expose());
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Basic "))
        .and_then(|b| STANDARD.decode(b).ok());
    let authorized = presented.is_some_and(|p| SecretDigest::of(&expected).matches(&p));
    if !authorized || *path != settings.account_sid {
        return refusal(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let Ok(bytes) = read_limited(&req, body, 64 * 1024).await else {
        return refusal(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Some(to), Some(text)) = (field("To"), field("Body")) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number and a 'Body' are required.",
        );
    };
    let outcome = SmsOutcome::for_number(&to);
    let Ok(number) = PhoneNumber::parse(&to) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            21211,
            "The 'To' number is not a valid phone number.",
        );
    };
    if outcome == SmsOutcome::Refused {
        return refusal(
            StatusCode::BAD_REQUEST,
            21211,
            "The 'To' number is not a valid phone number.",
        );
    }
    let sid = new_sid();
    let callback = field("StatusCallback");
    let verification_id = callback
        .as_deref()
        .and_then(|url| url.split_once("verification="))
        .map(|(_, id)| id.chars().take_while(char::is_ascii_alphanumeric).collect());
    let code: String = text.chars().skip_while(|c| !c.is_ascii_digit()).take(6).collect();
    sandbox.remember(SandboxMessage {
        channel: "sms",
        message_id: sid.clone(),
        verification_id,
        to: number.masked(),
        code,
        text,
        outcome: match outcome {
            SmsOutcome::Delivered => "sms_delivered",
            SmsOutcome::Undelivered => "sms_undelivered_30003",
            SmsOutcome::Refused => "sms_refused_21211",
        },
        sent_at: rfc3339(sandbox.clock.now()),
    });
    if let Some(callback) = callback {
        report(
            sandbox.into_inner(),
            settings.auth_token.expose().to_owned(),
            callback,
            sid.clone(),
            outcome,
        );
    }
    HttpResponse::Created().json(json!({"sid": sid, "status": "queued", "to": to}))
}

/// Posts `sent`, then `delivered` or `undelivered`, to the callback URL.
fn report(sandbox: Arc<Sandbox>, token: String, url: String, sid: String, outcome: SmsOutcome) {
    actix_web::rt::spawn(async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
        let t = sandbox.timing;
        let last = match outcome {
            SmsOutcome::Undelivered => ("undelivered", "30003"),
            _ => ("delivered", ""),
        };
        let mut elapsed = Duration::ZERO;
        for (after, (status, error_code)) in [(t.sent, ("sent", "")), (t.delivered, last)] {
            actix_web::rt::time::sleep(after.saturating_sub(elapsed)).await;
            elapsed = after;
            let params: Vec<(String, String)> = [
                ("MessageSid", sid.as_str()),
                ("MessageStatus", status),
                ("ErrorCode", error_code),
                ("AccountSid", "sandbox"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let signed = signature::sign(&token, &url, &params);
            let result = client
                .post(&url)
                .insert_header((signature::HEADER, signed))
                .send_form(&params)
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "sandbox sms callback not delivered");
            }
        }
    });
}

fn new_sid() -> String {
    let mut bytes = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut bytes);
    format!("SM{}", hex::encode(bytes))
}
