use serde_json::json;

use crate::helpers::*;

async fn verification(app: &TestApp) -> (String, String) {
    let v = app.send_code(&fresh_number()).await;
    (v["id"].as_str().unwrap().to_owned(), app.last_code_sent())
}

fn wrong(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

#[actix_web::test]
async fn the_right_code_approves_exactly_once() {
    let app = spawn_app().await;
    let (id, code) = verification(&app).await;
    let reply = app.check(&id, &code).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["status"], "approved");
    assert_eq!(app.poll(&id).await["status"], "approved");

    let replay = app.check(&id, &code).await;
    assert_eq!(replay.problem(409), "verification-not-pending");
    assert_eq!(replay.json()["verification_status"], "approved");
}

#[actix_web::test]
async fn wrong_codes_count_down_then_kill_the_verification() {
    let app = spawn_app_with(&[("WAVERIFY_MAX_ATTEMPTS", "3")]).await;
    let (id, code) = verification(&app).await;
    assert_eq!(app.poll(&id).await["attempts_left"], 3);
    for left in [2, 1] {
        let reply = app.check(&id, &wrong(&code)).await;
        assert_eq!(reply.status, 200);
        let v = reply.json();
        assert_eq!(
            (v["status"].as_str().unwrap(), v["attempts_left"].as_u64().unwrap()),
            ("pending", left)
        );
    }
    let last = app.check(&id, &wrong(&code)).await.json();
    assert_eq!(last["status"], "max_attempts_reached");
    assert_eq!(last["attempts_left"], 0);
    let late = app.check(&id, &code).await;
    assert_eq!(late.problem(409), "verification-not-pending");
    assert_eq!(late.json()["verification_status"], "max_attempts_reached");
}

#[actix_web::test]
async fn codes_expire_at_the_configured_ttl() {
    let app = spawn_app_with(&[("WAVERIFY_CODE_TTL", "120")]).await;
    let (id, code) = verification(&app).await;
    app.clock.advance(119);
    assert_eq!(app.poll(&id).await["status"], "pending");
    app.clock.advance(1);
    assert_eq!(app.poll(&id).await["status"], "expired");
    let reply = app.check(&id, &code).await;
    assert_eq!(reply.problem(409), "verification-expired");
    assert_eq!(app.poll(&id).await["status"], "expired");
}

#[actix_web::test]
async fn a_code_just_before_expiry_still_works() {
    let app = spawn_app().await;
    let (id, code) = verification(&app).await;
    app.clock.advance(599);
    assert_eq!(app.check(&id, &code).await.json()["status"], "approved");
}

#[actix_web::test]
async fn malformed_codes_are_refused_without_using_a_try() {
    let app = spawn_app().await;
    let (id, _) = verification(&app).await;
    for code in ["12345", "1234567", "12345a", " 123456", "", "١٢٣٤٥٦"] {
        let reply = app.check(&id, code).await;
        assert_eq!(reply.problem(400), "invalid-code", "code {code:?}");
    }
    let path = format!("/v1/verifications/{id}/check");
    for body in [json!({"code": 123456}), json!({}), json!({"code": "123456", "x": 1})] {
        assert_eq!(app.post_json(&path, &body).await.problem(400), "invalid-body", "{body}");
    }
    assert_eq!(app.poll(&id).await["attempts_left"], 5);
}

#[actix_web::test]
async fn a_code_never_approves_another_verification() {
    let app = spawn_app().await;
    let (first, first_code) = verification(&app).await;
    let (second, second_code) = verification(&app).await;
    if first_code == second_code {
        return; // one chance in a million; nothing to compare
    }
    let reply = app.check(&second, &first_code).await.json();
    assert_eq!(
        (reply["status"].as_str(), reply["attempts_left"].as_u64()),
        (Some("pending"), Some(4))
    );
    assert_eq!(app.check(&second, &second_code).await.json()["status"], "approved");
    assert_eq!(app.poll(&first).await["status"], "pending");
}

#[actix_web::test]
async fn concurrent_checks_of_the_right_code_approve_once() {
    let app = spawn_app().await;
    let (id, code) = verification(&app).await;
    let checks = (0..16).map(|_| app.check(&id, &code));
    let replies = futures_util::future::join_all(checks).await;
    let approved = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!(
        (approved, refused),
        (1, 15),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

#[actix_web::test]
async fn concurrent_wrong_checks_each_use_one_try() {
    let app = spawn_app_with(&[("WAVERIFY_MAX_ATTEMPTS", "20")]).await;
    let (id, code) = verification(&app).await;
    let bad = wrong(&code);
    let replies = futures_util::future::join_all((0..12).map(|_| app.check(&id, &bad))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(app.poll(&id).await["attempts_left"], 8);
}
