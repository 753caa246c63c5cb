//! Templates: list, manifest, verify, delete, warm spares.

use super::views::{TemplateDetail, TemplateView};
use super::{read_err, submit, Api, ApiResult, Body, Problem};
use crate::auth::Principal;
use crate::runner::Op;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn add(api: Api) -> Api {
    api.op::<__path_list, _, _>(list)
        .op::<__path_show, _, _>(show)
        .op::<__path_verify, _, _>(verify)
        .op::<__path_delete, _, _>(delete)
        .op::<__path_spares, _, _>(spares)
}

/// Lists templates.
#[utoipa::path(get, path = "/templates", tag = "templates",
    responses((status = 200, body = Vec<TemplateView>)))]
async fn list(State(state): State<AppState>) -> ApiResult<Vec<TemplateView>> {
    let all = state.home.registry.templates().await.map_err(read_err)?;
    Ok(Json(all.iter().map(TemplateView::from).collect()))
}

/// One template with its manifest.
#[utoipa::path(get, path = "/templates/{name}", tag = "templates",
    params(("name" = String, Path)),
    responses((status = 200, body = TemplateDetail), (status = 404, body = Problem)))]
async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<TemplateDetail> {
    let t = state
        .home
        .registry
        .template(&name)
        .await
        .map_err(read_err)?;
    let manifest = serde_json::from_str(&t.manifest).unwrap_or(serde_json::Value::Null);
    Ok(Json(TemplateDetail {
        template: TemplateView::from(&t),
        manifest,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Verified {
    pub template: String,
    /// No problem found.
    pub ok: bool,
    /// What does not match the manifest.
    pub problems: Vec<String>,
}

/// Checks a template's files against its manifest (sizes and presence; quick).
#[utoipa::path(post, path = "/templates/{name}/verify", tag = "templates",
    params(("name" = String, Path)),
    responses((status = 200, body = Verified), (status = 404, body = Problem)))]
async fn verify(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Verified> {
    let t = state
        .home
        .registry
        .template(&name)
        .await
        .map_err(read_err)?;
    let problems = tokio::task::spawn_blocking(move || vmoodle_ops::templates::verify(&t, false))
        .await
        .map_err(read_err)?
        .map_err(read_err)?;
    Ok(Json(Verified {
        template: name,
        ok: problems.is_empty(),
        problems,
    }))
}

/// Deletes a template (a job).
#[utoipa::path(delete, path = "/templates/{name}", tag = "templates",
    params(("name" = String, Path)),
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    submit(&state, &p, Op::TemplateDelete { name }).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SparesRequest {
    /// A MariaDB server.
    pub dbserver: String,
    /// How many spares to have ready (1 to 100).
    pub count: usize,
}

/// Fills warm spares of a template on a MariaDB server (a job).
#[utoipa::path(post, path = "/templates/{name}/spares", tag = "templates",
    params(("name" = String, Path)), request_body = SparesRequest,
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn spares(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Body(s): Body<SparesRequest>,
) -> Response {
    if s.count == 0 || s.count > 100 {
        return axum::response::IntoResponse::into_response(Problem::invalid(
            "count",
            &format!("count `{}` is out of range: between 1 and 100", s.count),
        ));
    }
    let op = Op::SparesFill {
        template: name,
        dbserver: s.dbserver,
        count: s.count,
    };
    submit(&state, &p, op).await
}
