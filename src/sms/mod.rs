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

/// The error a failed callback reports, from its `ErrorCode`: the
/// provider's codes are a few digits, and anything else in that field is
/// neither kept nor shown (it could hold anything, a number included).
pub fn callback_error(status: &str, error_code: Option<&str>) -> DeliveryError {
    let code = error_code
        .map(str::trim)
        .filter(|c| (1..=6).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()));
    DeliveryError {
        code: code.and_then(|c| c.parse().ok()),
        title: format!("SMS {status}"),
        details: match (error_code, code) {
            (_, Some(c)) => Some(format!("provider error {c}")),
            (Some(_), None) => Some("provider error code not readable".into()),
            (None, None) => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::callback_error;

    #[test]
    fn only_a_numeric_error_code_is_kept() {
        let e = callback_error("undelivered", Some("30003"));
        assert_eq!((e.code, e.details.as_deref()), (Some(30003), Some("provider error 30003")));
        let e = callback_error("undelivered", Some("30003 to +15550100077"));
        assert_eq!(e.code, None);
        assert_eq!(e.details.as_deref(), Some("provider error code not readable"));
        assert_eq!(callback_error("failed", None).details, None);
    }
}
