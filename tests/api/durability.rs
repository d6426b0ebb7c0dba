//! Crash durability of the webhook: a 200 to a status POST means that what
//! the body changed is on disk. The real binary takes a storm of signed
//! `read` statuses, is killed with SIGKILL at a random moment, and is
//! started again on the same store, several times over.
//!
//! Every status body names messages of verifications created for the round
//! and gives each status its own timestamp, lower than any given before.
//! A read timestamp keeps the earliest time seen, so after a restart each
//! message's read time must be one that was sent for it and no later than
//! the earliest one in a body that got 200. A lower one is a body that was
//! applied and flushed but not yet answered when the process died.
//!
//! The stand-in reports `read` itself three seconds after a send, stamped
//! with the current time. The storm's timestamps are all years earlier, so
//! that report can never hide one of them.
//!
//! Checks get the same treatment: a storm of wrong codes, a SIGKILL, and
//! after the restart no verification may have more attempts left than a
//! 200 reported. Neither webhooks nor checks flush sled before they
//! answer: what a kill takes from sled comes back from the write-ahead
//! log, so both tests fail if its replay is skipped.
//!
//! Both run a second time as power-loss tests: the store lies on a mount
//! of `scripts/lossyfs.py`, which holds whatever was written in memory
//! until it is synced, and the filesystem is killed right after the
//! server. What the next mount shows is then what a power cut would have
//! left: only what was synced. The verifications created (201) must
//! survive too. Those tests need FUSE, and are run by `scripts/test.sh`.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use serde_json::{json, Value};
use waverify::clock::rfc3339;
use waverify::whatsapp::signature::sign;

use crate::helpers::{base_vars, on_redis, status_body, API_KEY, APP_SECRET};

/// Kills, each followed by a restart on the same store.
const ROUNDS: usize = 4;
/// Verifications whose messages one round's statuses name.
const POOL: usize = 48;
const IN_FLIGHT: usize = 32;
/// Bounds one storm if the kill never comes.
const MAX_BODIES: usize = 20_000;
const STORM_LIMIT: Duration = Duration::from_secs(8);
/// The first status timestamp (2023-11-14), before any time the stand-in
/// reports; each next one is a second earlier.
const FIRST_TIMESTAMP: i64 = 1_700_000_000;

/// A number of its own for each verification, as one number has one
/// pending verification at a time; none is a sandbox test number.
fn number(round: usize, index: usize) -> String {
    format!("+1555020{round}{index:03}")
}

/// splitmix64: enough to spread the kills, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Where a test's server keeps its store, and what a crash does to it.
struct Disk {
    /// The store's directory.
    data: PathBuf,
    /// The filesystem that forgets what was not synced, for a power cut;
    /// `None`: a crash only kills the server.
    lossy: Option<LossyFs>,
}

impl Disk {
    fn plain(dir: &Path) -> Self {
        Self { data: dir.join("data"), lossy: None }
    }

    /// A store on a fresh lossyfs mount inside `dir`.
    fn lossy(dir: &Path) -> Self {
        assert!(!on_redis(), "a power cut is a test of the embedded store only");
        let lossy = LossyFs::mount(dir);
        Self { data: lossy.mount.join("data"), lossy: Some(lossy) }
    }

    /// After the server was killed: with lossyfs, the power goes too, and
    /// comes back.
    fn after_kill(&mut self) {
        if let Some(lossy) = &mut self.lossy {
            lossy.power_cut();
        }
    }

    fn what(&self) -> &'static str {
        if self.lossy.is_some() {
            "power cut"
        } else {
            "SIGKILL"
        }
    }
}

/// A mount of `scripts/lossyfs.py` over a backing directory.
struct LossyFs {
    backing: PathBuf,
    mount: PathBuf,
    logs: PathBuf,
    daemon: Option<Child>,
    mounts: usize,
}

impl LossyFs {
    fn mount(dir: &Path) -> Self {
        let (backing, mount) = (dir.join("backing"), dir.join("mount"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mount).unwrap();
        let mut fs = Self { backing, mount, logs: dir.to_owned(), daemon: None, mounts: 0 };
        fs.start();
        fs
    }

    fn start(&mut self) {
        self.mounts += 1;
        let log = self.logs.join(format!("lossyfs-{}.log", self.mounts));
        let out = std::fs::File::create(&log).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lossyfs.py");
        let daemon = Command::new("python3")
            .arg(script)
            .arg(&self.backing)
            .arg(&self.mount)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("python3 runs");
        // Held here from now on, so that a failed mount is cleaned up too.
        let daemon = self.daemon.insert(daemon);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("lossyfs: mounted") {
                return;
            }
            if let Some(exit) = daemon.try_wait().unwrap() {
                panic!(
                    "lossyfs did not mount ({exit}); it needs FUSE, libfuse2 and fusepy:\n{text}"
                );
            }
            assert!(Instant::now() < deadline, "lossyfs did not mount in 10 s:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the filesystem, and with it everything written and not
    /// synced, then mounts it again over what was.
    fn power_cut(&mut self) {
        self.stop();
        self.start();
    }

    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
            assert!(unmount(&self.mount), "{} could not be unmounted", self.mount.display());
        }
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
            unmount(&self.mount);
        }
    }
}

/// Unmounts a mount whose filesystem is gone: as root with `umount`,
/// otherwise with FUSE's own `fusermount`.
fn unmount(mount: &Path) -> bool {
    let ran = |program: &str, flags: &str| {
        let status = Command::new(program).arg(flags).arg(mount).stderr(Stdio::null()).status();
        status.is_ok_and(|s| s.success())
    };
    ran("umount", "-l") || ran("fusermount", "-uz")
}

pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The address in the start-up line, once that line is written whole.
fn listening_address(log: &str) -> Option<String> {
    let complete = &log[..log.rfind('\n')? + 1];
    let line = complete.lines().find(|l| l.contains("waverify listening"))?;
    let at = line.find("address=")? + "address=".len();
    Some(line[at..].chars().take_while(|c| !c.is_whitespace()).collect())
}

/// Starts the binary in sandbox mode on `data`. Right after a kill the
/// store may still be locked for a moment, so a start that exits is tried
/// again until a deadline.
fn start(data: &Path, logs: &Path, name: &str) -> Server {
    start_extra(data, logs, name, &[])
}

/// The same, with settings of its own.
fn start_extra(data: &Path, logs: &Path, name: &str, extra: &[(&str, String)]) -> Server {
    let mut vars = base_vars(data);
    vars.insert("WAVERIFY_LOG".into(), "warn".into());
    for (k, v) in extra {
        vars.insert((*k).to_owned(), v.clone());
    }
    start_with(&vars, logs, name)
}

/// Starts the binary with `vars` as its whole environment, logging to a
/// file in `logs`.
pub(crate) fn start_with(
    vars: &std::collections::HashMap<String, String>,
    logs: &Path,
    name: &str,
) -> Server {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let log = logs.join(format!("{name}-{attempt}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_waverify"))
            .env_clear()
            .envs(vars)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the binary can be run");
        let mut server = Server { child, base: String::new(), log };
        let exit = loop {
            let text = server.log_text();
            if let Some(address) = listening_address(&text) {
                server.base = format!("http://{address}");
                return server;
            }
            if let Some(exit) = server.child.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "{name}: no address in the output:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            Instant::now() < deadline,
            "{name}: the binary still does not start after {attempt} tries; last exit {exit}, \
             output:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(10)).finish()
}

pub(crate) async fn api(
    http: &awc::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
    let req =
        http.request(method, &url).insert_header(("authorization", format!("Bearer {API_KEY}")));
    let mut res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{url}: no answer: {e}"));
    let bytes = res.body().await.unwrap_or_else(|e| panic!("{url}: body unreadable: {e}"));
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (res.status().as_u16(), value)
}

/// The HTTP status of a signed POST of `body`, or why none came back.
pub(crate) async fn post_webhook(
    http: &awc::Client,
    base: &str,
    body: Vec<u8>,
) -> Result<u16, String> {
    let signature = sign(APP_SECRET.as_bytes(), &body);
    let res = http
        .post(format!("{base}/webhook"))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-hub-signature-256", signature))
        .send_body(body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(res.status().as_u16())
}

/// One verification the storm sends statuses for.
struct Message {
    verification: String,
    message_id: String,
    /// Every read timestamp put in a body for this message.
    sent: Vec<i64>,
    /// The earliest read timestamp in a body that got 200.
    earliest_acknowledged: Option<i64>,
}

/// Every verification of `pool` as the server shows it now.
async fn poll_all(http: &awc::Client, base: &str, pool: &[Message]) -> Vec<(u16, Value)> {
    let urls = pool.iter().map(|m| format!("{base}/v1/verifications/{}", m.verification));
    join_all(urls.map(|url| api(http, "GET", url, None))).await
}

/// Creates the round's verifications and waits until the stand-in has
/// reported each delivered, so that its `sent` and `delivered` webhooks
/// are over before the storm starts. The message id is read then: a send
/// may be answered before the message has gone out.
async fn create_pool(http: &awc::Client, base: &str, round: usize) -> Vec<Message> {
    let url = format!("{base}/v1/verifications");
    let created = join_all(
        (0..POOL).map(|i| api(http, "POST", url.clone(), Some(json!({"to": number(round, i)})))),
    )
    .await;
    let mut pool: Vec<Message> = created
        .into_iter()
        .map(|(status, v)| {
            assert_eq!(status, 201, "round {round}: send-code: {v}");
            Message {
                verification: v["id"].as_str().unwrap_or_else(|| panic!("no id: {v}")).to_owned(),
                message_id: String::new(),
                sent: Vec::new(),
                earliest_acknowledged: None,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let polled = poll_all(http, base, &pool).await;
        let delivered = |v: &Value| {
            let d = &v["delivery"];
            (d["status"] == "delivered" || d["status"] == "read") && d["message_id"].is_string()
        };
        let waiting = polled.iter().filter(|(_, v)| !delivered(v));
        if let Some((_, v)) = waiting.clone().next() {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} verifications still not delivered after 10 s, e.g. {v}",
                waiting.count()
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for (m, (_, v)) in pool.iter_mut().zip(&polled) {
            let message_id = v["delivery"]["message_id"].as_str();
            m.message_id =
                message_id.unwrap_or_else(|| panic!("delivered, no message id: {v}")).into();
        }
        return pool;
    }
}

#[derive(Default)]
struct Storm {
    /// `(message index, timestamp)` of each body, in the order made.
    bodies: RefCell<Vec<Vec<(usize, i64)>>>,
    acknowledged: RefCell<Vec<usize>>,
    unanswered: Cell<usize>,
    /// Anything but a 200, and failures to get an answer before the kill.
    unexpected: RefCell<Vec<String>>,
    killed: Cell<bool>,
}

impl Storm {
    /// Makes the next body: 1 to 5 distinct messages of a pool of
    /// `pool_len`, each with a timestamp lower than any before. `None` once
    /// `MAX_BODIES` were made.
    fn next_body(
        &self,
        rng: &RefCell<Rng>,
        next_timestamp: &Cell<i64>,
        pool_len: usize,
    ) -> Option<(usize, Vec<(usize, i64)>)> {
        let mut bodies = self.bodies.borrow_mut();
        if bodies.len() == MAX_BODIES {
            return None;
        }
        let mut rng = rng.borrow_mut();
        let count = 1 + rng.below(5);
        let mut picked: Vec<usize> = Vec::with_capacity(count);
        while picked.len() < count {
            let index = rng.below(pool_len);
            if !picked.contains(&index) {
                picked.push(index);
            }
        }
        let statuses: Vec<(usize, i64)> = picked
            .into_iter()
            .map(|index| {
                let ts = next_timestamp.get();
                next_timestamp.set(ts - 1);
                (index, ts)
            })
            .collect();
        bodies.push(statuses.clone());
        Some((bodies.len() - 1, statuses))
    }
}

/// POSTs bodies until the process is gone or a bound is reached.
async fn storm_worker(
    storm: &Storm,
    pool: &[Message],
    rng: &RefCell<Rng>,
    next_timestamp: &Cell<i64>,
    http: &awc::Client,
    base: &str,
    started: Instant,
) {
    while !storm.killed.get() && started.elapsed() < STORM_LIMIT {
        let Some((number, statuses)) = storm.next_body(rng, next_timestamp, pool.len()) else {
            return;
        };
        let named: Vec<(&str, &str, i64)> =
            statuses.iter().map(|&(i, ts)| (pool[i].message_id.as_str(), "read", ts)).collect();
        match post_webhook(http, base, status_body(&named)).await {
            Ok(200) => storm.acknowledged.borrow_mut().push(number),
            Ok(status) => storm.unexpected.borrow_mut().push(format!("body {number}: {status}")),
            Err(_) if storm.killed.get() => storm.unanswered.set(storm.unanswered.get() + 1),
            Err(e) => {
                storm.unexpected.borrow_mut().push(format!("body {number} before the kill: {e}"))
            }
        }
    }
}

/// Checks what a restarted process shows for one killed round, and
/// returns each verification's delivery as it is now.
async fn check_round(http: &awc::Client, base: &str, round: usize, pool: &[Message]) -> Vec<Value> {
    let polled = poll_all(http, base, pool).await;
    let (mut exact, mut earlier) = (0, 0);
    let mut deliveries = Vec::with_capacity(pool.len());
    for (m, (status, v)) in pool.iter().zip(polled) {
        let context = format!("round {round}, verification {}, {}", m.verification, m.message_id);
        assert_eq!(status, 200, "{context}: a verification answered 201 is gone: {v}");
        let d = v["delivery"].clone();
        assert_eq!(d["message_id"], m.message_id.as_str(), "{context}: {v}");
        let read = d["timestamps"]["read"].as_str();
        let stored = read.and_then(|r| m.sent.iter().copied().find(|&ts| rfc3339(ts) == r));
        if let (Some(read), None, None) = (read, stored, m.earliest_acknowledged) {
            // Only the stand-in's own report, stamped after the send, may
            // hold a read time that the storm did not send.
            let created = v["created_at"].as_str().unwrap_or_default();
            assert!(read >= created, "{context}: read at {read}, a time never sent: {v}");
        }
        if let Some(acknowledged) = m.earliest_acknowledged {
            let stored = stored.unwrap_or_else(|| {
                panic!(
                    "{context}: read at {} was answered 200, and after the crash the delivery \
                     is {d}",
                    rfc3339(acknowledged)
                )
            });
            assert_eq!(d["status"], "read", "{context}: {v}");
            assert!(
                stored <= acknowledged,
                "{context}: read at {} was answered 200, yet after the crash the read time is \
                 the later {}: {v}",
                rfc3339(acknowledged),
                rfc3339(stored)
            );
            if stored == acknowledged {
                exact += 1;
            } else {
                earlier += 1;
            }
        }
        deliveries.push(d);
    }
    println!(
        "  after restart: {exact} messages at their last acknowledged read time, {earlier} at a \
         later write that had no answer yet"
    );
    deliveries
}

#[actix_web::test]
async fn statuses_answered_200_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    statuses_survive(dir.path(), &mut Disk::plain(dir.path())).await;
}

#[actix_web::test]
#[ignore = "needs FUSE, libfuse2 and python3's fusepy; scripts/test.sh runs it"]
async fn statuses_answered_200_survive_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    statuses_survive(dir.path(), &mut Disk::lossy(dir.path())).await;
}

async fn statuses_survive(logs: &Path, disk: &mut Disk) {
    let seed = match std::env::var("DURABILITY_SEED") {
        Ok(s) => s.parse().expect("DURABILITY_SEED is a u64"),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    println!("durability: seed {seed} (DURABILITY_SEED={seed} replays the same choices)");
    let rng = RefCell::new(Rng(seed));
    let next_timestamp = Cell::new(FIRST_TIMESTAMP);
    let http = client();
    let began = Instant::now();

    // Per earlier round: its verifications and their deliveries as seen
    // after the restart that followed it.
    let mut settled: Vec<(Vec<Message>, Vec<Value>)> = Vec::new();
    let mut previous: Option<Vec<Message>> = None;
    for round in 0..=ROUNDS {
        let mut server = start(&disk.data, logs, &format!("start-{round}"));
        let base = server.base.clone();
        if let Some(pool) = previous.take() {
            let deliveries = check_round(&http, &base, round - 1, &pool).await;
            settled.push((pool, deliveries));
        }
        for (earlier, (pool, deliveries)) in settled.iter().enumerate() {
            let polled = poll_all(&http, &base, pool).await;
            for ((m, (status, v)), before) in pool.iter().zip(polled).zip(deliveries) {
                assert_eq!(
                    (status, &v["delivery"]),
                    (200, before),
                    "round {round}: verification {} of round {earlier} changed after a later \
                     kill: {v}",
                    m.verification
                );
            }
        }
        if round == ROUNDS {
            break;
        }

        let mut pool = create_pool(&http, &base, round).await;
        let kill_after = Duration::from_millis(50 + rng.borrow_mut().below(351) as u64);
        let storm = Storm::default();
        let started = Instant::now();
        let workers =
            join_all((0..IN_FLIGHT).map(|_| {
                storm_worker(&storm, &pool, &rng, &next_timestamp, &http, &base, started)
            }));
        let killer = async {
            actix_web::rt::time::sleep(kill_after).await;
            // A round without any 200 would prove nothing: give the first
            // answer some more time.
            let limit = Instant::now() + Duration::from_secs(5);
            while storm.acknowledged.borrow().is_empty() && Instant::now() < limit {
                actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            }
            storm.killed.set(true);
            server.child.kill().expect("SIGKILL sent");
            started.elapsed()
        };
        let (_, killed_at) = futures_util::future::join(workers, killer).await;
        let exit = server.child.wait().unwrap();
        drop(server);
        disk.after_kill();

        let unexpected = storm.unexpected.take();
        assert!(unexpected.is_empty(), "round {round}: unexpected answers: {unexpected:?}");
        let bodies = storm.bodies.take();
        let acknowledged = storm.acknowledged.take();
        for statuses in &bodies {
            for &(index, ts) in statuses {
                pool[index].sent.push(ts);
            }
        }
        for &number in &acknowledged {
            for &(index, ts) in &bodies[number] {
                let earliest = &mut pool[index].earliest_acknowledged;
                *earliest = Some(earliest.map_or(ts, |e: i64| e.min(ts)));
            }
        }
        let statuses: usize = acknowledged.iter().map(|&n| bodies[n].len()).sum();
        println!(
            "round {round}: {} at {killed_at:?} (drawn {kill_after:?}; {exit}): {} bodies \
             posted, {} answered 200 ({statuses} statuses), {} without an answer",
            disk.what(),
            bodies.len(),
            acknowledged.len(),
            storm.unanswered.get()
        );
        assert!(
            !acknowledged.is_empty(),
            "round {round}: no POST was answered 200 before the kill at {killed_at:?}"
        );
        previous = Some(pool);
    }
    println!("durability: {ROUNDS} kills ({}) in {:?}", disk.what(), began.elapsed());
}

/// Checks per verification: wrong codes only, so each verification takes
/// `CHECK_ATTEMPTS` of them and refuses the rest.
const CHECK_POOL: usize = 160;
const CHECK_ATTEMPTS: u32 = 20;

fn check_number(round: usize, index: usize) -> String {
    format!("+1555030{round}{index:03}")
}

/// A check answered 200 used a try for good: after a SIGKILL and a
/// restart, each verification has at most as many attempts left as the
/// last 200 said, and no fewer than the checks sent allow. A cancel
/// answered 200 meanwhile holds too. The kill lands
/// while checks are in flight, so what sled had not written out must come
/// back from the write-ahead log.
#[actix_web::test]
async fn checks_answered_200_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    checks_survive(dir.path(), &mut Disk::plain(dir.path())).await;
}

#[actix_web::test]
#[ignore = "needs FUSE, libfuse2 and python3's fusepy; scripts/test.sh runs it"]
async fn checks_answered_200_survive_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    checks_survive(dir.path(), &mut Disk::lossy(dir.path())).await;
}

async fn checks_survive(logs: &Path, disk: &mut Disk) {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("check durability: seed {seed}");
    let rng = RefCell::new(Rng(seed));
    let http = client();
    let vars = [
        ("WAVERIFY_MAX_ATTEMPTS", CHECK_ATTEMPTS.to_string()),
        ("WAVERIFY_CLIENT_REQUESTS_PER_MINUTE", "10000000".to_owned()),
    ];
    for round in 0..3 {
        let mut server = start_extra(&disk.data, logs, &format!("check-{round}"), &vars);
        let base = server.base.clone();
        let url = format!("{base}/v1/verifications");
        let created =
            join_all((0..CHECK_POOL).map(|i| {
                api(&http, "POST", url.clone(), Some(json!({"to": check_number(round, i)})))
            }))
            .await;
        let ids: Vec<String> = created
            .into_iter()
            .map(|(status, v)| {
                assert_eq!(status, 201, "round {round}: send-code: {v}");
                v["id"].as_str().unwrap().to_owned()
            })
            .collect();
        // Per verification: checks sent, and the fewest attempts left a
        // 200 reported.
        let sent = RefCell::new(vec![0u32; CHECK_POOL]);
        let least = RefCell::new(vec![CHECK_ATTEMPTS; CHECK_POOL]);
        let killed = Cell::new(false);
        let acknowledged = Cell::new(0usize);
        let unexpected = RefCell::new(Vec::new());
        let kill_after = Duration::from_millis(100 + rng.borrow_mut().below(300) as u64);
        let worker = || async {
            let started = Instant::now();
            while !killed.get() && started.elapsed() < STORM_LIMIT {
                let index = rng.borrow_mut().below(CHECK_POOL);
                sent.borrow_mut()[index] += 1;
                let url = format!("{base}/v1/verifications/{}/check", ids[index]);
                let req =
                    http.post(&url).insert_header(("authorization", format!("Bearer {API_KEY}")));
                let mut res = match req.send_json(&json!({"code": "000000"})).await {
                    Ok(res) => res,
                    Err(_) if killed.get() => return,
                    Err(e) => {
                        unexpected.borrow_mut().push(format!("before the kill: {e}"));
                        return;
                    }
                };
                let Ok(bytes) = res.body().await else { return };
                match res.status().as_u16() {
                    200 => {
                        let v: Value = serde_json::from_slice(&bytes).unwrap();
                        let left = v["attempts_left"].as_u64().unwrap() as u32;
                        let mut least = least.borrow_mut();
                        least[index] = least[index].min(left);
                        acknowledged.set(acknowledged.get() + 1);
                    }
                    // Out of attempts, or the one code in a million.
                    409 => {}
                    other => unexpected.borrow_mut().push(format!("{other}")),
                }
            }
        };
        let killer = async {
            actix_web::rt::time::sleep(kill_after).await;
            let limit = Instant::now() + Duration::from_secs(5);
            while acknowledged.get() == 0 && Instant::now() < limit {
                actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            }
            killed.set(true);
            server.child.kill().expect("SIGKILL sent");
        };
        // Meanwhile every eighth verification is cancelled, one after the
        // other: a cancel is made durable by a sled flush, not the log.
        let canceled = RefCell::new(Vec::new());
        let canceller = async {
            for index in (0..CHECK_POOL).step_by(8) {
                if killed.get() {
                    return;
                }
                let url = format!("{base}/v1/verifications/{}/cancel", ids[index]);
                let req =
                    http.post(&url).insert_header(("authorization", format!("Bearer {API_KEY}")));
                match req.send().await.map(|res| res.status().as_u16()) {
                    Ok(200) => canceled.borrow_mut().push(index),
                    Ok(status) => unexpected.borrow_mut().push(format!("cancel: {status}")),
                    Err(_) if killed.get() => return,
                    Err(e) => unexpected.borrow_mut().push(format!("cancel before the kill: {e}")),
                }
            }
        };
        let workers = join_all((0..IN_FLIGHT).map(|_| worker()));
        futures_util::future::join3(workers, canceller, killer).await;
        server.child.wait().unwrap();
        drop(server);
        disk.after_kill();
        let unexpected = unexpected.take();
        assert!(unexpected.is_empty(), "round {round}: unexpected answers: {unexpected:?}");
        assert!(acknowledged.get() > 0, "round {round}: no check was answered 200");

        let server = start_extra(&disk.data, logs, &format!("check-{round}-after"), &vars);
        let polled =
            join_all(ids.iter().map(|id| {
                api(&http, "GET", format!("{}/v1/verifications/{id}", server.base), None)
            }))
            .await;
        let (sent, least, canceled) = (sent.take(), least.take(), canceled.take());
        let mut beyond = 0;
        for (i, (status, v)) in polled.iter().enumerate() {
            assert_eq!(*status, 200, "round {round}: {v}");
            let left = v["attempts_left"].as_u64().unwrap() as u32;
            assert!(
                left <= least[i],
                "round {round}: a check answered 200 with {} attempts left, yet after the \
                 crash {left} are left: {v}",
                least[i]
            );
            assert!(left >= CHECK_ATTEMPTS.saturating_sub(sent[i]), "round {round}: {v}");
            if canceled.contains(&i) {
                assert_eq!(v["status"], "canceled", "round {round}: a cancel answered 200: {v}");
            } else if least[i] == 0 {
                assert_eq!(v["status"], "max_attempts_reached", "round {round}: {v}");
            }
            beyond += usize::from(left < least[i]);
        }
        println!(
            "round {round}: {} after {kill_after:?}, {} checks and {} cancels answered 200; \
             {beyond} verifications also kept tries whose answer never came",
            disk.what(),
            acknowledged.get(),
            canceled.len()
        );
        drop(server);
    }
}
