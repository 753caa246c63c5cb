//! Jobs: every job of the home (CLI, web, API, scheduler), filterable and paginated; one job's
//! steps, undo records, log and children, live over Server-Sent Events; cancel and retry.

use super::{message, page, see_other, when, Chrome};
use crate::auth::Principal;
use crate::runner::{self, Live};
use crate::AppState;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use vmoodle_ops::jobs::JobView;
use vmoodle_registry::JobFilter;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{id}", get(show))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/retry", post(retry))
}

const PAGE: usize = 50;

/// The states a job row can have, for the filter's choices.
const STATES: &[&str] = &[
    "queued",
    "running",
    "recovering",
    "done",
    "partial",
    "failed",
    "rolled back",
    "incomplete",
    "cancelled",
];

/// Whether a job in this state is still going (its page is live, it can be cancelled).
pub fn active(state: &str) -> bool {
    matches!(state, "queued" | "running" | "recovering")
}

/// The badge class of a state (`rolled back` -> `rolled-back`).
pub fn badge(state: &str) -> String {
    state.replace(' ', "-")
}

/// How long a job ran (or has been running), in words.
pub fn duration(started: i64, finished: Option<i64>) -> String {
    let end = finished.unwrap_or_else(vmoodle_core::now_unix);
    let s = (end - started).max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[derive(Debug, Deserialize, Default)]
struct ListQuery {
    state: Option<String>,
    kind: Option<String>,
    target: Option<String>,
    by: Option<String>,
    /// Show the deploys of bulk runs too.
    all: Option<String>,
    page: Option<usize>,
}

fn some(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

struct Row {
    id: i64,
    kind: String,
    target: String,
    state: String,
    badge: String,
    by: String,
    started: String,
    duration: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<Row>,
    states: &'static [&'static str],
    state: String,
    kind: String,
    target: String,
    by: String,
    all: bool,
    total: i64,
    page: usize,
    pages: usize,
    /// The query of the current filter, without the page number (for the pager's links).
    query: String,
    error: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Response {
    let all = q.all.as_deref().is_some_and(|v| !v.is_empty());
    let page_no = q.page.unwrap_or(1).clamp(1, 10_000_000);
    let mut filter = JobFilter {
        states: some(&q.state).into_iter().collect(),
        kind: some(&q.kind),
        target: some(&q.target),
        started_by: some(&q.by),
        parent: if all { None } else { Some(None) },
        ..Default::default()
    };
    let reg = &state.home.registry;
    let (total, rows, error) = match reg.count_jobs(&filter).await {
        Ok(total) => {
            filter.limit = Some(PAGE);
            filter.offset = Some((page_no - 1) * PAGE);
            match reg.jobs(&filter).await {
                Ok(jobs) => (total, jobs, None),
                Err(e) => (0, Vec::new(), Some(format!("{e:#}"))),
            }
        }
        Err(e) => (0, Vec::new(), Some(format!("{e:#}"))),
    };
    let rows = rows
        .iter()
        .map(|j| Row {
            id: j.id,
            kind: j.kind.clone(),
            target: j.target.clone(),
            badge: badge(&j.state),
            state: j.state.clone(),
            by: j.started_by.clone(),
            started: when(j.started_at),
            duration: duration(j.started_at, j.finished_at),
        })
        .collect();
    let mut query = String::new();
    for (k, v) in [
        ("state", some(&q.state)),
        ("kind", some(&q.kind)),
        ("target", some(&q.target)),
        ("by", some(&q.by)),
        ("all", all.then(|| "1".to_string())),
    ] {
        if let Some(v) = v {
            query += &format!("{k}={}&", crate::auth::urlencode(&v));
        }
    }
    let pages = (total.max(0) as usize).div_ceil(PAGE).max(1);
    page(ListPage {
        chrome: Chrome::new(&p, "jobs"),
        rows,
        states: STATES,
        state: some(&q.state).unwrap_or_default(),
        kind: some(&q.kind).unwrap_or_default(),
        target: some(&q.target).unwrap_or_default(),
        by: some(&q.by).unwrap_or_default(),
        all,
        total,
        page: page_no,
        pages,
        query,
        error,
    })
}

/// One child of a bulk run, as its parent's page lists it.
#[derive(Debug, Clone, Serialize)]
struct Child {
    id: i64,
    kind: String,
    target: String,
    state: String,
    /// The step it is at (live) or the last it did.
    step: String,
}

/// What the job page shows and its event stream sends.
#[derive(Debug, Clone, Serialize)]
struct Snapshot {
    job: JobView,
    live: Option<Live>,
    children: Vec<Child>,
    duration: String,
    active: bool,
}

async fn snapshot(state: &AppState, id: i64) -> anyhow::Result<(Snapshot, Option<String>)> {
    let reg = &state.home.registry;
    let row = reg.job(id).await?;
    let job = JobView::from(&row);
    let children = reg
        .children(id)
        .await?
        .iter()
        .map(|c| {
            let step = state
                .runner
                .live(c.id)
                .and_then(|l| l.step)
                .or_else(|| JobView::from(c).steps.last().map(|s| s.step.clone()))
                .unwrap_or_default();
            Child {
                id: c.id,
                kind: c.kind.clone(),
                target: c.target.clone(),
                state: c.state.clone(),
                step,
            }
        })
        .collect();
    Ok((
        Snapshot {
            duration: duration(job.started_at, job.finished_at),
            active: active(&job.state),
            live: state.runner.live(id),
            job,
            children,
        },
        row.params,
    ))
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    s: Snapshot,
    badge: String,
    started: String,
    finished: String,
    /// The request, pretty-printed (never holds a password: the runner does not store them).
    params: Option<String>,
    can_retry: bool,
}

impl JobPage {
    fn undo_state(e: &vmoodle_ops::journal::UndoEntry) -> String {
        serde_json::to_value(e.state)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
            .unwrap_or_default()
    }
}

async fn show(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> Response {
    let (s, params) = match snapshot(&state, id).await {
        Ok(x) => x,
        Err(e) => return message(&p, StatusCode::NOT_FOUND, "No such job", &format!("{e:#}")),
    };
    let params = params.map(|raw| {
        serde_json::from_str::<serde_json::Value>(&raw)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(raw)
    });
    let can_retry = params.is_some()
        && matches!(
            s.job.state.as_str(),
            "failed" | "rolled back" | "cancelled" | "partial"
        );
    page(JobPage {
        chrome: Chrome::new(&p, "jobs"),
        badge: badge(&s.job.state),
        started: when(s.job.started_at),
        finished: s.job.finished_at.map(when).unwrap_or_default(),
        params,
        can_retry,
        s,
    })
}

/// The job's JSON each time it changes (the register is polled every 500 ms, with this
/// daemon's live counts); the stream ends after the job has ended.
async fn events(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> Response {
    if let Err(e) = state.home.registry.job(id).await {
        return message(&p, StatusCode::NOT_FOUND, "No such job", &format!("{e:#}"));
    }
    // (state, last JSON sent, finished)
    let end = state.stream_end();
    let init = (state, String::new(), false);
    let stream = futures::stream::unfold(init, move |(state, last, finished)| async move {
        if finished {
            return None;
        }
        let mut first = last.is_empty();
        loop {
            if !first {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            first = false;
            let Ok((s, _)) = snapshot(&state, id).await else {
                return None;
            };
            let json = serde_json::to_string(&s).unwrap_or_default();
            if json != last || !s.active {
                let ev = Event::default().event("job").data(json.clone());
                return Some((
                    Ok::<_, std::convert::Infallible>(ev),
                    (state, json, !s.active),
                ));
            }
        }
    });
    Sse::new(futures::StreamExt::take_until(stream, end))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn cancel(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> Response {
    let back = format!("/jobs/{id}");
    match runner::cancel(&state, id, &p.actor()).await {
        Ok(what) => see_other(&back, &format!("Job {id}: {what}.")),
        Err(e) => see_other(&back, &format!("Job {id} was not cancelled: {e:#}")),
    }
}

async fn retry(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> Response {
    match runner::retry(&state, id, &p.actor()).await {
        Ok(new) => see_other(&format!("/jobs/{new}"), &format!("Retry of job {id}.")),
        Err(e) => see_other(
            &format!("/jobs/{id}"),
            &format!("Job {id} was not retried: {e:#}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_words() {
        assert_eq!(super::duration(100, Some(105)), "5s");
        assert_eq!(super::duration(0, Some(125)), "2m 05s");
        assert_eq!(super::duration(0, Some(7260)), "2h 01m");
        assert_eq!(super::badge("rolled back"), "rolled-back");
    }
}
