//! The pool: every instance, searchable, sortable, paginated; select rows and act on them.

use super::{page, Chrome};
use crate::auth::Principal;
use crate::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use vmoodle_registry::Instance;

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(pool))
}

#[derive(Debug, Deserialize, Default)]
struct PoolQuery {
    msg: Option<String>,
}

#[derive(Template)]
#[template(path = "pool.html")]
struct PoolPage {
    chrome: Chrome,
    rows: Vec<Instance>,
}

async fn pool(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<PoolQuery>,
) -> Response {
    let rows = state.home.registry.instances().await.unwrap_or_default();
    page(PoolPage {
        chrome: Chrome::new(&p, "pool").flash(q.msg),
        rows,
    })
}
