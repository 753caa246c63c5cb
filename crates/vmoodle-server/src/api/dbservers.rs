//! Database servers: list, show, check, add (the administrator password is write-only).

use super::views::DbServerView;
use super::{read_err, req_err, Api, ApiResult, Body, Problem};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vmoodle_core::{DbKind, Secret};

pub fn add(api: Api) -> Api {
    api.op::<__path_list, _, _>(list)
        .op::<__path_show, _, _>(show)
        .op::<__path_check, _, _>(check)
        .op::<__path_create, _, _>(create)
}

/// Lists database servers.
#[utoipa::path(get, path = "/dbservers", tag = "dbservers",
    responses((status = 200, body = Vec<DbServerView>)))]
async fn list(State(state): State<AppState>) -> ApiResult<Vec<DbServerView>> {
    let all = state.home.registry.dbservers().await.map_err(read_err)?;
    Ok(Json(all.into_iter().map(DbServerView::from).collect()))
}

/// One database server.
#[utoipa::path(get, path = "/dbservers/{name}", tag = "dbservers",
    params(("name" = String, Path)),
    responses((status = 200, body = DbServerView), (status = 404, body = Problem)))]
async fn show(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<DbServerView> {
    let s = state
        .home
        .registry
        .dbserver(&name)
        .await
        .map_err(read_err)?;
    Ok(Json(s.into()))
}

/// What a check of a database server's administrator account found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub server: String,
    pub address: String,
    pub user: String,
    pub version: String,
    pub can_create_databases: bool,
    pub can_create_users: bool,
    pub can_grant: bool,
    pub can_read_accounts: bool,
    pub superuser: bool,
    /// MariaDB/MySQL: the database name patterns the account is limited to, if any.
    pub only_databases: Vec<String>,
    /// It can do what deploys need.
    pub can_deploy: bool,
}

impl From<vmoodle_dbserver::CheckReport> for Check {
    fn from(r: vmoodle_dbserver::CheckReport) -> Self {
        Self {
            can_deploy: r.can_deploy(),
            server: r.server,
            address: r.address,
            user: r.user,
            version: r.version,
            can_create_databases: r.can_create_databases,
            can_create_users: r.can_create_users,
            can_grant: r.can_grant,
            can_read_accounts: r.can_read_accounts,
            superuser: r.superuser,
            only_databases: r.only_databases,
        }
    }
}

/// Connects with the administrator account and reports what it may do.
#[utoipa::path(post, path = "/dbservers/{name}/check", tag = "dbservers",
    params(("name" = String, Path)),
    responses((status = 200, body = Check), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
async fn check(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Check> {
    let r = vmoodle_ops::dbservers::check(&state.home, &name)
        .await
        .map_err(req_err)?;
    Ok(Json(r.into()))
}

/// A database server to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDbServer {
    pub name: String,
    /// mariadb, mysql or pgsql.
    pub kind: String,
    pub host: String,
    /// The kind's default port when absent.
    pub port: Option<u16>,
    pub socket: Option<String>,
    /// The administrator account vmoodle creates databases and users with.
    pub admin_user: String,
    /// Its password (write-only: never shown).
    #[schema(write_only)]
    pub admin_password: String,
    /// Connect and check before registering (true when absent).
    pub check: Option<bool>,
}

/// Registers a database server (checked first unless `check` is false).
#[utoipa::path(post, path = "/dbservers", tag = "dbservers", request_body = NewDbServer,
    responses((status = 201, body = DbServerView), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
async fn create(State(state): State<AppState>, Body(n): Body<NewDbServer>) -> Response {
    let kind: DbKind = match serde_json::from_value(serde_json::Value::String(n.kind.clone())) {
        Ok(k) => k,
        Err(_) => {
            return Problem::invalid(
                "kind",
                &format!("kind `{}` is not one of: {}", n.kind, DbKind::ALLOWED),
            )
            .into_response()
        }
    };
    let a = vmoodle_ops::dbservers::AddDbServer {
        name: n.name,
        kind,
        host: n.host,
        port: n.port,
        socket: n.socket,
        user: n.admin_user,
        password: Secret::new(n.admin_password),
        check: n.check.unwrap_or(true),
    };
    let added = super::with_lock(&state, move |home| async move {
        vmoodle_ops::dbservers::add(&home, a).await
    })
    .await;
    match added {
        Ok((s, _)) => (StatusCode::CREATED, Json(DbServerView::from(s))).into_response(),
        Err(e) => req_err(e).into_response(),
    }
}
