//! Cancellation by signal: the CLI (and later the daemon) records SIGINT/SIGTERM here, and every
//! job checks it at its next step boundary, where it stops and undoes what it did. Nothing is
//! interrupted half-way through a step.

use std::sync::atomic::{AtomicU8, Ordering};

static REQUESTED: AtomicU8 = AtomicU8::new(0);

/// Signals that ask a job to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

/// Asks every running job to stop at its next step boundary; returns true the first time.
pub fn request(sig: Signal) -> bool {
    let v = match sig {
        Signal::Interrupt => 1,
        Signal::Terminate => 2,
    };
    REQUESTED
        .compare_exchange(0, v, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// The signal that asked jobs to stop, if any.
pub fn requested() -> Option<&'static str> {
    match REQUESTED.load(Ordering::SeqCst) {
        1 => Some("SIGINT"),
        2 => Some("SIGTERM"),
        _ => None,
    }
}

/// Jobs of this process that an administrator asked to stop (the daemon runs many at once, so
/// a signal is not enough): each stops at its next step boundary and undoes what it did.
static JOBS: std::sync::Mutex<std::collections::BTreeSet<i64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Asks job `id` (or the jobs of bulk run `id`) to stop at the next step boundary.
pub fn request_job(id: i64) {
    JOBS.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
}

/// Whether job `id` was asked to stop.
pub fn job_requested(id: i64) -> bool {
    JOBS.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
}

/// Forgets a finished job's request.
pub fn forget_job(id: i64) {
    JOBS.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}
