use proptest::prelude::*;

use super::*;
use crate::domain::{
    ChannelChoice, CheckOutcome, CodeTag, DeliveryError, DeliveryStatus, Limit, NewVerification,
    Purpose,
};
use crate::store::{Counter, Refused};

fn temp_store() -> SledStore {
    SledStore::from_db(sled::Config::new().temporary(true).open().unwrap(), None).unwrap()
}

/// A pending verification numbered `n`, created at 1,000 s; the log's
/// tests use it too.
pub(super) fn verification(n: u8) -> Verification {
    let id = VerificationId::parse(&format!("{n:02x}{}", "0".repeat(30))).unwrap();
    Verification::new(NewVerification {
        id,
        to_masked: "+1555*****234".into(),
        number_key: format!("number-{n}"),
        code_tags: vec![CodeTag { channel: Channel::Whatsapp, tag: vec![0; 32] }],
        secret: vec![1],
        choice: ChannelChoice::Whatsapp,
        purpose: Purpose::Login,
        first_channel: Channel::Whatsapp,
        now: 1_000,
        ttl_seconds: 600,
        max_attempts: 5,
        fallback_after: None,
    })
}

fn insert(store: &SledStore, v: &Verification, purge_at: i64) {
    store.create(v, purge_at, 1_000, None, &[]).unwrap().unwrap();
}

fn accepted(store: &SledStore, v: &Verification, message_id: &str) -> Verification {
    let outcome = SendOutcome::Accepted { message_id: message_id.into() };
    store.record_send(&v.id, 0, &outcome, 1_000).unwrap().unwrap()
}

/// Checks a code as the check-code route does: `matched` is the channel
/// whose code was typed, `None` for a wrong one. `logged` as a store with a
/// write-ahead log checks; the log's tests use it too.
pub(super) fn check(
    store: &SledStore,
    id: &VerificationId,
    now: i64,
    matched: Option<Channel>,
    logged: bool,
) -> (Result<CheckOutcome, VerificationStatus>, Arc<Verification>) {
    let judge = |v: &Verification| {
        let (outcome, checked) = v.judge(now, matched);
        (outcome, Some(checked))
    };
    store.check_in(id, logged, judge).unwrap().unwrap()
}

fn update(message_id: &str, status: DeliveryStatus, timestamp: i64) -> StatusUpdate {
    StatusUpdate {
        message_id: message_id.into(),
        channel: Channel::Whatsapp,
        callback: None,
        event: StatusEvent { status, timestamp, error: None },
    }
}

#[test]
fn statuses_before_the_send_is_recorded_are_parked_then_applied() {
    let store = temp_store();
    let v = verification(1);
    insert(&store, &v, 10_000);
    let early = [
        update("wamid.A", DeliveryStatus::Delivered, 5),
        update("wamid.A", DeliveryStatus::Sent, 4),
    ];
    let tally = store.apply_statuses(&early, 100).unwrap();
    assert_eq!((tally.applied, tally.unchanged, tally.parked), (0, 0, 2));
    let after = accepted(&store, &v, "wamid.A");
    assert_eq!(after.delivery().status, DeliveryStatus::Delivered);
    assert_eq!(after.delivery().timestamps.len(), 2);
    assert!(store.outbox().unwrap().is_empty(), "the answered send left the outbox");
    assert!(store.parked.is_empty(), "claimed statuses leave the parking");
    let late = store.apply_statuses(&[update("wamid.A", DeliveryStatus::Read, 6)], 100).unwrap();
    assert_eq!(late.applied, 1);
}

#[test]
fn purge_deletes_what_is_due_and_nothing_else() {
    let store = temp_store();
    let (due, kept) = (verification(1), verification(2));
    insert(&store, &due, 5_000);
    insert(&store, &kept, 5_001);
    accepted(&store, &due, "wamid.DUE");
    store.apply_statuses(&[update("wamid.STRAY", DeliveryStatus::Read, 1)], 4_000).unwrap();
    store.apply_statuses(&[update("wamid.FRESH", DeliveryStatus::Read, 1)], 4_500).unwrap();

    let early = store.purge(5_000, 4_000).unwrap();
    assert_eq!((early.verifications, early.parked), (0, 0), "nothing is due yet");
    let purged = store.purge(5_001, 4_001).unwrap();
    assert_eq!((purged.verifications, purged.parked), (1, 1));
    assert!(store.get(&due.id).unwrap().is_none());
    assert!(store.get(&kept.id).unwrap().is_some());
    assert!(store.messages.get("wamid.DUE").unwrap().is_none(), "its message index goes too");
    assert!(store.parked.get("wamid.FRESH").unwrap().is_some());
    assert_eq!(store.purge(5_001, 4_001).unwrap(), Purged::default(), "idempotent");
    assert!(store.active(&due.number_key, 1_001).unwrap().is_none());
}

#[test]
fn a_number_has_one_pending_verification_at_a_time() {
    let store = temp_store();
    let first = verification(1);
    insert(&store, &first, 9_000);
    let mut second = verification(2);
    second.number_key = first.number_key.clone();
    assert_eq!(
        store.create(&second, 9_000, 1_000, None, &[]).unwrap(),
        Err(NotCreated::Active(first.id.clone()))
    );
    assert_eq!(
        store.create(&second, 9_000, 1_600, None, &[]).unwrap(),
        Ok(()),
        "once the first expired"
    );
}

#[test]
fn idempotency_keys_are_taken_once() {
    let store = temp_store();
    let (a, b) = (verification(1), verification(2));
    store.create(&a, 9_000, 1_000, Some(("key-1", "fp")), &[]).unwrap().unwrap();
    let taken = store.create(&b, 9_000, 1_000, Some(("key-1", "other")), &[]).unwrap();
    let record = IdempotencyRecord { fingerprint: "fp".into(), verification: a.id.clone() };
    assert_eq!(taken, Err(NotCreated::KeyTaken(record)));
    assert!(store.get(&b.id).unwrap().is_none());
}

#[test]
fn resends_respect_cooldown_and_maximum() {
    let store = temp_store();
    let v = verification(1);
    insert(&store, &v, 9_000);
    let rules = ResendRules { cooldown: 60, max_sends: 3 };
    assert_eq!(
        store.resend(&v.id, 1_059, rules, None, &[]).unwrap(),
        Err(NoResend::Cooldown { at: 1_060 })
    );
    let (after, index) = store.resend(&v.id, 1_060, rules, None, &[]).unwrap().unwrap();
    assert_eq!((index, after.sends.len()), (1, 2));
    store.resend(&v.id, 1_120, rules, None, &[]).unwrap().unwrap();
    assert_eq!(
        store.resend(&v.id, 1_500, rules, None, &[]).unwrap(),
        Err(NoResend::MaxSends { until: 1_600 })
    );
    assert_eq!(store.outbox().unwrap().len(), 3, "every send is queued until answered");
}

#[test]
fn counters_refuse_at_the_limit_and_roll_over() {
    let store = temp_store();
    let hour = Limit::per(3600, 2);
    let day = Limit::per(86_400, 3);
    let hits = [(Counter::NumberSendsPerHour, "n", hour), (Counter::NumberSendsPerDay, "n", day)];
    assert_eq!(store.count(&hits, 3_600).unwrap(), Ok(()));
    assert_eq!(store.count(&hits, 7_199).unwrap(), Ok(()));
    let refused = store.count(&hits, 7_199).unwrap().unwrap_err();
    assert_eq!(refused, Refused { counter: Counter::NumberSendsPerHour, retry_after: 1 });
    assert_eq!(store.count(&hits, 7_200).unwrap(), Ok(()), "a new hour");
    let refused = store.count(&hits, 7_201).unwrap().unwrap_err();
    assert_eq!(refused.counter, Counter::NumberSendsPerDay, "the day is spent");
    assert_eq!(store.counted(Counter::NumberSendsPerDay, "n", day, 7_201).unwrap(), 3);
    assert_eq!(store.counted(Counter::NumberSendsPerDay, "other", day, 7_201).unwrap(), 0);
    assert_eq!(store.purge(86_400, 0).unwrap().counters, 3, "two hours and a day ended");
}

/// The simple model: the highest status seen, the earliest time of each
/// status, and the error of the earliest failure.
fn model(
    events: &[StatusEvent],
) -> (DeliveryStatus, Vec<(DeliveryStatus, i64)>, Option<DeliveryError>) {
    let status = events.iter().map(|e| e.status).max().unwrap_or(DeliveryStatus::Accepted);
    let mut times = std::collections::BTreeMap::new();
    for e in events {
        let t = times.entry(e.status).or_insert(e.timestamp);
        *t = (*t).min(e.timestamp);
    }
    let error = events
        .iter()
        .filter_map(|e| e.error.as_ref().map(|err| (e.timestamp, err)))
        .min()
        .map(|(_, err)| err.clone());
    (status.max(DeliveryStatus::Accepted), times.into_iter().collect(), error)
}

/// Realistic sequences of one message: sent, delivered, read, and
/// failures with errors (a user with several devices can have both).
fn events() -> impl Strategy<Value = Vec<StatusEvent>> {
    let status = prop_oneof![
        Just(DeliveryStatus::Sent),
        Just(DeliveryStatus::Delivered),
        Just(DeliveryStatus::Read),
        Just(DeliveryStatus::Failed),
    ];
    let event = (status, 0i64..20, prop_oneof![Just(131026i64), Just(131000), Just(131049)])
        .prop_map(|(status, timestamp, code)| StatusEvent {
            status,
            timestamp,
            error: (status == DeliveryStatus::Failed).then(|| DeliveryError {
                code: Some(code),
                title: format!("error {code}"),
                details: None,
            }),
        });
    prop::collection::vec(event, 1..8)
}

/// Every way of delivering a set of statuses: shuffled, some repeated,
/// cut into batches, some arriving before the send is recorded.
fn deliveries() -> impl Strategy<Value = (Vec<StatusEvent>, Vec<usize>, Vec<usize>, usize)> {
    events().prop_flat_map(|events| {
        let n = events.len();
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let repeats = prop::collection::vec(0..n, 0..4);
        let cuts = prop::collection::vec(1usize..4, 1..8);
        (Just(events), order, repeats, cuts)
            .prop_map(|(events, mut order, repeats, cuts)| {
                order.extend(repeats);
                (events, order, cuts)
            })
            .prop_flat_map(|(events, order, cuts)| {
                let early = 0..=order.len();
                (Just(events), Just(order), Just(cuts), early)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn delivery_is_a_function_of_the_set_of_statuses((events, order, cuts, early) in deliveries()) {
        let store = temp_store();
        let v = verification(7);
        insert(&store, &v, 100_000);
        let arrivals: Vec<StatusUpdate> = order
            .iter()
            .map(|&i| StatusUpdate {
                message_id: "wamid.P".into(),
                channel: Channel::Whatsapp,
                callback: None,
                event: events[i].clone(),
            })
            .collect();
        let (before, after) = arrivals.split_at(early.min(arrivals.len()));
        let mut batches = Vec::new();
        let mut rest = before;
        for &cut in cuts.iter().cycle().take(rest.len()) {
            if rest.is_empty() { break; }
            let (batch, tail) = rest.split_at(cut.min(rest.len()));
            batches.push(batch.to_vec());
            rest = tail;
        }
        for batch in &batches {
            store.apply_statuses(batch, 50).unwrap();
        }
        accepted(&store, &v, "wamid.P");
        for chunk in after.chunks(cuts[0]) {
            store.apply_statuses(chunk, 50).unwrap();
        }

        let got = store.get(&v.id).unwrap().unwrap().delivery().clone();
        let (status, times, error) = model(&events);
        prop_assert_eq!(got.status, status);
        prop_assert_eq!(got.timestamps.into_iter().collect::<Vec<_>>(), times);
        prop_assert_eq!(got.error, error);
    }
}

/// Set in the child process that [`the_store_does_not_grow_under_churn`]
/// starts.
const CHURN_CHILD: &str = "WAVERIFY_CHURN_CHILD";

/// Verifications come and go; the space they took must come back.
///
/// The churn runs in a child process: sled 0.34 can deadlock while it
/// shrinks its file (a truncation waits in sled's process-wide I/O pool
/// behind tasks that wait for the lock its waiter holds), and this test
/// shrinks the file more than any other. A child that has not ended after a
/// minute (the churn takes seconds) is killed and started again, at most
/// three times; growth fails the test in any of them.
#[test]
fn the_store_does_not_grow_under_churn() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    if std::env::var_os(CHURN_CHILD).is_some() {
        return churn();
    }
    let name = "store::embedded::tests::the_store_does_not_grow_under_churn";
    let mut hung = 0;
    while hung < 3 {
        let output = tempfile::NamedTempFile::new().unwrap();
        let to_output = output.reopen().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHURN_CHILD, "1")
            .stdin(Stdio::null())
            .stdout(to_output.try_clone().unwrap())
            .stderr(to_output)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let printed = std::fs::read_to_string(output.path()).unwrap();
        match status {
            Some(status) => {
                eprintln!("{printed}");
                assert!(status.success(), "the churn failed ({status})");
                assert!(printed.contains("1 passed"), "the child ran no churn");
                return;
            }
            None => {
                hung += 1;
                eprintln!("the churn hung (sled's deadlock) and was killed:\n{printed}");
            }
        }
    }
    panic!("the churn hung in each of three tries");
}

fn churn() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut sizes = Vec::new();
    for round in 0..12u32 {
        let start = 1_000 + i64::from(round) * 100_000;
        for n in 0..1_000u32 {
            let id = VerificationId::parse(&format!("{round:08x}{n:024x}")).unwrap();
            let mut v = verification(1);
            v.id = id.clone();
            v.number_key = format!("number-{round}-{n}");
            v.created_at = start;
            v.expires_at = start + 600;
            store.create(&v, start + 1_200, start, None, &[]).unwrap().unwrap();
            let sent = SendOutcome::Accepted { message_id: format!("wamid.{round}.{n}") };
            store.record_send(&id, 0, &sent, start).unwrap();
        }
        // Everything of this round is past its retention before the next.
        store.purge(start + 50_000, start + 50_000).unwrap();
        store.db.flush().unwrap();
        sizes.push(store.db.size_on_disk().unwrap());
    }
    eprintln!("store size after each round of 1,000: {sizes:?}");
    let settled = sizes[3];
    let last = *sizes.last().unwrap();
    assert!(last <= settled * 2, "the store kept growing: {sizes:?}");
    assert!(store.verifications.is_empty() && store.messages.is_empty() && store.outbox.is_empty());
}

#[test]
fn what_only_memory_had_reaches_sled_when_pushed_out() {
    let mut store = temp_store();
    // Room for one verification a shard.
    let tree = store.verifications.tree_for_new().clone();
    store.verifications = cache::Verifications::with_capacity(tree, 1);
    let all: Vec<_> = (0..200).map(verification).collect();
    for v in &all {
        insert(&store, v, 10_000);
    }
    for v in &all {
        let (outcome, _) = check(&store, &v.id, 1_001, None, true);
        assert!(matches!(outcome, Ok(CheckOutcome::Wrong { .. })));
    }
    let written = all.iter().filter(|v| in_sled(&store, v).attempts_left == 4).count();
    assert!(written >= 200 - 64, "only {written} of 200 reached sled");
    for v in &all {
        assert_eq!(store.get(&v.id).unwrap().unwrap().attempts_left, 4);
    }
    store.verifications.save_all().unwrap();
    assert!(all.iter().all(|v| in_sled(&store, v).attempts_left == 4));
}

/// What sled itself holds for `v`, memory aside; the log's tests use it
/// too.
pub(super) fn in_sled(store: &SledStore, v: &Verification) -> Verification {
    decode(&store.verifications.tree_for_new().get(v.id.as_str()).unwrap().unwrap()).unwrap()
}

#[test]
fn sled_never_has_an_index_entry_or_a_free_number_without_the_change_behind_it() {
    let store = temp_store();
    let logged = store.status_trees(true);
    // A status that beats the send's answer claims the send by the
    // verification id it carries.
    let v = verification(1);
    insert(&store, &v, 10_000);
    let early = StatusUpdate {
        callback: Some(v.id.clone()),
        ..update("wamid.EARLY", DeliveryStatus::Delivered, 5)
    };
    assert_eq!(logged.apply_each(&[early], 100).unwrap().applied, 1);
    assert!(store.messages.tree_is_set("wamid.EARLY"));
    assert_eq!(in_sled(&store, &v).sends[0].delivery.message_id.as_deref(), Some("wamid.EARLY"));
    // A check that ends a verification frees the number.
    let w = verification(2);
    insert(&store, &w, 10_000);
    let (ended, _) = store.update_in(&w.id, true, |w| w.cancel(1_001)).unwrap().unwrap();
    assert_eq!(ended, Ok(()));
    assert!(store.active.get("number-2").unwrap().is_none());
    assert_ne!(in_sled(&store, &w).status, VerificationStatus::Pending);
}

#[test]
fn a_check_that_leaves_a_verification_pending_changes_it_in_place() {
    let store = temp_store();
    let v = verification(1);
    insert(&store, &v, 10_000);
    // A reader that holds the verification keeps what it read.
    let held = store.verifications.get(&v.id).unwrap().unwrap();
    let (outcome, first) = check(&store, &v.id, 1_001, None, true);
    assert_eq!(outcome, Ok(CheckOutcome::Wrong { attempts_left: 4 }));
    assert_eq!((held.attempts_left, first.attempts_left), (5, 4));
    drop(held);
    // Held by nobody else, it is changed where it lies: no copy.
    let at = Arc::as_ptr(&first);
    drop(first);
    let (_, second) = check(&store, &v.id, 1_002, None, true);
    assert_eq!(Arc::as_ptr(&second), at);
    assert_eq!(second.attempts_left, 3);
    // In memory only, until the log's checkpoint saves it.
    assert_eq!(in_sled(&store, &v).attempts_left, 5);
    store.verifications.save_all().unwrap();
    assert_eq!(in_sled(&store, &v).attempts_left, 3);
}

#[test]
fn a_check_that_ends_a_verification_writes_it_to_sled_and_frees_the_number() {
    let store = temp_store();
    for (n, matched, status) in [
        (1, Some(Channel::Whatsapp), VerificationStatus::Approved),
        (2, None, VerificationStatus::MaxAttemptsReached),
    ] {
        let v = verification(n);
        insert(&store, &v, 10_000);
        for _ in 0..4 {
            let (outcome, _) = check(&store, &v.id, 1_001, None, true);
            assert!(matches!(outcome, Ok(CheckOutcome::Wrong { .. })));
        }
        let (_, ended) = check(&store, &v.id, 1_002, matched, true);
        assert_eq!((ended.status, ended.secret.as_ref()), (status, None));
        let stored = in_sled(&store, &v);
        assert_eq!((stored.status, stored.attempts_left), (status, ended.attempts_left));
        assert!(store.active.get(format!("number-{n}")).unwrap().is_none());
    }
}

#[test]
fn a_check_that_does_not_count_changes_nothing() {
    let store = temp_store();
    let v = verification(1);
    insert(&store, &v, 10_000);
    let before = store.verifications.get(&v.id).unwrap().unwrap();
    let (answer, after) = store.check_in(&v.id, true, |_| ("refused", None)).unwrap().unwrap();
    assert_eq!(answer, "refused");
    assert!(Arc::ptr_eq(&before, &after));
    // Past its expiry, a check ends it as expired.
    let (outcome, expired) = check(&store, &v.id, 1_600, None, true);
    assert_eq!(outcome, Err(VerificationStatus::Expired));
    assert_eq!(in_sled(&store, &v).status, expired.status);
}

#[test]
fn a_new_status_with_a_log_is_applied_where_the_verification_lies() {
    let store = temp_store();
    let logged = store.status_trees(true);
    let v = verification(1);
    insert(&store, &v, 10_000);
    accepted(&store, &v, "wamid.A");
    let held = store.verifications.get(&v.id).unwrap().unwrap();
    let at = Arc::as_ptr(&held);
    drop(held);
    let delivered = update("wamid.A", DeliveryStatus::Delivered, 5);
    assert_eq!(logged.apply_each(&[delivered], 100).unwrap().applied, 1);
    let after = store.verifications.get(&v.id).unwrap().unwrap();
    assert_eq!(Arc::as_ptr(&after), at, "copied");
    assert_eq!(after.sends[0].delivery.status, DeliveryStatus::Delivered);
    // In memory only, until the log's checkpoint saves it.
    assert_eq!(in_sled(&store, &v).sends[0].delivery.status, DeliveryStatus::Accepted);
    store.verifications.save_all().unwrap();
    assert_eq!(in_sled(&store, &v).sends[0].delivery.status, DeliveryStatus::Delivered);
}
