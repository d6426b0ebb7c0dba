//! The API key a login backend presents as `Authorization: Bearer <key>`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use ring::digest;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::routes::AppState;

/// A SHA-256 digest of a secret, compared in constant time. Hashing both
/// sides first means the comparison takes the same time whatever the
/// length of what was presented.
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref());
        Self(out)
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        let theirs = digest::digest(&digest::SHA256, presented);
        bool::from(self.0.ct_eq(theirs.as_ref()))
    }
}

/// Extracting this proves the request carried the right API key.
pub struct Authenticated;

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Authenticated, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
    // Two Authorization headers are refused rather than one of them picked:
    // a proxy and the server must not disagree about who is calling.
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => bearer(value.as_bytes()),
        _ => None,
    }
    .ok_or(ApiError::Unauthorized)?;
    if state.api_key.matches(presented) {
        Ok(Authenticated)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The credentials of a `Bearer` authorization; the scheme is
/// case-insensitive.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn digest_compares_whole_secret() {
        let d = SecretDigest::of("right-key");
        assert!(d.matches(b"right-key"));
        assert!(!d.matches(b"right-ke"));
        assert!(!d.matches(b"right-key "));
        assert!(!d.matches(b""));
    }
}
