//! Reading request bodies with a size limit and a deadline.

use std::time::Duration;

use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{http::header, web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::routes::AppState;

/// Used when the application state is not at hand.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing it as soon as it is known to exceed
/// `limit`: at once when `Content-Length` says so, otherwise as soon as the
/// chunks received pass it, without buffering the rest.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = declared_length(req, limit)?;
    let read = async {
        // A body that arrives in one chunk (most do) is taken as it is;
        // the buffer is made only for a second one.
        let mut first: Option<Bytes> = None;
        let mut buffer = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BodyUnreadable(e.to_string()))?;
            let held = first.as_ref().map_or(0, Bytes::len) + buffer.len();
            if held + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            if first.is_none() && buffer.is_empty() {
                first = Some(chunk);
                continue;
            }
            if let Some(first) = first.take() {
                // Grown as bytes arrive: a declared length reserves at most
                // 64 KiB up front, so a client cannot make the server hold
                // memory it never sends.
                let expected = declared.unwrap_or(8 * 1024).min(64 * 1024).min(limit);
                buffer.reserve(expected.max(first.len() + chunk.len()));
                buffer.extend_from_slice(&first);
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(match first {
            Some(only) => only,
            None => buffer.freeze(),
        })
    };
    // A slow client holds its connection for a bounded time, never forever.
    let deadline = req
        .app_data::<web::Data<AppState>>()
        .map_or(DEFAULT_DEADLINE, |state| state.request_timeout);
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::RequestTimeout(deadline.as_secs())),
    }
}

/// The body's length as `Content-Length` declares it, refused at once when
/// it is over `limit`.
pub fn declared_length(req: &HttpRequest, limit: usize) -> Result<Option<usize>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(declared)
}

/// Reads a small JSON body into `T`. A body declared too large is a 413 and
/// one not declared as JSON a 415, both before it is read; any other
/// failure is a 400 that says why.
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: Payload,
    limit: usize,
) -> Result<T, ApiError> {
    declared_length(req, limit)?;
    if !declared_json(req) {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be sent with one Content-Type: application/json",
        ));
    }
    // A compressed body would be read as its compressed bytes: refused
    // rather than misread.
    let encoded = req.headers().get_all(header::CONTENT_ENCODING).any(|value| {
        !value
            .to_str()
            .is_ok_and(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"))
    });
    if encoded {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be sent without a Content-Encoding",
        ));
    }
    let bytes = read_limited(req, payload, limit).await?;
    // serde would also read a struct from a JSON array of its fields.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::InvalidBody("the body must be a JSON object".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidBody(format!("invalid JSON: {e}")))
}

/// Whether the one `Content-Type` the request carries is JSON:
/// `application/json` or a `+json` type, in any case, with parameters
/// allowed except a charset other than UTF-8 (JSON has no other).
fn declared_json(req: &HttpRequest) -> bool {
    let mut values = req.headers().get_all(header::CONTENT_TYPE);
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value.to_str().is_ok_and(is_json_media_type)
}

fn is_json_media_type(value: &str) -> bool {
    let mut parts = value.split(';');
    // Compared in place: this runs on every check.
    let essence = parts.next().unwrap_or_default().trim();
    let json = match essence.split_once('/') {
        Some((kind, subtype)) if kind.eq_ignore_ascii_case("application") => {
            let suffix = subtype.len().checked_sub(5).and_then(|i| subtype.get(i..));
            subtype.eq_ignore_ascii_case("json")
                || suffix.is_some_and(|s| s.eq_ignore_ascii_case("+json"))
        }
        _ => false,
    };
    let utf8 = parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    json && utf8
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn json_media_types() {
        for accepted in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/problem+json",
            "APPLICATION/Problem+JSON",
        ] {
            assert!(is_json_media_type(accepted), "{accepted}");
        }
        for refused in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "application/jsonp",
            "text/json",
            "+json",
            "json",
        ] {
            assert!(!is_json_media_type(refused), "{refused}");
        }
    }
}
