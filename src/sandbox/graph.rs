//! The stand-in of `POST /{version}/{phone_number_id}/messages`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use serde_json::json;

use super::{deliver, Outcome, Sandbox, SandboxMessage};
use crate::clock::rfc3339;
use crate::domain::PhoneNumber;
use crate::routes::{read_limited, SecretDigest};

#[derive(Deserialize)]
struct Request {
    messaging_product: Option<String>,
    to: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    biz_opaque_callback_data: Option<String>,
    template: Option<Template>,
}

#[derive(Deserialize)]
struct Template {
    name: String,
    language: Language,
    #[serde(default)]
    components: Vec<Component>,
}

#[derive(Deserialize)]
struct Language {
    code: String,
}

#[derive(Deserialize)]
struct Component {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    parameters: Vec<Parameter>,
}

#[derive(Deserialize)]
struct Parameter {
    text: Option<String>,
}

/// A Graph API error answer, in Meta's shape.
struct Refusal {
    status: StatusCode,
    code: i64,
    message: &'static str,
    details: String,
}

impl Refusal {
    fn new(
        status: StatusCode,
        code: i64,
        message: &'static str,
        details: impl Into<String>,
    ) -> Self {
        Self { status, code, message, details: details.into() }
    }

    fn invalid(details: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 100, "(#100) Invalid parameter", details)
    }

    fn template_missing(name: &str, lang: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            132001,
            "(#132001) Template name does not exist in the translation",
            format!("template name ({name}) does not exist in {lang}"),
        )
    }

    fn into_response(self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({
            "error": {
                "message": self.message,
                "type": "OAuthException",
                "code": self.code,
                "error_data": {"messaging_product": "whatsapp", "details": self.details},
                "fbtrace_id": "SANDBOX"
            }
        }))
    }
}

pub(super) async fn messages(
    req: HttpRequest,
    body: web::Payload,
    sandbox: web::Data<Sandbox>,
) -> HttpResponse {
    let token_ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| SecretDigest::of(sandbox.access_token.expose()).matches(t));
    if !token_ok {
        let message = "Invalid OAuth access token - Cannot parse access token";
        return Refusal::new(StatusCode::UNAUTHORIZED, 190, message, "").into_response();
    }
    let Ok(bytes) = read_limited(&req, body, 64 * 1024).await else {
        return Refusal::invalid("unreadable body").into_response();
    };
    let Ok(request) = serde_json::from_slice::<Request>(&bytes) else {
        return Refusal::invalid("the body is not a message").into_response();
    };
    match accept(&request, &sandbox) {
        Ok((digits, code)) => {
            let outcome = Outcome::for_digits(&digits);
            if outcome == Outcome::TemplateMissing {
                return Refusal::template_missing(&sandbox.template, &sandbox.template_lang)
                    .into_response();
            }
            let message_id = new_message_id();
            sandbox.remember(SandboxMessage {
                channel: "whatsapp",
                message_id: message_id.clone(),
                verification_id: request.biz_opaque_callback_data.clone(),
                to: PhoneNumber::parse(&format!("+{digits}"))
                    .map(|p| p.masked())
                    .unwrap_or_default(),
                text: format!(
                    "{code} is your verification code. For your security, do not share this code."
                ),
                code,
                outcome: outcome.as_str(),
                sent_at: rfc3339(sandbox.clock.now()),
            });
            deliver::schedule(
                sandbox.into_inner(),
                outcome,
                &message_id,
                &digits,
                request.biz_opaque_callback_data,
            );
            HttpResponse::Ok().json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": digits, "wa_id": digits}],
                "messages": [{"id": message_id, "message_status": "accepted"}]
            }))
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Checks a request as Meta would; returns the recipient's digits and the
/// code, or Meta's error answer.
fn accept(request: &Request, sandbox: &Sandbox) -> Result<(String, String), Refusal> {
    if request.messaging_product.as_deref() != Some("whatsapp") {
        return Err(Refusal::invalid("messaging_product must be whatsapp"));
    }
    let digits = request.to.clone().unwrap_or_default();
    if PhoneNumber::parse(&format!("+{digits}")).is_err() {
        return Err(Refusal::invalid("to is not a valid phone number"));
    }
    if request.kind.as_deref() != Some("template") {
        return Err(Refusal::invalid("only template messages can start a conversation"));
    }
    let Some(template) = &request.template else {
        return Err(Refusal::invalid("template is required"));
    };
    if template.name != sandbox.template || template.language.code != sandbox.template_lang {
        return Err(Refusal::template_missing(&template.name, &template.language.code));
    }
    let text_of = |kind: &str| {
        template
            .components
            .iter()
            .find(|c| c.kind == kind)
            .and_then(|c| c.parameters.first())
            .and_then(|p| p.text.clone())
    };
    match (text_of("body"), text_of("button")) {
        (Some(body), Some(button)) if body == button => Ok((digits, body)),
        (Some(_), Some(_)) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            "the body and button parameters of an authentication template must be the same code",
        )),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            131008,
            "(#131008) Required parameter is missing",
            "an authentication template needs the code in its body and its button parameter",
        )),
    }
}

fn new_message_id() -> String {
    let mut bytes = [0u8; 12];
    // The OS generator does not fail on a working system; a zero id would
    // still be a valid, if repeated, stand-in id.
    let _ = SystemRandom::new().fill(&mut bytes);
    format!("wamid.SANDBOX{}", hex::encode_upper(bytes))
}
