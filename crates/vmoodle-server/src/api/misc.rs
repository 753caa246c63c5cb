//! What the naming schema gives for a token, and the home's settings (secrets as "(set)").

use super::{read_err, Api, ApiResult, Problem, Q};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn add(api: Api) -> Api {
    api.op::<__path_expand, _, _>(expand)
        .op::<__path_settings, _, _>(settings)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpandQuery {
    /// An instance token: `[a-z][a-z0-9]{0,19}`.
    pub token: String,
}

/// What the naming schema makes of a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Expansion {
    pub token: String,
    pub wwwroot: String,
    pub host: String,
    /// mariadb, mysql or pgsql.
    pub db_type: String,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
    pub db_user: String,
    pub prefix: String,
    pub db_persist: bool,
    pub dataroot: String,
}

/// Expands the naming schema for a token.
#[utoipa::path(get, path = "/schema/expand", tag = "settings", params(ExpandQuery),
    responses((status = 200, body = Expansion), (status = 422, body = Problem)))]
async fn expand(State(state): State<AppState>, Q(q): Q<ExpandQuery>) -> ApiResult<Expansion> {
    let home = state.fresh().await.map_err(read_err)?;
    let e = vmoodle_core::schema::expand(&home.settings.schema, &q.token)
        .map_err(|v| Problem::invalid(&v.field, &v.to_string()))?;
    Ok(Json(Expansion {
        token: e.token,
        wwwroot: e.wwwroot,
        host: e.host,
        db_type: e.db_type.to_string(),
        db_host: e.db_host,
        db_port: e.db_port,
        db_name: e.db_name,
        db_user: e.db_user,
        prefix: e.prefix,
        db_persist: e.db_persist,
        dataroot: e.dataroot.display().to_string(),
    }))
}

/// The home's settings, sections as in settings.toml.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    /// Sections (moodle, schema, executables, web, spares, mnet, ...); `schema.db_password` is
    /// "(set)" or "" (the secret itself is never shown).
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

/// The home's settings.
#[utoipa::path(get, path = "/settings", tag = "settings",
    responses((status = 200, body = SettingsView)))]
async fn settings(State(state): State<AppState>) -> ApiResult<SettingsView> {
    let home = state.fresh().await.map_err(read_err)?;
    let mut v = serde_json::to_value(&home.settings).map_err(read_err)?;
    if let Some(p) = v.pointer_mut("/schema/db_password") {
        let set = p.as_str().is_some_and(|s| !s.is_empty());
        *p = serde_json::Value::String(if set { "(set)" } else { "" }.into());
    }
    Ok(Json(SettingsView { settings: v }))
}
