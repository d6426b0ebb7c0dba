use std::time::Duration;

use serde_json::json;

use crate::graph_stub::Answer;
use crate::helpers::*;

#[actix_web::test]
async fn send_code_creates_a_pending_verification_and_sends_the_template() {
    let app = spawn_app().await;
    let reply = app.post_json("/v1/verifications", &json!({"to": "+15550001234"})).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let v = reply.json();
    let id = v["id"].as_str().unwrap();
    assert_eq!(reply.headers.get("location").unwrap(), &format!("/v1/verifications/{id}"));
    assert_eq!(v["status"], "pending");
    assert_eq!(v["channel"], "whatsapp");
    assert_eq!(v["to"], "+1555*****234");
    assert_eq!(v["created_at"], "2026-01-01T00:00:00Z");
    assert_eq!(v["expires_at"], "2026-01-01T00:10:00Z");
    assert_eq!(v["attempts_left"], 5);
    assert_eq!(v["delivery"]["status"], "queued", "the answer does not wait for Meta");
    assert_eq!(v["delivery"]["message_id"], serde_json::Value::Null);
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(v["attempts"][0]["sent_at"], "2026-01-01T00:00:00Z");
    assert!(!reply.text.contains("15550001234"), "full number in {}", reply.text);

    let v = app.settled(id).await;
    assert_eq!(v["delivery"]["status"], "accepted");
    assert_eq!(v["delivery"]["message_id"], "wamid.STUB1");
    assert_eq!(v["delivery"]["error"], serde_json::Value::Null);
    assert_eq!(v["attempts"][0]["status"], "accepted");
    assert_eq!(v["attempts"][0]["channel"], "whatsapp");

    let sent = app.graph().received();
    assert_eq!(sent.len(), 1);
    let request = &sent[0];
    assert_eq!(request.path, "/v23.0/106540352242922/messages");
    assert_eq!(request.authorization.as_deref(), Some("Bearer test-access-token"));
    let body = &request.body;
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["to"], "15550001234");
    assert_eq!(body["type"], "template");
    assert_eq!(body["biz_opaque_callback_data"], id);
    assert_eq!(body["template"]["name"], "login_code");
    assert_eq!(body["template"]["language"]["code"], "en_US");
    let components = body["template"]["components"].as_array().unwrap();
    let code = components[0]["parameters"][0]["text"].as_str().unwrap();
    assert_eq!(components[0]["type"], "body");
    assert_eq!(components[1]["type"], "button");
    assert_eq!(components[1]["sub_type"], "url");
    assert_eq!(components[1]["parameters"][0]["text"], code);
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    assert!(!reply.text.contains(code), "the code must not be in the answer");

    assert_eq!(app.poll(id).await, v, "a poll shows the same resource");
    assert_eq!(app.graph().received().len(), 1, "one send, no more");
}

#[actix_web::test]
async fn each_verification_gets_its_own_code_and_id() {
    let app = spawn_app().await;
    let mut ids = std::collections::HashSet::new();
    let mut codes = std::collections::HashSet::new();
    for _ in 0..20 {
        ids.insert(app.send_code(&fresh_number()).await["id"].as_str().unwrap().to_owned());
        codes.insert(app.last_code_sent());
    }
    assert_eq!(ids.len(), 20);
    assert!(codes.len() >= 18, "20 sends gave {} distinct codes", codes.len());
}

#[actix_web::test]
async fn numbers_that_are_not_e164_are_refused_with_the_reason() {
    let app = spawn_app().await;
    let cases = [
        ("15550001234", "start with '+'"),
        ("+1 555 000 1234", "only the digits"),
        ("+1-555-000-1234", "only the digits"),
        ("+123456", "between 7 and 15"),
        ("+1234567890123456", "between 7 and 15"),
        ("+05550001234", "never starts with 0"),
        ("", "start with '+'"),
        ("+", "between 7 and 15"),
    ];
    for (to, reason) in cases {
        let reply = app.post_json("/v1/verifications", &json!({ "to": to })).await;
        assert_eq!(reply.problem(400), "invalid-phone-number", "to={to:?}");
        let detail = reply.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(reason), "to={to:?}: {detail}");
    }
    assert!(app.graph().received().is_empty(), "nothing may be sent for a bad number");
}

#[actix_web::test]
async fn malformed_bodies_are_400_problems() {
    let app = spawn_app().await;
    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let cases: [&[u8]; 8] = [
        b"",
        b"not json",
        b"{\"to\":",
        b"[]",
        b"{}",
        b"{\"to\":15550001234}",
        b"{\"to\":\"+15550001234\",\"channel\":\"sms\",\"extra\":1}",
        b"{\"phone\":\"+15550001234\"}",
    ];
    let arrays: [&[u8]; 2] = [b"[\"+15550001234\"]", b" [\"+15550001234\",\"sms\",\"login\"]"];
    for body in cases {
        let reply = app.request("POST", "/v1/verifications", &headers, Some(body.to_vec())).await;
        assert_eq!(reply.problem(400), "invalid-body", "body {:?}", String::from_utf8_lossy(body));
    }
    for body in arrays {
        let reply = app.request("POST", "/v1/verifications", &headers, Some(body.to_vec())).await;
        assert_eq!(reply.problem(400), "invalid-body", "a JSON array is no request");
    }
    let huge = vec![b' '; 100_000];
    let reply = app.request("POST", "/v1/verifications", &headers, Some(huge)).await;
    assert_eq!(reply.problem(413), "payload-too-large");
}

#[actix_web::test]
async fn every_v1_route_needs_the_api_key() {
    let app = spawn_app().await;
    let id = app.send_code(&fresh_number()).await["id"].as_str().unwrap().to_owned();
    let routes = [
        ("POST", "/v1/verifications".to_owned(), Some(br#"{"to":"+15550001234"}"#.to_vec())),
        ("GET", format!("/v1/verifications/{id}"), None),
        ("POST", format!("/v1/verifications/{id}/check"), Some(br#"{"code":"123456"}"#.to_vec())),
    ];
    let wrong_keys = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {API_KEY}x")),
        Some(format!("Basic {API_KEY}")),
        Some(API_KEY.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for (method, path, body) in &routes {
        for key in &wrong_keys {
            let headers: Vec<(&str, &str)> =
                key.iter().map(|k| ("authorization", k.as_str())).collect();
            let reply = app.request(method, path, &headers, body.clone()).await;
            assert_eq!(reply.problem(401), "unauthorized", "{method} {path} with {key:?}");
            assert!(reply.headers.get("www-authenticate").is_some());
        }
    }
    assert_eq!(app.graph().received().len(), 1, "no unauthenticated send went out");
    assert_eq!(app.poll(&id).await["attempts_left"], 5, "no unauthenticated check counted");
}

#[actix_web::test]
async fn a_refused_send_shows_in_the_delivery_not_as_a_server_error() {
    let app = spawn_app().await;
    app.graph().queue(Answer::json(
        404,
        r#"{"error":{"message":"(#132001) Template name does not exist in the translation","type":"OAuthException","code":132001,"error_data":{"messaging_product":"whatsapp","details":"template name (login_code) does not exist in en_US"},"fbtrace_id":"AbC"}}"#,
    ));
    let v = app.send_code(&fresh_number()).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["delivery"]["status"], "failed");
    assert_eq!(v["delivery"]["message_id"], serde_json::Value::Null);
    assert_eq!(v["delivery"]["error"]["code"], 132001);
    assert_eq!(
        v["delivery"]["error"]["details"],
        "template name (login_code) does not exist in en_US"
    );
    let check = app.check(v["id"].as_str().unwrap(), &app.last_code_sent()).await;
    assert_eq!(check.problem(409), "verification-not-pending");
}

#[actix_web::test]
async fn a_graph_api_that_does_not_answer_in_time_is_a_timeout() {
    let app = spawn_app().await;
    // WAVERIFY_GRAPH_TIMEOUT is 2 s in tests.
    app.graph().queue(Answer::accepted("wamid.LATE").after(Duration::from_secs(4)));
    let started = std::time::Instant::now();
    let v = app.send_code(&fresh_number()).await;
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(3500), "send took {waited:?}");
    assert!(waited >= Duration::from_secs(2), "send took {waited:?}");
    assert_eq!(v["delivery"]["status"], "failed");
    assert_eq!(v["delivery"]["error"]["code"], serde_json::Value::Null);
    assert_eq!(v["delivery"]["error"]["title"], "Graph API timeout");
    // Meta may still have taken the message: the code stays usable.
    assert_eq!(v["status"], "pending");
    let check = app.check(v["id"].as_str().unwrap(), &app.last_code_sent()).await;
    assert_eq!(check.json()["status"], "approved");
}

#[actix_web::test]
async fn a_graph_api_that_refuses_connections_fails_the_send() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let app = spawn_app_with(&[("WAVERIFY_GRAPH_URL", &url)]).await;
    let v = app.send_code(&fresh_number()).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["delivery"]["status"], "failed");
    assert_eq!(v["delivery"]["error"]["title"], "Graph API unreachable");
}

#[actix_web::test]
async fn a_proxy_error_page_is_an_unexpected_answer() {
    let app = spawn_app().await;
    app.graph().queue(Answer::json(502, "<html><body>502 Bad Gateway</body></html>"));
    let v = app.send_code(&fresh_number()).await;
    assert_eq!(app.graph().received().len(), 1, "no retry: the message may have gone out");
    assert_eq!(v["delivery"]["status"], "failed");
    assert_eq!(v["delivery"]["error"]["title"], "Unexpected Graph API answer");
    assert_eq!(v["status"], "pending", "after a 502 Meta may still deliver");
}

#[actix_web::test]
async fn a_resolved_wa_id_that_differs_from_the_number_is_fine() {
    let app = spawn_app().await;
    app.graph().queue(Answer::json(
        200,
        r#"{"messaging_product":"whatsapp","contacts":[{"input":"5511912345678","wa_id":"551112345678"}],"messages":[{"id":"wamid.BR"}]}"#,
    ));
    let v = app.send_code("+5511912345678").await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["delivery"]["status"], "accepted");
    assert_eq!(v["delivery"]["message_id"], "wamid.BR");
}

#[actix_web::test]
async fn unknown_and_malformed_ids_are_404() {
    let app = spawn_app().await;
    for id in ["0123456789abcdef0123456789abcdef", "nope", "0123456789ABCDEF0123456789ABCDEF"] {
        let reply = app.get(&format!("/v1/verifications/{id}")).await;
        assert_eq!(reply.problem(404), "verification-not-found", "{id}");
        let reply = app.check(id, "123456").await;
        assert_eq!(reply.problem(404), "verification-not-found", "{id}");
    }
}

#[actix_web::test]
async fn a_transient_failure_is_retried_once() {
    let app = spawn_app().await;
    let transient = r#"{"error":{"message":"(#131000) Something went wrong","type":"OAuthException","code":131000,"fbtrace_id":"X"}}"#;
    app.graph().queue(Answer::json(500, transient));
    app.graph().queue(Answer::accepted("wamid.RETRIED"));
    let v = app.send_code(&fresh_number()).await;
    assert_eq!(v["delivery"]["status"], "accepted", "{v}");
    assert_eq!(v["delivery"]["message_id"], "wamid.RETRIED");
    assert_eq!(app.graph().received().len(), 2, "one retry, no more");

    let refused = r#"{"error":{"message":"(#131008) Required parameter is missing","type":"OAuthException","code":131008,"fbtrace_id":"X"}}"#;
    app.graph().queue(Answer::json(400, refused));
    let v = app.send_code(&fresh_number()).await;
    assert_eq!(v["delivery"]["status"], "failed", "no retry for a bad request: {v}");
    assert_eq!(app.graph().received().len(), 3);
}
