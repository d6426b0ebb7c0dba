//! Sending a code by SMS through Twilio's Messages API, with awc.

use std::time::Duration;

use serde::Deserialize;

use crate::domain::{redact_numbers, Code, DeliveryError, PhoneNumber, VerificationId};
use crate::settings::{Secret, SmsSettings};
use crate::transport::{self, Transport};

pub struct SmsClient {
    http: awc::Client,
    messages_url: String,
    account_sid: String,
    token: Secret,
    from: String,
    callback_url: String,
    timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    #[error("sms provider error {code}: {message}")]
    Provider { http_status: u16, code: i64, message: String },
    #[error("sms provider: {0}")]
    Transport(#[from] Transport),
}

impl SmsError {
    /// Whether the message certainly was not taken.
    pub fn is_definitive(&self) -> bool {
        match self {
            Self::Provider { .. } => true,
            Self::Transport(t) => t.is_definitive(),
        }
    }

    /// A refusal that certainly sent nothing and that one retry may get
    /// past: the provider's rate limit, or no connection at all. A 5xx or
    /// an unreadable answer may hide a message that went out.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Provider { http_status, code, .. } => *http_status < 500 && *code == 20429,
            Self::Transport(t) => matches!(t, Transport::Unreachable(_)),
        }
    }

    pub fn to_delivery_error(&self) -> DeliveryError {
        match self {
            Self::Provider { code, message, .. } => DeliveryError {
                code: Some(*code),
                title: "SMS refused".into(),
                details: Some(message.clone()),
            },
            Self::Transport(t) => t.to_delivery_error("SMS provider"),
        }
    }
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct ProviderError {
    code: i64,
    #[serde(default)]
    message: Option<String>,
}

impl SmsClient {
    pub fn new(settings: &SmsSettings) -> Self {
        Self {
            http: transport::client(settings.timeout),
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                settings.base_url, settings.account_sid
            ),
            account_sid: settings.account_sid.clone(),
            token: settings.auth_token.clone(),
            from: settings.from.clone(),
            callback_url: settings.callback_url(),
            timeout: settings.timeout,
        }
    }

    /// Sends `code` to `to`; returns the provider's message SID. The
    /// verification id rides in the status callback's query string, so a
    /// status that overtakes this answer still finds its verification.
    pub async fn send_code(
        &self,
        to: &PhoneNumber,
        code: &Code,
        verification: &VerificationId,
    ) -> Result<String, SmsError> {
        let callback = format!("{}?verification={verification}", self.callback_url);
        let body = format!("{} is your verification code. Do not share it.", code.expose());
        let from_field = if self.from.starts_with("MG") { "MessagingServiceSid" } else { "From" };
        let form = [
            ("To", to.e164()),
            (from_field, self.from.as_str()),
            ("Body", body.as_str()),
            ("StatusCallback", callback.as_str()),
        ];
        let send = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, self.token.expose())
            .send_form(&form);
        let (http_status, bytes) = transport::exchange(send, self.timeout).await?;
        interpret(http_status, &bytes)
    }
}

fn interpret(http_status: u16, bytes: &[u8]) -> Result<String, SmsError> {
    let bad = |reason: String| SmsError::Transport(Transport::BadAnswer { http_status, reason });
    if (200..300).contains(&http_status) {
        return serde_json::from_slice::<Created>(bytes)
            .map(|c| c.sid)
            .map_err(|e| bad(format!("success body: {e}")));
    }
    match serde_json::from_slice::<ProviderError>(bytes) {
        Ok(error) => Err(SmsError::Provider {
            http_status,
            code: error.code,
            message: redact_numbers(&error.message.unwrap_or_else(|| "no message".into())),
        }),
        Err(_) => Err(bad("not a provider error body".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_shape() {
        assert_eq!(interpret(201, br#"{"sid":"SM123","status":"queued"}"#), Ok("SM123".into()));
        let refused = interpret(
            400,
            br#"{"code":21211,"message":"Invalid 'To' Phone Number","more_info":"x","status":400}"#,
        );
        let error = refused.unwrap_err();
        assert!(error.is_definitive() && !error.is_transient());
        assert_eq!(error.to_delivery_error().code, Some(21211));
        assert!(!interpret(503, b"<html>").unwrap_err().is_transient(), "it may have gone out");
        let limited = br#"{"code":20429,"message":"Too Many Requests","status":429}"#;
        assert!(interpret(429, limited).unwrap_err().is_transient());
        assert!(matches!(
            interpret(201, b"{}"),
            Err(SmsError::Transport(Transport::BadAnswer { .. }))
        ));
    }
}
