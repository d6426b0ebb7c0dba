//! The API's errors and their one mapping to RFC 9457 problem responses.
//!
//! What a client may learn (its input was wrong, it is not allowed, the
//! verification is no longer pending) is split here, once, from internal
//! failures, whose cause chain is logged and never sent.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::{PhoneError, VerificationStatus};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required")]
    Unauthorized,
    #[error("{0}")]
    InvalidBody(String),
    #[error("`to`: {0}")]
    InvalidPhoneNumber(#[from] PhoneError),
    #[error("`code` must be a string of exactly 6 digits")]
    InvalidCode,
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this method is not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("no verification has this id")]
    VerificationNotFound,
    #[error("the verification is {}: it is no longer pending", .0.as_str())]
    NotPending(VerificationStatus),
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request did not arrive within {0} s")]
    RequestTimeout(u64),
    #[error("the body could not be read whole")]
    BodyUnreadable(String),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("the {0} header is missing")]
    SignatureMissing(&'static str),
    #[error("the {0} header is malformed")]
    SignatureMalformed(&'static str),
    #[error("the {0} signature does not match the request")]
    SignatureMismatch(&'static str),
    #[error("the verification handshake was refused")]
    HandshakeRefused,
    #[error("{}", .throttle.detail())]
    TooManyRequests { throttle: Throttle, retry_after: i64 },
    #[error("{0}")]
    ChannelUnavailable(&'static str),
    #[error("WhatsApp is switched off for a while: the business account cannot send")]
    WhatsAppOff { retry_after: i64 },
    #[error("numbers of this country are not served")]
    CountryNotAllowed,
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("the store is unavailable")]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The one JSON shape of every error response.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    verification_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<i64>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Too many calls from this API key or this client address.
    Client,
    /// Too many sends to this number this hour or day.
    NumberSends,
    /// The last send of this code was too recent.
    ResendCooldown,
    /// Every allowed send of this code was made.
    MaxSends,
    /// Too many wrong codes for this number this hour.
    FailedChecks,
    /// The daily budget of sends is spent.
    SendBudget,
}

impl Throttle {
    fn kind(self) -> (&'static str, &'static str) {
        match self {
            Self::Client => ("rate-limited", "Too many requests"),
            Self::NumberSends => ("number-send-limit", "Too many codes sent to this number"),
            Self::ResendCooldown => ("resend-cooldown", "Code sent too recently"),
            Self::MaxSends => ("max-sends-reached", "Code sent too often"),
            Self::FailedChecks => ("failed-check-limit", "Too many wrong codes for this number"),
            Self::SendBudget => ("send-budget-exhausted", "Daily send budget spent"),
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::Client => "too many calls from this API key or address; retry later",
            Self::NumberSends => "this number got as many codes as it may this hour or day",
            Self::ResendCooldown => "the code was sent moments ago; it can be sent again later",
            Self::MaxSends => "the code was sent as often as allowed; start over once it expires",
            Self::FailedChecks => "too many wrong codes for this number; retry later",
            Self::SendBudget => "the service's daily budget of codes is spent",
        }
    }
}

impl ApiError {
    /// A stable, machine-readable name and a human title. One exhaustive
    /// match, so a new variant cannot compile without both.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::InvalidBody(_) => ("invalid-body", "Invalid request body"),
            Self::InvalidPhoneNumber(_) => ("invalid-phone-number", "Invalid phone number"),
            Self::InvalidCode => ("invalid-code", "Invalid code format"),
            Self::RouteNotFound => ("not-found", "Not found"),
            Self::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            Self::VerificationNotFound => ("verification-not-found", "Verification not found"),
            Self::NotPending(VerificationStatus::Expired) => {
                ("verification-expired", "Verification expired")
            }
            Self::NotPending(_) => ("verification-not-pending", "Verification not pending"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large"),
            Self::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            Self::BodyUnreadable(_) => ("body-unreadable", "Body could not be read"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::SignatureMissing(_) => ("signature-missing", "Signature missing"),
            Self::SignatureMalformed(_) => ("signature-malformed", "Signature malformed"),
            Self::SignatureMismatch(_) => ("signature-mismatch", "Signature mismatch"),
            Self::HandshakeRefused => ("handshake-refused", "Handshake refused"),
            Self::TooManyRequests { throttle, .. } => throttle.kind(),
            Self::CountryNotAllowed => ("country-not-allowed", "Country not allowed"),
            Self::ChannelUnavailable(_) => ("channel-unavailable", "Channel unavailable"),
            Self::WhatsAppOff { .. } => ("whatsapp-unavailable", "WhatsApp unavailable"),
            Self::InvalidIdempotencyKey => ("invalid-idempotency-key", "Invalid idempotency key"),
            Self::IdempotencyKeyReused => ("idempotency-key-reused", "Idempotency key reused"),
            Self::Store(_) => ("store-unavailable", "Store unavailable"),
            Self::Internal(_) => ("internal", "Internal error"),
        }
    }
}

/// Problem types are URNs: stable names that promise no web page.
pub const PROBLEM_PREFIX: &str = "urn:waverify:problem:";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::SignatureMissing(_) | Self::SignatureMalformed(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::SignatureMismatch(_) | Self::HandshakeRefused => StatusCode::FORBIDDEN,
            Self::InvalidBody(_)
            | Self::InvalidPhoneNumber(_)
            | Self::InvalidCode
            | Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Self::RouteNotFound | Self::VerificationNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotPending(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::CountryNotAllowed => StatusCode::FORBIDDEN,
            Self::ChannelUnavailable(_) => StatusCode::BAD_REQUEST,
            Self::WhatsAppOff { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (kind, title) = self.kind();
        match self {
            Self::Store(e) => tracing::error!(error = %e, "store failure"),
            Self::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal failure"),
            _ => tracing::debug!(problem = kind, "request refused"),
        }
        let problem = Problem {
            kind: format!("{PROBLEM_PREFIX}{kind}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            verification_status: match self {
                Self::NotPending(s) => Some(s.as_str()),
                _ => None,
            },
            retry_after: match self {
                Self::TooManyRequests { retry_after, .. } | Self::WhatsAppOff { retry_after } => {
                    Some((*retry_after).max(1))
                }
                _ => None,
            },
        };
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        match self {
            Self::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"waverify\""));
            }
            Self::TooManyRequests { retry_after, .. } | Self::WhatsAppOff { retry_after } => {
                response.insert_header((header::RETRY_AFTER, (*retry_after).max(1).to_string()));
            }
            Self::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        // Serialising this struct cannot fail: it holds only strings and numbers.
        response.body(serde_json::to_string(&problem).unwrap_or_default())
    }
}
