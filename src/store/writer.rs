//! The webhook writer: one thread that applies webhook bodies in batches.
//!
//! Each body waits for the batch that holds it to be applied in one sled
//! transaction and flushed. The flush is the group commit's: while one
//! batch is being flushed, the writer already applies the next. A failure
//! fails every body of the batch, none of which is then acknowledged, so
//! Meta sends each again.

use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use super::commit::GroupCommit;
use super::{StatusTrees, StatusUpdate, StoreError, Tally};
use crate::clock::UnixTime;

struct Job {
    updates: Vec<StatusUpdate>,
    now: UnixTime,
    reply: oneshot::Sender<Result<Tally, String>>,
}

#[derive(Clone)]
pub(super) struct StatusWriter {
    jobs: mpsc::Sender<Job>,
}

/// The most bodies one transaction takes: a bound on its size and on how
/// long the first body in it waits.
const MAX_BATCH: usize = 16;

impl StatusWriter {
    pub(super) fn start(commit: GroupCommit, trees: StatusTrees) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("waverify-webhooks".into())
            .spawn(move || write_loop(&commit, &trees, &queue))
            .expect("the operating system refused to start the webhook writer");
        Self { jobs }
    }

    pub(super) async fn apply(
        &self,
        updates: Vec<StatusUpdate>,
        now: UnixTime,
    ) -> Result<Tally, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { updates, now, reply }).map_err(|_| StoreError::CommitterGone)?;
        match answer.await {
            Ok(Ok(tally)) => Ok(tally),
            Ok(Err(reason)) => Err(StoreError::Flush(reason)),
            Err(_) => Err(StoreError::CommitterGone),
        }
    }
}

fn write_loop(commit: &GroupCommit, trees: &StatusTrees, queue: &mpsc::Receiver<Job>) {
    // Ends when every `StatusWriter` handle is dropped.
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        let bodies: Vec<(&[StatusUpdate], UnixTime)> =
            batch.iter().map(|job| (job.updates.as_slice(), job.now)).collect();
        let applied = trees.apply(&bodies).map_err(|e| e.to_string());
        let replies: Vec<_> = batch.into_iter().map(|job| job.reply).collect();
        let tallies = match applied {
            Ok(tallies) => tallies,
            Err(reason) => {
                fail(replies, &reason);
                continue;
            }
        };
        let answer = move |flushed: Result<(), String>| match flushed {
            Ok(()) => {
                for (reply, tally) in replies.into_iter().zip(tallies) {
                    let _ = reply.send(Ok(tally));
                }
            }
            Err(reason) => {
                for reply in replies {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        };
        if commit.after_flush(answer).is_err() {
            // The flush thread is gone: the replies were dropped with the
            // closure, and every waiting request reports the store as gone.
            return;
        }
    }
}

fn fail(replies: Vec<oneshot::Sender<Result<Tally, String>>>, reason: &str) {
    for reply in replies {
        let _ = reply.send(Err(reason.to_owned()));
    }
}
