//! Write-ahead log: what makes a webhook's statuses and a check's count
//! durable without a sled flush.
//!
//! A sled `flush` costs a round of work in sled's I/O threads however
//! little it carries. Appending a few hundred bytes to a file of our own
//! and calling `fdatasync` costs one write and one sync. So a webhook body
//! or a check is written to sled without a flush, and a record of it is
//! appended here; one thread takes every record waiting, writes them,
//! syncs once and answers them all (group commit). A request is answered
//! only after the sync that covers its record has returned.
//!
//! On disk: a directory of segments named by a rising number. A segment
//! is a run of records, each `[length: u32 LE][crc32: u32 LE][payload]`,
//! the checksum taken over the segment's number and the payload, the
//! payload in postcard. Reading stops at the first record that is cut
//! short or fails its checksum: only a record being written when the
//! process died can be, and it was never answered. After a write or a sync
//! fails, the next record goes to a new segment, so that no answered
//! record ever follows a damaged one.
//!
//! Checkpoints: once a segment passes [`SEGMENT_BYTES`], the log moves on
//! to a new segment. Every [`SEGMENTS_PER_CHECKPOINT`] segments (or once
//! records are [`CHECKPOINT_AGE`] old), it also makes a checkpoint, on a
//! thread of its own: what the older segments' records changed in memory
//! only is written to sled, sled is flushed, and their files are deleted.
//! Every record of those segments was applied (to sled or to memory)
//! before the checkpoint started, so once the flush is done they are all
//! in sled on disk. The log holds at most a few segments, and the next one
//! made ready.
//!
//! At start-up, before anything is served, every segment is replayed in
//! order, sled is flushed, and the segments are deleted. Replaying a record
//! is safe whatever sled already holds, including writes made after it and
//! made durable by a sled flush (sends, resends, cancels):
//! - statuses are applied as delivery does it, a fold that only moves
//!   forward; parked statuses are a set and a message's index is set once.
//!   Applying a body again, or after later ones, changes nothing more.
//! - a check is replayed as a merge, not as a copy of the verification
//!   (see [`Verification::absorb_check`]): attempts left only go down, and
//!   only a pending verification takes the check's end. No other write
//!   adds attempts or makes a verification pending again, so the merge
//!   never undoes one. The count of wrong codes is merged as a maximum.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::commit::{self, GroupCommit};
use super::counters;
use super::sched;
use super::{SledStore, StatusTrees, StatusUpdate, StoreError, Tally};
use crate::clock::UnixTime;
use crate::domain::{Channel, Checked, Limit, Verification, VerificationId, VerificationStatus};
use crate::store::Counter;

/// The log's directory, inside the store's.
pub(super) const DIR: &str = "wal";

/// Once a segment is this large, a new one is started.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// A checkpoint is made every this many segments: each writes to sled
/// every verification changed since the last one, so fewer checkpoints
/// write a verification changed many times fewer times.
const SEGMENTS_PER_CHECKPOINT: u32 = 4;

/// Records this old are checkpointed too, so that a quiet server does not
/// keep old records to replay.
const CHECKPOINT_AGE: Duration = Duration::from_secs(60);

/// The longest a sync waits for more records, after the start of the one
/// before: at most 400 microseconds more before an answer, for far fewer
/// syncs under load. It waits less when every request being served is
/// already waiting for it (see [`Pressure`]). On this project's 2-core
/// benchmark a gap of a millisecond left a core partly idle (requests
/// waited for the sync, not for CPU), and 250 µs cost more CPU per request
/// than it saved in waiting.
const MIN_GAP: Duration = Duration::from_micros(400);

const HEADER: usize = 8;

/// Longer than any record written (a webhook body is at most 3 MB): a
/// length above it is damage.
const MAX_RECORD: usize = 16 * 1024 * 1024;

/// What a check left behind, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CheckRecord {
    id: VerificationId,
    attempts_left: u32,
    status: VerificationStatus,
    approved_channel: Option<Channel>,
    /// The number's counter of wrong codes (its key) and its count after
    /// this check, when the code was wrong.
    wrong_codes: Option<(Vec<u8>, u64)>,
}

/// A record as it is written.
#[derive(Serialize)]
enum EntryRef<'a> {
    Statuses { now: UnixTime, updates: &'a [StatusUpdate] },
    Check(&'a CheckRecord),
}

/// A record as it is read back: the same encoding, owned.
#[derive(Debug, Deserialize)]
enum Entry {
    Statuses { now: UnixTime, updates: Vec<StatusUpdate> },
    Check(CheckRecord),
}

/// A counter's count after an event was counted, to be logged with the
/// check that counted it.
#[derive(Debug)]
pub struct Counted {
    key: Vec<u8>,
    count: u64,
}

/// A record's payload, and where to say once it is on disk.
type Job = (Vec<u8>, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub(super) struct Wal {
    jobs: mpsc::Sender<Job>,
    pressure: Arc<Pressure>,
}

/// What tells the log thread that waiting longer gathers nothing more: how
/// many requests the server is serving, and how many of those wait for a
/// sync. When they are the same, no record is coming until the sync
/// answers them, and waiting out the gap would only leave the cores idle.
#[derive(Default)]
struct Pressure {
    serving: AtomicUsize,
    waiting: AtomicUsize,
    log_thread: OnceLock<thread::Thread>,
}

impl Pressure {
    fn all_waiting(&self) -> bool {
        let waiting = self.waiting.load(Relaxed);
        waiting > 0 && waiting >= self.serving.load(Relaxed)
    }

    fn wake_if_all_waiting(&self) {
        if self.all_waiting() {
            if let Some(thread) = self.log_thread.get() {
                thread.unpark();
            }
        }
    }
}

/// Held while a request is being served (see [`Pressure`]).
pub struct Serving(Arc<Pressure>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Relaxed);
        self.0.wake_if_all_waiting();
    }
}

/// Held while a record waits for its sync, however that wait ends.
struct Waiting<'a>(&'a Pressure);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

impl Wal {
    /// Replays what `dir` holds into `store`, makes it durable in sled,
    /// and starts the thread that appends to a new segment.
    pub(super) fn open(dir: &Path, store: &SledStore) -> Result<Self, StoreError> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let segments = segments(dir)?;
        let mut records = 0;
        for &number in &segments {
            let path = segment_path(dir, number);
            let bytes = fs::read(&path)?;
            let (payloads, clean) = read_records(&bytes, number);
            records += payloads.len();
            store.replay(&payloads).map_err(|e| {
                StoreError::Log(io::Error::other(format!(
                    "{}: a record passes its checksum but cannot be read ({e}); move the file \
                     aside to start without it",
                    path.display()
                )))
            })?;
            if !clean {
                // A crash tears the last write, which was never answered;
                // anything else is damage. Either way the file is kept,
                // under another name, for whoever wants to look.
                let kept = dir.join(format!("{number:020}.log.unreadable"));
                tracing::warn!(
                    segment = %path.display(),
                    records = payloads.len(),
                    kept = %kept.display(),
                    "write-ahead log segment ends in a torn or damaged record: what precedes it \
                     was replayed, what follows it was not"
                );
                fs::copy(&path, &kept)?;
            }
        }
        let next = match segments.last() {
            None => 1,
            Some(&last) => last.checked_add(1).ok_or_else(|| {
                StoreError::Log(io::Error::other(format!(
                    "{}: no segment can follow this one; move it aside",
                    segment_path(dir, last).display()
                )))
            })?,
        };
        if !segments.is_empty() {
            commit::flush_to_disk(&store.db, store.files.as_ref()).map_err(StoreError::Flush)?;
            tracing::info!(segments = segments.len(), records, "write-ahead log replayed");
        }
        let disk = Directory::new(dir.to_owned());
        let wal = Self::start(disk, next, store.commit.clone(), saver(store), MIN_GAP)?;
        remove_before(dir, next)?;
        Ok(wal)
    }

    /// Starts the thread that appends to segment `number` of `disk`.
    /// `save` writes to sled what records hold and only memory has, at
    /// each checkpoint; `gap` is the longest a sync waits for more records.
    fn start<D: Disk>(
        disk: D,
        number: u64,
        commit: GroupCommit,
        save: Save,
        gap: Duration,
    ) -> io::Result<Self> {
        let log = Log::start(Arc::new(disk), number)?;
        let checkpoints = Checkpoints::start(commit, save)?;
        let (tx, rx) = mpsc::channel();
        let pressure = Arc::new(Pressure::default());
        let shared = pressure.clone();
        let thread = thread::Builder::new().name("waverify-log".into()).spawn(move || {
            if let Err(error) = sched::run_as_batch() {
                tracing::warn!(%error, "write-ahead log: SCHED_BATCH refused, runs as usual");
            }
            log_loop(log, &checkpoints, &rx, &shared, gap)
        })?;
        let _ = pressure.log_thread.set(thread.thread().clone());
        Ok(Self { jobs: tx, pressure })
    }

    /// Counts a request as being served until the guard is dropped.
    pub(super) fn serving(&self) -> Serving {
        self.pressure.serving.fetch_add(1, Relaxed);
        Serving(self.pressure.clone())
    }

    /// Applies a webhook body's statuses, in the caller's thread, and
    /// returns once they are logged and synced.
    pub(super) async fn apply(
        &self,
        trees: &StatusTrees,
        updates: Vec<StatusUpdate>,
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        // Applied before it is logged: a checkpoint deletes a record only
        // after a save (of what memory has) and a sled flush that started
        // after the record was taken, so what the record did is in sled by
        // then.
        let tally = trees.apply_each(&updates, now)?;
        self.append(&EntryRef::Statuses { now, updates: &updates }).await?;
        Ok(tally)
    }

    /// Returns once `entry` is in the log and synced.
    async fn append(&self, entry: &EntryRef<'_>) -> Result<(), StoreError> {
        let payload = postcard::to_stdvec(entry)?;
        if payload.len() > MAX_RECORD {
            return Err(StoreError::Flush("write-ahead log: record too large".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs.send((payload, reply)).map_err(|_| StoreError::CommitterGone)?;
        self.pressure.waiting.fetch_add(1, Relaxed);
        let _waiting = Waiting(&self.pressure);
        self.pressure.wake_if_all_waiting();
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Flush(reason)),
            Err(_) => Err(StoreError::CommitterGone),
        }
    }
}

impl SledStore {
    /// Counts one event like [`SledStore::add`], and returns the new count for
    /// [`SledStore::commit_check`].
    pub fn add_counted(
        &self,
        counter: Counter,
        subject: &str,
        limit: Limit,
        now: UnixTime,
    ) -> Result<Counted, StoreError> {
        let key = counters::key(counter, subject, limit, now);
        let count = if counters::logged(counter) {
            self.logged.add(&key)?
        } else {
            counters::read(self.counters.update_and_fetch(&key, |old| {
                Some((counters::read(old.map(sled::IVec::from)) + 1).to_be_bytes().to_vec())
            })?)
        };
        Ok(Counted { key, count })
    }

    /// Returns once what a check wrote is durable: `v` as [`SledStore::update`]
    /// left it, and the count of wrong codes it added, if it did. With a
    /// log, that is one record in it; without one (a store that lives in
    /// memory), a sled flush.
    pub async fn commit_check(
        &self,
        v: &Verification,
        counted: Option<Counted>,
    ) -> Result<(), StoreError> {
        let Some(wal) = &self.wal else { return self.commit().await };
        let record = CheckRecord {
            id: v.id.clone(),
            attempts_left: v.attempts_left,
            status: v.status,
            approved_channel: v.approved_channel,
            wrong_codes: counted.map(|c| (c.key, c.count)),
        };
        // `update` wrote the verification before this record is made.
        wal.append(&EntryRef::Check(&record)).await
    }

    /// Applies logged records, in order.
    fn replay(&self, payloads: &[&[u8]]) -> Result<(), StoreError> {
        let trees = self.status_trees(false);
        for payload in payloads {
            match postcard::from_bytes::<Entry>(payload)? {
                Entry::Statuses { now, updates } => drop(trees.apply_each(&updates, now)?),
                Entry::Check(record) => self.replay_check(&record)?,
            }
        }
        Ok(())
    }

    fn replay_check(&self, r: &CheckRecord) -> Result<(), StoreError> {
        if let Some((key, count)) = &r.wrong_codes {
            self.logged.merge(key, *count)?;
        }
        // A verification purged since is not brought back.
        let checked = Checked {
            attempts_left: r.attempts_left,
            status: r.status,
            approved_channel: r.approved_channel,
        };
        self.update(&r.id, |v| v.absorb_check(checked))?;
        Ok(())
    }
}

/// Where segments are kept: a directory of files, or in tests a disk that
/// forgets whatever was not synced.
trait Disk: Send + Sync + 'static {
    type File: SegmentFile;
    /// A new, empty segment, whose name is durable when this returns.
    fn create(&self, number: u64) -> io::Result<Self::File>;
    /// Deletes the segments numbered below `keep`.
    fn remove_before(&self, keep: u64) -> io::Result<()>;
}

trait SegmentFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Returns once what was written is on disk (`fdatasync`).
    fn sync(&mut self) -> io::Result<()>;
}

/// Segments as files in a directory, each written full of zeros before it
/// takes records: overwriting blocks that already exist changes no
/// metadata, so `fdatasync` writes only the data, without a journal commit
/// (about half the time and work of a sync that grows the file). The next
/// segment is made ready in the background while the current one fills.
struct Directory {
    dir: PathBuf,
    next: Mutex<Option<(u64, thread::JoinHandle<io::Result<File>>)>>,
}

impl Directory {
    fn new(dir: PathBuf) -> Self {
        Self { dir, next: Mutex::new(None) }
    }
}

/// A segment of `SEGMENT_BYTES` zeros, synced, whose name is durable. A
/// crash while it is made leaves a file of zeros, which holds no records.
/// A file of that number can only be one made ahead and not used (records
/// go only to numbers at or below the current segment's): it is made
/// again.
fn zeroed_segment(dir: &Path, number: u64) -> io::Result<File> {
    let path = segment_path(dir, number);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    let zeros = vec![0; 1024 * 1024];
    let mut left = SEGMENT_BYTES;
    while left > 0 {
        let chunk = left.min(zeros.len() as u64) as usize;
        Write::write_all(&mut file, &zeros[..chunk])?;
        left -= chunk as u64;
    }
    file.sync_all()?;
    sync_dir(dir)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

impl Disk for Directory {
    type File = File;

    fn create(&self, number: u64) -> io::Result<File> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let file = match next.take() {
            Some((n, ready)) if n == number => {
                ready.join().map_err(|_| io::Error::other("preparing a segment panicked"))??
            }
            _ => zeroed_segment(&self.dir, number)?,
        };
        let dir = self.dir.clone();
        // Bulk work that nobody waits for: batch, like the log thread. (A
        // thread started from the log thread would inherit that policy
        // anyway; the first one is started at open, from another thread.)
        let following =
            thread::Builder::new().name("waverify-log-prepare".into()).spawn(move || {
                let _ = sched::run_as_batch();
                zeroed_segment(&dir, number + 1)
            })?;
        *next = Some((number + 1, following));
        Ok(file)
    }

    fn remove_before(&self, keep: u64) -> io::Result<()> {
        remove_before(&self.dir, keep)
    }
}

impl SegmentFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

struct Segment<F> {
    file: F,
    number: u64,
    len: u64,
}

struct Log<D: Disk> {
    disk: Arc<D>,
    segment: Segment<D::File>,
    /// A write or sync failed: what the segment holds after its last
    /// good record is unknown, so nothing more is appended to it.
    broken: bool,
    /// Segments started since the last checkpoint.
    since_checkpoint: u32,
    /// When the first record since the last checkpoint was written.
    oldest: Option<Instant>,
}

impl<D: Disk> Log<D> {
    fn start(disk: Arc<D>, number: u64) -> io::Result<Self> {
        let file = disk.create(number)?;
        let segment = Segment { file, number, len: 0 };
        Ok(Self { disk, segment, broken: false, since_checkpoint: 0, oldest: None })
    }

    fn old(&self) -> bool {
        self.oldest.is_some_and(|t| t.elapsed() >= CHECKPOINT_AGE)
    }

    fn due(&self) -> bool {
        self.broken || self.segment.len >= SEGMENT_BYTES || self.old()
    }

    /// Moves on to a new segment and, every few segments or once records
    /// are old, makes a checkpoint: has the older segments deleted once
    /// what they hold is in sled on disk.
    fn checkpoint(&mut self, checkpoints: &Checkpoints) -> io::Result<()> {
        let next = self.segment.number + 1;
        let file = self.disk.create(next)?;
        self.segment = Segment { file, number: next, len: 0 };
        self.broken = false;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= SEGMENTS_PER_CHECKPOINT || self.old() {
            checkpoints.delete_before(self.disk.clone(), next);
            self.since_checkpoint = 0;
            self.oldest = None;
        }
        Ok(())
    }

    /// Writes `bytes` at the end of the segment and waits until they are
    /// on disk.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.oldest.get_or_insert_with(Instant::now);
        let file = &mut self.segment.file;
        let written = file.write_all(bytes).and_then(|()| file.sync());
        match written {
            Ok(()) => self.segment.len += bytes.len() as u64,
            Err(_) => self.broken = true,
        }
        written
    }
}

/// Writes to sled what records hold and only memory has.
type Save = Box<dyn Fn() -> io::Result<()> + Send>;

/// What `store` keeps in memory only, until a checkpoint: the changes
/// checks and statuses made to verifications, and the counts of wrong
/// codes.
fn saver(store: &SledStore) -> Save {
    let (verifications, logged) = (store.verifications.clone(), store.logged.clone());
    Box::new(move || {
        verifications.save_all().map_err(io::Error::other)?;
        logged.save().map_err(io::Error::other)
    })
}

/// The rest of a checkpoint once the log has moved on to a new segment,
/// on a thread of its own so that appends go on meanwhile: what only
/// memory has is saved to sled, then sled is flushed, then the older
/// segments are deleted.
struct Checkpoints {
    jobs: mpsc::Sender<Checkpoint>,
}

type Checkpoint = Box<dyn FnOnce(&Save, &GroupCommit) + Send>;

impl Checkpoints {
    fn start(commit: GroupCommit, save: Save) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Checkpoint>();
        thread::Builder::new().name("waverify-checkpoint".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                job(&save, &commit);
            }
        })?;
        Ok(Self { jobs: tx })
    }

    fn delete_before<D: Disk>(&self, disk: Arc<D>, keep: u64) {
        // If this thread is gone, the segments stay for the next start.
        let _ = self.jobs.send(Box::new(move |save, commit| {
            // Counts taken by records of the older segments were made
            // before those records were taken, so before this save.
            if let Err(error) = save() {
                tracing::warn!(%error, "write-ahead log: no checkpoint, counts not saved");
                return;
            }
            // If the flush thread is gone, nothing is durable any more and
            // every request fails: the files stay for the next start.
            let _ = commit.after_flush(move |flushed| {
                if flushed.is_ok() {
                    match disk.remove_before(keep) {
                        Ok(()) => tracing::info!(kept_from = keep, "write-ahead log checkpoint"),
                        Err(error) => {
                            tracing::warn!(%error, "could not delete checkpointed log segments");
                        }
                    }
                }
            });
        }));
    }
}

fn log_loop<D: Disk>(
    mut log: Log<D>,
    checkpoints: &Checkpoints,
    rx: &mpsc::Receiver<Job>,
    pressure: &Pressure,
    gap: Duration,
) {
    let mut buffer = Vec::new();
    let mut replies = Vec::new();
    let mut last_sync = Instant::now() - gap;
    let mut checkpoint_failed = false;
    // Ends when every `Wal` handle is dropped.
    while let Ok(first) = rx.recv() {
        // Under load, let records gather: each sync costs the kernel about
        // the same whatever it carries. When idle, or when every request
        // being served already waits for this sync, sync at once.
        let deadline = last_sync + gap;
        loop {
            let now = Instant::now();
            if now >= deadline || pressure.all_waiting() {
                break;
            }
            thread::park_timeout(deadline - now);
        }
        last_sync = Instant::now();
        // Records are taken only once they were applied to sled (or, for
        // counts of wrong codes, to memory), and a checkpoint starts before
        // the next ones are taken: the save and the sled flush it asks for
        // cover every record of the segments it deletes.
        let ready = if log.due() { log.checkpoint(checkpoints) } else { Ok(()) };
        // A segment that is only full can take more records meanwhile.
        let ready = match ready {
            Err(error) if !log.broken => {
                if !checkpoint_failed {
                    tracing::warn!(%error, "write-ahead log: no new segment; the current one grows");
                }
                checkpoint_failed = true;
                Ok(())
            }
            other => {
                checkpoint_failed &= other.is_err();
                other
            }
        };
        buffer.clear();
        for (payload, reply) in std::iter::once(first).chain(rx.try_iter()) {
            frame(&mut buffer, log.segment.number, &payload);
            replies.push(reply);
        }
        let written = ready
            .and_then(|()| log.append(&buffer))
            .map_err(|error| format!("write-ahead log: {error}"));
        for reply in replies.drain(..) {
            let _ = reply.send(written.clone());
        }
        if buffer.capacity() > 4 * MAX_RECORD {
            buffer = Vec::new();
        }
    }
}

/// Appends one record to `buffer`. `payload` is at most `MAX_RECORD`.
fn frame(buffer: &mut Vec<u8>, segment: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a record is at most MAX_RECORD");
    buffer.extend_from_slice(&len.to_le_bytes());
    buffer.extend_from_slice(&checksum(segment, payload).to_le_bytes());
    buffer.extend_from_slice(payload);
}

fn checksum(segment: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The payloads of the whole records at the start of `bytes`, and whether
/// the segment ended cleanly after them (`false`: a torn or damaged tail).
fn read_records(bytes: &[u8], segment: u64) -> (Vec<&[u8]>, bool) {
    let mut payloads = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((header, body)) = rest.split_first_chunk::<HEADER>() else {
            return (payloads, false);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            // Never written: what a segment holds after its last record.
            return (payloads, true);
        }
        if len > MAX_RECORD || body.len() < len {
            return (payloads, false);
        }
        let (payload, next) = body.split_at(len);
        if checksum(segment, payload) != crc {
            return (payloads, false);
        }
        payloads.push(payload);
        rest = next;
    }
    (payloads, true)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

/// The numbers of the segments in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let number: Option<u64> =
            name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok());
        numbers.extend(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Deletes the segments numbered below `keep`.
fn remove_before(dir: &Path, keep: u64) -> io::Result<()> {
    for number in segments(dir)? {
        if number < keep {
            fs::remove_file(segment_path(dir, number))?;
        }
    }
    Ok(())
}

/// Makes the names in `dir` (a file created, or removed) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
