//! Instances: list (search, filters, sort, pages), show, enable/disable, delete, edit.

use super::views::{InstancePage, InstanceView};
use super::{read_err, req_err, submit, Api, ApiResult, Body, Problem, Q};
use crate::auth::Principal;
use crate::runner::Op;
use crate::AppState;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use vmoodle_core::Secret;
use vmoodle_registry::{PoolFilter, PoolSort};

pub fn add(api: Api) -> Api {
    api.op::<__path_list, _, _>(list)
        .op::<__path_show, _, _>(show)
        .op::<__path_enable, _, _>(enable)
        .op::<__path_disable, _, _>(disable)
        .op::<__path_delete, _, _>(delete)
        .op::<__path_edit, _, _>(edit)
}

/// Which instances `GET /instances` returns.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Found inside the shortname, host or name (case-insensitive).
    pub q: Option<String>,
    /// `enabled` or `disabled`.
    pub state: Option<String>,
    pub dbserver: Option<String>,
    pub template: Option<String>,
    /// MNET subnetwork (-1 none, 0 free, N).
    pub subnetwork: Option<i64>,
    /// shortname, name, host, created or updated; a leading `-` sorts descending.
    pub sort: Option<String>,
    /// At most this many (1 to 1000; 50 when absent).
    pub limit: Option<usize>,
    pub offset: Option<usize>,
}

pub const SORTS: &str = "shortname, name, host, created, updated (a leading `-` sorts descending)";

/// The page size asked, checked.
pub fn limit_of(limit: Option<usize>) -> Result<usize, Problem> {
    match limit {
        None => Ok(50),
        Some(n @ 1..=1000) => Ok(n),
        Some(n) => Err(Problem::invalid(
            "limit",
            &format!("limit `{n}` is out of range: between 1 and 1000"),
        )),
    }
}

/// Asks the register for one page: search, filters, sort and the cut are SQL (LIMIT/OFFSET
/// and a COUNT with the same WHERE), so the cost stays flat as the fleet grows.
async fn select(state: &AppState, q: &ListQuery) -> Result<InstancePage, Problem> {
    let limit = limit_of(q.limit)?;
    let offset = q.offset.unwrap_or(0).min(i64::MAX as usize / 2);
    let enabled = match q.state.as_deref() {
        None | Some("") => None,
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        Some(s) => {
            return Err(Problem::invalid(
                "state",
                &format!("state `{s}` is not one of: enabled, disabled"),
            ))
        }
    };
    let sort = q.sort.as_deref().unwrap_or("shortname");
    let (descending, key) = match sort.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, sort),
    };
    let by = match key {
        "shortname" => PoolSort::Name,
        "name" => PoolSort::Title,
        "host" => PoolSort::Host,
        "created" => PoolSort::Created,
        "updated" => PoolSort::Updated,
        _ => {
            return Err(Problem::invalid(
                "sort",
                &format!("sort `{sort}` is not one of: {SORTS}"),
            ))
        }
    };
    let some = |s: &Option<String>| {
        s.as_ref()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let filter = PoolFilter {
        search: some(&q.q),
        enabled,
        dbserver: some(&q.dbserver),
        template: some(&q.template),
        mnet: q.subnetwork,
        sort: by,
        descending,
        limit: limit as i64,
        offset: offset as i64,
    };
    let (rows, total) = state
        .home
        .registry
        .pool_page(&filter)
        .await
        .map_err(read_err)?;
    let facts = crate::cron::Facts::load(&state.home.registry)
        .await
        .map_err(read_err)?;
    Ok(InstancePage {
        total: total as usize,
        offset,
        limit,
        items: rows
            .into_iter()
            .map(|i| InstanceView::with_facts(i, &facts))
            .collect(),
    })
}

/// Lists instances.
#[utoipa::path(get, path = "/instances", tag = "instances", params(ListQuery),
    responses((status = 200, body = InstancePage), (status = 422, body = Problem)))]
async fn list(State(state): State<AppState>, Q(q): Q<ListQuery>) -> ApiResult<InstancePage> {
    Ok(Json(select(&state, &q).await?))
}

/// One instance.
#[utoipa::path(get, path = "/instances/{name}", tag = "instances",
    params(("name" = String, Path, description = "shortname or host")),
    responses((status = 200, body = InstanceView), (status = 404, body = Problem)))]
async fn show(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<InstanceView> {
    let i = state
        .home
        .registry
        .instance(&name)
        .await
        .map_err(read_err)?;
    let facts = crate::cron::Facts::load(&state.home.registry)
        .await
        .map_err(read_err)?;
    Ok(Json(InstanceView::with_facts(i, &facts)))
}

/// Enables an instance (a job).
#[utoipa::path(post, path = "/instances/{name}/enable", tag = "instances",
    params(("name" = String, Path)),
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem)))]
async fn enable(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    submit(&state, &p, Op::Enable { instance: name }).await
}

/// Disables an instance (a job).
#[utoipa::path(post, path = "/instances/{name}/disable", tag = "instances",
    params(("name" = String, Path)),
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem)))]
async fn disable(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    submit(&state, &p, Op::Disable { instance: name }).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Archive the instance before deleting it (true when absent).
    pub archive: Option<bool>,
}

/// Deletes an instance, archived first unless `archive=false` (a job).
#[utoipa::path(delete, path = "/instances/{name}", tag = "instances",
    params(("name" = String, Path), DeleteQuery),
    responses((status = 202, body = super::Accepted), (status = 404, body = Problem)))]
async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Q(q): Q<DeleteQuery>,
) -> Response {
    let op = Op::Delete {
        instance: name,
        archive: q.archive.unwrap_or(true),
    };
    submit(&state, &p, op).await
}

/// What `PATCH /instances/{name}` changes; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct InstancePatch {
    pub wwwroot: Option<String>,
    pub shortname: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub dbserver: Option<String>,
    pub dbname: Option<String>,
    pub dbuser: Option<String>,
    /// The database password (write-only: never shown).
    #[schema(write_only)]
    pub dbpass: Option<String>,
    pub prefix: Option<String>,
    pub dataroot: Option<String>,
    pub mnet: Option<i64>,
    pub dbpersist: Option<bool>,
    /// `$CFG` values to set.
    pub set_config: std::collections::BTreeMap<String, String>,
    /// `$CFG` names to remove.
    pub unset_config: Vec<String>,
}

/// Edits an instance's register entry and host file (quick: answers the instance).
#[utoipa::path(patch, path = "/instances/{name}", tag = "instances",
    params(("name" = String, Path)), request_body = InstancePatch,
    responses((status = 200, body = InstanceView), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn edit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(b): Body<InstancePatch>,
) -> ApiResult<InstanceView> {
    let e = vmoodle_ops::instances::InstanceEdit {
        wwwroot: b.wwwroot,
        shortname: b.shortname,
        name: b.name,
        description: b.description,
        dbserver: b.dbserver,
        dbname: b.dbname,
        dbuser: b.dbuser,
        password: b.dbpass.map(Secret::new),
        prefix: b.prefix,
        dataroot: b.dataroot,
        mnet: b.mnet,
        persist: b.dbpersist,
        set_config: b.set_config.into_iter().collect(),
        unset_config: b.unset_config,
        force_admin_account: false,
    };
    let i = super::with_lock(&state, move |home| async move {
        vmoodle_ops::instances::edit(&home, &name, &e).await
    })
    .await
    .map_err(req_err)?;
    Ok(Json(i.into()))
}
