//! MNET: the network's status, key renewal and peer repair (jobs).

use super::{read_err, submit, Api, ApiResult, Body, Problem};
use crate::auth::Principal;
use crate::runner::Op;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn add(api: Api) -> Api {
    api.op::<__path_status, _, _>(status)
        .op::<__path_renew, _, _>(renew)
        .op::<__path_repair, _, _>(repair)
}

/// The MNET network as every reachable instance's database sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MnetStatus {
    /// Each instance's key: instance, mnet, has_key, expires, due.
    #[schema(value_type = Vec<Object>)]
    pub instances: serde_json::Value,
    /// Each peering from both sides: a, b, a_holds_b, b_holds_a, a_deleted_b, b_deleted_a.
    #[schema(value_type = Vec<Object>)]
    pub pairs: serde_json::Value,
    /// Instances whose database could not be read.
    #[schema(value_type = Vec<Object>)]
    pub errors: serde_json::Value,
    /// Every peering is whole.
    pub ok: bool,
}

/// MNET status.
#[utoipa::path(get, path = "/mnet", tag = "mnet", responses((status = 200, body = MnetStatus)))]
async fn status(State(state): State<AppState>) -> ApiResult<MnetStatus> {
    let s = vmoodle_ops::mnet::status(&state.home)
        .await
        .map_err(read_err)?;
    let ok = s.pairs.iter().all(|p| p.ok());
    Ok(Json(MnetStatus {
        instances: serde_json::to_value(&s.instances).map_err(read_err)?,
        pairs: serde_json::to_value(&s.pairs).map_err(read_err)?,
        errors: serde_json::to_value(&s.errors).map_err(read_err)?,
        ok,
    }))
}

/// Which keys to renew: one instance, all (`all: true`), or those due (neither).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RenewRequest {
    pub instance: Option<String>,
    pub all: bool,
}

/// Renews MNET keys (a job).
#[utoipa::path(post, path = "/mnet/renew", tag = "mnet", request_body = RenewRequest,
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn renew(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Body(r): Body<RenewRequest>,
) -> Response {
    if r.instance.is_some() && r.all {
        return Problem::invalid(
            "all",
            "give either `instance` or `all: true`, not both (neither renews the keys due)",
        )
        .into_response();
    }
    let op = Op::MnetRenew {
        instance: r.instance,
        all: r.all,
    };
    submit(&state, &p, op).await
}

/// Repairs stale or missing MNET peer rows (a job).
#[utoipa::path(post, path = "/mnet/repair", tag = "mnet",
    responses((status = 202, body = super::Accepted)))]
async fn repair(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    submit(&state, &p, Op::MnetRepair).await
}
