//! Every key waverify derives from `WAVERIFY_CODE_KEY`, and what it does
//! with them. Pure computation: no I/O.
//!
//! - the code tag: HMAC-SHA256 under the code key itself (see `CodeHasher`);
//! - the number key: a keyed hash of a phone number, under which limits
//!   count, so that counters never hold a number;
//! - the seal: AES-256-GCM over the number and code of a pending
//!   verification, needed to send the code again, so that the data
//!   directory never holds a readable number. Old copies that sled keeps
//!   on disk until it compacts stay unreadable without the key, which lives
//!   outside the store.
//!
//! The two derived keys come from HKDF-SHA256, each under its own label,
//! so no key serves two purposes. While a previous code key is configured,
//! codes and seals made under it still open; new ones use the current key.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hkdf, hmac};

use crate::domain::{Channel, Code, CodeHasher, PhoneNumber, VerificationId};

/// What must be kept to send a code again: the number, and the code of
/// each channel the verification may use.
#[derive(Clone, PartialEq, Eq)]
pub struct SendSecret {
    pub to: PhoneNumber,
    pub codes: Vec<(Channel, Code)>,
}

impl SendSecret {
    pub fn code(&self, channel: Channel) -> Option<&Code> {
        self.codes.iter().find(|(c, _)| *c == channel).map(|(_, code)| code)
    }
}

impl fmt::Debug for SendSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendSecret").field("to", &self.to).field("codes", &self.codes).finish()
    }
}

fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Whatsapp => "whatsapp",
        Channel::Sms => "sms",
    }
}

struct Derived {
    number: hmac::Key,
    seal: aead::LessSafeKey,
}

impl Derived {
    fn from(code_key: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"waverify-keys-v1").extract(code_key);
        let number: hmac::Key = prk
            .expand(&[b"number-key"], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA256 output length")
            .into();
        let seal: aead::UnboundKey = prk
            .expand(&[b"seal-key"], &aead::AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA256 output length")
            .into();
        Self { number, seal: aead::LessSafeKey::new(seal) }
    }
}

pub struct Keyring {
    codes: CodeHasher,
    current: Derived,
    previous: Option<Derived>,
    rng: SystemRandom,
}

const NONCE_LEN: usize = aead::NONCE_LEN;

impl Keyring {
    pub fn new(code_key: &[u8], previous: Option<&[u8]>) -> Self {
        Self {
            codes: CodeHasher::new(code_key, previous),
            current: Derived::from(code_key),
            previous: previous.map(Derived::from),
            rng: SystemRandom::new(),
        }
    }

    /// A keyed hash of the number, as hex. Stable for as long as the code
    /// key is: rotating the key starts every number's counters afresh.
    pub fn number_key(&self, phone: &PhoneNumber) -> String {
        hex::encode(hmac::sign(&self.current.number, phone.e164().as_bytes()).as_ref())
    }

    /// The number's key under the previous code key, while one is set: a
    /// verification created before the rotation is still found by it.
    pub fn previous_number_key(&self, phone: &PhoneNumber) -> Option<String> {
        let previous = self.previous.as_ref()?;
        Some(hex::encode(hmac::sign(&previous.number, phone.e164().as_bytes()).as_ref()))
    }

    pub fn code_tag(&self, id: &VerificationId, number_key: &str, code: &Code) -> Vec<u8> {
        self.codes.tag(id.as_str(), number_key, code)
    }

    /// Constant-time; accepts tags made under the previous key too.
    pub fn code_matches(
        &self,
        id: &VerificationId,
        number_key: &str,
        code: &Code,
        tag: &[u8],
    ) -> bool {
        self.codes.matches(id.as_str(), number_key, code, tag)
    }

    /// Seals the number and code, bound to the verification id: a sealed
    /// secret copied to another verification does not open.
    pub fn seal(
        &self,
        id: &VerificationId,
        secret: &SendSecret,
    ) -> Result<Vec<u8>, ring::error::Unspecified> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        let mut text = secret.to.e164().to_owned();
        for (channel, code) in &secret.codes {
            text.push('\0');
            text.push_str(channel_name(*channel));
            text.push('=');
            text.push_str(code.expose());
        }
        let mut buffer = text.into_bytes();
        self.current.seal.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(id.as_str().as_bytes()),
            &mut buffer,
        )?;
        Ok([nonce.as_slice(), &buffer].concat())
    }

    pub fn open(&self, id: &VerificationId, sealed: &[u8]) -> Option<SendSecret> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        [Some(&self.current), self.previous.as_ref()].into_iter().flatten().find_map(|keys| {
            let mut buffer = body.to_vec();
            let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
            let aad = aead::Aad::from(id.as_str().as_bytes());
            let plain = keys.seal.open_in_place(nonce, aad, &mut buffer).ok()?;
            let text = std::str::from_utf8(plain).ok()?;
            let mut parts = text.split('\0');
            let to = PhoneNumber::parse(parts.next()?).ok()?;
            let codes = parts
                .map(|part| {
                    let (name, code) = part.split_once('=')?;
                    let channel = [Channel::Whatsapp, Channel::Sms]
                        .into_iter()
                        .find(|c| channel_name(*c) == name)?;
                    Some((channel, Code::parse(code).ok()?))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(SendSecret { to, codes })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> VerificationId {
        VerificationId::parse(&format!("{n:02x}{}", "a".repeat(30))).unwrap()
    }

    fn secret() -> SendSecret {
        SendSecret {
            to: PhoneNumber::parse("+15550001234").unwrap(),
            codes: vec![
                (Channel::Whatsapp, Code::parse("042042").unwrap()),
                (Channel::Sms, Code::parse("917263").unwrap()),
            ],
        }
    }

    #[test]
    fn sealed_secrets_open_only_for_their_verification() {
        let keys = Keyring::new(b"a-code-key-that-is-long-enough-0000", None);
        let sealed = keys.seal(&id(1), &secret()).unwrap();
        assert_eq!(keys.open(&id(1), &sealed), Some(secret()));
        assert_eq!(keys.open(&id(2), &sealed), None);
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(keys.open(&id(1), &tampered), None);
        assert_eq!(keys.open(&id(1), &sealed[..5]), None);
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains("5550001234") && !text.contains("042042"), "sealed is opaque");
    }

    #[test]
    fn rotation_keeps_old_seals_and_tags_readable() {
        let old = Keyring::new(b"old-code-key-that-is-long-enough-00", None);
        let sealed = old.seal(&id(1), &secret()).unwrap();
        let tag = old.code_tag(&id(1), "nk", &secret().codes[0].1);
        let rotated = Keyring::new(
            b"new-code-key-that-is-long-enough-00",
            Some(b"old-code-key-that-is-long-enough-00"),
        );
        assert_eq!(rotated.open(&id(1), &sealed), Some(secret()));
        assert!(rotated.code_matches(&id(1), "nk", &secret().codes[0].1, &tag));
        let done = Keyring::new(b"new-code-key-that-is-long-enough-00", None);
        assert_eq!(done.open(&id(1), &sealed), None);
        assert!(!done.code_matches(&id(1), "nk", &secret().codes[0].1, &tag));
    }

    #[test]
    fn number_keys_are_stable_and_keyed() {
        let a = Keyring::new(b"key-a-that-is-long-enough-0000000000", None);
        let b = Keyring::new(b"key-b-that-is-long-enough-0000000000", None);
        let n = PhoneNumber::parse("+15550001234").unwrap();
        assert_eq!(a.number_key(&n), a.number_key(&n));
        assert_ne!(a.number_key(&n), b.number_key(&n));
        assert!(!a.number_key(&n).contains("5550001234"));
    }
}
