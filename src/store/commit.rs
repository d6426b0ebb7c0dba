//! Group commit: many requests, one flush.
//!
//! Each request that must be durable before it answers sends a waiter to a
//! dedicated thread. The thread takes every waiter queued so far, runs one
//! blocking `flush`, and wakes them all. A waiter is only taken after its
//! writes were made, and the flush starts after it is taken, so the flush
//! covers them. Under load one fsync serves dozens of requests.
//!
//! sled's own `flush_async` is not used: in 0.34 it can hang under
//! concurrent callers.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The shortest time between the starts of two flushes: at most a
/// millisecond more before an answer, for far fewer flushes under load.
const MIN_GAP: Duration = Duration::from_millis(1);

use tokio::sync::oneshot;

use super::StoreError;

/// What to do once the flush that covers a request's writes is over.
type Waiter = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Clone)]
pub(super) struct GroupCommit {
    waiters: mpsc::Sender<Waiter>,
}

impl GroupCommit {
    pub(super) fn start(db: sled::Db) -> Self {
        let (tx, rx) = mpsc::channel::<Waiter>();
        thread::Builder::new()
            .name("waverify-flush".into())
            .spawn(move || flush_loop(&db, &rx))
            .expect("the operating system refused to start the flush thread");
        Self { waiters: tx }
    }

    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.after_flush(move |result| {
            // A waiter whose request went away no longer needs an answer.
            let _ = tx.send(result);
        })?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Flush(reason)),
            Err(_) => Err(StoreError::CommitterGone),
        }
    }

    /// Runs `then` once every write made before this call is on disk (or
    /// the flush failed), on the flush thread.
    pub(super) fn after_flush(
        &self,
        then: impl FnOnce(Result<(), String>) + Send + 'static,
    ) -> Result<(), StoreError> {
        self.waiters.send(Box::new(then)).map_err(|_| StoreError::CommitterGone)
    }
}

fn flush_loop(db: &sled::Db, rx: &mpsc::Receiver<Waiter>) {
    // Ends when every `GroupCommit` handle is dropped.
    let mut last_flush = Instant::now() - MIN_GAP;
    while let Ok(first) = rx.recv() {
        // Under load, let waiters gather: each flush costs sled a round of
        // I/O-thread work whatever it carries. When idle, flush at once.
        if let Some(wait) = MIN_GAP.checked_sub(last_flush.elapsed()) {
            thread::sleep(wait);
        }
        last_flush = Instant::now();
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = db.flush().map(drop).map_err(|e| e.to_string());
        for waiter in batch {
            waiter(result.clone());
        }
    }
}
