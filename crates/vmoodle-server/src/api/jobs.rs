//! Jobs: list, show (with live progress), follow as Server-Sent Events, cancel, retry.

use super::views::{JobOut, JobPage, Outcome};
use super::{accepted, read_err, req_err, Api, ApiResult, Problem, Q};
use crate::auth::Principal;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use std::time::Duration;
use utoipa::IntoParams;
use vmoodle_registry::JobFilter;

pub fn add(api: Api) -> Api {
    api.op::<__path_list, _, _>(list)
        .op::<__path_show, _, _>(show)
        .op::<__path_events, _, _>(events)
        .op::<__path_cancel, _, _>(cancel)
        .op::<__path_retry, _, _>(retry)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only jobs in this state (queued, running, done, failed, ...); comma-separated for several.
    pub state: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    /// Only jobs started by this actor (`api:NAME`, `web:ADMIN`, `cli:USER`, `scheduler`).
    pub started_by: Option<String>,
    /// Only the children of this bulk run.
    pub parent: Option<i64>,
    /// 1 to 1000; 50 when absent.
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

/// Lists jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobQuery),
    responses((status = 200, body = JobPage), (status = 422, body = Problem)))]
async fn list(State(state): State<AppState>, Q(q): Q<JobQuery>) -> ApiResult<JobPage> {
    let limit = super::instances::limit_of(q.limit)?;
    let offset = q.offset.unwrap_or(0).min(i64::MAX as usize / 2);
    let f = JobFilter {
        states: q
            .state
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        kind: q.kind.filter(|s| !s.is_empty()),
        target: q.target.filter(|s| !s.is_empty()),
        limit: Some(limit),
        offset: Some(offset),
        parent: q.parent.map(Some),
        started_by: q.started_by.filter(|s| !s.is_empty()),
    };
    let jobs = vmoodle_ops::jobs::list(&state.home, &f)
        .await
        .map_err(read_err)?;
    let items = jobs
        .into_iter()
        .map(|j| JobOut::new(j, &state.runner))
        .collect();
    Ok(Json(JobPage {
        offset,
        limit,
        items,
    }))
}

async fn job(state: &AppState, id: i64) -> Result<JobOut, Problem> {
    let j = vmoodle_ops::jobs::show(&state.home, id)
        .await
        .map_err(read_err)?;
    Ok(JobOut::new(j, &state.runner))
}

/// One job: its journal and, while it runs here, its live progress.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = JobOut), (status = 404, body = Problem)))]
async fn show(State(state): State<AppState>, Path(id): Path<i64>) -> ApiResult<JobOut> {
    Ok(Json(job(&state, id).await?))
}

/// Follows a job: an event (`job`, the job's JSON) at once and at every change, until it ends.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, description = "text/event-stream of `job` events, each the job's JSON (JobOut)", content_type = "text/event-stream", body = String),
        (status = 404, body = Problem)))]
async fn events(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let first = match job(&state, id).await {
        Ok(j) => j,
        Err(p) => return p.into_response(),
    };
    let end = state.stream_end();
    let stream = futures::stream::unfold(
        (state, Some(first), String::new(), false),
        move |(state, mut pending, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let j = match pending.take() {
                    Some(j) => j,
                    None => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        job(&state, id).await.ok()?
                    }
                };
                let text = serde_json::to_string(&j).ok()?;
                if text == last {
                    continue;
                }
                // The event with the job's last state is the stream's last.
                let ended = j.ended();
                let ev = Event::default().event("job").data(text.clone());
                return Some((
                    Ok::<_, std::convert::Infallible>(ev),
                    (state, None, text, ended),
                ));
            }
        },
    );
    Sse::new(futures::StreamExt::take_until(stream, end))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Asks a queued or running job to stop.
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 200, body = Outcome), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
async fn cancel(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> ApiResult<Outcome> {
    match crate::runner::cancel(&state, id, &p.actor()).await {
        Ok(message) => Ok(Json(Outcome { message })),
        Err(e) => {
            let mut pr = req_err(e);
            if pr.status == 422 {
                pr.status = 409;
                pr.title = "conflict".into();
            }
            Err(pr)
        }
    }
}

/// Runs a failed, rolled back, partial or cancelled job's request again (a new job).
#[utoipa::path(post, path = "/jobs/{id}/retry", tag = "jobs", params(("id" = i64, Path)),
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
async fn retry(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<i64>,
) -> Response {
    match crate::runner::retry(&state, id, &p.actor()).await {
        Ok(new) => accepted(new),
        Err(e) => {
            let mut pr = req_err(e);
            if pr.status == 422 {
                pr.status = 409;
                pr.title = "conflict".into();
            }
            pr.into_response()
        }
    }
}
