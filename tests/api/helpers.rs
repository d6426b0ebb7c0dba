use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use serde_json::{json, Value};
use waverify::clock::{Clock, ManualClock};
use waverify::sandbox::Timing;
use waverify::settings::{Flags, Settings};
use waverify::startup::{Application, Options};
use waverify::whatsapp::signature::sign;

use crate::graph_stub::GraphStub;

pub const API_KEY: &str = "test-api-key-0123456789abcdef";
pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
/// 2026-01-01T00:00:00Z
pub const START: i64 = 1_767_225_600;

pub struct TestApp {
    pub base: String,
    pub clock: Arc<ManualClock>,
    pub graph: Option<GraphStub>,
    /// The SMS provider's stand-in, when SMS is configured.
    pub sms: Option<GraphStub>,
    pub http: awc::Client,
    pub data_dir: Arc<tempfile::TempDir>,
    handle: ServerHandle,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: actix_web::http::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.text, self.status))
    }

    /// Asserts the one problem shape and returns its type's short name.
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        let ct = self.headers.get("content-type").unwrap().to_str().unwrap();
        assert_eq!(ct, "application/problem+json", "body: {}", self.text);
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
        let kind = p["type"].as_str().unwrap();
        kind.strip_prefix("urn:waverify:problem:").expect("problem type prefix").to_owned()
    }
}

/// Which store the suite runs against: sled unless
/// `WAVERIFY_TEST_STORE=redis`, then the Redis at `WAVERIFY_TEST_REDIS`
/// (`scripts/test.sh` starts one and runs the suite on both).
pub fn on_redis() -> bool {
    std::env::var("WAVERIFY_TEST_STORE").is_ok_and(|s| s == "redis" || s == "redis-cluster")
}

/// Whether the suite runs on the Redis Cluster at
/// `WAVERIFY_TEST_REDIS_CLUSTER` (`WAVERIFY_TEST_STORE=redis-cluster`).
pub fn on_cluster() -> bool {
    std::env::var("WAVERIFY_TEST_STORE").is_ok_and(|s| s == "redis-cluster")
}

/// The store URL of the suite's Redis: one server, or the cluster's nodes
/// separated by commas.
fn suite_redis_url() -> String {
    if on_cluster() {
        return std::env::var("WAVERIFY_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
            panic!("WAVERIFY_TEST_REDIS_CLUSTER is not set: run scripts/test.sh, which starts one")
        });
    }
    redis_url()
}

/// The Redis the tests use, from `WAVERIFY_TEST_REDIS`.
pub fn redis_url() -> String {
    std::env::var("WAVERIFY_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "WAVERIFY_TEST_REDIS is not set: run scripts/test.sh, which starts a redis-server \
             on 127.0.0.1 and sets it"
        )
    })
}

/// A key prefix of its own for each data directory, so that tests on one
/// Redis never see each other's keys, and a restart on the same directory
/// finds its own.
pub fn redis_prefix(data_dir: &std::path::Path) -> String {
    // FNV-1a of the whole path: temporary directories differ somewhere in
    // it, not always in their last part.
    let hash =
        data_dir.as_os_str().as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("test-{hash:016x}")
}

/// Every key under `prefix` with its value, read type by type, from every
/// node of the suite's Redis.
pub fn redis_contents(prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let nodes = suite_redis_url();
    nodes.split(',').flat_map(|node| node_contents(node, prefix)).collect()
}

fn node_contents(node: &str, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut conn = redis::Client::open(node).unwrap().get_connection().unwrap();
    let keys: Vec<Vec<u8>> =
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap();
    keys.into_iter()
        .map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
            let parts: Vec<Vec<u8>> = match kind.as_str() {
                "string" => vec![redis::cmd("GET").arg(&key).query(&mut conn).unwrap()],
                "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut conn).unwrap(),
                "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(&mut conn).unwrap(),
                _ => Vec::new(),
            };
            (key, parts.concat())
        })
        .collect()
}

pub fn base_vars(data_dir: &std::path::Path) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("WAVERIFY_BIND", "127.0.0.1:0".to_owned()),
        ("WAVERIFY_DATA_DIR", data_dir.display().to_string()),
        ("WAVERIFY_API_KEY", API_KEY.to_owned()),
        ("WAVERIFY_CODE_KEY", "test-code-key-0123456789abcdef-0123456789".to_owned()),
        ("WAVERIFY_APP_SECRET", APP_SECRET.to_owned()),
        ("WAVERIFY_VERIFY_TOKEN", VERIFY_TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if on_redis() {
        vars.insert("WAVERIFY_STORE".into(), suite_redis_url());
        vars.insert("WAVERIFY_STORE_PREFIX".into(), redis_prefix(data_dir));
    }
    vars
}

/// Live mode against a scriptable Graph API stand-in.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

fn live_vars(
    dir: &std::path::Path,
    graph: &GraphStub,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut vars = base_vars(dir);
    vars.insert("WAVERIFY_ACCESS_TOKEN".into(), "test-access-token".into());
    vars.insert("WAVERIFY_GRAPH_URL".into(), graph.url.clone());
    vars.insert("WAVERIFY_PHONE_NUMBER_ID".into(), "106540352242922".into());
    vars.insert("WAVERIFY_TEMPLATE".into(), "login_code".into());
    vars.insert("WAVERIFY_GRAPH_TIMEOUT".into(), "2".into());
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    vars
}

/// Live mode on the Redis at `WAVERIFY_TEST_REDIS` under `prefix`, whatever
/// store the suite runs on: instances given one prefix share their state.
pub async fn spawn_on_redis(prefix: &str, extra: &[(&str, &str)]) -> TestApp {
    let graph = GraphStub::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut vars = live_vars(dir.path(), &graph, extra);
    vars.insert("WAVERIFY_STORE".into(), redis_url());
    vars.insert("WAVERIFY_STORE_PREFIX".into(), prefix.into());
    start(vars, dir, Some(graph), Timing::default(), START)
}

/// The variables of a live-mode instance against `graph` on the Redis at
/// `WAVERIFY_TEST_REDIS` under `prefix`.
pub fn live_vars_on_redis(
    dir: &std::path::Path,
    graph: &GraphStub,
    prefix: &str,
) -> HashMap<String, String> {
    let mut vars = live_vars(dir, graph, &[]);
    vars.insert("WAVERIFY_STORE".into(), redis_url());
    vars.insert("WAVERIFY_STORE_PREFIX".into(), prefix.into());
    vars
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{nanos}-{n}", std::process::id())
}

/// Live mode with exactly `vars`, against the Graph API stand-in they name.
pub async fn spawn_from_vars(vars: HashMap<String, String>, graph: GraphStub) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    start(vars, dir, Some(graph), Timing::default(), START)
}

/// A redis-server of a test's own on a free 127.0.0.1 port, for tests that
/// stop it; its data directory outlives a stop, so a restart finds it.
pub struct LocalRedis {
    pub url: String,
    pub port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl LocalRedis {
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// With `requirepass`: the URL carries the password.
    pub fn start_with_password(password: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let login = password.map(|p| format!(":{p}@")).unwrap_or_default();
        let mut redis = Self {
            url: format!("redis://{login}127.0.0.1:{port}"),
            port,
            password: password.map(str::to_owned),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts the server (again) and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.password.iter().flat_map(|p| ["--requirepass", p.as_str()]))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url.as_str()).unwrap();
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "redis-server does not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let graph = GraphStub::start();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let vars = live_vars(dir.path(), &graph, extra);
    start(vars, dir, Some(graph), Timing::default(), START)
}

pub const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const TWILIO_TOKEN: &str = "test-twilio-auth-token";
pub const PUBLIC_URL: &str = "https://waverify.test";

/// Live mode with SMS through a stand-in of the SMS provider.
pub async fn spawn_app_with_sms(extra: &[(&str, &str)]) -> TestApp {
    let sms = GraphStub::start_sms();
    let mut all: Vec<(&str, &str)> = vec![
        ("WAVERIFY_TWILIO_ACCOUNT_SID", TWILIO_SID),
        ("WAVERIFY_TWILIO_AUTH_TOKEN", TWILIO_TOKEN),
        ("WAVERIFY_SMS_FROM", "+15550009999"),
        ("WAVERIFY_SMS_URL", sms.url.as_str()),
        ("WAVERIFY_PUBLIC_URL", PUBLIC_URL),
    ];
    all.extend_from_slice(extra);
    let mut app = spawn_app_with(&all).await;
    app.sms = Some(sms);
    app
}

/// A second app on the same data directory and Graph API stand-in as
/// `app`, which must be stopped first; its clock goes on from `app`'s.
pub async fn restart(app: &TestApp) -> TestApp {
    restart_with(app, &[]).await
}

/// Like `restart`, with other settings.
pub async fn restart_with(app: &TestApp, extra: &[(&str, &str)]) -> TestApp {
    let graph = app.graph().clone();
    let vars = live_vars(app.data_dir.path(), &graph, extra);
    start(vars, app.data_dir.clone(), Some(graph), Timing::default(), app.clock.now())
}

/// Sandbox mode with the stand-in reporting statuses quickly. The secrets
/// in `unset` fall back to their sandbox development values.
pub async fn spawn_sandbox_with(unset: &[&str]) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut vars = base_vars(dir.path());
    for name in unset {
        vars.remove(*name);
    }
    let timing = Timing {
        sent: Duration::from_millis(10),
        delivered: Duration::from_millis(30),
        read: Duration::from_millis(60),
        slow_delivered: Duration::from_millis(1500),
    };
    start(vars, dir, None, timing, START)
}

pub async fn spawn_sandbox() -> TestApp {
    spawn_sandbox_with(&[]).await
}

fn start(
    vars: HashMap<String, String>,
    dir: Arc<tempfile::TempDir>,
    graph: Option<GraphStub>,
    timing: Timing,
    now: i64,
) -> TestApp {
    let settings = Settings::from_vars(&vars, &Flags::default()).expect("test settings");
    let clock = ManualClock::starting_at(now);
    let options = Options {
        clock: clock.clone(),
        sandbox_timing: timing,
        sweep_every: Duration::from_millis(50),
    };
    // After a stop, the previous app's worker threads may hold the store's
    // lock for a moment longer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let app = loop {
        match Application::build_with(settings.clone(), options.clone()) {
            Ok(app) => break app,
            Err(e) if std::time::Instant::now() > deadline => panic!("app does not start: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let base = format!("http://{}", app.address());
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    TestApp { base, clock, graph, sms: None, http, data_dir: dir, handle }
}

impl TestApp {
    pub fn graph(&self) -> &GraphStub {
        self.graph.as_ref().expect("a live-mode app")
    }

    pub fn sms(&self) -> &GraphStub {
        self.sms.as_ref().expect("an app with SMS")
    }

    /// POSTs a provider status callback, signed as the provider signs it.
    pub async fn sms_callback(&self, query: &str, params: &[(&str, &str)]) -> Reply {
        let params: Vec<(String, String)> =
            params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let url = format!("{PUBLIC_URL}/webhook/sms{query}");
        let signature = waverify::sms::signature::sign(TWILIO_TOKEN, &url, &params);
        let body = serde_urlencoded::to_string(&params).unwrap().into_bytes();
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-twilio-signature", signature.as_str()),
        ];
        self.request("POST", &format!("/webhook/sms{query}"), &headers, Some(body)).await
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = match body {
            Some(b) => req.send_body(b).await,
            None => req.send().await,
        }
        .expect("request sent");
        let bytes = res.body().limit(16 << 20).await.expect("body read");
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn auth() -> String {
        format!("Bearer {API_KEY}")
    }

    /// send-code as the login backend calls it, with extra headers.
    pub async fn send_code_reply(&self, to: &str, headers: &[(&str, &str)]) -> Reply {
        let auth = Self::auth();
        let mut all = vec![("authorization", auth.as_str()), ("content-type", "application/json")];
        all.extend_from_slice(headers);
        let body = json!({ "to": to }).to_string().into_bytes();
        self.request("POST", "/v1/verifications", &all, Some(body)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let auth = Self::auth();
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        self.request("POST", path, &headers, Some(body.to_string().into_bytes())).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let auth = Self::auth();
        self.request("GET", path, &[("authorization", auth.as_str())], None).await
    }

    /// Creates a verification; asserts the 201 and returns the resource
    /// once its send has been answered (sends happen in the background).
    pub async fn send_code(&self, to: &str) -> Value {
        let reply = self.post_json("/v1/verifications", &json!({"to": to})).await;
        assert_eq!(reply.status, 201, "send-code: {}", reply.text);
        let v = reply.json();
        assert_eq!(v["delivery"]["status"], "queued", "send-code answers before sending: {v}");
        self.settled(v["id"].as_str().unwrap()).await
    }

    /// Polls until the latest send is no longer queued.
    pub async fn settled(&self, id: &str) -> Value {
        eventually(self, id, Duration::from_secs(10), |v| v["delivery"]["status"] != "queued").await
    }

    /// Creates a verification whose message gets `message_id`.
    pub async fn send_code_as(&self, to: &str, message_id: &str) -> Value {
        self.graph().queue(crate::graph_stub::Answer::accepted(message_id));
        self.send_code(to).await
    }

    pub async fn poll(&self, id: &str) -> Value {
        let reply = self.get(&format!("/v1/verifications/{id}")).await;
        assert_eq!(reply.status, 200, "poll: {}", reply.text);
        reply.json()
    }

    pub async fn check(&self, id: &str, code: &str) -> Reply {
        self.post_json(&format!("/v1/verifications/{id}/check"), &json!({"code": code})).await
    }

    /// The code the stand-in was asked to send in its most recent request.
    pub fn last_code_sent(&self) -> String {
        let received = self.graph().received();
        let body = &received.last().expect("a send").body;
        body["template"]["components"][0]["parameters"][0]["text"].as_str().unwrap().to_owned()
    }

    /// POSTs `body` to the webhook, signed with the test app secret.
    pub async fn webhook(&self, body: &[u8]) -> Reply {
        let signature = sign(APP_SECRET.as_bytes(), body);
        let headers =
            [("content-type", "application/json"), ("x-hub-signature-256", signature.as_str())];
        self.request("POST", "/webhook", &headers, Some(body.to_vec())).await
    }
}

/// A number no other test uses, so that no per-number limit or pending
/// verification carries over between tests.
pub fn fresh_number() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("+1555300{:04}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A webhook body with one status per `(message id, status, timestamp)`.
pub fn status_body(statuses: &[(&str, &str, i64)]) -> Vec<u8> {
    let statuses: Vec<Value> = statuses
        .iter()
        .map(|(id, status, ts)| {
            json!({"id": id, "status": status, "timestamp": ts.to_string(), "recipient_id": "15550001234"})
        })
        .collect();
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": statuses}}]}]})
    .to_string()
    .into_bytes()
}

/// Polls until `done` holds, for at most `limit` of real time.
pub async fn eventually<F: Fn(&Value) -> bool>(
    app: &TestApp,
    id: &str,
    limit: Duration,
    done: F,
) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let v = app.poll(id).await;
        if done(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}
