use crate::helpers::*;

#[actix_web::test]
async fn unknown_routes_and_methods_get_problems() {
    let app = spawn_app().await;
    let auth = format!("Bearer {API_KEY}");
    let cases = [
        ("GET", "/", 404, "not-found"),
        ("GET", "/v1/nothing", 404, "not-found"),
        ("GET", "/v1/verifications", 405, "method-not-allowed"),
        ("DELETE", "/v1/verifications/0123456789abcdef0123456789abcdef", 405, "method-not-allowed"),
        (
            "GET",
            "/v1/verifications/0123456789abcdef0123456789abcdef/check",
            405,
            "method-not-allowed",
        ),
        ("GET", "/v1/verifications/", 404, "not-found"),
        ("GET", "/v1/verifications/0123456789abcdef0123456789abcdef/", 404, "not-found"),
        ("POST", "/v1/verifications/0123456789abcdef0123456789abcdef/check/", 404, "not-found"),
        ("POST", "/v1/verifications//check", 404, "not-found"),
        ("PUT", "/webhook", 405, "method-not-allowed"),
        ("POST", "/healthz", 405, "method-not-allowed"),
    ];
    for (method, path, status, kind) in cases {
        let reply = app.request(method, path, &[("authorization", &auth)], None).await;
        assert_eq!(reply.problem(status), kind, "{method} {path}");
        if status == 405 {
            assert!(reply.headers.get("allow").is_some(), "{method} {path} names what is allowed");
        }
    }
    let head = app.request("HEAD", "/healthz", &[], None).await;
    assert_eq!(head.status, 200);
}

#[actix_web::test]
async fn health_is_ok_while_the_store_answers() {
    let app = spawn_app().await;
    let reply = app.request("GET", "/healthz", &[], None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
    assert!(reply.headers.get("x-request-id").is_some());
}

#[actix_web::test]
async fn state_survives_a_restart_on_the_same_directory() {
    let app = spawn_app().await;
    let v = app.send_code_as(&fresh_number(), "wamid.KEEP").await;
    let id = v["id"].as_str().unwrap().to_owned();
    let code = app.last_code_sent();
    assert_eq!(
        app.webhook(&status_body(&[("wamid.KEEP", "delivered", START + 1)])).await.status,
        200
    );
    app.stop().await;

    let again = restart(&app).await;
    let v = again.poll(&id).await;
    assert_eq!(v["delivery"]["status"], "delivered");
    assert_eq!(again.webhook(&status_body(&[("wamid.KEEP", "read", START + 2)])).await.status, 200);
    assert_eq!(again.poll(&id).await["delivery"]["status"], "read");
    assert_eq!(again.check(&id, &code).await.json()["status"], "approved");
}
