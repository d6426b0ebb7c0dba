//! Real webhook bodies written by people outside this project, from
//! traffic they saw. Each is signed byte for byte, POSTed, and must be
//! taken with 200 and its statuses applied.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use waverify::clock::rfc3339;

use crate::helpers::*;

/// Where the corpus lies: beside the repository, or where
/// `WAVERIFY_CORPUS_DIR` says.
fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WAVERIFY_CORPUS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/webhooks")
    });
    dir.is_dir().then_some(dir)
}

/// The corpus files, or a loud failure: a missing corpus must never pass
/// as a tested one. `WAVERIFY_SKIP_CORPUS=1` skips on purpose, and says so.
fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let Some(dir) = corpus_dir() else {
        if std::env::var("WAVERIFY_SKIP_CORPUS").as_deref() == Ok("1") {
            // Written to the process's stderr itself, past the test
            // harness's capture, so that a skip is seen even on success.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "\n!!! WEBHOOK CORPUS NOT FOUND: corpus tests SKIPPED (WAVERIFY_SKIP_CORPUS=1) !!!\n"
            );
            return Vec::new();
        }
        panic!(
            "the webhook corpus was not found at ../shared/corpus/webhooks beside the repository; \
             set WAVERIFY_CORPUS_DIR to its folder, or WAVERIFY_SKIP_CORPUS=1 to skip these tests on purpose"
        );
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10, "only {} corpus files in {}", files.len(), dir.display());
    files
}

/// What a correct receiver ends with for one message.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    status: Option<&'static str>,
    timestamps: BTreeMap<String, i64>,
    error_code: Option<i64>,
}

const RANK: [&str; 4] = ["sent", "failed", "delivered", "read"];

/// The statuses of a body, read independently of the server's parser.
fn statuses(body: &Value) -> Vec<(String, String, i64, Option<i64>)> {
    let mut out = Vec::new();
    for entry in body["entry"].as_array().into_iter().flatten() {
        for change in entry["changes"].as_array().into_iter().flatten() {
            if change["field"] != "messages" {
                continue;
            }
            for s in change["value"]["statuses"].as_array().into_iter().flatten() {
                out.push((
                    s["id"].as_str().unwrap().to_owned(),
                    s["status"].as_str().unwrap().to_owned(),
                    s["timestamp"].as_str().unwrap().parse().unwrap(),
                    s["errors"][0]["code"].as_i64(),
                ));
            }
        }
    }
    out
}

fn expected(statuses: &[(String, String, i64, Option<i64>)]) -> BTreeMap<String, Expected> {
    let mut all: BTreeMap<String, Expected> = BTreeMap::new();
    let mut first_error: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (id, status, ts, code) in statuses {
        let e = all.entry(id.clone()).or_default();
        let Some(rank) = RANK.iter().position(|s| s == status) else { continue };
        if e.status.is_none_or(|s| RANK.iter().position(|r| *r == s).unwrap() < rank) {
            e.status = Some(RANK[rank]);
        }
        let t = e.timestamps.entry(status.clone()).or_insert(*ts);
        *t = (*t).min(*ts);
        if let (Some(code), "failed") = (code, status.as_str()) {
            let candidate = (*ts, *code);
            let best = first_error.entry(id.clone()).or_insert(candidate);
            *best = (*best).min(candidate);
            e.error_code = Some(best.1);
        }
    }
    all
}

fn assert_applied(file: &str, v: &Value, want: &Expected) {
    let d = &v["delivery"];
    assert_eq!(d["status"], want.status.unwrap_or("accepted"), "{file}: {v}");
    let times: BTreeMap<String, String> =
        want.timestamps.iter().map(|(s, t)| (s.clone(), rfc3339(*t))).collect();
    assert_eq!(d["timestamps"], serde_json::to_value(times).unwrap(), "{file}: {v}");
    assert_eq!(d["error"]["code"].as_i64(), want.error_code, "{file}: {v}");
}

#[actix_web::test]
async fn every_corpus_body_is_taken_and_its_statuses_applied() {
    let app = spawn_app().await;
    let mut with_statuses = 0;
    for (file, bytes) in corpus_files() {
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let want = expected(&statuses(&body));
        let mut ids = BTreeMap::new();
        for message_id in want.keys() {
            let v = app.send_code_as(&fresh_number(), message_id).await;
            ids.insert(message_id.clone(), v["id"].as_str().unwrap().to_owned());
        }
        let reply = app.webhook(&bytes).await;
        assert_eq!(reply.status, 200, "{file}: {}", reply.text);
        for (message_id, expect) in &want {
            assert_applied(&file, &app.poll(&ids[message_id]).await, expect);
        }
        with_statuses += usize::from(!want.is_empty());
    }
    if corpus_dir().is_some() {
        assert!(with_statuses >= 5, "only {with_statuses} corpus files carried statuses");
    }
}

#[actix_web::test]
async fn corpus_statuses_of_one_message_fold_the_same_in_any_order() {
    let files = corpus_files();
    let mut by_message: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for (_, bytes) in &files {
        let body: Value = serde_json::from_slice(bytes).unwrap();
        let found = statuses(&body);
        if let [(id, ..)] = found.as_slice() {
            by_message.entry(id.clone()).or_default().push(bytes);
        }
    }
    let Some((message_id, bodies)) = by_message.into_iter().max_by_key(|(_, b)| b.len()) else {
        return;
    };
    assert!(bodies.len() >= 3, "{message_id}: {} bodies", bodies.len());
    let all: Vec<_> =
        bodies.iter().flat_map(|b| statuses(&serde_json::from_slice(b).unwrap())).collect();
    let want = expected(&all)[&message_id].clone();
    let app = spawn_app().await;
    let orders: [Vec<usize>; 3] = [
        (0..bodies.len()).collect(),
        (0..bodies.len()).rev().collect(),
        (0..bodies.len()).flat_map(|i| [i, i]).collect(),
    ];
    for order in orders {
        let id =
            app.send_code_as(&fresh_number(), &message_id).await["id"].as_str().unwrap().to_owned();
        for i in &order {
            assert_eq!(app.webhook(bodies[*i]).await.status, 200);
        }
        assert_applied(&format!("{message_id} in order {order:?}"), &app.poll(&id).await, &want);
    }
}
