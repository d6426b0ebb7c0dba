//! Our own fixtures: webhook bodies with the outcome a correct receiver
//! ends with (`fixtures/webhooks/expected.json`), and Graph API answers
//! (`fixtures/graph/manifest.json`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use waverify::clock::rfc3339;

use crate::graph_stub::Answer;
use crate::helpers::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[actix_web::test]
async fn every_webhook_fixture_ends_as_expected() {
    let dir = fixtures().join("webhooks");
    let expected = read_json(&dir.join("expected.json"));
    let cases = expected["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let app = spawn_app().await;
        let mut ids = Vec::new();
        for (message_id, want) in case["messages"].as_object().unwrap() {
            let v = app.send_code_as(&fresh_number(), message_id).await;
            ids.push((v["id"].as_str().unwrap().to_owned(), message_id, want));
        }
        for file in case["files"].as_array().unwrap() {
            let bytes = std::fs::read(dir.join(file.as_str().unwrap())).unwrap();
            let reply = app.webhook(&bytes).await;
            assert_eq!(reply.status, 200, "{name}: {file}: {}", reply.text);
        }
        for (id, message_id, want) in ids {
            let d = app.poll(&id).await["delivery"].clone();
            let context = format!("{name}: {message_id}: {d}");
            assert_eq!(d["status"], want["status"].as_str().unwrap_or("accepted"), "{context}");
            let times: serde_json::Map<String, Value> = want["timestamps"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(s, t)| (s.clone(), Value::from(rfc3339(t.as_i64().unwrap()))))
                .collect();
            assert_eq!(d["timestamps"], Value::Object(times), "{context}");
            match want["error"].as_object() {
                None => assert_eq!(d["error"], Value::Null, "{context}"),
                Some(error) => {
                    assert_eq!(d["error"]["code"], error["code"], "{context}");
                    assert_eq!(d["error"]["title"], error["title"], "{context}");
                    assert_eq!(d["error"]["details"], error["details"], "{context}");
                }
            }
        }
        app.stop().await;
    }
}

#[actix_web::test]
async fn every_graph_answer_shows_in_the_resource() {
    let dir = fixtures().join("graph");
    let manifest = read_json(&dir.join("manifest.json"));
    let app = spawn_app().await;
    for answer in manifest["answers"].as_array().unwrap() {
        let name = answer["name"].as_str().unwrap();
        let file = answer["file"].as_str().unwrap();
        let body = std::fs::read_to_string(dir.join(file)).unwrap();
        let status = answer["http_status"].as_u64().unwrap() as u16;
        // A transient Meta error gets one retry: it must fail twice to show.
        let transient = answer["error_code"].as_i64() == Some(131000);
        for _ in 0..if transient { 2 } else { 1 } {
            app.graph().queue(Answer::json(status, &body));
        }
        // Some of these switch WhatsApp off for a while: let it pass.
        app.clock.advance(3600);
        let v = app.send_code(&fresh_number()).await;
        let d = &v["delivery"];
        match (answer["error_code"].as_i64(), file.ends_with(".json")) {
            (Some(code), _) => {
                assert_eq!(d["status"], "failed", "{name}: {v}");
                assert_eq!(d["error"]["code"], code, "{name}: {v}");
                assert!(d["error"]["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
                assert_eq!(v["status"], "failed", "{name}: Meta refused, nothing will arrive");
            }
            (None, true) => {
                let sent: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(d["status"], "accepted", "{name}: {v}");
                assert_eq!(d["message_id"], sent["messages"][0]["id"], "{name}");
                assert_eq!(v["status"], "pending", "{name}");
            }
            (None, false) => {
                assert_eq!(d["status"], "failed", "{name}: {v}");
                assert_eq!(d["error"]["code"], Value::Null, "{name}");
                assert_eq!(v["status"], "pending", "{name}: Meta may still deliver");
            }
        }
    }
}
