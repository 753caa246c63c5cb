//! Deploys (one, or a bulk run of many) and snapshots: jobs, answered 202.

use super::{submit, Api, Body, Problem};
use crate::auth::Principal;
use crate::runner::{DeployParams, Op};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use utoipa::ToSchema;

pub fn add(api: Api) -> Api {
    api.op::<__path_deploy_one, _, _>(deploy_one)
        .op::<__path_deploy_bulk, _, _>(deploy_bulk)
        .op::<__path_snapshot, _, _>(snapshot)
}

/// Deploys one instance from a template.
#[utoipa::path(post, path = "/deploy", tag = "deploy", request_body = DeployParams,
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn deploy_one(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Body(d): Body<DeployParams>,
) -> Response {
    if let Some(p) = missing(&d, "") {
        return p.into_response();
    }
    submit(&state, &p, Op::Deploy(d)).await
}

/// The required fields of a deploy, named as the request names them.
fn missing(d: &DeployParams, at: &str) -> Option<Problem> {
    for (field, v) in [("template", &d.template), ("token", &d.token)] {
        if v.trim().is_empty() {
            return Some(Problem::invalid(
                &format!("{at}{field}"),
                &format!("{at}{field} is required and may not be empty"),
            ));
        }
    }
    None
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BulkDeploy {
    pub items: Vec<DeployParams>,
    /// How many deploys run at once (1 to 32; 2 when absent).
    pub parallel: Option<usize>,
}

/// Deploys many instances: one parent job, each row a child job.
#[utoipa::path(post, path = "/deploy/bulk", tag = "deploy", request_body = BulkDeploy,
    responses((status = 202, body = super::Accepted), (status = 422, body = Problem)))]
async fn deploy_bulk(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Body(b): Body<BulkDeploy>,
) -> Response {
    for (n, d) in b.items.iter().enumerate() {
        if let Some(p) = missing(d, &format!("items[{n}].")) {
            return p.into_response();
        }
    }
    let parallel = b.parallel.unwrap_or(2);
    if !(1..=32).contains(&parallel) {
        return Problem::invalid(
            "parallel",
            &format!("parallel `{parallel}` is out of range: between 1 and 32"),
        )
        .into_response();
    }
    if b.items.is_empty() {
        return Problem::invalid("items", "items is empty: give at least one deploy")
            .into_response();
    }
    let op = Op::BulkDeploy {
        items: b.items,
        parallel,
    };
    submit(&state, &p, op).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SnapshotRequest {
    /// The instance (or the master) to take.
    pub source: String,
    /// The new template's name.
    pub template: String,
}

/// Snapshots an instance as a new template.
#[utoipa::path(post, path = "/snapshot", tag = "templates", request_body = SnapshotRequest,
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn snapshot(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Body(s): Body<SnapshotRequest>,
) -> Response {
    let op = Op::Snapshot {
        source: s.source,
        template: s.template,
    };
    submit(&state, &p, op).await
}
