//! Database servers: the registered servers with the instances on each, a check of what the
//! administrator account may do, add (the password is write-only: sealed, never shown again,
//! not even after a validation error) and remove (refused while instances use the server).

use super::{page, see_other, Chrome};
use crate::auth::Principal;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use vmoodle_core::{DbKind, Secret};
use vmoodle_dbserver::CheckReport;
use vmoodle_ops::dbservers;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dbservers", get(list).post(add))
        .route("/dbservers/{name}/check", post(check))
        .route("/dbservers/{name}/remove", post(remove))
}

struct Row {
    name: String,
    kind: String,
    address: String,
    user: String,
    instances: usize,
}

/// The add form's values as given (never the password).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AddForm {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    host: String,
    port: String,
    socket: String,
    user: String,
    /// Write-only: read here, sealed, never rendered.
    #[serde(skip_serializing)]
    password: String,
    no_check: Option<String>,
}

#[derive(Template)]
#[template(path = "dbservers.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<Row>,
    form: AddForm,
    error: Option<String>,
    /// The server checked and what the check found (or why it failed).
    checked: Option<(String, Result<CheckReport, String>)>,
}

impl ListPage {
    fn yes(b: &bool) -> &'static str {
        if *b {
            "yes"
        } else {
            "no"
        }
    }
}

async fn rows(state: &AppState) -> Vec<Row> {
    let reg = &state.home.registry;
    let servers = reg.dbservers().await.unwrap_or_default();
    let instances = reg.instances().await.unwrap_or_default();
    servers
        .iter()
        .map(|s| Row {
            name: s.name.clone(),
            kind: s.kind.to_string(),
            address: s
                .socket
                .clone()
                .unwrap_or_else(|| format!("{}:{}", s.host, s.port)),
            user: s.admin_user.clone(),
            instances: instances.iter().filter(|i| i.dbserver_id == s.id).count(),
        })
        .collect()
}

async fn render(
    state: &AppState,
    p: &Principal,
    msg: Option<String>,
    form: AddForm,
    error: Option<String>,
    checked: Option<(String, Result<CheckReport, String>)>,
) -> Response {
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut r = page(ListPage {
        chrome: Chrome::new(p, "dbservers").flash(msg),
        rows: rows(state).await,
        form: AddForm {
            password: String::new(),
            ..form
        },
        error,
        checked,
    });
    *r.status_mut() = status;
    r
}

async fn list(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    render(&state, &p, None, AddForm::default(), None, None).await
}

/// Turns the form into what `dbservers::add` takes; the error names the field.
fn parse(f: &AddForm) -> anyhow::Result<dbservers::AddDbServer> {
    let kind: DbKind = f.kind.trim().parse()?;
    let port = match f.port.trim() {
        "" => None,
        p => Some(p.parse::<u16>().map_err(|_| {
            anyhow::anyhow!(
                "port `{p}` is not valid: a number from 1 to 65535 (or empty for the default)"
            )
        })?),
    };
    if port == Some(0) {
        anyhow::bail!("port `0` is not valid: a number from 1 to 65535 (or empty for the default)");
    }
    if f.password.is_empty() {
        anyhow::bail!("the administrator password is missing");
    }
    Ok(dbservers::AddDbServer {
        name: f.name.trim().to_string(),
        kind,
        host: f.host.trim().to_string(),
        port,
        socket: Some(f.socket.trim().to_string()).filter(|s| !s.is_empty()),
        user: f.user.trim().to_string(),
        password: Secret::new(f.password.clone()),
        check: f.no_check.is_none(),
    })
}

async fn add(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(f): Form<AddForm>,
) -> Response {
    let parsed = parse(&f);
    let result = crate::with_lock(&state, move |home| async move {
        dbservers::add(&home, parsed?).await
    })
    .await;
    match result {
        Ok((s, report)) => {
            let mut msg = format!(
                "Registered database server {} ({} at {}:{}).",
                s.name, s.kind, s.host, s.port
            );
            if report.is_some_and(|r| !r.can_deploy()) {
                msg += " Warning: its account cannot create databases and users with rights, or cannot read other accounts, so deploys to it will fail.";
            }
            see_other("/dbservers", &msg)
        }
        Err(e) => {
            // A driver's message never should, but must not be able to, echo the password.
            let mut msg = format!("{e:#}");
            if f.password.len() >= 4 {
                msg = msg.replace(&f.password, "****");
            }
            render(&state, &p, None, f, Some(msg), None).await
        }
    }
}

async fn check(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let r = dbservers::check(&state.home, &name)
        .await
        .map_err(|e| format!("{e:#}"));
    render(&state, &p, None, AddForm::default(), None, Some((name, r))).await
}

async fn remove(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let n = name.clone();
    let result = crate::with_lock(&state, move |home| async move {
        home.registry.remove_dbserver(&n).await?;
        anyhow::Ok(())
    })
    .await;
    match result {
        Ok(()) => see_other(
            "/dbservers",
            &format!("Removed database server {name} from the register (the server itself is untouched)."),
        ),
        Err(e) => see_other(
            "/dbservers",
            &format!("Database server {name} was not removed: {e:#}"),
        ),
    }
}
