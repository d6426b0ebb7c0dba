//! What the server does when sled stops making progress.
//!
//! sled 0.34 can deadlock under heavy load: a write waits for sled's I/O
//! threads while it holds the lock they need (see the README, Durability).
//! Nothing written completes after that, and a server caught by it would
//! hang for good with its port open. So a thread writes and flushes a
//! heartbeat every few seconds. `/healthz` answers 503 once the last
//! heartbeat that succeeded is five beats old (a disk that fails every
//! write is as unusable as a hung one), and once none has even finished
//! for [`STALL`], the process says why and exits. Every request it
//! answered is on disk already (the write-ahead log and sled's flushes), so
//! a restart by its supervisor loses nothing and replays the log. A store
//! whose writes fail is not exited from: its callers get errors, and a
//! restart would not mend the disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How often the heartbeat is written.
pub(super) const EVERY: Duration = Duration::from_secs(2);

/// How long without a heartbeat before the process exits: far longer than
/// any flush takes, even of a checkpoint on a slow disk.
pub(super) const STALL: Duration = Duration::from_secs(60);

/// The heartbeat and its watchdog, running until this is dropped.
pub(super) struct Watch {
    heartbeat: Heartbeat,
    /// Dropped to stop the heartbeat thread at once.
    stop: Option<mpsc::Sender<()>>,
    beating: Option<thread::JoinHandle<()>>,
}

/// When the last heartbeats ended, shared by the threads.
#[derive(Clone)]
struct Heartbeat {
    start: Instant,
    /// Milliseconds from `start` to the end of the last heartbeat,
    /// whether it succeeded or failed.
    last: Arc<AtomicU64>,
    /// The same, of the last heartbeat that succeeded.
    last_ok: Arc<AtomicU64>,
    every: Duration,
    stopped: Arc<AtomicBool>,
}

impl Watch {
    /// Starts the thread that calls `beat` every `every`, and the one that
    /// calls `stalled` (once) when no beat has finished for `stall`. A beat
    /// that fails has finished: the store answered, with an error, as it
    /// does to every caller; but the store is not fresh until one succeeds.
    pub(super) fn start(
        beat: impl Fn() -> Result<(), sled::Error> + Send + 'static,
        every: Duration,
        stall: Duration,
        stalled: impl FnOnce(Duration) + Send + 'static,
    ) -> std::io::Result<Self> {
        let heartbeat = Heartbeat {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            last_ok: Arc::new(AtomicU64::new(0)),
            every,
            stopped: Arc::new(AtomicBool::new(false)),
        };
        let (stop, stopping) = mpsc::channel::<()>();
        let beating = heartbeat.clone();
        let beating =
            thread::Builder::new().name("waverify-heartbeat".into()).spawn(move || loop {
                let ok = beat().map_err(|error| {
                    tracing::warn!(%error, "store heartbeat: the write failed");
                });
                beating.touch(ok.is_ok());
                if stopping.recv_timeout(beating.every) != Err(RecvTimeoutError::Timeout) {
                    return;
                }
            })?;
        let watching = heartbeat.clone();
        thread::Builder::new().name("waverify-watchdog".into()).spawn(move || {
            while !watching.stopped.load(Relaxed) {
                thread::sleep(every.min(stall) / 2);
                let quiet = watching.quiet_for();
                if quiet >= stall && !watching.stopped.load(Relaxed) {
                    stalled(quiet);
                    return;
                }
            }
        })?;
        Ok(Self { heartbeat, stop: Some(stop), beating: Some(beating) })
    }

    /// Whether a heartbeat succeeded lately: within five beats.
    pub(super) fn fresh(&self) -> bool {
        self.heartbeat.since(&self.heartbeat.last_ok) < self.heartbeat.every * 5
    }
}

impl Drop for Watch {
    /// Stops both threads; returns once the heartbeat's thread, and with it
    /// its handle on the store, is gone.
    fn drop(&mut self) {
        self.heartbeat.stopped.store(true, Relaxed);
        drop(self.stop.take());
        if let Some(beating) = self.beating.take() {
            let _ = beating.join();
        }
    }
}

impl Heartbeat {
    fn touch(&self, ok: bool) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Relaxed);
        if ok {
            self.last_ok.store(now, Relaxed);
        }
    }

    /// How long since the last heartbeat finished.
    fn quiet_for(&self) -> Duration {
        self.since(&self.last)
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(at.load(Relaxed)))
    }
}

/// The heartbeat's value: when it was written, in Unix seconds.
pub(super) fn now_bytes() -> [u8; 8] {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_secs()).to_be_bytes()
}

/// What a server does once the store has stalled: say so and exit.
pub(super) fn exit_on_stall(quiet: Duration) {
    tracing::error!(
        seconds = quiet.as_secs(),
        "the embedded store has finished no write for this long (sled 0.34 can deadlock under \
         heavy load); exiting so that a supervisor restarts waverify: everything answered is on \
         disk and the restart replays it"
    );
    std::process::exit(70);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_millis(20);
    const STALL: Duration = Duration::from_millis(300);

    #[test]
    fn a_store_that_keeps_answering_is_never_taken_for_stalled() {
        let (tx, rx) = mpsc::channel();
        let watch = Watch::start(|| Ok(()), EVERY, STALL, move |q| tx.send(q).unwrap()).unwrap();
        assert!(rx.recv_timeout(STALL * 4).is_err(), "taken for stalled");
        assert!(watch.fresh());
    }

    #[test]
    fn a_write_that_never_returns_is_noticed_and_ends_the_server() {
        let (hang, held) = mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let beats = Arc::new(AtomicU64::new(0));
        let counted = beats.clone();
        // The third write never returns, as in sled's deadlock.
        let beat = move || {
            if counted.fetch_add(1, Relaxed) == 2 {
                let _ = held.lock().unwrap().recv();
            }
            Ok(())
        };
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        let watch = Watch::start(beat, EVERY, STALL, move |q| tx.send(q).unwrap()).unwrap();
        let quiet = rx.recv_timeout(STALL * 10).expect("the stall went unnoticed");
        assert!(quiet >= STALL, "noticed after {quiet:?}");
        assert!(started.elapsed() < STALL * 3, "noticed late: {:?}", started.elapsed());
        assert!(!watch.fresh(), "/healthz would still answer 200");
        drop(hang);
    }

    #[test]
    fn a_store_whose_writes_fail_is_unhealthy_but_not_exited_from() {
        let failing = Arc::new(AtomicBool::new(false));
        let fails = failing.clone();
        let beat = move || match fails.load(Relaxed) {
            true => Err(sled::Error::Io(std::io::Error::other("the disk is gone"))),
            false => Ok(()),
        };
        let (tx, rx) = mpsc::channel();
        let watch = Watch::start(beat, EVERY, STALL, move |q| tx.send(q).unwrap()).unwrap();
        thread::sleep(EVERY * 2);
        assert!(watch.fresh());
        failing.store(true, Relaxed);
        thread::sleep(EVERY * 8);
        assert!(!watch.fresh(), "/healthz would answer 200 while every write fails");
        assert!(rx.recv_timeout(STALL * 2).is_err(), "exited for writes that fail");
        failing.store(false, Relaxed);
        thread::sleep(EVERY * 3);
        assert!(watch.fresh(), "still unhealthy once writes succeed again");
    }

    #[test]
    fn dropping_the_watch_lets_go_of_the_store_at_once() {
        let store = Arc::new(());
        let held = store.clone();
        let watch = Watch::start(
            move || {
                let _ = &held;
                Ok(())
            },
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            |_| {},
        )
        .unwrap();
        let started = Instant::now();
        drop(watch);
        assert_eq!(Arc::strong_count(&store), 1, "the heartbeat still holds the store");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
