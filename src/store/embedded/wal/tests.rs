use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::join_all;

use super::*;
use crate::domain::{CheckOutcome, DeliveryStatus, SendOutcome, StatusEvent};
use crate::store::embedded::tests::{check, in_sled, verification};
use crate::store::ResendRules;

fn payload(n: u32) -> Vec<u8> {
    format!("record {n} ").repeat(1 + n as usize % 7).into_bytes()
}

#[test]
fn a_torn_or_damaged_tail_ends_the_segment_and_keeps_what_came_before() {
    let records: Vec<Vec<u8>> = (0..4).map(payload).collect();
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for record in &records {
        frame(&mut bytes, 7, record);
        ends.push(bytes.len());
    }
    // Cut anywhere: every whole record before the cut, nothing else.
    for cut in 0..=bytes.len() {
        let (read, clean) = read_records(&bytes[..cut], 7);
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(read.len(), whole, "cut at {cut}");
        for (got, want) in read.iter().zip(&records) {
            assert_eq!(got, want);
        }
        assert_eq!(clean, cut == 0 || ends.contains(&cut), "cut at {cut}");
    }
    // A flipped byte in the third record: the first two only.
    let mut damaged = bytes.clone();
    damaged[ends[1] + HEADER + 2] ^= 0x40;
    assert_eq!(
        read_records(&damaged, 7),
        (records[..2].iter().map(Vec::as_slice).collect(), false)
    );
    // Zeros after the last record (a segment written full of zeros first)
    // end it.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 64]);
    assert_eq!(read_records(&padded, 7), (records.iter().map(Vec::as_slice).collect(), true));
    // Records are bound to their segment's number.
    assert!(read_records(&bytes, 8).0.is_empty());
}

/// A disk that keeps, for each segment, what was written and how much of
/// it was synced: losing power keeps only the synced part.
#[derive(Default)]
struct Forgetful {
    segments: Mutex<HashMap<u64, (Vec<u8>, usize)>>,
}

struct ForgetfulFile {
    disk: Arc<Forgetful>,
    number: u64,
}

impl Disk for Arc<Forgetful> {
    type File = ForgetfulFile;

    fn create(&self, number: u64) -> io::Result<ForgetfulFile> {
        self.segments.lock().unwrap().insert(number, (Vec::new(), 0));
        Ok(ForgetfulFile { disk: self.clone(), number })
    }

    fn remove_before(&self, keep: u64) -> io::Result<()> {
        self.segments.lock().unwrap().retain(|&n, _| n >= keep);
        Ok(())
    }
}

impl SegmentFile for ForgetfulFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut segments = self.disk.segments.lock().unwrap();
        segments.get_mut(&self.number).unwrap().0.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut segments = self.disk.segments.lock().unwrap();
        let (written, synced) = segments.get_mut(&self.number).unwrap();
        *synced = written.len();
        Ok(())
    }
}

impl Forgetful {
    /// The records that survive a power loss now.
    fn after_power_loss(&self) -> Vec<Vec<u8>> {
        let segments = self.segments.lock().unwrap();
        let mut numbers: Vec<_> = segments.keys().copied().collect();
        numbers.sort_unstable();
        let mut records = Vec::new();
        for n in numbers {
            let (written, synced) = &segments[&n];
            records.extend(read_records(&written[..*synced], n).0.into_iter().map(<[u8]>::to_vec));
        }
        records
    }
}

fn memory_store() -> SledStore {
    SledStore::from_db(sled::Config::new().temporary(true).open().unwrap(), None).unwrap()
}

#[actix_web::test]
async fn a_record_is_on_disk_before_it_is_answered() {
    let store = memory_store();
    let disk = Arc::new(Forgetful::default());
    let wal =
        Wal::start(disk.clone(), 1, store.commit.clone(), Box::new(|| Ok(())), MIN_GAP).unwrap();
    let check = |n: u32| CheckRecord {
        id: VerificationId::parse(&format!("{n:032x}")).unwrap(),
        attempts_left: n,
        status: VerificationStatus::Pending,
        approved_channel: None,
        wrong_codes: None,
    };
    // Many at once, so that they share syncs; each answer is checked
    // against what a power loss at that moment would leave.
    let answers = (0..300).map(|n| {
        let (wal, disk) = (&wal, &disk);
        async move {
            let record = check(n);
            wal.append(&EntryRef::Check(&record)).await.unwrap();
            let kept = disk.after_power_loss();
            let decoded: Vec<Entry> =
                kept.iter().map(|p| postcard::from_bytes(p).unwrap()).collect();
            assert!(
                decoded.iter().any(|e| matches!(e, Entry::Check(r) if *r == record)),
                "record {n} was answered before it was synced"
            );
        }
    });
    join_all(answers).await;
    assert_eq!(disk.after_power_loss().len(), 300);
}

fn check_record(n: u32) -> CheckRecord {
    CheckRecord {
        id: VerificationId::parse(&format!("{n:032x}")).unwrap(),
        attempts_left: n,
        status: VerificationStatus::Pending,
        approved_channel: None,
        wrong_codes: None,
    }
}

/// Times one append that starts now.
async fn timed_append(wal: &Wal, n: u32) -> Duration {
    let started = Instant::now();
    wal.append(&EntryRef::Check(&check_record(n))).await.unwrap();
    started.elapsed()
}

#[actix_web::test]
async fn a_sync_waits_for_more_records_only_while_a_request_being_served_does_not_wait() {
    let store = memory_store();
    let disk = Arc::new(Forgetful::default());
    let gap = Duration::from_secs(2);
    let wal = Wal::start(disk, 1, store.commit.clone(), Box::new(|| Ok(())), gap).unwrap();
    assert!(timed_append(&wal, 1).await < gap / 2, "an idle log syncs at once");

    // The only request being served is the one waiting: nothing more can
    // come, so the sync starts at once rather than `gap` after the last.
    let first = wal.serving();
    assert!(timed_append(&wal, 2).await < gap / 2, "the sync waited for nobody");

    // Another request is served and not waiting: its record may come, and
    // the sync waits the gap out for it...
    let second = wal.serving();
    let waited = timed_append(&wal, 3).await;
    assert!(waited >= gap * 9 / 10, "the sync did not wait: {waited:?}");

    // ...unless that request ends meanwhile.
    let appending = timed_append(&wal, 4);
    let ending = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(second);
    };
    let (waited, ()) = tokio::join!(appending, ending);
    assert!(waited < gap / 2, "the end of the other request did not start the sync: {waited:?}");
    drop(first);
}

#[cfg(target_os = "linux")]
#[test]
fn the_log_thread_runs_as_batch_work() {
    use crate::store::embedded::sched::tests::{policies_of, SCHED_BATCH};
    let store = memory_store();
    let disk = Arc::new(Forgetful::default());
    let _wal = Wal::start(disk, 1, store.commit.clone(), Box::new(|| Ok(())), MIN_GAP).unwrap();
    // A thread takes its name, and the log thread its policy, only once
    // it runs; other tests start log threads too. Wait for every one of
    // them to have set its policy.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let policies = policies_of("waverify-log");
        if !policies.is_empty() && policies.iter().all(|&p| p == SCHED_BATCH) {
            break;
        }
        assert!(Instant::now() < deadline, "the log threads' policies: {policies:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// What `commit_check` would log for `v`.
fn record_of(v: &Verification, counted: Option<&Counted>) -> CheckRecord {
    CheckRecord {
        id: v.id.clone(),
        attempts_left: v.attempts_left,
        status: v.status,
        approved_channel: v.approved_channel,
        wrong_codes: counted.map(|c| (c.key.clone(), c.count)),
    }
}

#[test]
fn replaying_a_check_never_undoes_a_later_write() {
    let store = memory_store();
    let v = verification(1);
    store.create(&v, 10_000, 1_000, None, &[]).unwrap().unwrap();
    let limit = Limit::per(3600, 100);
    let wrong = |store: &SledStore| {
        let (outcome, v) = check(store, &v.id, 1_001, None, store.wal.is_some());
        assert!(matches!(outcome, Ok(CheckOutcome::Wrong { .. })));
        let counted = store
            .add_counted(Counter::NumberFailedChecksPerHour, &v.number_key, limit, 1_001)
            .unwrap();
        record_of(&v, Some(&counted))
    };
    let first = wrong(&store);
    // Later writes, each of which a sled flush would make durable: a
    // resend, its send recorded, a status, two more wrong codes.
    let rules = ResendRules { cooldown: 0, max_sends: 3 };
    store.resend(&v.id, 1_002, rules, None, &[]).unwrap().unwrap();
    let accepted = SendOutcome::Accepted { message_id: "wamid.R".into() };
    store.record_send(&v.id, 1, &accepted, 1_002).unwrap();
    let read = StatusUpdate {
        message_id: "wamid.R".into(),
        channel: Channel::Whatsapp,
        callback: None,
        event: StatusEvent { status: DeliveryStatus::Read, timestamp: 1_003, error: None },
    };
    store.apply_statuses(&[read], 1_003).unwrap();
    wrong(&store);
    let last = wrong(&store);
    let before = store.get(&v.id).unwrap().unwrap();
    let count = |store: &SledStore| {
        store.counted(Counter::NumberFailedChecksPerHour, "number-1", limit, 1_001)
    };
    assert_eq!(count(&store).unwrap(), 3);

    store.replay_check(&first).unwrap();
    store.replay_check(&last).unwrap();
    assert_eq!(store.get(&v.id).unwrap().unwrap(), before);
    assert_eq!(count(&store).unwrap(), 3);
}

#[test]
fn replaying_a_check_that_sled_lost_redoes_it() {
    let store = memory_store();
    let v = verification(2);
    store.create(&v, 10_000, 1_000, None, &[]).unwrap().unwrap();
    // The approval as it was logged, made on a copy: in the store itself
    // the verification is still pending, as after losing the write.
    let mut approved = v.clone();
    approved.check(1_001, Some(Channel::Whatsapp)).unwrap();
    let record = record_of(&approved, None);
    let active = Verification::active_key(&v.number_key, v.purpose);
    assert_eq!(store.active(&active, 1_001).unwrap().map(|a| a.id), Some(v.id.clone()));

    store.replay_check(&record).unwrap();
    let after = store.get(&v.id).unwrap().unwrap();
    assert_eq!(after.status, VerificationStatus::Approved);
    assert_eq!(after.approved_channel, Some(Channel::Whatsapp));
    assert_eq!(after.secret, None);
    assert!(store.active.get(&active).unwrap().is_none(), "the number is free again");
    // Again: nothing more.
    store.replay_check(&record).unwrap();
    assert_eq!(store.get(&v.id).unwrap().unwrap(), after);
}

/// Opens the store in `dir` once the threads of the last one have let go
/// of it.
fn reopen(dir: &Path) -> SledStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the store does not open again: {e}"),
        }
    }
}

/// Copies a directory tree, files only.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[actix_web::test]
async fn the_log_brings_back_what_sled_had_not_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = SledStore::open(&live).unwrap();
    let v = verification(3);
    store.create(&v, 10_000, 1_000, None, &[]).unwrap().unwrap();
    let accepted = SendOutcome::Accepted { message_id: "wamid.L".into() };
    store.record_send(&v.id, 0, &accepted, 1_000).unwrap();
    store.commit().await.unwrap();
    // sled as a crash would leave it: flushed up to here, nothing after.
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    fs::remove_dir_all(crashed.join(DIR)).unwrap();

    let delivered = StatusUpdate {
        message_id: "wamid.L".into(),
        channel: Channel::Whatsapp,
        callback: None,
        event: StatusEvent { status: DeliveryStatus::Delivered, timestamp: 1_002, error: None },
    };
    let stray = StatusUpdate { message_id: "wamid.STRAY".into(), ..delivered.clone() };
    store.record_statuses(vec![delivered, stray], 1_002).await.unwrap();
    let (_, checked) = store.check(&v.id, |v| ((), Some(v.judge(1_003, None).1))).unwrap().unwrap();
    let limit = Limit::per(3600, 100);
    let counted =
        store.add_counted(Counter::NumberFailedChecksPerHour, &v.number_key, limit, 1_003).unwrap();
    store.commit_check(&checked, Some(counted)).await.unwrap();
    let expected = store.get(&v.id).unwrap().unwrap();
    drop(store);
    // ... and the log as it was synced.
    copy_dir(&live.join(DIR), &crashed.join(DIR));

    let store = SledStore::open(&crashed).unwrap();
    let replayed = store.get(&v.id).unwrap().unwrap();
    assert_eq!(replayed.delivery().status, DeliveryStatus::Delivered);
    assert_eq!(replayed.attempts_left, 4);
    assert_eq!(replayed, expected);
    assert_eq!(
        store.counted(Counter::NumberFailedChecksPerHour, "number-3", limit, 1_003).unwrap(),
        1
    );
    assert!(store.parked.contains_key("wamid.STRAY").unwrap(), "the stray status is parked");
    // Replayed, flushed into sled, and the log started over.
    let replayed = segments(&live.join(DIR)).unwrap();
    let now = segments(&crashed.join(DIR)).unwrap();
    assert!(now.iter().all(|n| !replayed.contains(n)), "{replayed:?} then {now:?}");
    drop(store);
    let store = reopen(&crashed);
    assert_eq!(store.get(&v.id).unwrap().unwrap(), expected);
}

/// Waits (10 s at most) for segment `number` of `dir` to be deleted.
fn wait_until_deleted(dir: &Path, number: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while segments(dir).unwrap().contains(&number) {
        assert!(Instant::now() < deadline, "segment {number} is still there");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn segments_are_deleted_once_a_flush_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store();
    let mut log = Log::start(Arc::new(Directory::new(dir.path().to_owned())), 1).unwrap();
    let mut bytes = Vec::new();
    frame(&mut bytes, 1, b"x");
    log.append(&bytes).unwrap();
    let checkpoints = Checkpoints::start(store.commit.clone(), Box::new(|| Ok(()))).unwrap();
    log.checkpoint(&checkpoints).unwrap();
    assert_eq!(log.segment.number, 2);
    thread::sleep(Duration::from_millis(100));
    assert!(segments(dir.path()).unwrap().contains(&1), "one new segment is no checkpoint");
    for _ in 1..SEGMENTS_PER_CHECKPOINT {
        log.checkpoint(&checkpoints).unwrap();
    }
    wait_until_deleted(dir.path(), 1);
}

#[test]
fn a_checkpoint_saves_what_only_memory_had_before_it_deletes_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store();
    let v = verification(4);
    store.create(&v, 10_000, 1_000, None, &[]).unwrap().unwrap();
    // A check and its wrong code as the log makes them durable: in
    // memory only, until a checkpoint.
    let (_, checked) = check(&store, &v.id, 1_001, None, true);
    let checked = Verification::clone(&checked);
    let limit = Limit::per(3600, 100);
    store.add_counted(Counter::NumberFailedChecksPerHour, &v.number_key, limit, 1_001).unwrap();
    let key = counters::key(Counter::NumberFailedChecksPerHour, &v.number_key, limit, 1_001);
    assert_eq!(in_sled(&store, &v), v, "sled does not have the check yet");
    assert!(store.counters.get(&key).unwrap().is_none());
    assert_eq!(store.get(&v.id).unwrap().unwrap(), checked, "memory answers with it");

    let checkpoints = Checkpoints::start(store.commit.clone(), saver(&store)).unwrap();
    let mut log = Log::start(Arc::new(Directory::new(dir.path().to_owned())), 1).unwrap();
    let mut bytes = Vec::new();
    frame(&mut bytes, 1, b"the check's record");
    log.append(&bytes).unwrap();
    for _ in 0..SEGMENTS_PER_CHECKPOINT {
        log.checkpoint(&checkpoints).unwrap();
    }
    wait_until_deleted(dir.path(), 1);
    assert_eq!(in_sled(&store, &v), checked);
    assert_eq!(counters::read(store.counters.get(&key).unwrap()), 1);
    assert_eq!(store.get(&v.id).unwrap().unwrap(), checked);
}
