//! Templates: the list (source, Moodle version, size, age, instances deployed from each), one
//! template's manifest with its warm spares, Verify (optionally re-hashing every file), Delete
//! and Fill spares (both jobs).

use super::{message, page, see_other, when, Chrome};
use crate::auth::Principal;
use crate::runner::{self, Op};
use crate::AppState;
use askama::Template as Askama;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use vmoodle_core::DbKind;
use vmoodle_ops::{dbservers, spares, templates};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/templates", get(list))
        .route("/templates/{name}", get(show))
        .route("/templates/{name}/verify", post(verify))
        .route("/templates/{name}/delete", post(delete))
        .route("/templates/{name}/spares", post(fill))
}

/// Bytes in words (binary units).
fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

struct Row {
    name: String,
    source: String,
    moodle: String,
    size: String,
    made: String,
    instances: usize,
}

#[derive(Askama)]
#[template(path = "templates.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<Row>,
}

async fn list(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let reg = &state.home.registry;
    let all = reg.templates().await.unwrap_or_default();
    let instances = reg.instances().await.unwrap_or_default();
    let rows = all
        .iter()
        .map(|t| {
            let m = templates::open(t).ok().map(|(m, _)| m);
            Row {
                name: t.name.clone(),
                source: t.source.clone(),
                moodle: m
                    .as_ref()
                    .map(|m| m.moodle.release.clone())
                    .unwrap_or_default(),
                size: m
                    .as_ref()
                    .map(|m| size(m.database.bytes + m.dataroot.bytes))
                    .unwrap_or_default(),
                made: when(t.created_at),
                instances: instances
                    .iter()
                    .filter(|i| i.template.as_deref() == Some(t.name.as_str()))
                    .count(),
            }
        })
        .collect();
    page(ListPage {
        chrome: Chrome::new(&p, "templates"),
        rows,
    })
}

#[derive(Askama)]
#[template(path = "template.html")]
struct TemplatePage {
    chrome: Chrome,
    name: String,
    source: String,
    made: String,
    moodle: String,
    tables: u64,
    database: String,
    dataroot: String,
    /// The manifest, pretty-printed.
    manifest: String,
    instances: Vec<String>,
    /// Each MariaDB server: its name and its spares of this template (or why they are unknown).
    spares: Vec<(String, Result<usize, String>)>,
    /// The outcome of Verify: the problems found (empty: verified), or why it could not run.
    verified: Option<Result<Vec<String>, String>>,
    deep: bool,
}

async fn render(
    state: &AppState,
    p: &Principal,
    name: &str,
    msg: Option<String>,
    verified: Option<Result<Vec<String>, String>>,
    deep: bool,
) -> Response {
    let reg = &state.home.registry;
    let t = match reg.template(name).await {
        Ok(t) => t,
        Err(e) => {
            return message(
                p,
                StatusCode::NOT_FOUND,
                "No such template",
                &format!("{e:#}"),
            )
        }
    };
    let m = match templates::open(&t) {
        Ok((m, _)) => m,
        Err(e) => {
            return message(
                p,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Unreadable template",
                &format!("{e:#}"),
            )
        }
    };
    let instances = reg
        .instances()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.template.as_deref() == Some(name))
        .map(|i| i.shortname)
        .collect();
    let mut spares_on = Vec::new();
    for s in reg.dbservers().await.unwrap_or_default() {
        if s.kind != DbKind::Mariadb {
            continue;
        }
        let n = match dbservers::admin_spec(&state.home, &s) {
            Ok(spec) => spares::spare_databases(&spec, name)
                .await
                .map(|v| v.len())
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(format!("{e:#}")),
        };
        spares_on.push((s.name.clone(), n));
    }
    let manifest = serde_json::from_str::<serde_json::Value>(&t.manifest)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| t.manifest.clone());
    page(TemplatePage {
        chrome: Chrome::new(p, "templates").flash(msg),
        name: t.name.clone(),
        source: t.source.clone(),
        made: when(t.created_at),
        moodle: format!("{} ({})", m.moodle.release, m.moodle.version),
        tables: m.tables,
        database: format!("{} ({})", m.database.file, size(m.database.bytes)),
        dataroot: format!(
            "{} files, {} ({} linked)",
            m.dataroot.files,
            size(m.dataroot.bytes),
            m.dataroot.linked
        ),
        manifest,
        instances,
        spares: spares_on,
        verified,
        deep,
    })
}

async fn show(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    render(&state, &p, &name, None, None, false).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct VerifyForm {
    deep: Option<String>,
}

async fn verify(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Form(f): Form<VerifyForm>,
) -> Response {
    let deep = f.deep.is_some();
    let t = match state.home.registry.template(&name).await {
        Ok(t) => t,
        Err(e) => {
            return message(
                &p,
                StatusCode::NOT_FOUND,
                "No such template",
                &format!("{e:#}"),
            )
        }
    };
    // Hashing files is blocking work.
    let r = tokio::task::spawn_blocking(move || templates::verify(&t, deep))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("{e:#}")));
    render(&state, &p, &name, None, Some(r), deep).await
}

async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    match runner::submit(
        &state,
        &p.actor(),
        Op::TemplateDelete { name: name.clone() },
    )
    .await
    {
        Ok(id) => see_other(
            &format!("/jobs/{id}"),
            &format!("Deleting template {name}."),
        ),
        Err(e) => see_other(
            &format!("/templates/{name}"),
            &format!("Not deleted: {e:#}"),
        ),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct FillForm {
    dbserver: String,
    count: String,
}

async fn fill(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Form(f): Form<FillForm>,
) -> Response {
    let back = format!("/templates/{name}");
    let Ok(count) = f.count.trim().parse::<usize>() else {
        return see_other(
            &back,
            &format!(
                "Not started: count `{}` is not valid: a whole number from 1 to 100.",
                f.count
            ),
        );
    };
    let op = Op::SparesFill {
        template: name.clone(),
        dbserver: f.dbserver.trim().to_string(),
        count,
    };
    match runner::submit(&state, &p.actor(), op).await {
        Ok(id) => see_other(&format!("/jobs/{id}"), "Filling spares."),
        Err(e) => see_other(&back, &format!("Not started: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_words() {
        assert_eq!(super::size(512), "512 B");
        assert_eq!(super::size(1536), "1.5 KiB");
        assert_eq!(super::size(3 << 20), "3.0 MiB");
    }
}
