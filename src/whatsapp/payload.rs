//! Webhook bodies, read with tolerance.
//!
//! Meta adds fields and values without notice and mixes statuses, inbound
//! messages and other fields in one body. Each level is therefore read on
//! its own: a part of the body that does not have the expected shape is
//! skipped, and never takes the rest of the body down with it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::domain::{DeliveryError, DeliveryStatus};

/// One status of one message, as Meta reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub message_id: String,
    /// `None` for a status value that is not a step of delivery.
    pub status: Option<DeliveryStatus>,
    pub timestamp: Option<i64>,
    /// What waverify put in `biz_opaque_callback_data` when sending.
    pub callback: Option<String>,
    pub error: Option<DeliveryError>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub statuses: Vec<StatusReport>,
    /// Changes that were not `messages`, or could not be read.
    pub skipped_changes: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the body is not JSON: {0}")]
pub struct NotJson(#[from] serde_json::Error);

/// Reads every status of every change of every entry.
///
/// Meta's bodies have the expected shape, and are read in one pass; only a
/// body that does not is read again, part by part, with tolerance.
pub fn parse(body: &[u8]) -> Result<Parsed, NotJson> {
    let body = repair_lone_surrogates(body);
    // JSON is UTF-8 throughout, skipped fields included; the one-pass
    // reader does not look inside what it skips, so check it all first.
    if let Err(e) = std::str::from_utf8(&body) {
        return Err(NotJson(serde::de::Error::custom(format!("invalid UTF-8: {e}"))));
    }
    if let Ok(parsed) = fast::parse(&body) {
        return Ok(parsed);
    }
    let body: Lenient<Body> = serde_json::from_slice(&body)?;
    let mut parsed = Parsed::default();
    let entries = body.0.map(|b| b.entry.0).unwrap_or_default();
    for change in entries.into_iter().flat_map(|e| e.changes.0) {
        let value = match (change.field.0.as_deref(), change.value.0) {
            (Some("messages"), Some(value)) => value,
            _ => {
                parsed.skipped_changes += 1;
                continue;
            }
        };
        parsed.statuses.extend(value.statuses.0.into_iter().map(WireStatus::into_report));
    }
    Ok(parsed)
}

/// The one-pass reading of a body of the expected shape: fields borrowed
/// from the body where they hold no escapes, unknown ones skipped unread.
mod fast {
    use std::borrow::Cow;

    use serde::Deserialize;

    use super::{Parsed, StatusReport, Timestamp};
    use crate::domain::{DeliveryError, DeliveryStatus};

    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(default, borrow)]
        entry: Vec<Entry<'a>>,
    }

    #[derive(Deserialize)]
    struct Entry<'a> {
        #[serde(default, borrow)]
        changes: Vec<Change<'a>>,
    }

    #[derive(Deserialize)]
    struct Change<'a> {
        #[serde(default, borrow)]
        field: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        value: Option<Value<'a>>,
    }

    #[derive(Deserialize)]
    struct Value<'a> {
        #[serde(default, borrow)]
        statuses: Vec<Status<'a>>,
    }

    #[derive(Deserialize)]
    struct Status<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        status: Cow<'a, str>,
        #[serde(default)]
        timestamp: Option<Timestamp>,
        #[serde(default, borrow)]
        biz_opaque_callback_data: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        errors: Vec<Error<'a>>,
    }

    #[derive(Deserialize)]
    struct Error<'a> {
        #[serde(default)]
        code: Option<i64>,
        #[serde(default, borrow)]
        title: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        message: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        error_data: Option<ErrorData<'a>>,
    }

    #[derive(Deserialize)]
    struct ErrorData<'a> {
        #[serde(default, borrow)]
        details: Option<Cow<'a, str>>,
    }

    pub(super) fn parse(body: &[u8]) -> Result<Parsed, serde_json::Error> {
        let body: Body = serde_json::from_slice(body)?;
        let mut parsed = Parsed::default();
        for change in body.entry.into_iter().flat_map(|e| e.changes) {
            match (change.field.as_deref(), change.value) {
                (Some("messages"), Some(value)) => {
                    parsed.statuses.extend(value.statuses.into_iter().map(report));
                }
                _ => parsed.skipped_changes += 1,
            }
        }
        Ok(parsed)
    }

    fn report(s: Status<'_>) -> StatusReport {
        StatusReport {
            status: DeliveryStatus::from_webhook(&s.status),
            message_id: s.id.into_owned(),
            timestamp: s.timestamp.and_then(Timestamp::seconds),
            callback: s.biz_opaque_callback_data.map(Cow::into_owned),
            error: s.errors.into_iter().next().map(|e| DeliveryError {
                code: e.code,
                title: e
                    .title
                    .or(e.message)
                    .map_or_else(|| "unknown error".into(), Cow::into_owned),
                details: e.error_data.and_then(|d| d.details).map(Cow::into_owned),
            }),
        }
    }
}

/// Replaces every `\uXXXX` escape of a lone UTF-16 surrogate with `\ufffd`.
///
/// serde_json refuses a string holding a lone surrogate, and with it the
/// whole object around it, even when the string is the name of a field
/// nobody reads. Meta escapes all non-ASCII text, so a truncated emoji in a
/// name or a title would otherwise cost the statuses next to it. This runs
/// after the signature was checked over the bytes as received.
fn repair_lone_surrogates(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    fn unit(body: &[u8], at: usize) -> Option<u16> {
        let hex = body.get(at..at + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut repaired: Option<Vec<u8>> = None;
    let mut i = 0;
    // Backslashes are rare in a body: jump from one to the next.
    while let Some(found) = memchr::memchr(b'\\', &body[i.min(body.len())..]) {
        i += found;
        match unit(body, i) {
            Some(u) if high(u) && unit(body, i + 6).is_some_and(low) => i += 12,
            Some(u) if high(u) || low(u) => {
                let out = repaired.get_or_insert_with(|| body.to_vec());
                out[i..i + 6].copy_from_slice(b"\\ufffd");
                i += 6;
            }
            // Any other escape: skip the backslash and the escaped byte.
            _ => i += 2,
        }
    }
    match repaired {
        Some(bytes) => std::borrow::Cow::Owned(bytes),
        None => std::borrow::Cow::Borrowed(body),
    }
}

/// A value that is `Some` when it had the expected shape and `None`
/// otherwise; absent fields are `None` too.
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(Self(serde_json::from_str(raw.get()).ok()))
    }
}

/// A list whose items are kept when they have the expected shape and
/// dropped otherwise; a value that is not a list is an empty list.
struct Many<T>(Vec<T>);

impl<T> Default for Many<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Many<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        let items: Vec<Box<RawValue>> = serde_json::from_str(raw.get()).unwrap_or_default();
        let kept = items.iter().filter_map(|item| serde_json::from_str(item.get()).ok());
        Ok(Self(kept.collect()))
    }
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    entry: Many<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Many<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    field: Lenient<String>,
    #[serde(default)]
    value: Lenient<Value>,
}

#[derive(Deserialize)]
struct Value {
    #[serde(default)]
    statuses: Many<WireStatus>,
}

#[derive(Deserialize)]
struct WireStatus {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Lenient<Timestamp>,
    #[serde(default)]
    biz_opaque_callback_data: Lenient<String>,
    #[serde(default)]
    errors: Many<WireError>,
}

/// Meta sends unix seconds as a string; a number is accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Text(String),
    Number(i64),
}

impl Timestamp {
    /// A time outside 2001..3000 is no time Meta gives: the status keeps
    /// the time it was received instead.
    fn seconds(self) -> Option<i64> {
        let t = match self {
            Self::Text(s) => s.trim().parse().ok()?,
            Self::Number(n) => n,
        };
        (1_000_000_000..32_503_680_000).contains(&t).then_some(t)
    }
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: Lenient<i64>,
    #[serde(default)]
    title: Lenient<String>,
    #[serde(default)]
    message: Lenient<String>,
    #[serde(default)]
    error_data: Lenient<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Lenient<String>,
}

impl WireStatus {
    fn into_report(self) -> StatusReport {
        let timestamp = self.timestamp.0.and_then(Timestamp::seconds);
        StatusReport {
            status: DeliveryStatus::from_webhook(&self.status),
            message_id: self.id,
            timestamp,
            callback: self.biz_opaque_callback_data.0,
            error: self.errors.0.into_iter().next().map(WireError::into_domain),
        }
    }
}

impl WireError {
    fn into_domain(self) -> DeliveryError {
        DeliveryError {
            code: self.code.0,
            title: self.title.0.or(self.message.0).unwrap_or_else(|| "unknown error".into()),
            details: self.error_data.0.and_then(|d| d.details.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_statuses_across_entries_and_changes() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
            {"id":"1","changes":[
                {"field":"messages","value":{"statuses":[
                    {"id":"wamid.A","status":"sent","timestamp":"100","biz_opaque_callback_data":"cb"},
                    {"id":"wamid.A","status":"played","timestamp":"101"}]}},
                {"field":"account_update","value":{"event":"X"}}]},
            {"id":"2","changes":[
                {"field":"messages","value":{"statuses":[
                    {"id":"wamid.B","status":"failed","timestamp":1767225602,"errors":[
                        {"code":131026,"title":"Message undeliverable","error_data":{"details":"caf\u00e9 \/ x"}}]}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.skipped_changes, 1);
        assert_eq!(parsed.statuses.len(), 3);
        assert_eq!(parsed.statuses[0].status, Some(DeliveryStatus::Sent));
        assert_eq!(parsed.statuses[0].callback.as_deref(), Some("cb"));
        assert_eq!(parsed.statuses[1].status, None);
        let error = parsed.statuses[2].error.clone().unwrap();
        assert_eq!(error.code, Some(131026));
        assert_eq!(error.details.as_deref(), Some("café / x"));
        assert_eq!(parsed.statuses[2].timestamp, Some(1_767_225_602));
    }

    #[test]
    fn wrong_shapes_are_skipped_not_fatal() {
        let bodies: [&[u8]; 8] = [
            b"[]",
            b"null",
            b"{}",
            br#"{"entry":"x"}"#,
            br#"{"entry":[1,{"changes":{"a":1}},{"changes":[{"field":"messages","value":[]}]}]}"#,
            br#"{"entry":[{"changes":[{"field":"messages","value":{"statuses":[{"id":5},{"status":"sent"}]}}]}]}"#,
            br#"{"entry":[{"changes":[{"field":7,"value":{"statuses":[]}}]}]}"#,
            br#"{"entry":[{"changes":[{"field":"messages","value":{"statuses":[{"id":"w","status":"read","timestamp":"1e999"}]}}]}]}"#,
        ];
        for body in bodies {
            let parsed =
                parse(body).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(body)));
            assert!(parsed.statuses.iter().all(|s| s.message_id == "w"));
        }
    }

    #[test]
    fn impossible_times_are_dropped() {
        for (raw, want) in [
            ("\"1767225600\"", Some(1_767_225_600)),
            ("\" 1767225600\"", Some(1_767_225_600)),
            ("1767225600", Some(1_767_225_600)),
            ("\"9223372036854775807\"", None),
            ("\"-5\"", None),
            ("\"1e10\"", None),
            ("\"42\"", None),
        ] {
            let body = format!(
                r#"{{"entry":[{{"changes":[{{"field":"messages","value":{{"statuses":[{{"id":"w","status":"sent","timestamp":{raw}}}]}}}}]}}]}}"#
            );
            assert_eq!(parse(body.as_bytes()).unwrap().statuses[0].timestamp, want, "{raw}");
        }
    }

    #[test]
    fn a_bad_error_title_keeps_the_status() {
        let body = br#"{"entry":[{"changes":[{"field":"messages","value":{"statuses":[
            {"id":"w","status":"failed","timestamp":"1","errors":[{"code":1,"title":"\ud800"}]}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.statuses[0].error.as_ref().unwrap().title, "\u{fffd}");
    }

    #[test]
    fn lone_surrogates_cost_nothing_but_themselves() {
        let body = br#"{"entry":[{"x\ud800":1,"changes":[{"field":"messages","value":{"statuses":[
            {"id":"w","status":"read","timestamp":"1","errors":[{"code":1,"title":"a\udc00b \ud83d\ude00"}]}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(parsed.statuses.len(), 1);
        assert_eq!(parsed.statuses[0].error.as_ref().unwrap().title, "a\u{fffd}b \u{1f600}");
        let escaped_backslash = br#"{"a":"\\ud800"}"#;
        assert_eq!(repair_lone_surrogates(escaped_backslash).as_ref(), escaped_backslash);
    }

    #[test]
    fn not_json_is_an_error() {
        for body in [&b""[..], b"{", b"\xff\xfe", b"{\"entry\":[}"] {
            assert!(parse(body).is_err());
        }
    }
}
