//! HTTP in and out, kept thin: parse, call the domain and the store, answer.

mod auth;
mod body;
mod health;
mod sms_webhook;
mod throttle;
mod verifications;
mod webhook;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use ring::rand::SystemRandom;

use crate::clock::SharedClock;
use crate::domain::Keyring;
use crate::error::ApiError;
use crate::outbox::{Outbox, OutboxConfig};
use crate::settings::{FallbackSettings, LimitSettings, Settings, SmsSettings};
use crate::store::{Store, Sweeper};
use crate::whatsapp::WebhookVerifier;

pub use auth::{Authenticated, SecretDigest};
pub use body::{declared_length, read_json, read_limited};
pub use throttle::ClientLimiter;
pub use verifications::VerificationView;

/// What every request handler shares, whichever worker runs it.
pub struct AppState {
    pub store: Store,
    pub clock: SharedClock,
    pub keys: Arc<Keyring>,
    pub webhook: WebhookVerifier,
    pub api_key: SecretDigest,
    pub verify_token: SecretDigest,
    pub code_ttl_seconds: i64,
    pub max_attempts: u32,
    pub retention_seconds: i64,
    pub request_timeout: Duration,
    pub limits: LimitSettings,
    pub fallback: FallbackSettings,
    /// The SMS provider, when one is configured.
    pub sms: Option<SmsSettings>,
    pub clients: ClientLimiter,
    /// The UTC day on which a spent send budget was last logged.
    pub budget_warned_day: AtomicI64,
    pub rng: SystemRandom,
    pub outbox: Outbox,
    /// Purges expired verifications for as long as the app lives.
    _sweeper: Sweeper,
}

impl AppState {
    pub fn new(
        settings: &Settings,
        store: Store,
        clock: SharedClock,
        sweep_every: Duration,
    ) -> std::io::Result<Self> {
        let retention_seconds = settings.retention.as_secs() as i64;
        // Parked statuses wait for a send that is at most a Graph API
        // timeout late; after a whole retention period nobody will claim them.
        let sweeper = store.start_sweeper(clock.clone(), sweep_every, retention_seconds)?;
        let keys = Arc::new(Keyring::new(
            settings.code_key.expose().as_bytes(),
            settings.code_key_previous.as_ref().map(|k| k.expose().as_bytes()),
        ));
        let config = OutboxConfig {
            graph: settings.graph.clone(),
            sms: settings.sms.clone(),
            fallback: settings.fallback,
            limits: settings.limits.clone(),
            tick: sweep_every.min(Duration::from_secs(1)),
        };
        let outbox = Outbox::start(store.clone(), keys.clone(), clock.clone(), config)?;
        Ok(Self {
            store,
            clock,
            keys,
            webhook: WebhookVerifier::new(
                settings.app_secret.expose().as_bytes(),
                settings.app_secret_previous.as_ref().map(|k| k.expose().as_bytes()),
            ),
            api_key: SecretDigest::of(settings.api_key.expose()),
            verify_token: SecretDigest::of(settings.verify_token.expose()),
            code_ttl_seconds: settings.code_ttl.as_secs() as i64,
            max_attempts: settings.max_attempts,
            retention_seconds,
            request_timeout: settings.request_timeout,
            clients: ClientLimiter::per_minute(settings.limits.client_requests_per_minute),
            limits: settings.limits.clone(),
            fallback: settings.fallback,
            sms: settings.sms.clone(),
            budget_warned_day: AtomicI64::new(i64::MIN),
            rng: SystemRandom::new(),
            outbox,
            _sweeper: sweeper,
        })
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/verifications")
            .service(
                web::resource("")
                    .route(web::post().to(verifications::send_code))
                    .default_service(not_allowed("POST")),
            )
            .default_service(web::to(verifications::by_id)),
    )
    .service(
        web::resource("/webhook")
            .route(web::get().to(webhook::handshake))
            .route(web::post().to(webhook::receive))
            .default_service(not_allowed("GET, POST")),
    )
    .service(
        web::resource("/webhook/sms")
            .route(web::post().to(sms_webhook::receive))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/healthz")
            .route(web::get().to(health::check))
            .route(web::head().to(health::check))
            .default_service(not_allowed("GET, HEAD")),
    );
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// Answers 405 with the methods the resource does take.
fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)) })
}
