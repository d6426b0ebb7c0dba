//! The shared store: what only Redis does, and several instances on one
//! Redis. These always run on the real redis-server at
//! `WAVERIFY_TEST_REDIS` (started by `scripts/test.sh`), whichever store
//! the rest of the suite runs on.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::durability::{api, client, post_webhook, start_with};
use crate::graph_stub::{Answer, GraphStub};
use crate::helpers::*;

fn conn() -> redis::Connection {
    redis::Client::open(redis_url()).unwrap().get_connection().unwrap()
}

fn ttl(conn: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query(conn).unwrap()
}

fn keys(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS").arg(pattern).query(conn).unwrap()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// How many replies are a 200 approving the verification.
fn approvals(replies: &[Reply]) -> usize {
    replies.iter().filter(|r| r.status == 200 && r.json()["status"] == "approved").count()
}

#[actix_web::test]
async fn expiry_and_retention_are_ttls() {
    let prefix = unique_prefix("ttl");
    let app = spawn_on_redis(&prefix, &[("WAVERIFY_RETENTION", "3600")]).await;
    let id = id_of(&app.send_code_as(&fresh_number(), "wamid.TTL").await);
    let mut c = conn();
    let key = |rest: &str| format!("{prefix}:{rest}");

    // Code valid for 600 s, kept 3600 s after that.
    let kept = ttl(&mut c, &key(&format!("{{v:{id}}}:v")));
    assert!((4190..=4200).contains(&kept), "the verification's TTL is {kept}");
    let secret = ttl(&mut c, &key(&format!("{{v:{id}}}:s")));
    assert!((590..=600).contains(&secret), "the sealed code's TTL is {secret}");
    let message = ttl(&mut c, &key("{m:wamid.TTL}:m"));
    assert!((4190..=4200).contains(&message), "the message index's TTL is {message}");
    let active = keys(&mut c, &key("{a:*"));
    assert_eq!(active.len(), 1, "{active:?}");
    let held = ttl(&mut c, &active[0]);
    assert!((590..=600).contains(&held), "the number is held for {held} s");
    let counters = keys(&mut c, &key("{limits}:c:*"));
    assert_eq!(counters.len(), 3, "hour, day and budget: {counters:?}");
    for counter in &counters {
        let t = ttl(&mut c, counter);
        assert!((1..=86_400).contains(&t), "{counter} expires in {t} s");
    }
    // Nothing but the two schedules lives without a TTL.
    for k in keys(&mut c, &key("*")) {
        if !k.contains("{sched}") {
            assert!(ttl(&mut c, &k) > 0, "{k} never expires");
        }
    }

    // Once approved, the code and the hold on the number go at once.
    let code = app.last_code_sent();
    assert_eq!(app.check(&id, &code).await.json()["status"], "approved");
    let exists = |c: &mut redis::Connection, k: &str| -> bool {
        redis::cmd("EXISTS").arg(k).query::<i64>(c).unwrap() == 1
    };
    assert!(!exists(&mut c, &key(&format!("{{v:{id}}}:s"))), "the sealed code is deleted");
    assert!(!exists(&mut c, &active[0]), "the number is free");
    assert!(exists(&mut c, &key(&format!("{{v:{id}}}:v"))), "the record stays for its retention");
}

#[actix_web::test]
async fn two_instances_share_verifications_tries_and_statuses() {
    let prefix = unique_prefix("pair");
    let a = spawn_on_redis(&prefix, &[]).await;
    let b = spawn_on_redis(&prefix, &[]).await;
    for app in [&a, &b] {
        let health = app.request("GET", "/healthz", &[], None).await.json();
        assert_eq!(health["store"], "redis", "{health}");
    }

    // Sent by A, reported to B: both show it.
    let number = fresh_number();
    let id = id_of(&a.send_code_as(&number, "wamid.PAIR1").await);
    let delivered = status_body(&[("wamid.PAIR1", "delivered", START + 3)]);
    assert_eq!(b.webhook(&delivered).await.status, 200);
    for app in [&a, &b] {
        assert_eq!(app.poll(&id).await["delivery"]["status"], "delivered");
    }
    // B knows the number has a pending verification: no second one.
    let again = b.send_code_reply(&number, &[]).await;
    assert_eq!(again.problem(429), "resend-cooldown", "{}", again.text);

    // The right code, checked on both at once: approved exactly once.
    let code = a.last_code_sent();
    let checks =
        join_all((0..16).map(|i| if i % 2 == 0 { &a } else { &b }.check(&id, &code))).await;
    assert_eq!(approvals(&checks), 1, "{:?}", checks.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert!(checks.iter().all(|r| r.status == 200 || r.status == 409));

    // Wrong codes on both at once: every try is counted once.
    let id = id_of(&a.send_code_as(&fresh_number(), "wamid.PAIR2").await);
    let wrong =
        join_all((0..20).map(|i| if i % 2 == 0 { &a } else { &b }.check(&id, "000000"))).await;
    let counted = wrong.iter().filter(|r| r.status == 200).count();
    assert_eq!(counted, 5, "five tries: {:?}", wrong.iter().map(|r| &r.text).collect::<Vec<_>>());
    assert_eq!(wrong.iter().filter(|r| r.status == 409).count(), 15);
    for app in [&a, &b] {
        let v = app.poll(&id).await;
        assert_eq!(
            (v["status"].as_str(), v["attempts_left"].as_u64()),
            (Some("max_attempts_reached"), Some(0)),
            "{v}"
        );
    }
}

#[actix_web::test]
async fn limits_are_counted_once_across_instances() {
    let prefix = unique_prefix("budget");
    let extra = [("WAVERIFY_DAILY_SEND_BUDGET", "6")];
    let a = spawn_on_redis(&prefix, &extra).await;
    let b = spawn_on_redis(&prefix, &extra).await;
    let numbers: Vec<String> = (0..14).map(|_| fresh_number()).collect();
    let replies = join_all(
        numbers
            .iter()
            .enumerate()
            .map(|(i, n)| if i % 2 == 0 { &a } else { &b }.send_code_reply(n, &[])),
    )
    .await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 6, "{:?}", replies.iter().map(|r| (r.status, &r.text)).collect::<Vec<_>>());
    for refused in replies.iter().filter(|r| r.status != 201) {
        assert_eq!(refused.problem(429), "send-budget-exhausted", "{}", refused.text);
    }
}

#[actix_web::test]
async fn a_send_an_instance_never_answered_is_taken_over_once() {
    let prefix = unique_prefix("lease");
    let a = spawn_on_redis(&prefix, &[]).await;
    let b = spawn_on_redis(&prefix, &[]).await;
    // A takes the send, and stops before the Graph API answers it.
    a.graph().queue(Answer::accepted("wamid.NEVER").after(Duration::from_secs(5)));
    let reply = a.send_code_reply(&fresh_number(), &[]).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let id = id_of(&reply.json());
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.graph().received().is_empty() {
        assert!(Instant::now() < deadline, "A never sent");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    a.stop().await;
    // Its lease, as if it were long over.
    let outbox = format!("{prefix}:{{sched}}:outbox");
    let mut c = conn();
    let member = format!("{id}:0");
    redis::cmd("ZADD").arg(&outbox).arg("XX").arg(0).arg(&member).query::<()>(&mut c).unwrap();

    b.graph().queue(Answer::accepted("wamid.TAKEN"));
    let v = eventually(&b, &id, Duration::from_secs(10), |v| {
        v["delivery"]["message_id"] == "wamid.TAKEN"
    })
    .await;
    assert_eq!(v["delivery"]["message_id"], "wamid.TAKEN", "B never sent what A left: {v}");
    let left = || -> i64 { redis::cmd("ZCARD").arg(&outbox).query(&mut conn()).unwrap() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while left() != 0 {
        assert!(Instant::now() < deadline, "the send stays queued after its answer");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }

    // A send already answered, queued again (its instance stopped between
    // recording the answer and unqueuing it): not sent a second time.
    redis::cmd("ZADD").arg(&outbox).arg(0).arg(&member).query::<()>(&mut c).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while left() != 0 {
        assert!(Instant::now() < deadline, "the answered send stays queued");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.graph().received().len(), 1, "sent once by B, not again");
}

/// Two waverify processes on one Redis, behind the same Graph API
/// stand-in: sends on one, webhooks on the other, polls and concurrent
/// checks on both.
#[actix_web::test]
async fn two_processes_on_one_redis() {
    let prefix = unique_prefix("procs");
    let graph = GraphStub::start();
    let logs = tempfile::tempdir().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let mut vars = live_vars_on_redis(dir.path(), &graph, &prefix);
            vars.insert("WAVERIFY_LOG".into(), "warn,waverify::startup=info".into());
            start_with(&vars, logs.path(), &format!("instance-{i}"))
        })
        .collect();
    let (one, two) = (&servers[0].base, &servers[1].base);
    let http = client();

    let mut ids = Vec::new();
    for n in 0..4 {
        graph.queue(Answer::accepted(&format!("wamid.PROC{n}")));
        let (status, v) = api(
            &http,
            "POST",
            format!("{one}/v1/verifications"),
            Some(json!({"to": fresh_number()})),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        ids.push(id_of(&v));
        // One at a time, so that each gets its own message id.
        let deadline = Instant::now() + Duration::from_secs(10);
        while graph.received().len() <= n {
            assert!(Instant::now() < deadline, "send {n} never reached the stand-in");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let codes: Vec<String> = graph
        .received()
        .iter()
        .map(|r| {
            r.body["template"]["components"][0]["parameters"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    // Statuses reported to the other process; read reported before
    // delivered for one, as Meta may.
    for n in 0..4 {
        let message = format!("wamid.PROC{n}");
        let body =
            status_body(&[(&message, "read", START + 9), (&message, "delivered", START + 5)]);
        assert_eq!(post_webhook(&http, two, body).await, Ok(200));
    }
    for id in &ids {
        for base in [one, two] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (status, v) =
                    api(&http, "GET", format!("{base}/v1/verifications/{id}"), None).await;
                assert_eq!(status, 200, "{v}");
                if v["delivery"]["status"] == "read" {
                    break;
                }
                assert!(Instant::now() < deadline, "{base} never shows the read status: {v}");
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // The right code on both processes at once: one approval each time.
    for (id, code) in ids.iter().zip(&codes) {
        let checks = join_all((0..12).map(|i| {
            let base = if i % 2 == 0 { one } else { two };
            api(
                &http,
                "POST",
                format!("{base}/v1/verifications/{id}/check"),
                Some(json!({"code": code})),
            )
        }))
        .await;
        let approved =
            checks.iter().filter(|(s, v)| *s == 200 && v["status"] == "approved").count();
        assert_eq!(approved, 1, "{checks:?}");
        assert!(checks.iter().all(|(s, _)| *s == 200 || *s == 409), "{checks:?}");
    }
}

#[actix_web::test]
async fn a_store_that_stops_answering_gets_503_then_recovers() {
    let mut redis = LocalRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let graph = GraphStub::start();
    let mut vars = live_vars_on_redis(dir.path(), &graph, "outage");
    vars.insert("WAVERIFY_STORE".into(), redis.url.clone());
    let app = spawn_from_vars(vars, graph).await;
    let id = id_of(&app.send_code(&fresh_number()).await);

    redis.stop();
    let reply = app.get(&format!("/v1/verifications/{id}")).await;
    assert_eq!(reply.problem(503), "store-unavailable", "{}", reply.text);
    let health = app.request("GET", "/healthz", &[], None).await;
    assert_eq!(health.problem(503), "store-unavailable");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = app.get(&format!("/v1/verifications/{id}")).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.problem(503), "store-unavailable");
        assert!(Instant::now() < deadline, "never reconnected");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_web::test]
async fn a_login_refused_while_a_password_rotates_is_retried() {
    let redis = LocalRedis::start_with_password(Some("first-password-0123"));
    let dir = tempfile::tempdir().unwrap();
    let graph = GraphStub::start();
    let mut vars = live_vars_on_redis(dir.path(), &graph, "rotation");
    vars.insert("WAVERIFY_STORE".into(), redis.url.clone());
    let app = spawn_from_vars(vars, graph).await;
    let id = id_of(&app.send_code(&fresh_number()).await);

    let admin = |password: &str| {
        let url = format!("redis://:{password}@127.0.0.1:{}", redis.port);
        redis::Client::open(url).unwrap().get_connection().unwrap()
    };
    // The password changes and every connection is dropped: waverify logs
    // in again with the old one and is refused.
    let mut c = admin("first-password-0123");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("second-password-0123")
        .query::<()>(&mut c)
        .unwrap();
    let _: Result<i64, _> =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.request("GET", "/healthz", &[], None).await.status != 503 {
        assert!(Instant::now() < deadline, "still answering with a password that is refused");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for the connection's own retries to give up.
    actix_web::rt::time::sleep(Duration::from_secs(8)).await;
    // The old password is valid again: the instance comes back by itself.
    let mut c = admin("second-password-0123");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("first-password-0123")
        .query::<()>(&mut c)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = app.get(&format!("/v1/verifications/{id}")).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.problem(503), "store-unavailable");
        assert!(Instant::now() < deadline, "never logged in again");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sum of the send counters of one kind (1: per number and hour) under
/// `prefix`.
fn hourly_sends(prefix: &str) -> i64 {
    let mut c = conn();
    keys(&mut c, &format!("{prefix}:{{limits}}:c:1:*"))
        .iter()
        .map(|k| redis::cmd("GET").arg(k).query::<i64>(&mut c).unwrap())
        .sum()
}

#[actix_web::test]
async fn a_burst_for_one_number_sends_and_counts_once() {
    let prefix = unique_prefix("burst");
    let a = spawn_on_redis(&prefix, &[]).await;
    let b = spawn_on_redis(&prefix, &[]).await;

    // One Idempotency-Key: one verification, every other answer a replay.
    let number = fresh_number();
    let key = [("idempotency-key", "burst-key-1")];
    let replies =
        join_all((0..20).map(|i| if i % 2 == 0 { &a } else { &b }.send_code_reply(&number, &key)))
            .await;
    let texts: Vec<_> = replies.iter().map(|r| (r.status, &r.text)).collect();
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1, "{texts:?}");
    assert!(replies.iter().all(|r| r.status == 201 || r.status == 200), "{texts:?}");
    let ids: std::collections::HashSet<String> = replies.iter().map(|r| id_of(&r.json())).collect();
    assert_eq!(ids.len(), 1, "{texts:?}");
    assert_eq!(hourly_sends(&prefix), 1, "one send, counted once");

    // No key: one verification, the others told to wait; counted once.
    let number = fresh_number();
    let replies =
        join_all((0..20).map(|i| if i % 2 == 0 { &a } else { &b }.send_code_reply(&number, &[])))
            .await;
    let texts: Vec<_> = replies.iter().map(|r| (r.status, &r.text)).collect();
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1, "{texts:?}");
    for r in replies.iter().filter(|r| r.status != 201) {
        assert_eq!(r.problem(429), "resend-cooldown", "{texts:?}");
    }
    assert_eq!(hourly_sends(&prefix), 2, "two sends in all, each counted once");
}

#[actix_web::test]
async fn one_idempotency_key_serves_one_request_across_instances() {
    let prefix = unique_prefix("idem");
    let a = spawn_on_redis(&prefix, &[]).await;
    let b = spawn_on_redis(&prefix, &[]).await;
    for round in 0..6 {
        // A number whose pending verification may be sent again...
        let old = fresh_number();
        a.send_code(&old).await;
        a.clock.advance(61);
        b.clock.advance(61);
        // ...and a new one, both asked for at once under one key.
        let key = format!("shared-key-{round}");
        let header = [("idempotency-key", key.as_str())];
        let new = fresh_number();
        let (first, second) = futures_util::future::join(
            a.send_code_reply(&new, &header),
            b.send_code_reply(&old, &header),
        )
        .await;
        let ok = [&first, &second].iter().filter(|r| r.status == 201 || r.status == 200).count();
        assert_eq!(ok, 1, "round {round}: {} / {}", first.text, second.text);
        let refused = if first.status == 422 { &first } else { &second };
        assert_eq!(refused.problem(422), "idempotency-key-reused");
        // The winner's retry is a replay of its own verification.
        let (winner, number) = if first.status == 422 { (&second, &old) } else { (&first, &new) };
        let again = a.send_code_reply(number, &header).await;
        assert_eq!(again.status, 200, "{}", again.text);
        assert_eq!(id_of(&again.json()), id_of(&winner.json()));
    }
}
