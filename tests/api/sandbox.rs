use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// The code the sandbox "sent" for a verification.
async fn sandbox_code(app: &TestApp, id: &str) -> Option<Value> {
    let list = app.get("/sandbox/messages").await;
    assert_eq!(list.status, 200, "{}", list.text);
    list.json()["messages"].as_array().unwrap().iter().find(|m| m["verification_id"] == id).cloned()
}

#[actix_web::test]
async fn a_whole_login_runs_in_the_sandbox() {
    // Nothing configured: every secret has its development value.
    let app = spawn_sandbox_with(&[
        "WAVERIFY_API_KEY",
        "WAVERIFY_CODE_KEY",
        "WAVERIFY_APP_SECRET",
        "WAVERIFY_VERIFY_TOKEN",
    ])
    .await;
    let auth = format!("Bearer {}", waverify::settings::sandbox_defaults::API_KEY);
    let reply = app
        .request(
            "POST",
            "/v1/verifications",
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(br#"{"to":"+15550100001"}"#.to_vec()),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let id = reply.json()["id"].as_str().unwrap().to_owned();

    let path = format!("/v1/verifications/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = app.request("GET", &path, &[("authorization", &auth)], None).await.json();
        if v["delivery"]["status"] == "read" || std::time::Instant::now() > deadline {
            break v;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["delivery"]["status"], "read", "{v}");
    for status in ["sent", "delivered", "read"] {
        assert!(v["delivery"]["timestamps"][status].is_string(), "{status} in {v}");
    }

    let list = app.request("GET", "/sandbox/messages", &[("authorization", &auth)], None).await;
    // The fields come in the README's order.
    let keys = ["channel", "message_id", "verification_id", "to", "code", "text", "outcome"];
    let at: Vec<_> = keys.iter().map(|k| list.text.find(&format!("\"{k}\":"))).collect();
    assert!(at.iter().all(Option::is_some) && at.is_sorted(), "field order: {}", list.text);
    let message = list.json()["messages"][0].clone();
    assert_eq!(message["verification_id"], id.as_str());
    assert_eq!(message["to"], "+1555*****001");
    let code = message["code"].as_str().unwrap().to_owned();
    assert!(message["text"].as_str().unwrap().starts_with(&code));

    let check = app
        .request(
            "POST",
            &format!("{path}/check"),
            &[("authorization", &auth), ("content-type", "application/json")],
            Some(format!(r#"{{"code":"{code}"}}"#).into_bytes()),
        )
        .await;
    assert_eq!(check.json()["status"], "approved");
}

#[actix_web::test]
async fn every_test_number_gives_its_documented_outcome() {
    let app = spawn_sandbox().await;
    // (number, final delivery status, error code, verification status)
    let cases: [(&str, &str, Option<i64>, &str); 6] = [
        ("+15550100001", "read", None, "pending"),
        ("+15550100002", "delivered", None, "pending"),
        ("+15550100003", "failed", Some(131026), "pending"),
        ("+15550100004", "failed", Some(131056), "pending"),
        ("+15550100005", "failed", Some(132001), "failed"),
        ("+15550100006", "read", None, "pending"),
    ];
    let mut ids = Vec::new();
    for (number, ..) in &cases {
        ids.push(app.send_code(number).await["id"].as_str().unwrap().to_owned());
    }
    // Long enough for every step, including the slow delivery (1.5 s here).
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    for ((number, delivery, code, status), id) in cases.iter().zip(&ids) {
        let v = app.poll(id).await;
        assert_eq!(v["delivery"]["status"], *delivery, "{number}: {v}");
        assert_eq!(v["delivery"]["error"]["code"].as_i64(), *code, "{number}: {v}");
        assert_eq!(v["status"], *status, "{number}: {v}");
        let listed = sandbox_code(&app, id).await;
        assert_eq!(
            listed.is_some(),
            *number != "+15550100005",
            "{number}: refused sends are not listed"
        );
    }
    let slow = app.poll(&ids[5]).await;
    let times = &slow["delivery"]["timestamps"];
    assert!(times["sent"].is_string() && times["delivered"].is_string(), "{slow}");
}

#[actix_web::test]
async fn the_slow_number_is_slow() {
    let app = spawn_sandbox().await;
    let id = app.send_code("+15550100006").await["id"].as_str().unwrap().to_owned();
    let early =
        eventually(&app, &id, Duration::from_millis(700), |v| v["delivery"]["status"] == "sent")
            .await;
    assert_eq!(early["delivery"]["status"], "sent", "{early}");
    actix_web::rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.poll(&id).await["delivery"]["status"], "sent", "not yet delivered");
    let late =
        eventually(&app, &id, Duration::from_secs(5), |v| v["delivery"]["status"] == "read").await;
    assert_eq!(late["delivery"]["status"], "read");
}

#[actix_web::test]
async fn the_sandbox_list_needs_the_api_key() {
    let app = spawn_sandbox().await;
    let reply = app.request("GET", "/sandbox/messages", &[], None).await;
    assert_eq!(reply.problem(401), "unauthorized");
}

#[actix_web::test]
async fn live_mode_has_no_sandbox() {
    let app = spawn_app().await;
    for path in ["/sandbox/messages", "/sandbox/graph/v23.0/1/messages"] {
        for method in ["GET", "POST"] {
            let reply = app
                .request(method, path, &[("authorization", &format!("Bearer {API_KEY}"))], None)
                .await;
            assert_eq!(reply.problem(404), "not-found", "{method} {path}");
        }
    }
}

#[actix_web::test]
async fn the_stand_in_refuses_what_meta_refuses() {
    let app = spawn_sandbox().await;
    let url = "/sandbox/graph/v23.0/100000000000001/messages";
    let token = format!("Bearer {}", waverify::settings::sandbox_defaults::ACCESS_TOKEN);
    let template = |name: &str, body: &str, button: &str| {
        format!(
            r#"{{"messaging_product":"whatsapp","to":"15550001234","type":"template","template":{{"name":"{name}","language":{{"code":"en_US"}},"components":[{{"type":"body","parameters":[{{"type":"text","text":"{body}"}}]}},{{"type":"button","sub_type":"url","index":"0","parameters":[{{"type":"text","text":"{button}"}}]}}]}}}}"#
        )
    };
    let cases = [
        (None, template("waverify_code", "1", "1"), 401, 190),
        (Some(token.clone()), "nope".to_owned(), 400, 100),
        (Some(token.clone()), template("other_template", "1", "1"), 404, 132001),
        (Some(token.clone()), template("waverify_code", "1", "2"), 400, 132000),
        (
            Some(token.clone()),
            template("waverify_code", "1", "1").replace(r#""to":"15550001234""#, r#""to":"x""#),
            400,
            100,
        ),
        (
            Some(token.clone()),
            template("waverify_code", "1", "1").replace("button", "footer"),
            400,
            131008,
        ),
    ];
    for (i, (auth, body, status, code)) in cases.into_iter().enumerate() {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = app.request("POST", url, &headers, Some(body.into_bytes())).await;
        assert_eq!(reply.status, status, "case {i}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], code, "case {i}");
    }
}
