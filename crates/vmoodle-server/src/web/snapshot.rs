//! The snapshot wizard (`/snapshot`): choose the source instance (or the master) and a
//! template name; the snapshot runs as a job and the browser goes to its page.

use super::platform::{place, FieldErrors};
use super::{page, Chrome};
use crate::auth::Principal;
use crate::runner::{self, Op};
use crate::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Form, Router};
use serde::Deserialize;
use vmoodle_registry::PoolFilter;

pub fn routes() -> Router<AppState> {
    Router::new().route("/snapshot", get(wizard).post(start))
}

/// How many instances the source list offers (others are typed; the list is a datalist).
const CHOICES: i64 = 500;

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
struct SnapForm {
    source: String,
    template: String,
}

#[derive(Template)]
#[template(path = "snapshot.html")]
struct SnapPage {
    chrome: Chrome,
    f: SnapForm,
    errors: FieldErrors,
    master: Option<String>,
    sources: Vec<String>,
}

async fn render(state: &AppState, p: &Principal, f: SnapForm, errors: FieldErrors) -> Response {
    let reg = &state.home.registry;
    let master = reg.master().await.ok().flatten().map(|m| m.shortname);
    let sources = reg
        .pool_page(&PoolFilter {
            limit: CHOICES,
            ..Default::default()
        })
        .await
        .map(|(rows, _)| {
            rows.into_iter()
                .filter(|i| !i.is_master)
                .map(|i| i.shortname)
                .collect()
        })
        .unwrap_or_default();
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut r = page(SnapPage {
        chrome: Chrome::new(p, "snapshot"),
        f,
        errors,
        master,
        sources,
    });
    *r.status_mut() = status;
    r
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct SourceQuery {
    source: String,
}

async fn wizard(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<SourceQuery>,
) -> Response {
    let f = SnapForm {
        source: q.source,
        template: String::new(),
    };
    render(&state, &p, f, FieldErrors::default()).await
}

async fn start(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(f): Form<SnapForm>,
) -> Response {
    let mut errors = FieldErrors::default();
    let (source, template) = (f.source.trim().to_string(), f.template.trim().to_string());
    if source.is_empty() {
        errors.insert(
            "source".into(),
            "source: choose the instance (or the master) to snapshot".into(),
        );
    }
    if let Err(e) = vmoodle_ops::templates::check_name(&template) {
        errors.insert("template".into(), format!("{e:#}"));
    }
    if !errors.is_empty() {
        return render(&state, &p, f, errors).await;
    }
    match runner::submit(&state, &p.actor(), Op::Snapshot { source, template }).await {
        Ok(id) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => {
            let msg = format!("{e:#}");
            let field = if msg.contains("already exists") {
                "template"
            } else {
                &place(&e, &["source", "template"])
            };
            errors.insert(field.into(), msg);
            render(&state, &p, f, errors).await
        }
    }
}
