//! Sandbox mode: the whole path without a Meta account.
//!
//! A stand-in of the Graph API messages endpoint is served under
//! `/sandbox/graph`, and the real `GraphClient` calls it over HTTP; a
//! stand-in of the SMS provider's Messages API under `/sandbox/sms`, called
//! by the real `SmsClient`. It
//! checks requests as Meta does, answers as Meta does, and then reports
//! statuses by POSTing signed webhooks to waverify's own `/webhook`. What it
//! "sent" is listed, codes included, at `GET /sandbox/messages`.
//!
//! None of this is mounted outside sandbox mode.

mod deliver;
mod graph;
pub mod numbers;
mod sms;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::clock::SharedClock;
use crate::error::ApiError;
use crate::routes::Authenticated;
use crate::settings::{Secret, Settings, SmsSettings};

pub use numbers::{Outcome, Timing, TEST_NUMBERS};

/// How many sent messages the sandbox remembers.
const OUTBOX_SIZE: usize = 200;

/// What the stand-in must agree with, and where it reports statuses.
pub struct Sandbox {
    outbox: Mutex<VecDeque<SandboxMessage>>,
    pub timing: Timing,
    pub webhook_url: String,
    pub app_secret: Secret,
    pub access_token: Secret,
    pub template: String,
    pub template_lang: String,
    pub clock: SharedClock,
    /// The SMS stand-in's account, token and callback address.
    pub sms: Option<SmsSettings>,
}

/// A message the stand-in accepted, as `GET /sandbox/messages` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxMessage {
    pub channel: &'static str,
    pub message_id: String,
    pub verification_id: Option<String>,
    pub to: String,
    pub code: String,
    pub text: String,
    pub outcome: &'static str,
    pub sent_at: String,
}

impl Sandbox {
    /// The stand-ins agree with `settings` (token, template, app secret,
    /// SMS account) and report statuses to `webhook_url`.
    pub fn new(
        settings: &Settings,
        timing: Timing,
        webhook_url: String,
        clock: SharedClock,
    ) -> Self {
        Self {
            outbox: Mutex::new(VecDeque::new()),
            timing,
            webhook_url,
            app_secret: settings.app_secret.clone(),
            access_token: settings.graph.access_token.clone(),
            template: settings.graph.template.clone(),
            template_lang: settings.graph.template_lang.clone(),
            clock,
            sms: settings.sms.clone(),
        }
    }

    fn remember(&self, message: SandboxMessage) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if outbox.len() == OUTBOX_SIZE {
            outbox.pop_back();
        }
        outbox.push_front(message);
    }

    fn messages(&self) -> Vec<SandboxMessage> {
        let outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        outbox.iter().cloned().collect()
    }
}

pub fn configure(cfg: &mut web::ServiceConfig, sandbox: Arc<Sandbox>) {
    cfg.app_data(web::Data::from(sandbox))
        .route(
            "/sandbox/graph/{version}/{phone_number_id}/messages",
            web::post().to(graph::messages),
        )
        .route(
            "/sandbox/sms/2010-04-01/Accounts/{sid}/Messages.json",
            web::post().to(sms::messages),
        )
        .route("/sandbox/messages", web::get().to(list_messages));
}

/// `GET /sandbox/messages`: newest first, each message's fields in the
/// order they are declared (a `serde_json::Value` would sort them).
async fn list_messages(
    _: Authenticated,
    sandbox: web::Data<Sandbox>,
) -> Result<HttpResponse, ApiError> {
    #[derive(Serialize)]
    struct Listed {
        messages: Vec<SandboxMessage>,
    }
    Ok(HttpResponse::Ok().json(Listed { messages: sandbox.messages() }))
}
