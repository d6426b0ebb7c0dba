//! One-time codes: drawing them, and keeping only a keyed hash of them.

use std::fmt;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Number of digits in a code: 10^6 possibilities, about 20 bits, the
/// minimum NIST SP 800-63B accepts for a look-up secret sent out of band.
pub const CODE_DIGITS: usize = 6;
const CODE_SPACE: u32 = 1_000_000;
/// The largest multiple of `CODE_SPACE` that fits in a `u32`. Draws at or
/// above it are thrown away so that `draw % CODE_SPACE` is exactly uniform.
const UNBIASED_LIMIT: u32 = u32::MAX - (u32::MAX % CODE_SPACE);

/// A one-time code. Its `Debug` never shows the digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("the code must be exactly {CODE_DIGITS} digits")]
    Malformed,
    #[error("the system random number generator failed")]
    Rng,
}

impl Code {
    /// Draws a uniformly random code from the operating system's CSPRNG.
    pub fn generate(rng: &SystemRandom) -> Result<Self, CodeError> {
        loop {
            let mut bytes = [0u8; 4];
            rng.fill(&mut bytes).map_err(|_| CodeError::Rng)?;
            let draw = u32::from_le_bytes(bytes);
            if draw < UNBIASED_LIMIT {
                return Ok(Self(format!("{:06}", draw % CODE_SPACE)));
            }
        }
    }

    /// Accepts exactly six ASCII digits, nothing around them.
    pub fn parse(raw: &str) -> Result<Self, CodeError> {
        if raw.len() == CODE_DIGITS && raw.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(CodeError::Malformed)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Code(******)")
    }
}

/// Computes and checks the keyed hash under which a code is stored.
///
/// The hash binds the code to one verification and one phone number (by
/// the number's keyed hash), so a code issued for one can never approve
/// another, and a copy of the store
/// without the key does not give the codes away (a bare SHA-256 of a
/// 6-digit code is reversed by trying all million).
///
/// A previous key may be kept while a new one is rolled out: codes hashed
/// under it still check until it is removed.
pub struct CodeHasher {
    current: hmac::Key,
    previous: Option<hmac::Key>,
}

impl CodeHasher {
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Self {
        Self {
            current: hmac::Key::new(hmac::HMAC_SHA256, current),
            previous: previous.map(|p| hmac::Key::new(hmac::HMAC_SHA256, p)),
        }
    }

    pub fn tag(&self, verification_id: &str, number_key: &str, code: &Code) -> Vec<u8> {
        let message = bound_message(verification_id, number_key, code);
        hmac::sign(&self.current, &message).as_ref().to_vec()
    }

    /// Compares in constant time (ring's `hmac::verify`).
    pub fn matches(
        &self,
        verification_id: &str,
        number_key: &str,
        code: &Code,
        tag: &[u8],
    ) -> bool {
        let message = bound_message(verification_id, number_key, code);
        let current = hmac::verify(&self.current, &message, tag).is_ok();
        let previous =
            self.previous.as_ref().is_some_and(|key| hmac::verify(key, &message, tag).is_ok());
        current | previous
    }
}

fn bound_message(verification_id: &str, number_key: &str, code: &Code) -> Vec<u8> {
    // NUL cannot occur in any of the three parts, so the encoding is
    // unambiguous.
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"waverify-code-v1\0");
    m.extend_from_slice(verification_id.as_bytes());
    m.push(0);
    m.extend_from_slice(number_key.as_bytes());
    m.push(0);
    m.extend_from_slice(code.expose().as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_a_multiple_of_the_space() {
        assert_eq!(UNBIASED_LIMIT % CODE_SPACE, 0);
        assert!(u64::from(UNBIASED_LIMIT) + u64::from(CODE_SPACE) > u64::from(u32::MAX));
    }

    #[test]
    fn generated_codes_are_six_digits_and_vary() {
        let rng = SystemRandom::new();
        let codes: std::collections::HashSet<String> =
            (0..200).map(|_| Code::generate(&rng).unwrap().expose().to_owned()).collect();
        assert!(codes.iter().all(|c| Code::parse(c).is_ok()));
        assert!(codes.len() > 190, "200 draws gave only {} distinct codes", codes.len());
    }

    #[test]
    fn digits_are_roughly_uniform() {
        let rng = SystemRandom::new();
        let mut counts = [0u32; 10];
        for _ in 0..5_000 {
            let code = Code::generate(&rng).unwrap();
            counts[usize::from(code.expose().as_bytes()[0] - b'0')] += 1;
        }
        // 500 expected per digit; 5 standard deviations is about 106.
        for (digit, n) in counts.iter().enumerate() {
            assert!((390..=610).contains(n), "leading digit {digit} drawn {n} times");
        }
    }

    #[test]
    fn parse_is_strict() {
        for bad in ["12345", "1234567", "12345a", " 123456", "١٢٣٤٥٦", ""] {
            assert_eq!(Code::parse(bad), Err(CodeError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn tag_binds_code_to_verification_and_number() {
        let h = CodeHasher::new(b"k1", None);
        let code = Code::parse("123456").unwrap();
        let tag = h.tag("v1", "+15550001234", &code);
        assert!(h.matches("v1", "+15550001234", &code, &tag));
        assert!(!h.matches("v2", "+15550001234", &code, &tag));
        assert!(!h.matches("v1", "+15550001235", &code, &tag));
        assert!(!h.matches("v1", "+15550001234", &Code::parse("123457").unwrap(), &tag));
    }

    #[test]
    fn previous_key_still_checks() {
        let old = CodeHasher::new(b"old", None);
        let code = Code::parse("000001").unwrap();
        let tag = old.tag("v", "+15550001234", &code);
        let rotated = CodeHasher::new(b"new", Some(b"old"));
        assert!(rotated.matches("v", "+15550001234", &code, &tag));
        let dropped = CodeHasher::new(b"new", None);
        assert!(!dropped.matches("v", "+15550001234", &code, &tag));
    }

    #[test]
    fn debug_hides_digits() {
        assert!(!format!("{:?}", Code::parse("987654").unwrap()).contains("987654"));
    }
}
