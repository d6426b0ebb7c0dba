//! Meta's error codes, grouped by what a sender of one-time codes should do
//! about them. Decisions are made on the code, never on the HTTP status or
//! the wording, which Meta changes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// This recipient cannot get WhatsApp messages from us now (not on
    /// WhatsApp, an experiment, a country restriction, engagement limits).
    RecipientUnreachable,
    /// Too soon after the last message to the same user.
    PairRateLimit,
    /// The business number's or the app's throughput limit.
    Throughput,
    /// A temporary fault on Meta's side; one retry may succeed.
    Transient,
    /// The request was wrong: a bug or a misconfiguration.
    BadRequest,
    /// The template does not exist in the configured language.
    TemplateMissing,
    /// The template was paused or disabled by Meta.
    TemplateDisabled,
    /// The business account or its token can no longer send at all.
    SenderBlocked,
    Unknown,
}

impl ErrorClass {
    pub fn of(code: i64) -> Self {
        match code {
            131026 | 130472 | 130497 | 131049 => Self::RecipientUnreachable,
            131056 => Self::PairRateLimit,
            130429 | 4 | 80007 => Self::Throughput,
            131000 | 131016 | 2 | 1 => Self::Transient,
            131008 | 131009 | 100 | 132000 | 132012 | 131047 => Self::BadRequest,
            132001 => Self::TemplateMissing,
            132015 | 132016 => Self::TemplateDisabled,
            368 | 131031 | 131042 | 131048 | 190 => Self::SenderBlocked,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecipientUnreachable => "recipient_unreachable",
            Self::PairRateLimit => "pair_rate_limit",
            Self::Throughput => "throughput",
            Self::Transient => "transient",
            Self::BadRequest => "bad_request",
            Self::TemplateMissing => "template_missing",
            Self::TemplateDisabled => "template_disabled",
            Self::SenderBlocked => "sender_blocked",
            Self::Unknown => "unknown",
        }
    }

    /// Whether the operator must act: no retry or fallback fixes these.
    pub fn needs_operator(self) -> bool {
        matches!(
            self,
            Self::BadRequest | Self::TemplateMissing | Self::TemplateDisabled | Self::SenderBlocked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes_have_their_class() {
        let cases = [
            (131026, ErrorClass::RecipientUnreachable),
            (131049, ErrorClass::RecipientUnreachable),
            (131056, ErrorClass::PairRateLimit),
            (130429, ErrorClass::Throughput),
            (131000, ErrorClass::Transient),
            (132001, ErrorClass::TemplateMissing),
            (132015, ErrorClass::TemplateDisabled),
            (190, ErrorClass::SenderBlocked),
            (999_999, ErrorClass::Unknown),
        ];
        for (code, class) in cases {
            assert_eq!(ErrorClass::of(code), class, "code {code}");
        }
    }
}
