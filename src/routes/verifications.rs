//! send-code, status poll, check-code and cancel.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::clock::{Rfc3339, UnixTime};
use crate::domain::{
    Attempt, Channel, ChannelChoice, CheckOutcome, Code, CodeTag, Delivery, DeliveryError,
    DeliveryStatus, Limit, NewVerification, PhoneNumber, Purpose, SendSecret, Verification,
    VerificationId, VerificationStatus,
};
use crate::error::{ApiError, Throttle};
use crate::routes::throttle::{client_address, Subject};
use crate::routes::{read_json, AppState, Authenticated};
use crate::store::{
    send_hits, Counter, IdempotencyRecord, NoResend, NotCreated, Refused, ResendRules,
};

/// Request bodies on `/v1` are tiny; anything larger is refused unread.
const JSON_LIMIT: usize = 16 * 1024;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with \"to\" and optionally \"channel\" and \"purpose\""
)]
struct SendCodeRequest {
    to: String,
    #[serde(default)]
    channel: ChannelChoice,
    #[serde(default)]
    purpose: Purpose,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "an object with \"code\"")]
struct CheckRequest {
    code: String,
}

/// A verification as the API shows it. It borrows from the verification
/// and formats its times as it is serialized: an answer is built without
/// copying anything.
#[derive(Debug, Serialize)]
pub struct VerificationView<'a> {
    pub id: &'a str,
    pub status: VerificationStatus,
    /// What was asked for: `whatsapp`, `sms` or `auto`.
    pub channel: ChannelChoice,
    pub purpose: Purpose,
    /// Which channel's code approved it, once approved.
    pub approved_channel: Option<Channel>,
    pub to: &'a str,
    pub created_at: Rfc3339,
    pub expires_at: Rfc3339,
    pub attempts_left: u32,
    /// The latest send's delivery.
    pub delivery: DeliveryView<'a>,
    /// Every send of the code, oldest first.
    pub attempts: Attempts<'a>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryView<'a> {
    pub status: DeliveryStatus,
    pub message_id: Option<&'a str>,
    pub timestamps: Timestamps<'a>,
    pub error: Option<&'a DeliveryError>,
}

/// One send: its channel and time, then the fields of its delivery.
#[derive(Debug, Serialize)]
pub struct AttemptView<'a> {
    pub channel: Channel,
    pub sent_at: Rfc3339,
    pub status: DeliveryStatus,
    pub message_id: Option<&'a str>,
    pub timestamps: Timestamps<'a>,
    pub error: Option<&'a DeliveryError>,
}

/// For each delivery status seen, when, as RFC 3339.
#[derive(Debug)]
pub struct Timestamps<'a>(&'a BTreeMap<DeliveryStatus, UnixTime>);

impl Serialize for Timestamps<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(status, at)| (status, Rfc3339(*at))))
    }
}

/// Every send, as [`AttemptView`]s.
#[derive(Debug)]
pub struct Attempts<'a>(&'a [Attempt]);

impl Serialize for Attempts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(AttemptView::new))
    }
}

impl<'a> DeliveryView<'a> {
    fn new(d: &'a Delivery) -> Self {
        Self {
            status: d.status,
            message_id: d.message_id.as_deref(),
            timestamps: Timestamps(&d.timestamps),
            error: d.error.as_ref(),
        }
    }
}

impl<'a> AttemptView<'a> {
    fn new(a: &'a Attempt) -> Self {
        let DeliveryView { status, message_id, timestamps, error } = DeliveryView::new(&a.delivery);
        Self {
            channel: a.channel,
            sent_at: Rfc3339(a.sent_at),
            status,
            message_id,
            timestamps,
            error,
        }
    }
}

impl<'a> VerificationView<'a> {
    pub fn new(v: &'a Verification, now: UnixTime) -> Self {
        Self {
            id: v.id.as_str(),
            status: v.status_at(now),
            channel: v.choice,
            purpose: v.purpose,
            approved_channel: v.approved_channel,
            to: &v.to_masked,
            created_at: Rfc3339(v.created_at),
            expires_at: Rfc3339(v.expires_at),
            attempts_left: v.attempts_left,
            delivery: DeliveryView::new(v.delivery()),
            attempts: Attempts(&v.sends),
        }
    }
}

fn respond(status: actix_web::http::StatusCode, v: &Verification, now: UnixTime) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/v1/verifications/{}", v.id)))
        .json(VerificationView::new(v, now))
}

/// Counts a call against its client address, and against the API key,
/// whose limit is ten times an address's: a login backend spread over a
/// few addresses fits, and a caller that forges addresses (where a proxy
/// header is trusted) is still capped.
fn throttle_client(state: &AppState, req: &HttpRequest, now: UnixTime) -> Result<(), ApiError> {
    let refused =
        |retry_after| ApiError::TooManyRequests { throttle: Throttle::Client, retry_after };
    let header = state.limits.trusted_proxy_header.as_deref();
    let address = Subject::Address(client_address(req, header));
    state.clients.hit(address, now, 1).map_err(refused)?;
    state.clients.hit(Subject::ApiKey, now, API_KEY_SHARE).map_err(refused)
}

/// How many addresses' worth of calls the API key may make.
const API_KEY_SHARE: u64 = 10;

/// The `Idempotency-Key` header, if the request has one.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all("idempotency-key");
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey);
    }
    let key = value.to_str().map_err(|_| ApiError::InvalidIdempotencyKey)?;
    let ok = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| Some(key.to_owned())).ok_or(ApiError::InvalidIdempotencyKey)
}

/// What makes two send-code requests the same request.
fn fingerprint(to: &PhoneNumber, channel: ChannelChoice, purpose: Purpose) -> String {
    let text = format!("{}|{channel:?}|{purpose:?}", to.e164());
    hex::encode(digest::digest(&digest::SHA256, text.as_bytes()))
}

/// `POST /v1/verifications`: create a verification and send its code, or,
/// when the number already has a pending one, send that one's code again.
///
/// The answer never waits for Meta: the send is queued and made in the
/// background (see `outbox.rs`), so the answer is the same whether or not
/// the number is on WhatsApp.
pub async fn send_code(
    _: Authenticated,
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    throttle_client(&state, &req, now)?;
    let request: SendCodeRequest = read_json(&req, body, JSON_LIMIT).await?;
    let to = PhoneNumber::parse(&request.to)?;
    let (choice, purpose) = (request.channel, request.purpose);
    if purpose == Purpose::EnrolWhatsapp && choice != ChannelChoice::Sms {
        return Err(ApiError::InvalidBody(
            "purpose enrol_whatsapp confirms a number by SMS: it needs channel sms".into(),
        ));
    }
    if choice != ChannelChoice::Whatsapp && state.sms.is_none() {
        return Err(ApiError::ChannelUnavailable("SMS is not configured on this server"));
    }
    let key = idempotency_key(&req)?;
    let fingerprint = fingerprint(&to, choice, purpose);
    let idempotency = key.as_deref().map(|k| (k, fingerprint.as_str()));

    let recorded = match key.as_deref() {
        Some(k) => state.store.idempotency(k).await?,
        None => None,
    };
    if let Some(record) = recorded {
        return replay(&state, &record, &fingerprint, now).await;
    }
    check_country(&state, &to)?;
    let number_key = state.keys.number_key(&to);
    if let Some(active) = find_active(&state, &to, &number_key, purpose, now).await? {
        return resend(&state, &active, idempotency, now).await;
    }
    let first_channel = first_channel(&state, choice, &number_key, now).await?;

    let plan = Plan { choice, purpose, first_channel };
    let mut v = new_verification(&state, &to, number_key, plan, now)?;
    // Kept with the verification, so the key is deleted when it is.
    v.idempotency_keys.extend(key.clone());
    let purge_at = v.expires_at + state.retention_seconds;
    let hits = send_hits(&state.limits, &v.number_key);
    match state.store.create(&v, purge_at, now, idempotency, &hits).await? {
        Ok(()) => {}
        Err(NotCreated::Limited(refused)) => return Err(limited(&state, refused, now)),
        Err(NotCreated::Active(id)) => {
            // Another request for the same number won the race.
            let active = state.store.get(&id).await?.ok_or(ApiError::VerificationNotFound)?;
            return resend(&state, &active, idempotency, now).await;
        }
        Err(NotCreated::KeyTaken(record)) => {
            return replay(&state, &record, &fingerprint, now).await
        }
    }
    state.store.commit().await?;
    state.outbox.enqueue(v.id.clone(), 0);
    tracing::info!(verification_id = %v.id, "verification created");
    Ok(respond(actix_web::http::StatusCode::CREATED, &v, now))
}

/// The number's pending verification, if it has one; during a key
/// rotation it may have been filed under the previous key.
async fn find_active(
    state: &AppState,
    to: &PhoneNumber,
    number_key: &str,
    purpose: Purpose,
    now: UnixTime,
) -> Result<Option<Verification>, ApiError> {
    let key = Verification::active_key(number_key, purpose);
    if let Some(active) = state.store.active(&key, now).await? {
        return Ok(Some(active));
    }
    match state.keys.previous_number_key(to) {
        Some(previous) => {
            Ok(state.store.active(&Verification::active_key(&previous, purpose), now).await?)
        }
        None => Ok(None),
    }
}

/// Where the first send goes. `auto` starts on WhatsApp unless WhatsApp is
/// switched off or the number is known not to be on it.
async fn first_channel(
    state: &AppState,
    choice: ChannelChoice,
    number_key: &str,
    now: UnixTime,
) -> Result<Channel, ApiError> {
    let off_until = state.store.whatsapp_off_until(now).await?;
    Ok(match choice {
        ChannelChoice::Sms => Channel::Sms,
        ChannelChoice::Whatsapp => {
            if let Some(until) = off_until {
                return Err(ApiError::WhatsAppOff { retry_after: until - now });
            }
            Channel::Whatsapp
        }
        ChannelChoice::Auto => {
            if off_until.is_some() || state.store.not_on_whatsapp(number_key, now).await? {
                Channel::Sms
            } else {
                Channel::Whatsapp
            }
        }
    })
}

/// What a new verification is for and where it goes first.
struct Plan {
    choice: ChannelChoice,
    purpose: Purpose,
    first_channel: Channel,
}

/// The same `Idempotency-Key` again: the same request gets the
/// verification it created, and nothing is sent; another request is
/// refused.
async fn replay(
    state: &AppState,
    record: &IdempotencyRecord,
    fingerprint: &str,
    now: UnixTime,
) -> Result<HttpResponse, ApiError> {
    if record.fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let v = state.store.get(&record.verification).await?.ok_or(ApiError::VerificationNotFound)?;
    let mut response = respond(actix_web::http::StatusCode::OK, &v, now);
    response.headers_mut().insert(
        header::HeaderName::from_static("idempotent-replayed"),
        header::HeaderValue::from_static("true"),
    );
    Ok(response)
}

fn check_country(state: &AppState, to: &PhoneNumber) -> Result<(), ApiError> {
    let allowed = &state.limits.allowed_countries;
    if allowed.is_empty() {
        return Ok(());
    }
    let country = phonenumber::parse(None, to.e164())
        .ok()
        .and_then(|n| n.country().id())
        .map(|id| id.as_ref().to_owned());
    match country {
        Some(c) if allowed.contains(&c) => Ok(()),
        _ => Err(ApiError::CountryNotAllowed),
    }
}

/// The answer to a send that the number's hourly or daily limit, or the
/// daily budget, refused (the store counts a send only when it makes it).
fn limited(state: &AppState, refused: Refused, now: UnixTime) -> ApiError {
    let Refused { counter, retry_after } = refused;
    let throttle = if counter == Counter::DailySendBudget {
        warn_budget_once(state, now);
        Throttle::SendBudget
    } else {
        Throttle::NumberSends
    };
    ApiError::TooManyRequests { throttle, retry_after }
}

fn warn_budget_once(state: &AppState, now: UnixTime) {
    let day = now.div_euclid(DAY);
    if state.budget_warned_day.swap(day, Ordering::Relaxed) != day {
        tracing::warn!(
            budget = state.limits.daily_send_budget,
            "daily send budget spent: sends are refused until 00:00 UTC"
        );
    }
}

fn new_verification(
    state: &AppState,
    to: &PhoneNumber,
    number_key: String,
    plan: Plan,
    now: UnixTime,
) -> Result<Verification, ApiError> {
    let rng_failed = || ApiError::Internal(anyhow::anyhow!("the system CSPRNG failed"));
    let id = VerificationId::generate(&state.rng).map_err(|_| rng_failed())?;
    // Each channel the verification may use gets its own code, so that an
    // approval tells which one the user read.
    let channels: &[Channel] = match (plan.choice, plan.first_channel) {
        (ChannelChoice::Auto, Channel::Whatsapp) => &[Channel::Whatsapp, Channel::Sms],
        (_, Channel::Whatsapp) => &[Channel::Whatsapp],
        (_, Channel::Sms) => &[Channel::Sms],
    };
    let mut codes = Vec::new();
    let mut code_tags = Vec::new();
    for &channel in channels {
        let code = Code::generate(&state.rng).map_err(|_| rng_failed())?;
        code_tags.push(CodeTag { channel, tag: state.keys.code_tag(&id, &number_key, &code) });
        codes.push((channel, code));
    }
    let sealed =
        state.keys.seal(&id, &SendSecret { to: to.clone(), codes }).map_err(|_| rng_failed())?;
    Ok(Verification::new(NewVerification {
        id,
        to_masked: to.masked(),
        number_key,
        code_tags,
        secret: sealed,
        choice: plan.choice,
        purpose: plan.purpose,
        first_channel: plan.first_channel,
        now,
        ttl_seconds: state.code_ttl_seconds,
        max_attempts: state.max_attempts,
        fallback_after: Some(state.fallback.after),
    }))
}

/// Sends the pending verification's code again, if its cooldown is over
/// and it has sends left.
async fn resend(
    state: &AppState,
    active: &Verification,
    idempotency: Option<(&str, &str)>,
    now: UnixTime,
) -> Result<HttpResponse, ApiError> {
    let rules =
        ResendRules { cooldown: state.limits.resend_cooldown, max_sends: state.limits.max_sends };
    // A concurrent request with the same key may have created this very
    // verification since the key was first looked up.
    if let Some((key, fingerprint)) = idempotency {
        if let Some(record) = state.store.idempotency(key).await? {
            return replay(state, &record, fingerprint, now).await;
        }
    }
    let refusal = match crate::store::resend_refusal(active, now, rules) {
        Some(refusal) => refusal,
        None => {
            let hits = send_hits(&state.limits, &active.number_key);
            match state.store.resend(&active.id, now, rules, idempotency, &hits).await? {
                Ok((v, index)) => {
                    state.store.commit().await?;
                    state.outbox.enqueue(v.id.clone(), index);
                    tracing::info!(verification_id = %v.id, send = index + 1, "code sent again");
                    return Ok(respond(actix_web::http::StatusCode::OK, &v, now));
                }
                Err(refusal) => refusal,
            }
        }
    };
    Err(match refusal {
        NoResend::Cooldown { at } => {
            ApiError::TooManyRequests { throttle: Throttle::ResendCooldown, retry_after: at - now }
        }
        NoResend::MaxSends { until } => {
            ApiError::TooManyRequests { throttle: Throttle::MaxSends, retry_after: until - now }
        }
        NoResend::NotPending(status) => ApiError::NotPending(status),
        NoResend::Limited(refused) => limited(state, refused, now),
        // A concurrent request with the same key got there first.
        NoResend::KeyTaken(record) => {
            let fingerprint = idempotency.map_or("", |(_, f)| f);
            return replay(state, &record, fingerprint, now).await;
        }
    })
}

fn parse_id(path: &str) -> Result<VerificationId, ApiError> {
    VerificationId::parse(path).ok_or(ApiError::VerificationNotFound)
}

/// Every path below `/v1/verifications/`, dispatched by hand.
///
/// The router would match `{id}` patterns with a regular expression, which
/// a profile showed costing a tenth of a check's CPU; splitting the path
/// costs nothing.
pub async fn by_id(
    auth: Authenticated,
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use actix_web::http::Method;
    let tail = req.path().strip_prefix("/v1/verifications/").ok_or(ApiError::RouteNotFound)?;
    // `None` is the verification itself; `Some("")`, a trailing slash, is
    // no route, like an empty id.
    let (id, action) = match tail.split_once('/') {
        Some((id, action)) => (id, Some(action)),
        None => (tail, None),
    };
    if id.is_empty() {
        return Err(ApiError::RouteNotFound);
    }
    let id = id.to_owned();
    match (action, req.method()) {
        (None, &Method::GET) => get(auth, id, state).await,
        (None, _) => Err(ApiError::MethodNotAllowed("GET")),
        (Some("check"), &Method::POST) => check(auth, req, id, body, state).await,
        (Some("cancel"), &Method::POST) => cancel(auth, id, state).await,
        (Some("check" | "cancel"), _) => Err(ApiError::MethodNotAllowed("POST")),
        _ => Err(ApiError::RouteNotFound),
    }
}

/// `GET /v1/verifications/{id}`: the verification as it is now.
async fn get(
    _: Authenticated,
    path: String,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let verification = state.store.get(&id).await?.ok_or(ApiError::VerificationNotFound)?;
    Ok(HttpResponse::Ok().json(VerificationView::new(&verification, state.clock.now())))
}

/// `POST /v1/verifications/{id}/check`: is this the code?
async fn check(
    _: Authenticated,
    req: HttpRequest,
    path: String,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    throttle_client(&state, &req, now)?;
    let request: CheckRequest = read_json(&req, body, JSON_LIMIT).await?;
    let id = parse_id(&path)?;
    let code = Code::parse(&request.code).map_err(|_| ApiError::InvalidCode)?;

    // One read-modify-write does it all: the status, the number's limit on
    // wrong codes, the comparison and the count of the try.
    let failures = Limit::per(HOUR, state.limits.number_failed_checks_per_hour);
    let wrong = Counter::NumberFailedChecksPerHour;
    let (outcome, verification) = state
        .store
        .check(&id, (wrong, failures), now, |v, wrong_so_far| {
            match v.status_at(now) {
                VerificationStatus::Pending => {}
                other => return (Err(ApiError::NotPending(other)), None),
            }
            if wrong_so_far >= failures.max {
                let retry_after = failures.retry_after(now);
                let refused =
                    ApiError::TooManyRequests { throttle: Throttle::FailedChecks, retry_after };
                return (Err(refused), None);
            }
            // Every channel's tag is compared, so that the time taken does
            // not depend on which one matches.
            let matched = v.code_tags.iter().fold(None, |found, t| {
                let hit = state.keys.code_matches(&v.id, &v.number_key, &code, &t.tag);
                found.or(hit.then_some(t.channel))
            });
            let (outcome, checked) = v.judge(now, matched);
            (outcome.map_err(ApiError::NotPending), Some(checked))
        })
        .await?
        .ok_or(ApiError::VerificationNotFound)?;
    let outcome = outcome?;
    // A wrong code also counts against the number's hourly limit. The
    // check and that count are made durable together (on sled, one record
    // in the write-ahead log rather than a flush).
    let wrong_try = (outcome != CheckOutcome::Approved).then_some((wrong, failures));
    state.store.commit_check(&verification, wrong_try, now).await?;

    let result = match outcome {
        CheckOutcome::Approved => "approved",
        CheckOutcome::Wrong { .. } => "wrong",
        CheckOutcome::Exhausted => "exhausted",
    };
    tracing::info!(verification_id = %id, result, "code checked");
    Ok(HttpResponse::Ok().json(VerificationView::new(&verification, now)))
}

/// `POST /v1/verifications/{id}/cancel`: end a pending verification.
async fn cancel(
    _: Authenticated,
    path: String,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let now = state.clock.now();
    let (result, verification) =
        state.store.update(&id, |v| v.cancel(now)).await?.ok_or(ApiError::VerificationNotFound)?;
    result.map_err(ApiError::NotPending)?;
    state.store.commit().await?;
    tracing::info!(verification_id = %id, "verification canceled");
    Ok(HttpResponse::Ok().json(VerificationView::new(&verification, now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SendOutcome, StatusEvent};

    /// A verification with two sends: one delivered, one refused.
    fn two_sends(t: UnixTime) -> Verification {
        let mut v = Verification::new(NewVerification {
            id: VerificationId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            to_masked: "+1555*****234".to_owned(),
            number_key: "nk".into(),
            code_tags: vec![CodeTag { channel: Channel::Whatsapp, tag: vec![1, 2, 3] }],
            secret: vec![9],
            choice: ChannelChoice::Auto,
            purpose: Purpose::Login,
            first_channel: Channel::Whatsapp,
            now: t,
            ttl_seconds: 600,
            max_attempts: 5,
            fallback_after: Some(30),
        });
        let accepted = SendOutcome::Accepted { message_id: "wamid.A\"1".into() };
        v.record_send(0, &accepted, t);
        for (status, at) in [(DeliveryStatus::Delivered, t + 2), (DeliveryStatus::Sent, t + 1)] {
            v.sends[0].delivery.apply(&StatusEvent { status, timestamp: at, error: None });
        }
        let index = v.add_send(t + 60);
        let error = DeliveryError {
            code: Some(131_026),
            title: "Message undeliverable".into(),
            details: None,
        };
        v.record_send(index, &SendOutcome::Failed { error, definitive: true }, t + 61);
        v.check(t + 70, None).unwrap();
        v
    }

    #[test]
    fn a_view_shows_every_field_in_order() {
        let t = 1_796_402_110;
        let json = serde_json::to_string(&VerificationView::new(&two_sends(t), t + 70)).unwrap();
        let want = r#"{"id":"0123456789abcdef0123456789abcdef","status":"pending","channel":"auto","purpose":"login","approved_channel":null,"to":"+1555*****234","created_at":"2026-12-04T16:35:10Z","expires_at":"2026-12-04T16:45:10Z","attempts_left":4,"delivery":{"status":"failed","message_id":null,"timestamps":{"failed":"2026-12-04T16:36:11Z"},"error":{"code":131026,"title":"Message undeliverable","details":null}},"attempts":[{"channel":"whatsapp","sent_at":"2026-12-04T16:35:10Z","status":"delivered","message_id":"wamid.A\"1","timestamps":{"sent":"2026-12-04T16:35:11Z","delivered":"2026-12-04T16:35:12Z"},"error":null},{"channel":"whatsapp","sent_at":"2026-12-04T16:36:10Z","status":"failed","message_id":null,"timestamps":{"failed":"2026-12-04T16:36:11Z"},"error":{"code":131026,"title":"Message undeliverable","details":null}}]}"#;
        assert_eq!(json, want);
    }
}
