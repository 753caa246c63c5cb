//! `cluster events`: what was done to a cluster and how it ended, newest first: every job that
//! changed it (create, add-replica, remove-replica, reseed, switchover, destroy) with who started
//! it, its steps, its outcome and, when it failed, why and what was undone.

use anyhow::Result;
use serde::Serialize;
use vmoodle_registry::JobFilter;

use crate::journal::StepRecord;
use crate::Home;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub job: i64,
    /// `create`, `add-replica`, `switchover`...
    pub what: String,
    /// done, rolled back, incomplete (to be finished forward), failed, running.
    pub state: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub started_by: String,
    /// The steps it took, with their durations.
    pub steps: Vec<StepRecord>,
    pub error: Option<String>,
    /// What a failure undid (or could not).
    pub undone: Vec<String>,
}

/// The newest `limit` events of cluster `name` (the cluster may be gone: its history stays).
pub async fn events(home: &Home, name: &str, limit: usize) -> Result<Vec<Event>> {
    let jobs = home
        .registry
        .jobs(&JobFilter {
            target: Some(name.to_string()),
            ..JobFilter::default()
        })
        .await?;
    Ok(jobs
        .into_iter()
        .filter_map(|j| {
            let what = j.kind.strip_prefix("cluster-")?.to_string();
            Some(Event {
                job: j.id,
                what,
                state: j.state,
                started_at: j.started_at,
                finished_at: j.finished_at,
                started_by: j.started_by,
                steps: serde_json::from_str(&j.steps).unwrap_or_default(),
                error: j.error,
                undone: serde_json::from_str(&j.undone).unwrap_or_default(),
            })
        })
        .take(limit)
        .collect())
}
