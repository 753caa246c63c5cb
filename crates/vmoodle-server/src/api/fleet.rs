//! Fleet operations: a Moodle CLI script, cron, an upgrade or a setting change on a selection
//! of instances (a job whose log has one line per site), and the preview of a selection.

use super::{read_err, req_err, submit, Api, ApiResult, Body, Problem};
use crate::auth::Principal;
use crate::fleet::{FleetParams, FleetSelection};
use crate::runner::Op;
use crate::AppState;
use axum::extract::State;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

pub fn add(api: Api) -> Api {
    api.op::<__path_start, _, _>(start)
        .op::<__path_preview, _, _>(preview)
}

/// Starts a fleet operation on a selection (a job; its log gets one line per site).
#[utoipa::path(post, path = "/fleet", tag = "fleet", request_body = FleetParams,
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn start(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Body(f): Body<FleetParams>,
) -> Response {
    submit(&state, &p, Op::Fleet(f)).await
}

/// The instances a selection names.
#[derive(Debug, Serialize, ToSchema)]
pub struct SelectionPreview {
    /// Shortnames, in register order.
    pub instances: Vec<String>,
    /// Disabled instances the selection matched but leaves out (no `include_disabled`).
    pub disabled_left_out: Vec<String>,
}

/// Which instances a selection names (nothing runs).
#[utoipa::path(post, path = "/fleet/preview", tag = "fleet", request_body = FleetSelection,
    responses((status = 200, body = SelectionPreview), (status = 422, body = Problem)))]
async fn preview(
    State(state): State<AppState>,
    Body(s): Body<FleetSelection>,
) -> ApiResult<SelectionPreview> {
    let home = state.fresh().await.map_err(read_err)?;
    let sel = s.selection().resolve(&home).await.map_err(req_err)?;
    Ok(Json(SelectionPreview {
        instances: sel.instances.into_iter().map(|i| i.shortname).collect(),
        disabled_left_out: sel.disabled_left_out,
    }))
}
