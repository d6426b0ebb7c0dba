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
    #[error("`to` {0}")]
    InvalidPhoneNumber(#[from] PhoneError),
    #[error("`code` must be a string of exactly 6 digits")]
    InvalidCode,
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("no verification has this id")]
    VerificationNotFound,
    #[error("the verification is {}, so it takes no more checks", .0.as_str())]
    NotPending(VerificationStatus),
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request did not arrive within {0} s")]
    RequestTimeout(u64),
    #[error("the body could not be read: {0}")]
    BodyUnreadable(String),
    #[error("the X-Hub-Signature-256 header is missing")]
    SignatureMissing,
    #[error("the X-Hub-Signature-256 header must be sha256= followed by 64 hex digits")]
    SignatureMalformed,
    #[error("the X-Hub-Signature-256 signature does not match the body")]
    SignatureMismatch,
    #[error("the verification handshake was refused")]
    HandshakeRefused,
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
            Self::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            Self::VerificationNotFound => ("verification-not-found", "Verification not found"),
            Self::NotPending(VerificationStatus::Expired) => {
                ("verification-expired", "Verification expired")
            }
            Self::NotPending(_) => ("verification-not-pending", "Verification not pending"),
            Self::PayloadTooLarge { .. } => ("payload-too-large", "Payload too large"),
            Self::RequestTimeout(_) => ("request-timeout", "Request timeout"),
            Self::BodyUnreadable(_) => ("body-unreadable", "Body could not be read"),
            Self::SignatureMissing => ("signature-missing", "Signature missing"),
            Self::SignatureMalformed => ("signature-malformed", "Signature malformed"),
            Self::SignatureMismatch => ("signature-mismatch", "Signature mismatch"),
            Self::HandshakeRefused => ("handshake-refused", "Handshake refused"),
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
            Self::Unauthorized | Self::SignatureMissing | Self::SignatureMalformed => {
                StatusCode::UNAUTHORIZED
            }
            Self::SignatureMismatch | Self::HandshakeRefused => StatusCode::FORBIDDEN,
            Self::InvalidBody(_)
            | Self::InvalidPhoneNumber(_)
            | Self::InvalidCode
            | Self::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Self::RouteNotFound | Self::VerificationNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotPending(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
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
        };
        let mut response = HttpResponse::build(status);
        response.content_type("application/problem+json");
        if let Self::Unauthorized = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"waverify\""));
        }
        // Serialising this struct cannot fail: it holds only strings and numbers.
        response.body(serde_json::to_string(&problem).unwrap_or_default())
    }
}
