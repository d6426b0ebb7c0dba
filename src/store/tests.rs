use proptest::prelude::*;

use super::*;
use crate::domain::{DeliveryError, DeliveryStatus, PhoneNumber};

fn temp_store() -> Store {
    let db = sled::Config::new().temporary(true).open().unwrap();
    Store {
        verifications: db.open_tree("verifications").unwrap(),
        messages: db.open_tree("messages").unwrap(),
        parked: db.open_tree("parked").unwrap(),
        parked_by_time: db.open_tree("parked_by_time").unwrap(),
        purge_at: db.open_tree("purge_at").unwrap(),
        commit: GroupCommit::start(db.clone()),
        db,
    }
}

fn verification(n: u8) -> Verification {
    let id = VerificationId::parse(&format!("{n:02x}{}", "0".repeat(30))).unwrap();
    Verification::new(id, PhoneNumber::parse("+15550001234").unwrap(), vec![0; 32], 1_000, 600, 5)
}

fn update(message_id: &str, status: DeliveryStatus, timestamp: i64) -> StatusUpdate {
    StatusUpdate {
        message_id: message_id.into(),
        callback: None,
        event: StatusEvent { status, timestamp, error: None },
    }
}

#[test]
fn statuses_before_the_send_is_recorded_are_parked_then_applied() {
    let store = temp_store();
    let v = verification(1);
    store.insert(&v, 10_000).unwrap();
    let early = [
        update("wamid.A", DeliveryStatus::Delivered, 5),
        update("wamid.A", DeliveryStatus::Sent, 4),
    ];
    let tally = store.record_statuses(&early, 100).unwrap();
    assert_eq!(tally, Tally { applied: 0, unchanged: 0, parked: 2 });
    let after = store.record_accepted(&v.id, "wamid.A").unwrap().unwrap();
    assert_eq!(after.delivery.status, DeliveryStatus::Delivered);
    assert_eq!(after.delivery.timestamps.len(), 2);
    assert!(store.parked.is_empty(), "claimed statuses leave the parking");
    let late = store.record_statuses(&[update("wamid.A", DeliveryStatus::Read, 6)], 100).unwrap();
    assert_eq!(late.applied, 1);
}

#[test]
fn purge_deletes_what_is_due_and_nothing_else() {
    let store = temp_store();
    let (due, kept) = (verification(1), verification(2));
    store.insert(&due, 5_000).unwrap();
    store.insert(&kept, 5_001).unwrap();
    store.record_accepted(&due.id, "wamid.DUE").unwrap();
    store.record_statuses(&[update("wamid.STRAY", DeliveryStatus::Read, 1)], 4_000).unwrap();
    store.record_statuses(&[update("wamid.FRESH", DeliveryStatus::Read, 1)], 4_500).unwrap();

    assert_eq!(store.purge(5_000, 4_000).unwrap(), purge::Purged::default(), "nothing is due yet");
    let purged = store.purge(5_001, 4_001).unwrap();
    assert_eq!(purged, purge::Purged { verifications: 1, parked: 1 });
    assert!(store.get(&due.id).unwrap().is_none());
    assert!(store.get(&kept.id).unwrap().is_some());
    assert!(store.messages.get("wamid.DUE").unwrap().is_none(), "its message index goes too");
    assert!(store.parked.get("wamid.FRESH").unwrap().is_some());
    assert_eq!(store.purge(5_001, 4_001).unwrap(), purge::Purged::default(), "idempotent");
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
        store.insert(&v, 100_000).unwrap();
        let arrivals: Vec<StatusUpdate> = order
            .iter()
            .map(|&i| StatusUpdate {
                message_id: "wamid.P".into(),
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
            store.record_statuses(batch, 50).unwrap();
        }
        store.record_accepted(&v.id, "wamid.P").unwrap();
        for chunk in after.chunks(cuts[0]) {
            store.record_statuses(chunk, 50).unwrap();
        }

        let got = store.get(&v.id).unwrap().unwrap().delivery;
        let (status, times, error) = model(&events);
        prop_assert_eq!(got.status, status);
        prop_assert_eq!(got.timestamps.into_iter().collect::<Vec<_>>(), times);
        prop_assert_eq!(got.error, error);
    }
}
