//! Sending a code by SMS through Twilio's Messages API, with awc.

use std::time::Duration;

use awc::error::SendRequestError;
use serde::Deserialize;

use crate::domain::{Code, DeliveryError, PhoneNumber, VerificationId};
use crate::settings::{Secret, SmsSettings};

const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
    #[error("no answer from the sms provider within {0:?}")]
    Timeout(Duration),
    #[error("the sms provider could not be reached: {0}")]
    Unreachable(String),
    #[error("unexpected sms provider answer (http {http_status}): {reason}")]
    BadAnswer { http_status: u16, reason: String },
}

impl SmsError {
    /// Whether the message certainly was not taken.
    pub fn is_definitive(&self) -> bool {
        matches!(self, Self::Provider { .. } | Self::Unreachable(_))
    }

    /// A fault on the provider's side that one retry may get past.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Provider { http_status, code, .. } => *http_status >= 500 || *code == 20429,
            Self::Unreachable(_) | Self::BadAnswer { .. } => true,
            Self::Timeout(_) => false,
        }
    }

    pub fn to_delivery_error(&self) -> DeliveryError {
        match self {
            Self::Provider { code, message, .. } => DeliveryError {
                code: Some(*code),
                title: "SMS refused".into(),
                details: Some(message.clone()),
            },
            Self::Timeout(d) => DeliveryError {
                code: None,
                title: "SMS provider timeout".into(),
                details: Some(format!("no answer within {} s", d.as_secs())),
            },
            Self::Unreachable(_) => DeliveryError {
                code: None,
                title: "SMS provider unreachable".into(),
                details: Some("the connection to the SMS provider failed".into()),
            },
            Self::BadAnswer { http_status, .. } => DeliveryError {
                code: None,
                title: "Unexpected SMS provider answer".into(),
                details: Some(format!("HTTP {http_status} without a provider body")),
            },
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
        let connector = awc::Connector::new().timeout(settings.timeout);
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(settings.timeout)
            .disable_redirects()
            .finish();
        Self {
            http,
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
        let exchange =
            async {
                let mut response = self
                    .http
                    .post(&self.messages_url)
                    .basic_auth(&self.account_sid, self.token.expose())
                    .send_form(&form)
                    .await
                    .map_err(|e| match e {
                        SendRequestError::Timeout => SmsError::Timeout(self.timeout),
                        SendRequestError::Connect(e) => SmsError::Unreachable(e.to_string()),
                        other => SmsError::BadAnswer { http_status: 0, reason: other.to_string() },
                    })?;
                let http_status = response.status().as_u16();
                let bytes = response.body().limit(MAX_ANSWER_BYTES).await.map_err(|e| {
                    SmsError::BadAnswer { http_status, reason: format!("body: {e}") }
                })?;
                interpret(http_status, &bytes)
            };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SmsError::Timeout(self.timeout)),
        }
    }
}

fn interpret(http_status: u16, bytes: &[u8]) -> Result<String, SmsError> {
    if (200..300).contains(&http_status) {
        return serde_json::from_slice::<Created>(bytes).map(|c| c.sid).map_err(|e| {
            SmsError::BadAnswer { http_status, reason: format!("success body: {e}") }
        });
    }
    match serde_json::from_slice::<ProviderError>(bytes) {
        Ok(error) => Err(SmsError::Provider {
            http_status,
            code: error.code,
            message: error.message.unwrap_or_else(|| "no message".into()),
        }),
        Err(_) => {
            Err(SmsError::BadAnswer { http_status, reason: "not a provider error body".into() })
        }
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
        assert!(interpret(503, b"<html>").unwrap_err().is_transient());
        assert!(matches!(interpret(201, b"{}"), Err(SmsError::BadAnswer { .. })));
    }
}
