//! How the write-ahead log's thread asks to be scheduled.
//!
//! The log thread sleeps twice in every sync: once for its write to reach
//! the disk and once for the disk's cache flush. As a normal thread, each
//! wake-up preempts whichever request thread is running, in the middle of
//! its request, and switches back to it right after. Marked `SCHED_BATCH`,
//! the log thread keeps its full share of the CPU, but a wake-up waits
//! until the running thread blocks or uses up its time slice. Request
//! threads block whenever their requests all wait for a sync, so the wait
//! is usually short; at worst it lasts until the kernel's next tick, which
//! lengthens the slowest answers. On the project's 2-core benchmark this
//! took a webhook from about 25.5 to 23.5 µs of server CPU and added a
//! millisecond or two to the p99 (see the README's Performance section).
//!
//! The thread that fills the log's next segment with zeros ahead of time
//! asks for it too: nothing waits for that work.

use std::io;

/// Marks the calling thread `SCHED_BATCH` on Linux. Elsewhere it does
/// nothing. Needs no privilege: it asks for no more CPU than the thread
/// already has.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(super) fn run_as_batch() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that outlives the call, and
    // pid 0 names the calling thread; the call changes only its policy.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn run_as_batch() -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
pub(super) mod tests {
    use std::fs;

    /// Linux's number for `SCHED_BATCH`, as `/proc` shows it.
    pub(in crate::store::embedded) const SCHED_BATCH: u32 = 3;

    /// The scheduling policy of each of this process's threads named
    /// `name`, from `/proc` (the 41st field of a thread's `stat`).
    pub(in crate::store::embedded) fn policies_of(name: &str) -> Vec<u32> {
        let mut policies = Vec::new();
        for task in fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let task = task.expect("a task").path();
            let comm = fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let Ok(stat) = fs::read_to_string(task.join("stat")) else { continue };
            // The name, in parentheses, may hold spaces: fields are
            // counted from after its closing one, which ends field 2.
            let after_name = &stat[stat.rfind(')').expect("a stat line") + 1..];
            let policy = after_name.split_whitespace().nth(41 - 3).expect("field 41");
            policies.push(policy.parse().expect("a number"));
        }
        policies
    }

    #[test]
    fn a_thread_that_asks_runs_as_batch() {
        let policies = std::thread::Builder::new()
            .name("sched-test-asks".into())
            .spawn(|| {
                super::run_as_batch().expect("SCHED_BATCH needs no privilege");
                policies_of("sched-test-asks")
            })
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(policies, [SCHED_BATCH]);
        let others = std::thread::Builder::new()
            .name("sched-test-none".into())
            .spawn(|| policies_of("sched-test-none"))
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(others, [0], "a thread that does not ask stays SCHED_OTHER");
    }
}
