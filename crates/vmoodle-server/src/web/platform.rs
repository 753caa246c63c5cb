//! A new platform (`/platforms/new`): a deploy form preset by the naming schema (the token
//! fills host, database, user and dataroot: live through `/platforms/expand` with app.js, or
//! with the "Fill from token" button without it), a database-server check, and errors shown
//! beside the field they name. Submitting starts a deploy job and goes to its page.

use super::instance::Field;
use super::{page, Chrome};
use crate::auth::Principal;
use crate::runner::{self, DeployParams, Op};
use crate::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Form, Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use vmoodle_core::validate::ValidationError;
use vmoodle_registry::RegistryError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/platforms/new", get(new_page).post(new_submit))
        .route("/platforms/expand", get(expand))
        .merge(super::bulk::routes())
}

/// Errors of a form by field name (`top` for one that names no field).
pub type FieldErrors = HashMap<String, String>;

/// Where a form shows an error: the field it names if the form has it (`host` is the
/// wwwroot field where a form calls it that), else at the top.
pub fn place(e: &anyhow::Error, shown: &[&str]) -> String {
    match field_of(e) {
        Some("host") if shown.contains(&"wwwroot") => "wwwroot".into(),
        Some(f) if shown.contains(&f) => f.into(),
        _ => "top".into(),
    }
}

/// The form field an error is about, when it names one: a validation error's field, a missing
/// register entry, or words of the message.
pub fn field_of(e: &anyhow::Error) -> Option<&'static str> {
    if let Some(v) = e.chain().find_map(|c| c.downcast_ref::<ValidationError>()) {
        return Some(match v.field.as_str() {
            "token" => "token",
            "host" | "wwwroot" => "host",
            "table prefix" => "prefix",
            "database name" => "dbname",
            "database user" => "dbuser",
            "dataroot" => "dataroot",
            "shortname" => "shortname",
            "name" => "name",
            "description" => "description",
            "template" | "template name" => "template",
            _ => return None,
        });
    }
    if let Some(RegistryError::NotFound { what, .. }) =
        e.chain().find_map(|c| c.downcast_ref::<RegistryError>())
    {
        return match *what {
            "database server" => Some("dbserver"),
            "template" => Some("template"),
            "instance" => Some("source"),
            _ => None,
        };
    }
    let m = format!("{e:#}");
    [
        ("dataroot", "dataroot"),
        ("database server", "dbserver"),
        ("--dbserver", "dbserver"),
        ("database user", "dbuser"),
        ("database name", "dbname"),
        ("--host", "host"),
        ("template", "template"),
        ("mnet", "mnet"),
        ("admin email", "admin_email"),
    ]
    .into_iter()
    .find(|(w, _)| m.contains(w))
    .map(|(_, f)| f)
}

/// The form as posted; `action` is the button pressed (deploy, check, fill).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct NewForm {
    pub action: String,
    pub token: String,
    pub template: String,
    pub name: String,
    pub description: String,
    pub host: String,
    pub dbserver: String,
    pub dbname: String,
    pub dbuser: String,
    pub prefix: String,
    pub dataroot: String,
    pub mnet: String,
    pub admin_email: String,
    /// Write-only: never shown back.
    pub admin_password: String,
}

impl NewForm {
    /// The text fields the token presets, then the others, each with its error.
    fn fields(&self, errors: &FieldErrors) -> Vec<Field> {
        [
            ("host", "Host (or full wwwroot)", &self.host),
            ("dbname", "Database name", &self.dbname),
            ("dbuser", "Database user", &self.dbuser),
            ("dataroot", "Dataroot", &self.dataroot),
            ("prefix", "Table prefix", &self.prefix),
            ("name", "Full name", &self.name),
            ("description", "Description", &self.description),
            (
                "mnet",
                "MNET (-1 none, 0 free, N subnetwork; empty: the template's)",
                &self.mnet,
            ),
        ]
        .into_iter()
        .map(|(key, label, value)| Field {
            key,
            label,
            value: value.clone(),
            error: errors.get(key).cloned(),
        })
        .collect()
    }

    fn params(&self) -> Result<DeployParams, (String, String)> {
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let mnet = match self.mnet.trim() {
            "" => None,
            m => Some(m.parse::<i64>().map_err(|_| {
                (
                    "mnet".to_string(),
                    format!("invalid MNET `{m}`: -1 (none), 0 (free) or a subnetwork number"),
                )
            })?),
        };
        Ok(DeployParams {
            template: self.template.trim().into(),
            token: self.token.trim().into(),
            name: opt(&self.name),
            description: opt(&self.description),
            host: opt(&self.host),
            dbserver: opt(&self.dbserver),
            dbname: opt(&self.dbname),
            dbuser: opt(&self.dbuser),
            dataroot: opt(&self.dataroot),
            prefix: opt(&self.prefix),
            mnet,
            admin_email: opt(&self.admin_email),
            admin_password: opt(&self.admin_password),
            ..Default::default()
        })
    }
}

#[derive(Template)]
#[template(path = "platform_new.html")]
struct NewPage {
    chrome: Chrome,
    f: NewForm,
    fields: Vec<Field>,
    errors: FieldErrors,
    templates: Vec<String>,
    dbservers: Vec<String>,
    /// The result of the database server check, when asked.
    check: Option<(bool, String)>,
}

async fn render(
    state: &AppState,
    p: &Principal,
    f: NewForm,
    errors: FieldErrors,
    check: Option<(bool, String)>,
) -> Response {
    let templates = super::template_names(&state.home).await;
    let dbservers = super::dbserver_names(&state.home).await;
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut r = page(NewPage {
        chrome: Chrome::new(p, "new"),
        fields: f.fields(&errors),
        f: NewForm {
            admin_password: String::new(),
            ..f
        },
        errors,
        templates,
        dbservers,
        check,
    });
    *r.status_mut() = status;
    r
}

async fn new_page(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    render(&state, &p, NewForm::default(), FieldErrors::default(), None).await
}

/// What a token gives under the naming schema (also the JSON of `/platforms/expand`).
#[derive(Debug, Serialize, Default)]
pub struct Expanded {
    pub host: String,
    pub wwwroot: String,
    pub dbname: String,
    pub dbuser: String,
    pub prefix: String,
    pub dataroot: String,
    /// The registered server the schema's database host points at, if any.
    pub dbserver: Option<String>,
}

async fn expansion(state: &AppState, token: &str) -> Result<Expanded, ValidationError> {
    let schema = match state.fresh().await {
        Ok(h) => h.settings.schema.clone(),
        Err(_) => state.home.settings.schema.clone(),
    };
    let e = vmoodle_core::schema::expand(&schema, token.trim())?;
    let dbserver =
        vmoodle_ops::dbservers::find_matching(&state.home, e.db_type, &e.db_host, Some(e.db_port))
            .await
            .ok()
            .flatten()
            .map(|s| s.name);
    Ok(Expanded {
        host: e.host,
        wwwroot: e.wwwroot,
        dbname: e.db_name,
        dbuser: e.db_user,
        prefix: e.prefix,
        dataroot: e.dataroot.display().to_string(),
        dbserver,
    })
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// `GET /platforms/expand?token=`: the schema's values for a token, or 422 naming the field.
async fn expand(State(state): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    match expansion(&state, &q.token).await {
        Ok(e) => Json(e).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "field": "token", "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn new_submit(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(mut f): Form<NewForm>,
) -> Response {
    let mut errors = FieldErrors::default();
    match f.action.as_str() {
        "fill" => {
            match expansion(&state, &f.token).await {
                Ok(e) => {
                    f.host = e.host;
                    f.dbname = e.dbname;
                    f.dbuser = e.dbuser;
                    f.dataroot = e.dataroot;
                    f.prefix = e.prefix;
                    if let Some(d) = e.dbserver {
                        f.dbserver = d;
                    }
                }
                Err(e) => {
                    errors.insert("token".into(), e.to_string());
                }
            }
            return render(&state, &p, f, errors, None).await;
        }
        "check" => {
            let check = match vmoodle_ops::dbservers::check(&state.home, f.dbserver.trim()).await {
                Ok(r) if r.can_deploy() => (true, format!("{} ({} {}) answers as {}: it can create databases and users.", r.server, r.kind, r.version, r.user)),
                Ok(r) => (false, format!("{} answers as {}, but that account cannot do what deploys need (create databases and users, grant, read accounts).", r.server, r.user)),
                Err(e) => (false, format!("{e:#}")),
            };
            return render(&state, &p, f, errors, Some(check)).await;
        }
        _ => {}
    }
    let params = match f.params() {
        Ok(p) => p,
        Err((k, v)) => {
            errors.insert(k, v);
            return render(&state, &p, f, errors, None).await;
        }
    };
    match runner::submit(&state, &p.actor(), Op::Deploy(params)).await {
        Ok(id) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => {
            let shown = [
                "token",
                "host",
                "dbname",
                "dbuser",
                "dataroot",
                "prefix",
                "name",
                "description",
                "mnet",
                "dbserver",
                "template",
                "admin_email",
            ];
            errors.insert(place(&e, &shown), format!("{e:#}"));
            render(&state, &p, f, errors, None).await
        }
    }
}
