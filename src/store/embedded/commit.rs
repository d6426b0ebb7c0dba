//! Group commit: many requests, one flush.
//!
//! Each request that must be durable before it answers sends a job to a
//! dedicated thread: a waiter, or (from a webhook, in a store without a
//! write-ahead log) statuses to apply. The thread takes every job queued
//! so far, applies the statuses, runs one blocking `flush`, and answers
//! them all. The write-ahead log also asks it for its checkpoints. A waiter is only taken after its writes were made, and the
//! flush starts after it is taken, so the flush covers them. Under load one
//! fsync serves dozens of requests, and one wake-up of this thread serves
//! both the webhooks' writes and everyone's flush.
//!
//! sled's own `flush_async` is not used: in 0.34 it can hang under
//! concurrent callers.
//!
//! Nor is sled's `flush` enough on its own for a power cut: see
//! [`SledFiles`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{StatusTrees, StatusUpdate, StoreError, Tally};
use crate::clock::UnixTime;

/// The shortest time between the starts of two flushes: at most a
/// millisecond more before an answer, for far fewer flushes under load.
const MIN_GAP: Duration = Duration::from_millis(1);

/// What to do once the flush that covers a request's writes is over.
type Waiter = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Job {
    Flush(Waiter),
    /// A webhook body's statuses, applied all or nothing, then flushed.
    Statuses {
        updates: Vec<StatusUpdate>,
        now: UnixTime,
        reply: Reply,
    },
}

#[derive(Clone)]
pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

/// sled's files, synced after each flush that something waits for.
///
/// sled 0.34's `flush` makes its log stable with `sync_file_range`, which
/// writes the pages but neither the file's metadata (its length, which
/// grows as the log does) nor a flush of the disk's cache; and the files
/// it keeps values too large for its log in ("blobs") it never syncs. Its
/// periodic flusher would `fsync` now and then, but nothing waits for
/// that. So after a flush returned, a power cut could still take what it
/// wrote: this syncs the log file, and each blob file not synced yet. sled
/// also renames and deletes its snapshot files without syncing their
/// directory, so the directory is synced too whenever its names changed.
pub(super) struct SledFiles {
    db: File,
    dir: PathBuf,
    names: HashSet<OsString>,
    blobs: PathBuf,
    synced_blobs: HashSet<OsString>,
}

/// Shared by the flush thread and the start-up replay.
pub(super) type SharedFiles = Arc<Mutex<SledFiles>>;

impl SledFiles {
    /// The files of the sled store in `dir`, once sled has opened it.
    /// What sled wrote when it opened the store is synced here, the
    /// directory's names included.
    pub(super) fn open(dir: &Path) -> io::Result<SharedFiles> {
        let db = File::open(dir.join("db"))?;
        File::open(dir.join("conf"))?.sync_all()?;
        let mut files = Self {
            db,
            dir: dir.to_owned(),
            names: HashSet::new(),
            blobs: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        };
        files.sync()?;
        Ok(Arc::new(Mutex::new(files)))
    }

    /// Returns once what sled's last flush wrote is on disk.
    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.sync_blobs()?;
        self.db.sync_data()?;
        let names = fs::read_dir(&self.dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<HashSet<_>>>()?;
        if names != self.names {
            File::open(&self.dir)?.sync_all()?;
            self.names = names;
        }
        Ok(())
    }

    fn sync_blobs(&mut self) -> io::Result<()> {
        let entries = match fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut added = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(blob) => blob.sync_data()?,
                    // sled removed it since the listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                added = true;
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if added {
            File::open(&self.blobs)?.sync_all()?;
        }
        Ok(())
    }
}

/// sled's flush, then, for a store on disk, the sync of its files.
pub(super) fn flush_to_disk(db: &sled::Db, files: Option<&SharedFiles>) -> Result<(), String> {
    db.flush().map_err(|e| e.to_string())?;
    match files {
        Some(files) => {
            let mut files = files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            files.sync().map_err(|e| format!("syncing sled's files: {e}"))
        }
        None => Ok(()),
    }
}

impl GroupCommit {
    /// `files` is `None` for a store that lives in memory.
    pub(super) fn start(db: sled::Db, trees: StatusTrees, files: Option<SharedFiles>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("waverify-flush".into())
            .spawn(move || flush_loop(&db, files.as_ref(), &trees, &rx))
            .expect("the operating system refused to start the flush thread");
        Self { jobs: tx }
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
        self.jobs.send(Job::Flush(Box::new(then))).map_err(|_| StoreError::CommitterGone)
    }

    /// Applies a webhook body's statuses and returns once they are on disk.
    pub(super) async fn apply(
        &self,
        updates: Vec<StatusUpdate>,
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Statuses { updates, now, reply };
        self.jobs.send(job).map_err(|_| StoreError::CommitterGone)?;
        match answer.await {
            Ok(Ok(tally)) => Ok(tally),
            Ok(Err(reason)) => Err(StoreError::Flush(reason)),
            Err(_) => Err(StoreError::CommitterGone),
        }
    }
}

type Reply = oneshot::Sender<Result<Tally, String>>;
type StatusReply = (Reply, Result<Tally, String>);
/// A webhook body waiting to be applied.
type Body = (Vec<StatusUpdate>, UnixTime, Reply);

fn flush_loop(
    db: &sled::Db,
    files: Option<&SharedFiles>,
    trees: &StatusTrees,
    rx: &mpsc::Receiver<Job>,
) {
    let mut last_flush = Instant::now() - MIN_GAP;
    // Ends when every `GroupCommit` handle is dropped.
    while let Ok(first) = rx.recv() {
        // Under load, let jobs gather: each flush costs sled a round of
        // I/O-thread work whatever it carries. When idle, flush at once.
        if let Some(wait) = MIN_GAP.checked_sub(last_flush.elapsed()) {
            thread::sleep(wait);
        }
        last_flush = Instant::now();
        let mut waiters = Vec::new();
        let mut bodies = Vec::new();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Flush(waiter) => waiters.push(waiter),
                Job::Statuses { updates, now, reply } => bodies.push((updates, now, reply)),
            }
        }
        let replies = apply_bodies(trees, bodies);
        let flushed = flush_to_disk(db, files);
        for (reply, applied) in replies {
            let answer = match (&flushed, applied) {
                (Ok(()), applied) => applied,
                (Err(reason), _) => Err(reason.clone()),
            };
            let _ = reply.send(answer);
        }
        for waiter in waiters {
            waiter(flushed.clone());
        }
    }
}

/// Applies the bodies one after the other; a body that fails gets its
/// error, and only that body.
fn apply_bodies(trees: &StatusTrees, bodies: Vec<Body>) -> Vec<StatusReply> {
    bodies
        .into_iter()
        .map(|(updates, now, reply)| {
            (reply, trees.apply_each(&updates, now).map_err(|error| error.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sled store on disk, and its files as a server's store has them.
    fn opened() -> (tempfile::TempDir, sled::Db, SharedFiles) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().unwrap();
        let files = SledFiles::open(dir.path()).unwrap();
        (dir, db, files)
    }

    #[test]
    fn the_directory_is_synced_when_its_names_change() {
        let (dir, _db, files) = opened();
        let mut files = files.lock().unwrap();
        assert!(files.names.contains(std::ffi::OsStr::new("db")), "{:?}", files.names);
        let snapshot = dir.path().join("snap.0000000000000001");
        fs::write(&snapshot, b"").unwrap();
        files.sync().unwrap();
        assert!(files.names.contains(std::ffi::OsStr::new("snap.0000000000000001")));
        fs::remove_file(&snapshot).unwrap();
        files.sync().unwrap();
        assert!(!files.names.contains(std::ffi::OsStr::new("snap.0000000000000001")));
    }

    #[test]
    fn each_blob_file_is_synced_once_and_forgotten_once_gone() {
        let (dir, _db, files) = opened();
        let mut files = files.lock().unwrap();
        assert!(files.synced_blobs.is_empty());
        let blobs = dir.path().join("blobs");
        fs::create_dir_all(&blobs).unwrap();
        fs::write(blobs.join("17"), b"a value too large for the log").unwrap();
        fs::write(blobs.join("42"), b"another").unwrap();
        files.sync().unwrap();
        let synced = |files: &SledFiles| {
            let mut names: Vec<_> = files.synced_blobs.iter().cloned().collect();
            names.sort();
            names
        };
        assert_eq!(synced(&files), ["17", "42"]);
        fs::remove_file(blobs.join("17")).unwrap();
        files.sync().unwrap();
        assert_eq!(synced(&files), ["42"]);
    }
}
