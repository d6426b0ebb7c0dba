//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw body under the app secret.
//!
//! The check runs over the bytes exactly as received, before any parsing:
//! Meta escapes non-ASCII as `\uXXXX` and `/` as `\/`, so any decode and
//! re-encode of the JSON would change the bytes and break the signature.

use ring::hmac;

pub const HEADER: &str = "X-Hub-Signature-256";
const PREFIX: &str = "sha256=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Mismatch,
}

/// Verifies webhook signatures under the current app secret and, while a
/// rotation is under way, the previous one.
pub struct WebhookVerifier {
    keys: Vec<hmac::Key>,
}

impl WebhookVerifier {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        let keys = std::iter::once(current)
            .chain(previous)
            .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret))
            .collect();
        Self { keys }
    }

    /// `header` is the header's raw value, if any. The comparison is ring's
    /// constant-time `hmac::verify`.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        self.matches(&claimed_tag(header)?, body)
    }

    /// Whether `tag` (from [`claimed_tag`]) is the body's.
    pub fn matches(&self, tag: &[u8; 32], body: &[u8]) -> Result<(), SignatureError> {
        let matched =
            self.keys.iter().fold(false, |ok, key| ok | hmac::verify(key, body, tag).is_ok());
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// The tag a header claims, read before the body: a request without a
/// well-formed one is refused without reading what it sends.
pub fn claimed_tag(header: Option<&[u8]>) -> Result<[u8; 32], SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    parse_header(header).ok_or(SignatureError::Malformed)
}

/// `sha256=` and 64 hex digits. Meta sends lowercase; uppercase is accepted
/// since it names the same bytes.
fn parse_header(value: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(value.trim_ascii()).ok()?;
    let digits = text.strip_prefix(PREFIX)?;
    let mut tag = [0u8; 32];
    hex::decode_to_slice(digits, &mut tag).ok()?;
    Some(tag)
}

/// Signs a body as Meta does; used by the sandbox and by tests.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!("{PREFIX}{}", hex::encode(hmac::sign(&key, body).as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"entry":[{"changes":[{"value":{"title":"caf\u00e9 \/ x"}}]}]}"#;

    #[test]
    fn accepts_its_own_signature_over_raw_bytes() {
        let v = WebhookVerifier::new(b"secret", None);
        let header = sign(b"secret", BODY);
        assert_eq!(v.verify(Some(header.as_bytes()), BODY), Ok(()));
        assert_eq!(
            v.verify(Some(header.to_uppercase().replace("SHA256=", "sha256=").as_bytes()), BODY),
            Ok(())
        );
    }

    #[test]
    fn refuses_anything_else() {
        let v = WebhookVerifier::new(b"secret", None);
        let good = sign(b"secret", BODY);
        let other = sign(b"other", BODY);
        let decoded = BODY.to_vec().iter().copied().filter(|b| *b != b'\\').collect::<Vec<_>>();
        type Case<'a> = (Option<&'a [u8]>, &'a [u8], SignatureError);
        let cases: Vec<Case> = vec![
            (None, BODY, SignatureError::Missing),
            (Some(b""), BODY, SignatureError::Malformed),
            (Some(b"sha1=abc"), BODY, SignatureError::Malformed),
            (Some(&good.as_bytes()[..good.len() - 2]), BODY, SignatureError::Malformed),
            (Some(b"sha256=zz"), BODY, SignatureError::Malformed),
            (Some(&[0xff, 0xfe]), BODY, SignatureError::Malformed),
            (Some(good.as_bytes()), &decoded, SignatureError::Mismatch),
            (Some(other.as_bytes()), BODY, SignatureError::Mismatch),
        ];
        for (i, (header, body, want)) in cases.into_iter().enumerate() {
            assert_eq!(v.verify(header, body), Err(want), "case {i}");
        }
    }

    #[test]
    fn previous_secret_works_during_rotation() {
        let header = sign(b"old-secret", BODY);
        let rotating = WebhookVerifier::new(b"new-secret", Some(b"old-secret"));
        assert_eq!(rotating.verify(Some(header.as_bytes()), BODY), Ok(()));
        let done = WebhookVerifier::new(b"new-secret", None);
        assert_eq!(done.verify(Some(header.as_bytes()), BODY), Err(SignatureError::Mismatch));
    }
}
