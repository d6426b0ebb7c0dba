//! `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed with the auth token,
//! over the callback URL followed by every POST parameter's name and value,
//! sorted by name. The URL is the one configured (`WAVERIFY_PUBLIC_URL`),
//! not what the request line says: behind a tunnel or proxy the two differ,
//! and the provider signs the URL it was given.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;

pub use crate::whatsapp::SignatureError;

pub const HEADER: &str = "X-Twilio-Signature";

fn signed_text(url: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = url.as_bytes().to_vec();
    for (name, value) in sorted {
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(value.as_bytes());
    }
    text
}

/// The header value the provider sends for these parameters.
pub fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    // SHA-1 is what the provider's scheme uses; as an HMAC it still holds.
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token.as_bytes());
    STANDARD.encode(hmac::sign(&key, &signed_text(url, params)).as_ref())
}

/// Compares in constant time (ring's `hmac::verify`). The header must be
/// the 20 bytes of an HMAC-SHA1 in standard base64.
pub fn verify(
    token: &str,
    url: &str,
    params: &[(String, String)],
    header: Option<&[u8]>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let tag = STANDARD.decode(header.trim_ascii()).map_err(|_| SignatureError::Malformed)?;
    if tag.len() != 20 {
        return Err(SignatureError::Malformed);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, token.as_bytes());
    hmac::verify(&key, &signed_text(url, params), &tag).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, String)> {
        [("MessageStatus", "delivered"), ("MessageSid", "SM1"), ("ErrorCode", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sorted_parameters_after_the_url() {
        let text = signed_text("https://h/webhook/sms", &params());
        assert_eq!(text, b"https://h/webhook/smsErrorCodeMessageSidSM1MessageStatusdelivered");
    }

    #[test]
    fn verifies_only_the_exact_url_token_and_parameters() {
        let url = "https://h/webhook/sms";
        let good = sign("token", url, &params());
        assert_eq!(verify("token", url, &params(), Some(good.as_bytes())), Ok(()));
        assert_eq!(verify("token", url, &params(), None), Err(SignatureError::Missing));
        assert_eq!(verify("token", url, &params(), Some(b"%%%")), Err(SignatureError::Malformed));
        assert_eq!(verify("token", url, &params(), Some(b"AAAA")), Err(SignatureError::Malformed));
        let other = Some(good.as_bytes());
        assert_eq!(verify("other", url, &params(), other), Err(SignatureError::Mismatch));
        assert_eq!(verify("token", "https://h/x", &params(), other), Err(SignatureError::Mismatch));
        let mut changed = params();
        changed[0].1 = "failed".into();
        assert_eq!(
            verify("token", url, &changed, Some(good.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }
}
