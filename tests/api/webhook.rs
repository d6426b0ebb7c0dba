use std::time::Duration;

use serde_json::{json, Value};

use crate::graph_stub::Answer;
use crate::helpers::*;

async fn handshake(app: &TestApp, query: &str) -> Reply {
    app.request("GET", &format!("/webhook?{query}"), &[], None).await
}

#[actix_web::test]
async fn the_handshake_echoes_the_challenge_for_the_right_token_only() {
    let app = spawn_app().await;
    let ok = handshake(
        &app,
        &format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text, "1158201444");
    assert!(ok.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/plain"));

    let odd = handshake(
        &app,
        &format!(
            "hub.challenge=a%2Fb%20c%C3%A9&hub.verify_token={VERIFY_TOKEN}&hub.mode=subscribe"
        ),
    )
    .await;
    assert_eq!(odd.problem(403), "handshake-refused", "only visible ASCII is echoed");
    let script = handshake(
        &app,
        &format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=%3Cscript%3E"),
    )
    .await;
    assert_eq!((script.status, script.text.as_str()), (200, "<script>"));
    assert_eq!(script.headers.get("x-content-type-options").unwrap(), "nosniff");

    let refused = [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".to_owned(),
        format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}x&hub.challenge=1"),
        format!("hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"),
        format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"),
        "hub.mode=subscribe&hub.challenge=1".to_owned(),
        String::new(),
        "hub.mode=%ZZ".to_owned(),
        // A field given twice, whichever of the two is right.
        format!(
            "hub.mode=subscribe&hub.verify_token=x&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"
        ),
        format!(
            "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.verify_token=x&hub.challenge=1"
        ),
        format!(
            "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1&hub.challenge=2"
        ),
    ];
    for query in refused {
        let reply = handshake(&app, &query).await;
        assert_eq!(reply.problem(403), "handshake-refused", "{query}");
        assert!(!reply.text.contains("\"1\""));
    }
}

#[actix_web::test]
async fn statuses_move_delivery_forward_in_any_order() {
    let app = spawn_app().await;
    let v = app.send_code_as(&fresh_number(), "wamid.ORDER").await;
    let id = v["id"].as_str().unwrap();
    let steps = [("read", 30, "read"), ("sent", 10, "read"), ("delivered", 20, "read")];
    for (status, ts, expect) in steps {
        let reply = app.webhook(&status_body(&[("wamid.ORDER", status, START + ts)])).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(app.poll(id).await["delivery"]["status"], expect, "after {status}");
    }
    let d = app.poll(id).await["delivery"].clone();
    assert_eq!(d["timestamps"]["sent"], "2026-01-01T00:00:10Z");
    assert_eq!(d["timestamps"]["delivered"], "2026-01-01T00:00:20Z");
    assert_eq!(d["timestamps"]["read"], "2026-01-01T00:00:30Z");
}

#[actix_web::test]
async fn duplicates_change_nothing() {
    let app = spawn_app().await;
    let id =
        app.send_code_as(&fresh_number(), "wamid.DUP").await["id"].as_str().unwrap().to_owned();
    let body = status_body(&[
        ("wamid.DUP", "delivered", START + 5),
        ("wamid.DUP", "delivered", START + 5),
    ]);
    for _ in 0..3 {
        assert_eq!(app.webhook(&body).await.status, 200);
    }
    let later = status_body(&[("wamid.DUP", "delivered", START + 50)]);
    assert_eq!(app.webhook(&later).await.status, 200);
    let d = app.poll(&id).await["delivery"].clone();
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["timestamps"], json!({"delivered": "2026-01-01T00:00:05Z"}));
}

fn failed_body(message_id: &str, ts: i64, code: i64) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "statuses": [{"id": message_id, "status": "failed", "timestamp": ts.to_string(), "recipient_id": "15550001234",
            "errors": [{"code": code, "title": "Message failed to send", "message": "Message failed to send",
                        "error_data": {"details": "Message failed to send because of an unknown error."}}]}]}}]}]})
    .to_string()
    .into_bytes()
}

#[actix_web::test]
async fn delivered_after_failed_wins_and_the_error_stays_visible() {
    let app = spawn_app().await;
    let id =
        app.send_code_as(&fresh_number(), "wamid.MULTI").await["id"].as_str().unwrap().to_owned();
    assert_eq!(app.webhook(&failed_body("wamid.MULTI", START + 3, 131000)).await.status, 200);
    let v = app.poll(&id).await;
    assert_eq!(v["delivery"]["status"], "failed");
    assert_eq!(v["delivery"]["error"]["code"], 131000);
    assert_eq!(v["status"], "pending", "a failed status does not end the verification");

    assert_eq!(
        app.webhook(&status_body(&[("wamid.MULTI", "delivered", START + 4)])).await.status,
        200
    );
    let v = app.poll(&id).await;
    assert_eq!(v["delivery"]["status"], "delivered");
    assert_eq!(v["delivery"]["error"]["code"], 131000);
    assert_eq!(
        v["delivery"]["error"]["details"],
        "Message failed to send because of an unknown error."
    );
    assert_eq!(app.webhook(&failed_body("wamid.MULTI", START + 9, 131026)).await.status, 200);
    assert_eq!(app.poll(&id).await["delivery"]["status"], "delivered");
}

#[actix_web::test]
async fn bad_signatures_are_refused_and_record_nothing() {
    let app = spawn_app().await;
    let id =
        app.send_code_as(&fresh_number(), "wamid.SIG").await["id"].as_str().unwrap().to_owned();
    let body = status_body(&[("wamid.SIG", "read", START + 1)]);
    let good = waverify::whatsapp::signature::sign(APP_SECRET.as_bytes(), &body);
    let other = waverify::whatsapp::signature::sign(b"another-secret", &body);
    let cases: Vec<(Option<String>, Vec<u8>, u16, &str)> = vec![
        (None, body.clone(), 401, "signature-missing"),
        (Some(String::new()), body.clone(), 401, "signature-malformed"),
        (Some(good.replace("sha256=", "sha1=")), body.clone(), 401, "signature-malformed"),
        (Some(good[..good.len() - 1].to_owned()), body.clone(), 401, "signature-malformed"),
        (Some(other), body.clone(), 403, "signature-mismatch"),
        (Some(good.clone()), [body.as_slice(), b" "].concat(), 403, "signature-mismatch"),
        (Some(good.clone()), body.replace_bytes(b"read", b"sent"), 403, "signature-mismatch"),
    ];
    for (i, (header, body, status, kind)) in cases.into_iter().enumerate() {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(h) = &header {
            headers.push(("x-hub-signature-256", h.as_str()));
        }
        let reply = app.request("POST", "/webhook", &headers, Some(body)).await;
        assert_eq!(reply.problem(status), kind, "case {i}");
    }
    assert_eq!(app.poll(&id).await["delivery"]["status"], "accepted", "nothing recorded");
}

trait ReplaceBytes {
    fn replace_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replace_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = self.windows(from.len()).position(|w| w == from).unwrap();
        [&self[..at], to, &self[at + from.len()..]].concat()
    }
}

#[actix_web::test]
async fn what_is_not_ours_is_accepted_and_ignored() {
    let app = spawn_app().await;
    let id =
        app.send_code_as(&fresh_number(), "wamid.MINE").await["id"].as_str().unwrap().to_owned();
    let body = json!({"object": "whatsapp_business_account", "entry": [
        {"id": "1", "changes": [
            {"field": "account_update", "value": {"event": "ACCOUNT_VIOLATION"}},
            {"field": "messages", "value": {"messages": [{"from": "15550009999", "id": "wamid.IN", "type": "text", "text": {"body": "hi"}}]}},
            {"field": "messages", "value": {"errors": [{"code": 131000, "title": "Something went wrong"}]}},
            {"field": "messages", "value": {"statuses": [
                {"id": "wamid.SOMEONE_ELSE", "status": "read", "timestamp": "1"},
                {"id": "wamid.MINE", "status": "played", "timestamp": "2"},
                {"id": "wamid.MINE", "status": "deleted", "timestamp": "3"},
                {"id": "wamid.MINE", "status": "delivered", "timestamp": "4", "new_field": {"x": [1, 2]}},
                {"nonsense": true}]}}]},
        "not an entry"]})
    .to_string();
    let reply = app.webhook(body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let d = app.poll(&id).await["delivery"].clone();
    assert_eq!(d["status"], "delivered");
    // "4" is no time Meta gives: the status keeps the time it arrived.
    assert_eq!(d["timestamps"], json!({"delivered": "2026-01-01T00:00:00Z"}));
}

#[actix_web::test]
async fn signed_bodies_that_are_not_json_are_400() {
    let app = spawn_app().await;
    for body in [&b"not json"[..], b"", b"{\"entry\":[", b"\xff\xfe"] {
        let reply = app.webhook(body).await;
        assert_eq!(reply.problem(400), "invalid-body", "{body:?}");
    }
}

#[actix_web::test]
async fn bodies_up_to_3_mib_are_taken_and_larger_ones_refused() {
    let app = spawn_app().await;
    let id =
        app.send_code_as(&fresh_number(), "wamid.BIG").await["id"].as_str().unwrap().to_owned();
    let limit = 3 * 1024 * 1024;
    let template = String::from_utf8(status_body(&[("wamid.BIG", "read", START)])).unwrap();
    let filler_len = limit - template.len() - r#","padding":"""#.len();
    let big = template.replacen('{', &format!("{{\"padding\":\"{}\",", "x".repeat(filler_len)), 1);
    assert_eq!(big.len(), limit);
    let reply = app.webhook(big.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(app.poll(&id).await["delivery"]["status"], "read");

    let too_big = format!(" {big}");
    let reply = app.webhook(too_big.as_bytes()).await;
    assert_eq!(reply.problem(413), "payload-too-large");
}

#[actix_web::test]
async fn a_status_that_overtakes_the_graph_answer_is_kept() {
    let app = spawn_app().await;
    app.graph().queue(Answer::accepted("wamid.EARLY").after(Duration::from_millis(700)));
    let number = fresh_number();
    let send = app.send_code(&number);
    let race = async {
        // Wait for the send to reach the Graph API, then report a status
        // for it before the Graph API has answered.
        let callback = loop {
            if let Some(r) = app.graph().received().first() {
                break r.body["biz_opaque_callback_data"].as_str().unwrap().to_owned();
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        };
        let body = json!({"entry": [{"changes": [{"field": "messages", "value": {"statuses": [
            {"id": "wamid.EARLY", "status": "delivered", "timestamp": (START + 1).to_string(),
             "biz_opaque_callback_data": callback}]}}]}]})
        .to_string();
        assert_eq!(app.webhook(body.as_bytes()).await.status, 200);
        callback
    };
    let (v, callback) = futures_util::future::join(send, race).await;
    assert_eq!(v["id"], callback);
    assert_eq!(v["delivery"]["status"], "delivered");
    assert_eq!(v["delivery"]["message_id"], "wamid.EARLY");
    let again = status_body(&[("wamid.EARLY", "read", START + 2)]);
    assert_eq!(app.webhook(&again).await.status, 200);
    assert_eq!(app.poll(&callback).await["delivery"]["status"], "read");
}

#[actix_web::test]
async fn a_status_after_a_timed_out_send_is_matched_by_its_callback_data() {
    let app = spawn_app().await;
    app.graph().queue(Answer::accepted("wamid.SLOW").after(Duration::from_secs(3)));
    let v = app.send_code(&fresh_number()).await;
    assert_eq!(v["delivery"]["error"]["title"], "Graph API timeout");
    let id = v["id"].as_str().unwrap();
    let body = json!({"entry": [{"changes": [{"field": "messages", "value": {"statuses": [
        {"id": "wamid.SLOW", "status": "delivered", "timestamp": "1767225601", "biz_opaque_callback_data": id}]}}]}]})
    .to_string();
    assert_eq!(app.webhook(body.as_bytes()).await.status, 200);
    let v: Value = app.poll(id).await;
    assert_eq!(v["delivery"]["status"], "delivered");
    assert_eq!(v["delivery"]["message_id"], "wamid.SLOW");
}
