//! Sending a code as an authentication-template message, with awc.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::domain::{redact_numbers, Code, DeliveryError, PhoneNumber, VerificationId};
use crate::settings::{GraphSettings, Secret};
use crate::transport::{self, Transport};
use crate::whatsapp::ErrorClass;

/// A client of the Graph API messages endpoint. `awc::Client` is not
/// `Send`, so each server worker builds its own.
pub struct GraphClient {
    http: awc::Client,
    messages_url: String,
    token: Secret,
    template: String,
    template_lang: String,
    timeout: Duration,
}

/// The Graph API took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// The WhatsApp id Meta resolved the number to; it can differ from the
    /// number sent (Brazilian and Mexican numbers, for example).
    pub wa_id: Option<String>,
    /// `accepted`, `held_for_quality_assessment`, or absent on older versions.
    pub message_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("graph api error {code}: {title}")]
    Meta {
        http_status: u16,
        code: i64,
        title: String,
        details: Option<String>,
        fbtrace_id: Option<String>,
    },
    #[error("graph api: {0}")]
    Transport(#[from] Transport),
}

impl SendError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Meta { code, .. } => ErrorClass::of(*code),
            Self::Transport(_) => ErrorClass::Transient,
        }
    }

    /// Whether the message certainly was not taken.
    pub fn is_definitive(&self) -> bool {
        match self {
            Self::Meta { .. } => true,
            Self::Transport(t) => t.is_definitive(),
        }
    }

    /// How the failure shows in the verification's `delivery.error`.
    pub fn to_delivery_error(&self) -> DeliveryError {
        match self {
            Self::Meta { code, title, details, .. } => {
                DeliveryError { code: Some(*code), title: title.clone(), details: details.clone() }
            }
            Self::Transport(t) => t.to_delivery_error("Graph API"),
        }
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<MessageRef>,
}

#[derive(Deserialize)]
struct Contact {
    wa_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageRef {
    id: String,
    message_status: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    code: i64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_user_title: Option<String>,
    #[serde(default)]
    error_data: Option<ErrorData>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

impl GraphClient {
    pub fn new(settings: &GraphSettings) -> Self {
        Self {
            http: transport::client(settings.timeout),
            messages_url: format!(
                "{}/{}/{}/messages",
                settings.base_url, settings.version, settings.phone_number_id
            ),
            token: settings.access_token.clone(),
            template: settings.template.clone(),
            template_lang: settings.template_lang.clone(),
            timeout: settings.timeout,
        }
    }

    /// Sends `code` to `to` through the authentication template. The code
    /// goes in the body parameter and again in the copy-code button; the
    /// verification id rides along in `biz_opaque_callback_data` and comes
    /// back on every status webhook.
    pub async fn send_code(
        &self,
        to: &PhoneNumber,
        code: &Code,
        verification: &VerificationId,
    ) -> Result<Sent, SendError> {
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.digits(),
            "type": "template",
            "biz_opaque_callback_data": verification.as_str(),
            "template": {
                "name": self.template,
                "language": {"code": self.template_lang},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": code.expose()}]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": code.expose()}]}
                ]
            }
        });
        let send =
            self.http.post(&self.messages_url).bearer_auth(self.token.expose()).send_json(&body);
        let (http_status, bytes) = transport::exchange(send, self.timeout).await?;
        interpret(http_status, &bytes)
    }
}

/// Turns an answer into a result. An error body is recognised by its shape,
/// whatever the HTTP status, and classified by `error.code` alone.
pub fn interpret(http_status: u16, bytes: &[u8]) -> Result<Sent, SendError> {
    if let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(bytes) {
        return Err(SendError::Meta {
            http_status,
            code: error.code,
            title: redact_numbers(
                &error
                    .message
                    .or(error.error_user_title)
                    .unwrap_or_else(|| "Graph API error".into()),
            ),
            details: error.error_data.and_then(|d| d.details).map(|d| redact_numbers(&d)),
            fbtrace_id: error.fbtrace_id,
        });
    }
    let bad = |reason: String| SendError::Transport(Transport::BadAnswer { http_status, reason });
    if !(200..300).contains(&http_status) {
        return Err(bad("not a Graph API error body".into()));
    }
    let body: SuccessBody =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("success body: {e}")))?;
    let message = body
        .messages
        .into_iter()
        .next()
        .ok_or_else(|| bad("success body without a message id".into()))?;
    Ok(Sent {
        message_id: message.id,
        wa_id: body.contacts.into_iter().next().and_then(|c| c.wa_id),
        message_status: message.message_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_with_and_without_message_status() {
        let with = br#"{"messaging_product":"whatsapp","contacts":[{"input":"5511912345678","wa_id":"551112345678"}],"messages":[{"id":"wamid.X","message_status":"accepted"}]}"#;
        let sent = interpret(200, with).unwrap();
        assert_eq!(sent.message_id, "wamid.X");
        assert_eq!(sent.wa_id.as_deref(), Some("551112345678"));
        assert_eq!(sent.message_status.as_deref(), Some("accepted"));
        let without = br#"{"messages":[{"id":"wamid.Y"}]}"#;
        assert_eq!(interpret(200, without).unwrap().message_status, None);
    }

    #[test]
    fn error_bodies_are_classified_by_code() {
        let body = br#"{"error":{"message":"(#132001) Template name does not exist in the translation","type":"OAuthException","code":132001,"error_data":{"messaging_product":"whatsapp","details":"template name (x) does not exist in en_US"},"fbtrace_id":"Abc"}}"#;
        let err = interpret(404, body).unwrap_err();
        assert_eq!(err.class(), ErrorClass::TemplateMissing);
        assert!(err.is_definitive());
        let shown = err.to_delivery_error();
        assert_eq!(shown.code, Some(132001));
        assert_eq!(shown.details.as_deref(), Some("template name (x) does not exist in en_US"));
    }

    #[test]
    fn anything_else_is_a_bad_answer() {
        let cases: [(u16, &[u8]); 5] = [
            (502, b"<html>Bad Gateway</html>"),
            (200, b"not json"),
            (200, br#"{"messages":[]}"#),
            (500, b""),
            (200, br#"{"error":"text"}"#),
        ];
        for (status, body) in cases {
            let err = interpret(status, body).unwrap_err();
            assert!(
                matches!(err, SendError::Transport(Transport::BadAnswer { .. })),
                "{status}: {err:?}"
            );
            assert!(!err.is_definitive());
        }
    }
}
