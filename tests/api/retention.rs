use std::time::Duration;

use crate::helpers::*;

#[actix_web::test]
async fn verifications_are_deleted_after_their_retention() {
    if on_redis() {
        // Redis deletes by TTL on its own clock, which this test's clock
        // does not move: `shared_store::expiry_and_retention_are_ttls`.
        return;
    }
    let app = spawn_app_with(&[("WAVERIFY_RETENTION", "3600")]).await;
    let v = app.send_code_as(&fresh_number(), "wamid.OLD").await;
    let id = v["id"].as_str().unwrap().to_owned();
    // Expires at +600 s; deleted once 3600 s more have passed.
    app.clock.advance(600 + 3599);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.poll(&id).await["status"], "expired", "still kept one second before");

    app.clock.advance(2);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = app.get(&format!("/v1/verifications/{id}")).await;
        if reply.status == 404 {
            assert_eq!(reply.problem(404), "verification-not-found");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not purged: {}", reply.text);
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    // A late status for the deleted message is taken, and changes nothing.
    let late = app.webhook(&status_body(&[("wamid.OLD", "read", START)])).await;
    assert_eq!(late.status, 200);
}
