//! The server's own output, read whole: no code, secret, token or full
//! phone number may appear in any log line, even at debug level.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use waverify::settings::sandbox_defaults as dev;

struct Process {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_binary(extra: &[(&str, &str)]) -> (Process, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waverify"));
    cmd.env_clear()
        .env("WAVERIFY_BIND", "127.0.0.1:0")
        .env("WAVERIFY_DATA_DIR", dir.path().join("data"))
        .env("WAVERIFY_LOG", "debug")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let process = Process { child, log, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        if let Some(at) = text.find("address=") {
            let addr: String = text[at + 8..].chars().take_while(|c| !c.is_whitespace()).collect();
            return (process, format!("http://{addr}"));
        }
        assert!(Instant::now() < deadline, "no address in the log: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn call(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
    let req = client
        .request(method, url)
        .insert_header(("authorization", format!("Bearer {}", dev::API_KEY)));
    let mut res = match body {
        Some(b) => {
            req.insert_header(("content-type", "application/json")).send_body(b.to_owned()).await
        }
        None => req.send().await,
    }
    .unwrap();
    let bytes = res.body().await.unwrap();
    (res.status().as_u16(), String::from_utf8_lossy(&bytes).into_owned())
}

#[actix_web::test]
async fn no_secret_code_or_number_reaches_the_log() {
    let (process, base) = start_binary(&[]);
    let number = "+15550100001";
    let (status, text) =
        call("POST", &format!("{base}/v1/verifications"), Some(&format!(r#"{{"to":"{number}"}}"#)))
            .await;
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, text) = call("GET", &format!("{base}/v1/verifications/{id}"), None).await;
        if text.contains(r#""status":"read""#) || Instant::now() > deadline {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, list) = call("GET", &format!("{base}/sandbox/messages"), None).await;
    let code = serde_json::from_str::<Value>(&list).unwrap()["messages"][0]["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let check = format!("{base}/v1/verifications/{id}/check");
    call("POST", &check, Some(&format!(r#"{{"code":"{wrong}"}}"#))).await;
    let (status, _) = call("POST", &check, Some(&format!(r#"{{"code":"{code}"}}"#))).await;
    assert_eq!(status, 200);
    let handshake = format!(
        "{base}/webhook?hub.mode=subscribe&hub.verify_token={}&hub.challenge=42",
        dev::VERIFY_TOKEN
    );
    assert_eq!(call("GET", &handshake, None).await.0, 200);
    call("POST", &format!("{base}/v1/verifications"), Some(r#"{"to":"+1 555 010 0009"}"#)).await;

    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&process.log).unwrap();
    assert!(log.contains("verification created"), "the log is empty or unexpected:\n{log}");
    let forbidden = [
        ("the code", code.as_str()),
        ("the wrong code", wrong.as_str()),
        ("the phone number", "15550100001"),
        ("the malformed phone number", "555 010 0009"),
        ("the API key", dev::API_KEY),
        ("the code key", dev::CODE_KEY),
        ("the app secret", dev::APP_SECRET),
        ("the verify token", dev::VERIFY_TOKEN),
        ("the access token", dev::ACCESS_TOKEN),
    ];
    for (what, value) in forbidden {
        let line = log.lines().find(|l| l.contains(value));
        assert!(line.is_none(), "{what} is in the log: {}", line.unwrap());
    }
}

#[test]
fn a_bad_variable_stops_the_server_naming_it() {
    let cases = [
        ("WAVERIFY_CODE_TTL", "soon"),
        ("WAVERIFY_BIND", "everywhere"),
        ("WAVERIFY_MAX_ATTEMPTS", "0"),
    ];
    for (name, value) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_waverify"))
            .env_clear()
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
    let live_without_secret = Command::new(env!("CARGO_BIN_EXE_waverify"))
        .env_clear()
        .env("WAVERIFY_ACCESS_TOKEN", "EAAB-secret-token-value")
        .output()
        .unwrap();
    assert_eq!(live_without_secret.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&live_without_secret.stderr);
    assert!(stderr.contains("WAVERIFY_API_KEY"), "{stderr}");
    assert!(!stderr.contains("EAAB-secret-token-value"), "{stderr}");
}
