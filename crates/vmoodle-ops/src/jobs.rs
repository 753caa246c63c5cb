//! Jobs as the user sees them, and recovery: a job whose process is gone (killed, crashed, the
//! machine rebooted) is claimed by the next command that takes the home's lock, or by
//! `vmoodle jobs recover`, and undone from its undo records; a job past its point of no return
//! (a delete that already dropped data) is finished instead.

use anyhow::Result;
use serde::Serialize;
use vmoodle_registry::{Job, JobFilter};

use crate::journal::{self, Journal, StepRecord, UndoEntry};
use crate::Home;

/// A job with its journal decoded, for `jobs show` and the daemon.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: i64,
    pub kind: String,
    pub target: String,
    pub state: String,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub steps: Vec<StepRecord>,
    pub undo: Vec<UndoEntry>,
    pub undone: Vec<String>,
    pub error: Option<String>,
    /// Whether the job passed its point of no return (it is finished, never undone).
    pub forward: bool,
    /// `cli:USER`, `web:ADMIN`, `api:TOKEN` or `scheduler`.
    pub started_by: String,
    /// The bulk run it belongs to.
    pub parent: Option<i64>,
    pub cancel_requested: bool,
    /// Log lines.
    pub log: Vec<String>,
    pub updated_at: i64,
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id,
            kind: j.kind.clone(),
            target: j.target.clone(),
            state: j.state.clone(),
            owner: j.owner.clone(),
            started_at: j.started_at,
            finished_at: j.finished_at,
            steps: serde_json::from_str(&j.steps).unwrap_or_default(),
            undo: serde_json::from_str(&j.undo).unwrap_or_default(),
            undone: serde_json::from_str(&j.undone).unwrap_or_default(),
            error: j.error.clone(),
            forward: j.forward.is_some(),
            started_by: j.started_by.clone(),
            parent: j.parent,
            cancel_requested: j.cancel_requested,
            log: j.log.lines().map(str::to_string).collect(),
            updated_at: j.updated_at,
        }
    }
}

pub async fn list(home: &Home, filter: &JobFilter) -> Result<Vec<JobView>> {
    Ok(home
        .registry
        .jobs(filter)
        .await?
        .iter()
        .map(JobView::from)
        .collect())
}

pub async fn show(home: &Home, id: i64) -> Result<JobView> {
    Ok(JobView::from(&home.registry.job(id).await?))
}

/// What recovery did with one job.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub id: i64,
    pub kind: String,
    pub target: String,
    /// The job's state afterwards: rolled back, done, failed or incomplete.
    pub state: String,
    pub undone: Vec<String>,
    pub left: Vec<String>,
}

/// A daemon whose heartbeat is older than this is dead; its jobs are recovered by another node.
pub const DAEMON_LEASE_SECS: i64 = 20;

/// Recovers every job whose process is gone. With `retry_incomplete`, jobs left `incomplete`
/// (past their point of no return, finishing failed) are tried again too. The caller holds the
/// home's lock.
pub async fn recover(home: &Home, retry_incomplete: bool) -> Result<Vec<Recovered>> {
    let mut states = vec![
        "running".to_string(),
        "recovering".to_string(),
        "queued".to_string(),
    ];
    if retry_incomplete {
        // Jobs left incomplete (to finish) or failed (some undo did not work): tried again.
        states.push("incomplete".into());
        states.push("failed".into());
    }
    let candidates = home
        .registry
        .jobs(&JobFilter {
            states,
            ..Default::default()
        })
        .await?;
    let me = journal::this_owner();
    // Daemons on other nodes whose heartbeat stopped: their jobs are ours to recover.
    let dead_daemons: std::collections::HashSet<String> = if candidates.is_empty() {
        Default::default()
    } else {
        let cutoff = vmoodle_core::now_unix() - DAEMON_LEASE_SECS;
        home.registry
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.heartbeat_at < cutoff)
            .map(|n| n.owner)
            .collect()
    };
    let alive = |owner: &str| !dead_daemons.contains(owner) && journal::owner_alive(owner);
    let mut out = Vec::new();
    for job in candidates.iter().rev() {
        let incomplete = job.state == "incomplete" || job.state == "failed";
        if job.owner == me || (!incomplete && alive(&job.owner)) {
            continue;
        }
        if job.state == "queued" {
            // Never started: nothing to undo.
            let why = format!("its daemon ({}) stopped before it started", job.owner);
            if home.registry.cancel_queued_job(job.id, &why).await? {
                out.push(Recovered {
                    id: job.id,
                    kind: job.kind.clone(),
                    target: job.target.clone(),
                    state: "cancelled".into(),
                    undone: Vec::new(),
                    left: Vec::new(),
                });
            }
            continue;
        }
        if !home.registry.claim_job(job.id, &job.owner, &me).await? {
            continue; // another process took it
        }
        let why = if incomplete {
            format!(
                "{}; finished by `jobs recover`",
                job.error.clone().unwrap_or_default()
            )
        } else {
            format!(
                "interrupted: its process ({}) is gone; recovered by process {}",
                job.owner,
                std::process::id()
            )
        };
        let before = j_undone_len(job);
        // One job that cannot be recovered is reported; it never stops the command.
        let (state, left) = match Journal::resume(home, job, &journal::no_events) {
            Ok(j) if job.forward.is_some() => finish_forward(home, j, &why).await,
            Ok(j) => j.roll_back_interrupted(&why).await,
            Err(e) => {
                let msg = format!("{e:#}");
                let _ = home
                    .registry
                    .save_job(
                        job.id,
                        &vmoodle_registry::JobUpdate {
                            state: "failed",
                            steps: &job.steps,
                            undo: &job.undo,
                            forward: job.forward.as_deref(),
                            error: Some(&msg),
                            undone: &job.undone,
                        },
                    )
                    .await;
                ("failed".into(), vec![msg])
            }
        };
        let undone: Vec<String> = match home.registry.job(job.id).await {
            Ok(after) => serde_json::from_str::<Vec<String>>(&after.undone)
                .unwrap_or_default()
                .into_iter()
                .skip(before)
                .collect(),
            Err(_) => Vec::new(),
        };
        tracing::info!(job = job.id, kind = %job.kind, target = %job.target, %state, "recovered an interrupted job");
        out.push(Recovered {
            id: job.id,
            kind: job.kind.clone(),
            target: job.target.clone(),
            state,
            undone,
            left,
        });
    }
    Ok(out)
}

fn j_undone_len(job: &Job) -> usize {
    serde_json::from_str::<Vec<String>>(&job.undone)
        .map(|v| v.len())
        .unwrap_or(0)
}

/// Finishes a job past its point of no return, by kind.
async fn finish_forward(home: &Home, j: Journal<'_>, why: &str) -> (String, Vec<String>) {
    match j.kind() {
        "delete" => match crate::archive::finish_delete(home, j).await {
            Ok(()) => ("done".into(), Vec::new()),
            Err(e) => ("incomplete".into(), vec![format!("{e:#}")]),
        },
        "cluster-switchover" => match crate::cluster::finish_switchover(home, j).await {
            Ok(()) => ("done".into(), Vec::new()),
            Err(e) => ("incomplete".into(), vec![format!("{e:#}")]),
        },
        "cluster-remove-replica" => match crate::cluster::finish_remove_replica(home, j).await {
            Ok(()) => ("done".into(), Vec::new()),
            Err(e) => ("incomplete".into(), vec![format!("{e:#}")]),
        },
        k if k.starts_with("mnet ") => match crate::mnet::finish_renew(home, j).await {
            Ok(()) => ("done".into(), Vec::new()),
            Err(e) => ("incomplete".into(), vec![format!("{e:#}")]),
        },
        other => {
            let msg = format!("vmoodle does not know how to finish a `{other}` job ({why})");
            let left = j.fail(&msg).await;
            ("incomplete".into(), left)
        }
    }
}
