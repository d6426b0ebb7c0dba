//! Phone numbers in E.164 form, and how they may be shown.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A phone number in strict E.164 form: `+`, then 7 to 15 digits, the
/// first of which is not 0. Parsing is the only way to build one, so
/// every `PhoneNumber` past the HTTP edge is valid.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("must be in E.164 form and start with '+', e.g. +15550001234")]
    MissingPlus,
    #[error("must contain only the digits 0-9 after the '+' (no spaces, dashes or brackets)")]
    NotDigits,
    #[error("must have between 7 and 15 digits after the '+'")]
    BadLength,
    #[error("a country calling code never starts with 0")]
    LeadingZero,
}

const MIN_DIGITS: usize = 7;
const MAX_DIGITS: usize = 15;

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let digits = raw.strip_prefix('+').ok_or(PhoneError::MissingPlus)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::NotDigits);
        }
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits.len()) {
            return Err(PhoneError::BadLength);
        }
        if digits.starts_with('0') {
            return Err(PhoneError::LeadingZero);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The number with its leading `+`.
    pub fn e164(&self) -> &str {
        &self.0
    }

    /// The digits alone, as the Graph API takes them.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// A form safe to show back to an API client: the leading digits (mostly
    /// the country and area code), five stars whatever the length, and the
    /// last digits, e.g. `+1555*****234`. At least four digits are always
    /// hidden, so short numbers show fewer at the end.
    pub fn masked(&self) -> String {
        const HIDDEN: usize = 4;
        let digits = self.digits();
        let n = digits.len();
        let head = match n {
            11.. => 4,
            9..=10 => 3,
            _ => 2,
        };
        let tail = if n >= 10 { 3 } else { 2 };
        let tail = tail.min(n - head - HIDDEN);
        format!("+{}*****{}", &digits[..head], &digits[n - tail..])
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PhoneNumber> for String {
    fn from(value: PhoneNumber) -> Self {
        value.0
    }
}

/// Replaces whatever looks like a phone number in a provider's free text
/// (a run of 7 or more digits, with an optional `+` and the usual
/// separators) with `[number]`. Providers put the recipient's number in
/// their error messages; these are logged and stored, numbers never are.
pub fn redact_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '+' || chars[i] == '(' || chars[i].is_ascii_digit() {
            let (mut end, mut digits, mut j) = (i, 0, i);
            if chars[j] == '+' {
                j += 1;
            }
            while j < chars.len() && (chars[j].is_ascii_digit() || " -.()".contains(chars[j])) {
                if chars[j].is_ascii_digit() {
                    digits += 1;
                    end = j + 1;
                }
                j += 1;
            }
            if digits >= 7 {
                out.push_str("[number]");
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Debug output is masked so that a stray `{:?}` cannot leak a number.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164() {
        for raw in ["+15550001234", "+4930123456", "+6834002", "+123456789012345"] {
            assert!(PhoneNumber::parse(raw).is_ok(), "{raw} should parse");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("15550001234", PhoneError::MissingPlus),
            ("", PhoneError::MissingPlus),
            ("+1 555 000 1234", PhoneError::NotDigits),
            ("+1555-000-1234", PhoneError::NotDigits),
            ("+１５５５０００１２３４", PhoneError::NotDigits),
            ("+123456", PhoneError::BadLength),
            ("+1234567890123456", PhoneError::BadLength),
            ("+", PhoneError::BadLength),
            ("+05550001234", PhoneError::LeadingZero),
        ];
        for (raw, want) in cases {
            assert_eq!(PhoneNumber::parse(raw), Err(want), "input {raw:?}");
        }
    }

    #[test]
    fn masks_without_revealing_length_or_middle() {
        let cases = [
            ("+15550001234", "+1555*****234"),
            ("+4930123456", "+493*****456"),
            ("+6834002", "+68*****2"),
            ("+68340021", "+68*****21"),
            ("+123456789012345", "+1234*****345"),
        ];
        for (raw, want) in cases {
            assert_eq!(PhoneNumber::parse(raw).unwrap().masked(), want, "input {raw}");
        }
    }

    #[test]
    fn numbers_in_free_text_are_redacted() {
        let cases = [
            (
                "The 'To' number +4915112345679 is not valid.",
                "The 'To' number [number] is not valid.",
            ),
            ("call +1 (555) 000-1234 now", "call [number] now"),
            ("error 131026 at 12:30", "error 131026 at 12:30"),
            ("id 1234567", "id [number]"),
            ("", ""),
            ("+", "+"),
            ("to (555) 010-0002.", "to [number]."),
            ("(ok) (12)", "(ok) (12)"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_numbers(text), want, "{text:?}");
        }
    }

    #[test]
    fn debug_is_masked() {
        let n = PhoneNumber::parse("+15550001234").unwrap();
        assert!(!format!("{n:?}").contains("0001234"));
    }
}
