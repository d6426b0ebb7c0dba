//! SMS as the second channel: explicit SMS, enrolment, the provider's
//! signed callbacks, and `auto`'s fallback from WhatsApp, with every path
//! driven against stand-ins of both APIs and the injected clock.

use std::time::Duration;

use serde_json::{json, Value};

use crate::graph_stub::Answer;
use crate::helpers::*;

async fn send(app: &TestApp, to: &str, channel: &str) -> Value {
    let reply = app.post_json("/v1/verifications", &json!({"to": to, "channel": channel})).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    app.settled(reply.json()["id"].as_str().unwrap()).await
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// The code in the last SMS the provider's stand-in was asked to send.
fn last_sms_code(app: &TestApp) -> String {
    let body = app.sms().received().last().expect("an sms").field("Body").unwrap();
    body.chars().filter(char::is_ascii_digit).take(6).collect()
}

/// Waits until the verification has `n` sends, all answered.
async fn sends(app: &TestApp, id: &str, n: usize) -> Value {
    eventually(app, id, Duration::from_secs(10), |v| {
        let a = v["attempts"].as_array().unwrap();
        a.len() == n && a.iter().all(|s| s["status"] != "queued")
    })
    .await
}

const NOT_ON_WHATSAPP: &str = r#"{"error":{"message":"(#131026) Message undeliverable","type":"OAuthException","code":131026,"error_data":{"messaging_product":"whatsapp","details":"Message Undeliverable."},"fbtrace_id":"X"}}"#;

#[actix_web::test]
async fn a_code_goes_by_sms_and_approves_as_sms() {
    let app = spawn_app_with_sms(&[]).await;
    let number = fresh_number();
    let v = send(&app, &number, "sms").await;
    let id = id_of(&v);
    assert_eq!(v["channel"], "sms");
    assert_eq!(v["attempts"][0]["channel"], "sms");
    assert_eq!(v["delivery"]["status"], "accepted");
    assert!(app.graph().received().is_empty(), "nothing went to WhatsApp");

    let request = app.sms().received().pop().unwrap();
    assert_eq!(request.path, format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"));
    assert!(request.authorization.as_deref().unwrap().starts_with("Basic "));
    assert_eq!(request.field("To").as_deref(), Some(number.as_str()));
    assert_eq!(request.field("From").as_deref(), Some("+15550009999"));
    let callback = format!("{PUBLIC_URL}/webhook/sms?verification={id}");
    assert_eq!(request.field("StatusCallback"), Some(callback));

    let check = app.check(&id, &last_sms_code(&app)).await.json();
    assert_eq!(
        (check["status"].as_str(), check["approved_channel"].as_str()),
        (Some("approved"), Some("sms"))
    );
}

#[actix_web::test]
async fn signed_sms_callbacks_move_delivery_and_bad_ones_are_refused() {
    let app = spawn_app_with_sms(&[]).await;
    let id = id_of(&send(&app, &fresh_number(), "sms").await);
    let sid = app.settled(&id).await["delivery"]["message_id"].as_str().unwrap().to_owned();
    let query = format!("?verification={id}");

    // A bad signature, a missing one, and a signature over another URL.
    let params = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    let body = serde_urlencoded::to_string(params).unwrap().into_bytes();
    let path = format!("/webhook/sms{query}");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let twenty_zero_bytes = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let forged = app
        .request(
            "POST",
            &path,
            &[form, ("x-twilio-signature", twenty_zero_bytes)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(forged.problem(403), "signature-mismatch");
    let short = app
        .request("POST", &path, &[form, ("x-twilio-signature", "AAAA")], Some(body.clone()))
        .await;
    assert_eq!(short.problem(401), "signature-malformed");
    let unsigned = app.request("POST", &path, &[form], Some(body)).await;
    assert_eq!(unsigned.problem(401), "signature-missing");
    let elsewhere =
        app.sms_callback("?verification=0123456789abcdef0123456789abcdef", &params).await;
    assert_eq!(elsewhere.status, 200, "signed for its own URL: {}", elsewhere.text);
    assert_eq!(app.poll(&id).await["delivery"]["status"], "delivered", "matched by message id");

    let second = id_of(&send(&app, &fresh_number(), "sms").await);
    let sid2 = app.settled(&second).await["delivery"]["message_id"].as_str().unwrap().to_owned();
    let failed =
        [("MessageSid", sid2.as_str()), ("MessageStatus", "undelivered"), ("ErrorCode", "30003")];
    let forged_path = format!("/webhook/sms?verification={second}");
    let sig_for_other_url = waverify::sms::signature::sign(
        TWILIO_TOKEN,
        &format!("{PUBLIC_URL}/elsewhere"),
        &failed.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>(),
    );
    let body = serde_urlencoded::to_string(failed).unwrap().into_bytes();
    let wrong_url = app
        .request(
            "POST",
            &forged_path,
            &[form, ("x-twilio-signature", &sig_for_other_url)],
            Some(body),
        )
        .await;
    assert_eq!(wrong_url.problem(403), "signature-mismatch");
    assert_eq!(app.poll(&second).await["delivery"]["status"], "accepted", "nothing recorded");

    assert_eq!(app.sms_callback(&format!("?verification={second}"), &failed).await.status, 200);
    let d = app.poll(&second).await["delivery"].clone();
    assert_eq!((d["status"].as_str(), d["error"]["code"].as_i64()), (Some("failed"), Some(30003)));
    let queued = [("MessageSid", sid2.as_str()), ("MessageStatus", "sending")];
    assert_eq!(app.sms_callback("", &queued).await.status, 200, "steps without meaning are taken");
    let bad = app.sms_callback("", &[("MessageStatus", "sent")]).await;
    assert_eq!(bad.problem(400), "invalid-body");
    let empty = app.sms_callback("", &[("MessageSid", ""), ("MessageStatus", "delivered")]).await;
    assert_eq!(empty.problem(400), "invalid-body");
}

#[actix_web::test]
async fn enrolment_goes_by_sms_beside_a_login() {
    let app = spawn_app_with_sms(&[]).await;
    let number = fresh_number();
    let refused = app
        .post_json(
            "/v1/verifications",
            &json!({"to": number, "channel": "whatsapp", "purpose": "enrol_whatsapp"}),
        )
        .await;
    assert_eq!(refused.problem(400), "invalid-body");
    let enrol = app
        .post_json(
            "/v1/verifications",
            &json!({"to": number, "channel": "sms", "purpose": "enrol_whatsapp"}),
        )
        .await;
    assert_eq!(enrol.status, 201, "{}", enrol.text);
    assert_eq!(enrol.json()["purpose"], "enrol_whatsapp");
    let login = app.post_json("/v1/verifications", &json!({"to": number})).await;
    assert_eq!(login.status, 201, "a login is not a resend of the enrolment: {}", login.text);
    assert_ne!(login.json()["id"], enrol.json()["id"]);
    let unknown =
        app.post_json("/v1/verifications", &json!({"to": number, "channel": "pigeon"})).await;
    assert_eq!(unknown.problem(400), "invalid-body");
}

#[actix_web::test]
async fn sms_needs_a_provider() {
    let app = spawn_app().await;
    for channel in ["sms", "auto"] {
        let reply = app
            .post_json("/v1/verifications", &json!({"to": fresh_number(), "channel": channel}))
            .await;
        assert_eq!(reply.problem(400), "channel-unavailable", "{channel}");
    }
    assert_eq!(
        app.sms_callback("", &[("MessageSid", "SM1"), ("MessageStatus", "sent")])
            .await
            .problem(404),
        "not-found"
    );
}

#[actix_web::test]
async fn not_on_whatsapp_falls_back_at_once_and_is_remembered() {
    let app = spawn_app_with_sms(&[("WAVERIFY_NOT_ON_WHATSAPP_MEMORY", "3600")]).await;
    let number = fresh_number();
    app.graph().queue(Answer::json(400, NOT_ON_WHATSAPP));
    let reply = app.post_json("/v1/verifications", &json!({"to": number, "channel": "auto"})).await;
    assert_eq!(reply.status, 201);
    let id = id_of(&reply.json());
    let v = sends(&app, &id, 2).await;
    assert_eq!(v["attempts"][0]["channel"], "whatsapp");
    assert_eq!(v["attempts"][0]["error"]["code"], 131026);
    assert_eq!(v["attempts"][1]["channel"], "sms");
    assert_eq!(v["status"], "pending");
    assert_eq!(app.sms().received().len(), 1, "exactly one SMS");
    assert_eq!(app.check(&id, &last_sms_code(&app)).await.json()["approved_channel"], "sms");

    // The number goes straight to SMS while it is remembered.
    let v = send(&app, &number, "auto").await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(v["attempts"][0]["channel"], "sms");
    assert_eq!(app.graph().received().len(), 1, "no WhatsApp attempt was paid for");
    app.post_json(&format!("/v1/verifications/{}/cancel", id_of(&v)), &json!({})).await;

    app.clock.advance(3600);
    let v = send(&app, &number, "auto").await;
    assert_eq!(v["attempts"][0]["channel"], "whatsapp", "forgotten after the memory");
}

#[actix_web::test]
async fn a_whatsapp_failure_reported_later_falls_back_too() {
    let app = spawn_app_with_sms(&[]).await;
    app.graph().queue(Answer::accepted("wamid.LATERFAIL"));
    let id = id_of(&send(&app, &fresh_number(), "auto").await);
    let body = json!({"entry": [{"changes": [{"field": "messages", "value": {"statuses": [
        {"id": "wamid.LATERFAIL", "status": "failed", "timestamp": START.to_string(),
         "errors": [{"code": 131049, "title": "Not delivered to maintain healthy ecosystem engagement"}]}]}}]}]})
    .to_string();
    assert_eq!(app.webhook(body.as_bytes()).await.status, 200);
    let v = sends(&app, &id, 2).await;
    assert_eq!(v["attempts"][1]["channel"], "sms", "{v}");
}

#[actix_web::test]
async fn no_delivered_in_time_falls_back_once_and_a_late_delivered_sends_nothing_more() {
    let app = spawn_app_with_sms(&[("WAVERIFY_FALLBACK_AFTER", "30")]).await;
    app.graph().queue(Answer::accepted("wamid.SILENT"));
    let id = id_of(&send(&app, &fresh_number(), "auto").await);
    let whatsapp_code = app.last_code_sent();
    app.clock.advance(29);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.poll(&id).await["attempts"].as_array().unwrap().len(),
        1,
        "not before the deadline"
    );

    app.clock.advance(1);
    let v = sends(&app, &id, 2).await;
    assert_eq!(v["attempts"][1]["channel"], "sms");
    let sms_code = last_sms_code(&app);
    assert_ne!(sms_code, whatsapp_code, "each channel has its own code");

    let late = status_body(&[("wamid.SILENT", "delivered", START + 40)]);
    assert_eq!(app.webhook(&late).await.status, 200);
    app.clock.advance(60);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let v = app.poll(&id).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 2, "nothing more was sent: {v}");
    assert_eq!(app.sms().received().len(), 1);
    assert_eq!(v["attempts"][0]["status"], "delivered");
    let check = app.check(&id, &whatsapp_code).await.json();
    assert_eq!(check["approved_channel"], "whatsapp", "the WhatsApp code still works");
}

#[actix_web::test]
async fn delivered_in_time_never_falls_back() {
    let app = spawn_app_with_sms(&[("WAVERIFY_FALLBACK_AFTER", "30")]).await;
    app.graph().queue(Answer::accepted("wamid.ONTIME"));
    let id = id_of(&send(&app, &fresh_number(), "auto").await);
    let delivered = status_body(&[("wamid.ONTIME", "delivered", START + 5)]);
    assert_eq!(app.webhook(&delivered).await.status, 200);
    app.clock.advance(120);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.poll(&id).await["attempts"].as_array().unwrap().len(), 1);
    assert!(app.sms().received().is_empty());
}

#[actix_web::test]
async fn a_blocked_account_switches_whatsapp_off_for_the_cooldown() {
    let app = spawn_app_with_sms(&[("WAVERIFY_BREAKER_COOLDOWN", "600")]).await;
    let blocked = r#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"fbtrace_id":"X"}}"#;
    app.graph().queue(Answer::json(403, blocked));
    let first =
        app.post_json("/v1/verifications", &json!({"to": fresh_number(), "channel": "auto"})).await;
    let v = sends(&app, &id_of(&first.json()), 2).await;
    assert_eq!(v["attempts"][1]["channel"], "sms");

    let health = app.request("GET", "/healthz", &[], None).await.json();
    assert_eq!(health["whatsapp"]["state"], "off", "{health}");
    let explicit = app.post_json("/v1/verifications", &json!({"to": fresh_number()})).await;
    assert_eq!(explicit.problem(503), "whatsapp-unavailable");
    assert_eq!(explicit.headers.get("retry-after").unwrap(), "600");
    let auto = send(&app, &fresh_number(), "auto").await;
    assert_eq!(auto["attempts"][0]["channel"], "sms", "auto goes by SMS meanwhile");
    assert_eq!(app.graph().received().len(), 1, "WhatsApp was not tried again");

    app.clock.advance(600);
    let health = app.request("GET", "/healthz", &[], None).await.json();
    assert_eq!(health["whatsapp"]["state"], "on", "closed after the cooldown");
    let again = send(&app, &fresh_number(), "auto").await;
    assert_eq!(again["attempts"][0]["channel"], "whatsapp");
}

#[actix_web::test]
async fn the_sandbox_falls_back_and_lists_the_sms() {
    let app = spawn_sandbox().await;
    let reply =
        app.post_json("/v1/verifications", &json!({"to": "+15550100003", "channel": "auto"})).await;
    assert_eq!(reply.status, 201);
    let id = id_of(&reply.json());
    let v = eventually(&app, &id, Duration::from_secs(10), |v| {
        v["attempts"][1]["status"] == "delivered"
    })
    .await;
    assert_eq!(v["attempts"][0]["error"]["code"], 131026, "{v}");
    assert_eq!(v["attempts"][1]["channel"], "sms", "{v}");
    let list = app.get("/sandbox/messages").await.json();
    let sms = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["channel"] == "sms")
        .unwrap()
        .clone();
    assert_eq!(sms["verification_id"], id.as_str());
    let check = app.check(&id, sms["code"].as_str().unwrap()).await.json();
    assert_eq!(check["approved_channel"], "sms");

    for (number, status, code) in
        [("+15550100008", "failed", Some(30003)), ("+15550100009", "failed", Some(21211))]
    {
        let reply =
            app.post_json("/v1/verifications", &json!({"to": number, "channel": "sms"})).await;
        let id = id_of(&reply.json());
        let v =
            eventually(&app, &id, Duration::from_secs(10), |v| v["delivery"]["status"] == status)
                .await;
        assert_eq!(v["delivery"]["error"]["code"].as_i64(), code, "{number}: {v}");
    }
}

#[actix_web::test]
async fn a_pair_rate_limit_falls_back_at_once_or_at_the_deadline_as_configured() {
    let pair_rate = r#"{"error":{"message":"(#131056) (Business Account, Consumer Account) pair rate limit hit","type":"OAuthException","code":131056,"fbtrace_id":"X"}}"#;

    let now = spawn_app_with_sms(&[]).await;
    now.graph().queue(Answer::json(400, pair_rate));
    let id = id_of(&send(&now, &fresh_number(), "auto").await);
    assert_eq!(sends(&now, &id, 2).await["attempts"][1]["channel"], "sms", "at once by default");

    let waiting = spawn_app_with_sms(&[
        ("WAVERIFY_ON_WHATSAPP_LIMIT", "wait"),
        ("WAVERIFY_FALLBACK_AFTER", "30"),
    ])
    .await;
    waiting.graph().queue(Answer::json(400, pair_rate));
    let id = id_of(&send(&waiting, &fresh_number(), "auto").await);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(waiting.poll(&id).await["attempts"].as_array().unwrap().len(), 1, "it waits");
    waiting.clock.advance(30);
    assert_eq!(sends(&waiting, &id, 2).await["attempts"][1]["channel"], "sms", "at the deadline");
}

#[actix_web::test]
async fn provider_texts_never_carry_a_number_into_the_store() {
    let app = spawn_app_with_sms(&[]).await;
    let number = "+4915112345679";
    app.sms().queue(Answer::json(
        400,
        r#"{"code":21211,"message":"The 'To' number +4915112345679 is not a valid phone number.","more_info":"x","status":400}"#,
    ));
    let reply = app.post_json("/v1/verifications", &json!({"to": number, "channel": "sms"})).await;
    let v = app.settled(&id_of(&reply.json())).await;
    let details = v["delivery"]["error"]["details"].as_str().unwrap().to_owned();
    assert_eq!(details, "The 'To' number [number] is not a valid phone number.");
    assert_eq!(v["status"], "failed", "refused on its only channel");
    app.stop().await;
    for entry in std::fs::read_dir(app.data_dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        assert!(!bytes.windows(13).any(|w| w == b"4915112345679"), "the number reached the store");
    }
}

#[actix_web::test]
async fn each_provider_vouches_only_for_its_own_channel() {
    let app = spawn_app_with_sms(&[("WAVERIFY_FALLBACK_AFTER", "30")]).await;
    app.graph().queue(Answer::accepted("wamid.OWN"));
    let id = id_of(&send(&app, &fresh_number(), "auto").await);
    // The SMS provider's secret claims the WhatsApp message was delivered.
    let forged = [("MessageSid", "wamid.OWN"), ("MessageStatus", "delivered")];
    assert_eq!(app.sms_callback(&format!("?verification={id}"), &forged).await.status, 200);
    assert_eq!(app.poll(&id).await["delivery"]["status"], "accepted", "not vouched for");
    app.clock.advance(30);
    let v = sends(&app, &id, 2).await;
    assert_eq!(v["attempts"][1]["channel"], "sms", "the fallback still went out");

    let sid = v["attempts"][1]["message_id"].as_str().unwrap().to_owned();
    let meta_says_read = status_body(&[(sid.as_str(), "read", START + 60)]);
    assert_eq!(app.webhook(&meta_says_read).await.status, 200);
    assert_eq!(
        app.poll(&id).await["attempts"][1]["status"],
        "accepted",
        "Meta cannot vouch for an SMS"
    );
}

#[actix_web::test]
async fn a_fallback_sms_counts_against_the_limits() {
    let app = spawn_app_with_sms(&[("WAVERIFY_DAILY_SEND_BUDGET", "3")]).await;
    app.graph().queue(Answer::json(400, NOT_ON_WHATSAPP));
    let reply =
        app.post_json("/v1/verifications", &json!({"to": fresh_number(), "channel": "auto"})).await;
    sends(&app, &id_of(&reply.json()), 2).await;
    app.graph().queue(Answer::json(400, NOT_ON_WHATSAPP));
    let second =
        app.post_json("/v1/verifications", &json!({"to": fresh_number(), "channel": "auto"})).await;
    assert_eq!(second.status, 201, "the third send of the day");
    let id = id_of(&second.json());
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let v = app.poll(&id).await;
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1, "its fallback would be the fourth: {v}");
    let third =
        app.post_json("/v1/verifications", &json!({"to": fresh_number(), "channel": "sms"})).await;
    assert_eq!(third.problem(429), "send-budget-exhausted");
}

#[actix_web::test]
async fn auto_refused_on_both_channels_fails() {
    let app = spawn_app_with_sms(&[]).await;
    app.graph().queue(Answer::json(400, NOT_ON_WHATSAPP));
    app.sms().queue(Answer::json(
        400,
        r#"{"code":21211,"message":"Invalid 'To' Phone Number","status":400}"#,
    ));
    let reply =
        app.post_json("/v1/verifications", &json!({"to": fresh_number(), "channel": "auto"})).await;
    let v = sends(&app, &id_of(&reply.json()), 2).await;
    assert_eq!(v["status"], "failed", "{v}");
}
