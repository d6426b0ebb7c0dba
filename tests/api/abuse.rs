//! Limits against toll fraud, number pumping and guessing, each at its
//! edges, with the injected clock (nothing sleeps through a window).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::graph_stub::Answer;
use crate::helpers::*;

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn retry_after(reply: &Reply) -> i64 {
    let header: i64 = reply.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(reply.json()["retry_after"], header, "header and body agree");
    header
}

fn wrong(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

#[actix_web::test]
async fn a_resend_sends_the_same_code_after_the_cooldown() {
    let app = spawn_app().await;
    let number = fresh_number();
    let first = app.send_code(&number).await;
    let code = app.last_code_sent();

    app.clock.advance(59);
    let early = app.send_code_reply(&number, &[]).await;
    assert_eq!(early.problem(429), "resend-cooldown");
    assert_eq!(retry_after(&early), 1);

    app.clock.advance(1);
    let again = app.send_code_reply(&number, &[]).await;
    assert_eq!(again.status, 200, "{}", again.text);
    let v = again.json();
    assert_eq!(v["id"], first["id"], "the same verification");
    let v = eventually(&app, &id_of(&v), Duration::from_secs(10), |v| {
        v["attempts"][1]["status"] == "accepted"
    })
    .await;
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["sent_at"], "2026-01-01T00:00:00Z");
    assert_eq!(attempts[1]["sent_at"], "2026-01-01T00:01:00Z");
    assert_ne!(attempts[0]["message_id"], attempts[1]["message_id"]);
    assert_eq!(app.last_code_sent(), code, "a resend sends the same code");
    assert_eq!(app.check(&id_of(&v), &code).await.json()["status"], "approved");
}

#[actix_web::test]
async fn a_verification_is_sent_at_most_max_sends_times() {
    let app =
        spawn_app_with(&[("WAVERIFY_MAX_SENDS", "3"), ("WAVERIFY_RESEND_COOLDOWN", "6")]).await;
    let number = fresh_number();
    let id = id_of(&app.send_code(&number).await);
    for _ in 0..2 {
        app.clock.advance(6);
        assert_eq!(app.send_code_reply(&number, &[]).await.status, 200);
    }
    app.clock.advance(6);
    let refused = app.send_code_reply(&number, &[]).await;
    assert_eq!(refused.problem(429), "max-sends-reached");
    assert_eq!(retry_after(&refused), 600 - 18, "until the verification expires");
    let v = app.settled(&id).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 3);

    app.clock.advance(600);
    let fresh = app.send_code_reply(&number, &[]).await;
    assert_eq!(fresh.status, 201, "once expired, the number starts over: {}", fresh.text);
    assert_ne!(fresh.json()["id"], id.as_str());
}

#[actix_web::test]
async fn cancel_ends_a_verification_and_frees_the_number() {
    let app = spawn_app().await;
    let number = fresh_number();
    let id = id_of(&app.send_code(&number).await);
    let code = app.last_code_sent();
    let path = format!("/v1/verifications/{id}/cancel");
    let canceled = app.post_json(&path, &json!({})).await;
    assert_eq!(canceled.status, 200, "{}", canceled.text);
    assert_eq!(canceled.json()["status"], "canceled");
    assert_eq!(app.post_json(&path, &json!({})).await.problem(409), "verification-not-pending");
    let check = app.check(&id, &code).await;
    assert_eq!(check.problem(409), "verification-not-pending");
    assert_eq!(check.json()["verification_status"], "canceled");
    let next = app.send_code_reply(&number, &[]).await;
    assert_eq!(next.status, 201, "{}", next.text);
    let missing = app
        .post_json("/v1/verifications/0123456789abcdef0123456789abcdef/cancel", &json!({}))
        .await;
    assert_eq!(missing.problem(404), "verification-not-found");
}

async fn cancel(app: &TestApp, id: &str) {
    let reply = app.post_json(&format!("/v1/verifications/{id}/cancel"), &json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[actix_web::test]
async fn sends_per_number_are_limited_per_hour_and_per_day() {
    let app = spawn_app_with(&[
        ("WAVERIFY_NUMBER_SENDS_PER_HOUR", "2"),
        ("WAVERIFY_NUMBER_SENDS_PER_DAY", "3"),
    ])
    .await;
    let number = fresh_number();
    for _ in 0..2 {
        let v = app.send_code(&number).await;
        cancel(&app, &id_of(&v)).await;
    }
    let third = app.send_code_reply(&number, &[]).await;
    assert_eq!(third.problem(429), "number-send-limit");
    assert_eq!(retry_after(&third), 3600, "until the hour ends");
    assert_eq!(
        app.send_code_reply(&fresh_number(), &[]).await.status,
        201,
        "other numbers are not held"
    );

    app.clock.advance(3599);
    assert_eq!(app.send_code_reply(&number, &[]).await.problem(429), "number-send-limit");
    app.clock.advance(1);
    let next_hour = app.send_code_reply(&number, &[]).await;
    assert_eq!(next_hour.status, 201, "{}", next_hour.text);
    cancel(&app, &id_of(&next_hour.json())).await;

    app.clock.advance(3600);
    let day_spent = app.send_code_reply(&number, &[]).await;
    assert_eq!(day_spent.problem(429), "number-send-limit");
    assert_eq!(retry_after(&day_spent), 86_400 - 7200, "until the UTC day ends");
    app.clock.advance(86_400 - 7200);
    assert_eq!(app.send_code_reply(&number, &[]).await.status, 201, "a new day");
}

#[actix_web::test]
async fn resends_count_against_the_number() {
    let app = spawn_app_with(&[
        ("WAVERIFY_NUMBER_SENDS_PER_HOUR", "2"),
        ("WAVERIFY_RESEND_COOLDOWN", "6"),
    ])
    .await;
    let number = fresh_number();
    app.send_code(&number).await;
    app.clock.advance(6);
    assert_eq!(app.send_code_reply(&number, &[]).await.status, 200);
    app.clock.advance(6);
    assert_eq!(app.send_code_reply(&number, &[]).await.problem(429), "number-send-limit");
}

#[actix_web::test]
async fn wrong_codes_are_limited_per_number_across_verifications() {
    let app = spawn_app_with(&[
        ("WAVERIFY_NUMBER_FAILED_CHECKS_PER_HOUR", "3"),
        ("WAVERIFY_MAX_ATTEMPTS", "2"),
        ("WAVERIFY_CODE_TTL", "3600"),
    ])
    .await;
    let number = fresh_number();
    let first = id_of(&app.send_code(&number).await);
    let code = app.last_code_sent();
    for _ in 0..2 {
        assert_eq!(app.check(&first, &wrong(&code)).await.status, 200);
    }
    app.clock.advance(1800);
    let second = id_of(&app.send_code(&number).await);
    let code = app.last_code_sent();
    assert_eq!(app.check(&second, &wrong(&code)).await.json()["attempts_left"], 1);

    let limited = app.check(&second, &code).await;
    assert_eq!(limited.problem(429), "failed-check-limit");
    assert_eq!(retry_after(&limited), 1800, "until the hour ends");
    assert_eq!(app.poll(&second).await["attempts_left"], 1, "a refused check uses no try");

    let other = id_of(&app.send_code(&fresh_number()).await);
    assert_eq!(app.check(&other, &app.last_code_sent()).await.json()["status"], "approved");

    app.clock.advance(1799);
    assert_eq!(app.check(&second, &code).await.problem(429), "failed-check-limit");
    app.clock.advance(1);
    assert_eq!(app.check(&second, &code).await.json()["status"], "approved", "a new hour");
}

#[actix_web::test]
async fn callers_are_limited_per_minute() {
    let app = spawn_app_with(&[("WAVERIFY_CLIENT_REQUESTS_PER_MINUTE", "3")]).await;
    let id = id_of(&app.send_code(&fresh_number()).await);
    let code = app.last_code_sent();
    assert_eq!(app.check(&id, &wrong(&code)).await.status, 200);
    assert_eq!(app.send_code_reply(&fresh_number(), &[]).await.status, 201);
    let limited = app.check(&id, &code).await;
    assert_eq!(limited.problem(429), "rate-limited");
    assert_eq!(retry_after(&limited), 60);
    let spoofed = app.send_code_reply(&fresh_number(), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(spoofed.problem(429), "rate-limited", "an untrusted header changes nothing");
    assert_eq!(app.poll(&id).await["status"], "pending", "polls are not limited");
    app.clock.advance(60);
    assert_eq!(app.check(&id, &code).await.json()["status"], "approved");
}

#[actix_web::test]
async fn behind_a_trusted_proxy_each_client_address_is_limited() {
    let app = spawn_app_with(&[
        ("WAVERIFY_CLIENT_REQUESTS_PER_MINUTE", "2"),
        ("WAVERIFY_TRUSTED_PROXY_HEADER", "X-Forwarded-For"),
    ])
    .await;
    let from = |address: &'static str| [("x-forwarded-for", address)];
    for _ in 0..2 {
        let reply = app.send_code_reply(&fresh_number(), &from("6.6.6.6, 198.51.100.1")).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let third = app.send_code_reply(&fresh_number(), &from("7.7.7.7, 198.51.100.1")).await;
    assert_eq!(third.problem(429), "rate-limited", "only the proxy's own entry counts");
    let other = app.send_code_reply(&fresh_number(), &from("198.51.100.2")).await;
    assert_eq!(other.status, 201, "another address has its own limit: {}", other.text);
    // Forged addresses are still capped by the API key's limit, ten times
    // an address's.
    let mut accepted = 3;
    for i in 0..30 {
        let forged = format!("203.0.113.{i}");
        let reply =
            app.send_code_reply(&fresh_number(), &[("x-forwarded-for", forged.as_str())]).await;
        if reply.status == 201 {
            accepted += 1;
        } else {
            assert_eq!(reply.problem(429), "rate-limited");
        }
    }
    assert_eq!(accepted, 20, "the API key allows ten addresses' worth");
}

#[actix_web::test]
async fn only_allowed_countries_are_served() {
    let app = spawn_app_with(&[("WAVERIFY_ALLOWED_COUNTRIES", "de, GB")]).await;
    for allowed in ["+4930123456", "+447400123456"] {
        let reply = app.send_code_reply(allowed, &[]).await;
        assert_eq!(reply.status, 201, "{allowed}: {}", reply.text);
    }
    for refused in ["+12025550123", "+33612345678", "+447911123456", "+999123456789"] {
        let reply = app.send_code_reply(refused, &[]).await;
        assert_eq!(reply.problem(403), "country-not-allowed", "{refused}");
    }
    assert_eq!(app.graph().received().len(), 2, "nothing was sent to refused countries");
}

#[actix_web::test]
async fn the_daily_budget_stops_every_send_until_the_day_ends() {
    let app = spawn_app_with(&[("WAVERIFY_DAILY_SEND_BUDGET", "2")]).await;
    app.clock.advance(3600);
    for _ in 0..2 {
        assert_eq!(app.send_code_reply(&fresh_number(), &[]).await.status, 201);
    }
    let spent = app.send_code_reply(&fresh_number(), &[]).await;
    assert_eq!(spent.problem(429), "send-budget-exhausted");
    assert_eq!(retry_after(&spent), 86_400 - 3600);
    app.clock.advance(86_400 - 3600);
    assert_eq!(app.send_code_reply(&fresh_number(), &[]).await.status, 201, "a new day");
}

#[actix_web::test]
async fn an_idempotency_key_replays_the_same_request_only() {
    let app = spawn_app().await;
    let number = fresh_number();
    let key = [("idempotency-key", "login-7f3a")];
    let first = app.send_code_reply(&number, &key).await;
    assert_eq!(first.status, 201);
    let id = id_of(&first.json());
    app.settled(&id).await;

    app.clock.advance(120);
    let replay = app.send_code_reply(&number, &key).await;
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(replay.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(id_of(&replay.json()), id);
    assert_eq!(replay.json()["attempts"].as_array().unwrap().len(), 1, "nothing more was sent");
    assert_eq!(app.graph().received().len(), 1);

    let other = app.send_code_reply(&fresh_number(), &key).await;
    assert_eq!(other.problem(422), "idempotency-key-reused");
    for bad in ["", "has space", &"k".repeat(256)] {
        let reply = app.send_code_reply(&fresh_number(), &[("idempotency-key", bad)]).await;
        assert_eq!(reply.problem(400), "invalid-idempotency-key", "{bad:?}");
    }
}

#[actix_web::test]
async fn concurrent_requests_with_one_key_create_one_verification() {
    let app = spawn_app().await;
    let number = fresh_number();
    let key = [("idempotency-key", "same-key")];
    let replies =
        futures_util::future::join_all((0..8).map(|_| app.send_code_reply(&number, &key))).await;
    let ids: std::collections::HashSet<String> = replies.iter().map(|r| id_of(&r.json())).collect();
    assert_eq!(ids.len(), 1, "{:?}", replies.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
}

#[actix_web::test]
async fn the_answer_does_not_tell_whether_a_number_is_on_whatsapp() {
    let app = spawn_app().await;
    let not_on_whatsapp = r#"{"error":{"message":"(#131026) Message undeliverable","type":"OAuthException","code":131026,"error_data":{"messaging_product":"whatsapp","details":"Message Undeliverable."},"fbtrace_id":"X"}}"#;
    app.graph().queue(Answer::json(400, not_on_whatsapp).after(Duration::from_millis(800)));
    app.graph().queue(Answer::accepted("wamid.OK").after(Duration::from_millis(50)));

    let mut shapes = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let reply = app.send_code_reply(&fresh_number(), &[]).await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(400), "send-code waited for Meta: {took:?}");
        assert_eq!(reply.status, 201);
        let mut v = reply.json();
        for field in ["id", "to"] {
            v[field] = Value::Null;
        }
        shapes.push(v);
    }
    assert_eq!(shapes[0], shapes[1], "both answers look the same");
}

#[actix_web::test]
async fn the_data_directory_never_holds_a_readable_number() {
    let app = spawn_app().await;
    let number = fresh_number();
    let digits = number.trim_start_matches('+').to_owned();
    let v = app.send_code(&number).await;
    app.clock.advance(60);
    app.send_code_reply(&number, &[]).await;
    app.check(&id_of(&v), "000000").await;
    app.stop().await;
    if on_redis() {
        let contents = redis_contents(&redis_prefix(app.data_dir.path()));
        assert!(!contents.is_empty(), "the store wrote nothing?");
        for (key, value) in contents {
            let found = |b: &[u8]| b.windows(digits.len()).any(|w| w == digits.as_bytes());
            assert!(
                !found(&key) && !found(&value),
                "{} holds the number",
                String::from_utf8_lossy(&key)
            );
        }
        return;
    }
    let mut seen = 0;
    for entry in walk(app.data_dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        seen += bytes.len();
        let found = bytes.windows(digits.len()).any(|w| w == digits.as_bytes());
        assert!(!found, "{} holds the number in clear", entry.display());
    }
    assert!(seen > 0, "the store wrote nothing?");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[actix_web::test]
async fn the_code_key_rotates_without_downtime() {
    let app =
        spawn_app_with(&[("WAVERIFY_CODE_KEY", "the-old-code-key-0123456789abcdef-0000")]).await;
    let number = fresh_number();
    let id = id_of(&app.send_code(&number).await);
    let code = app.last_code_sent();
    app.stop().await;

    let rotating = restart_with(
        &app,
        &[
            ("WAVERIFY_CODE_KEY", "the-new-code-key-0123456789abcdef-0000"),
            ("WAVERIFY_CODE_KEY_PREVIOUS", "the-old-code-key-0123456789abcdef-0000"),
        ],
    )
    .await;
    rotating.clock.advance(60);
    let resent = rotating.send_code_reply(&number, &[]).await;
    assert_eq!(resent.status, 200, "the old seal still opens: {}", resent.text);
    eventually(&rotating, &id, Duration::from_secs(10), |v| {
        v["attempts"][1]["status"] == "accepted"
    })
    .await;
    assert_eq!(rotating.last_code_sent(), code);
    assert_eq!(
        rotating.check(&id, &code).await.json()["status"],
        "approved",
        "the old tag still checks"
    );
}

#[actix_web::test]
async fn the_app_secret_rotates_without_downtime() {
    let app = spawn_app_with(&[("WAVERIFY_APP_SECRET_PREVIOUS", "the-old-app-secret")]).await;
    let body = status_body(&[("wamid.X", "sent", START)]);
    let signed_old = waverify::whatsapp::signature::sign(b"the-old-app-secret", &body);
    let headers = [("x-hub-signature-256", signed_old.as_str())];
    let reply = app.request("POST", "/webhook", &headers, Some(body.clone())).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(app.webhook(&body).await.status, 200, "the current secret works too");
    app.stop().await;
    let done = restart(&app).await;
    let reply = done.request("POST", "/webhook", &headers, Some(body)).await;
    assert_eq!(reply.problem(403), "signature-mismatch", "once removed, the old secret is refused");
}
