//! SMS through Twilio's Messages API: the send, and the signed delivery
//! status callbacks. Everything that knows Twilio's formats is here.

pub mod client;
pub mod signature;

pub use client::{SmsClient, SmsError};

use crate::domain::{DeliveryError, DeliveryStatus};

/// A status callback's `MessageStatus`, as a step of delivery. `queued`,
/// `sending`, `accepted` and the like say nothing a poll needs.
pub fn status(value: &str) -> Option<DeliveryStatus> {
    match value {
        "sent" => Some(DeliveryStatus::Sent),
        "delivered" => Some(DeliveryStatus::Delivered),
        "read" => Some(DeliveryStatus::Read),
        "undelivered" | "failed" => Some(DeliveryStatus::Failed),
        _ => None,
    }
}

/// The error a failed callback reports, from its `ErrorCode`.
pub fn callback_error(status: &str, error_code: Option<&str>) -> DeliveryError {
    DeliveryError {
        code: error_code.and_then(|c| c.trim().parse().ok()),
        title: format!("SMS {status}"),
        details: error_code.map(|c| format!("provider error {c}")),
    }
}
