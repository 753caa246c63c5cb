//! Bulk deploy (`/platforms/bulk`): VMoodle's node list uploaded (multipart; its CSRF field is
//! checked here, as the middleware leaves multipart bodies to their handler) or a count with a
//! token pattern; a preview validates every row with deploy::plan (ok, or why it is refused);
//! "Run" starts one bulk job with the valid rows, kept server-side under a random id between
//! the preview and the run so the rows cannot be altered in between.

use super::{page, Chrome};
use crate::auth::{self, Principal};
use crate::runner::{self, DeployParams, Op};
use crate::AppState;
use askama::Template;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/platforms/bulk", get(bulk_page))
        .route("/platforms/bulk/preview", post(preview))
        .route("/platforms/bulk/run", post(run))
}

/// Most rows one preview takes.
const MAX_ROWS: usize = 2000;
/// Previews kept per administrator.
const MAX_STASHED: usize = 5;
/// How long a preview can be run.
const STASH_TTL: Duration = Duration::from_secs(3600);

/// Previews waiting for "Run": id -> (administrator, valid rows, when).
type Stash = HashMap<String, (String, Vec<DeployParams>, Instant)>;

fn stash() -> &'static Mutex<Stash> {
    static S: std::sync::OnceLock<Mutex<Stash>> = std::sync::OnceLock::new();
    S.get_or_init(Default::default)
}

/// Rows as read: a label (`line 3`, `row 2`) and the deploy or why it cannot be read.
type ReadRows = Vec<(String, Result<DeployParams, String>)>;

/// A previewed row: its label, token, host and whether it can be deployed.
struct Row {
    label: String,
    token: String,
    template: String,
    ok: bool,
    reason: String,
}

#[derive(Template)]
#[template(path = "platform_bulk.html")]
struct BulkPage {
    chrome: Chrome,
    templates: Vec<String>,
    error: Option<String>,
    rows: Vec<Row>,
    valid: usize,
    stash_id: String,
}

async fn templates(state: &AppState) -> Vec<String> {
    super::template_names(&state.home).await
}

async fn bulk_page(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    page(BulkPage {
        chrome: Chrome::new(&p, "bulk"),
        templates: templates(&state).await,
        error: None,
        rows: vec![],
        valid: 0,
        stash_id: String::new(),
    })
}

fn refused(state_templates: Vec<String>, p: &Principal, msg: String) -> Response {
    let mut r = page(BulkPage {
        chrome: Chrome::new(p, "bulk"),
        templates: state_templates,
        error: Some(msg),
        rows: vec![],
        valid: 0,
        stash_id: String::new(),
    });
    *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    r
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PatternForm {
    count: String,
    pattern: String,
    start: String,
    template: String,
}

/// Tokens from a pattern: `{N}` replaced by start, start+1, ... (count of them).
fn pattern_rows(f: &PatternForm) -> Result<Vec<DeployParams>, String> {
    let count: usize = f
        .count
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_ROWS).contains(n))
        .ok_or_else(|| format!("count `{}` must be a number from 1 to {MAX_ROWS}", f.count))?;
    let start: usize = match f.start.trim() {
        "" => 1,
        s => s
            .parse()
            .ok()
            .filter(|n| *n <= 1_000_000_000)
            .ok_or_else(|| format!("start `{s}` must be a number from 0 to 1000000000"))?,
    };
    if f.pattern.trim().len() > 40 {
        return Err(format!(
            "pattern `{}` is too long: tokens have at most 20 characters",
            f.pattern.trim().chars().take(40).collect::<String>()
        ));
    }
    if !f.pattern.contains("{N}") {
        return Err(format!(
            "pattern `{}` must contain {{N}}, e.g. school{{N}}",
            f.pattern
        ));
    }
    Ok((start..start + count)
        .map(|n| DeployParams {
            token: f.pattern.trim().replace("{N}", &n.to_string()),
            template: f.template.trim().into(),
            ..Default::default()
        })
        .collect())
}

/// Rows of VMoodle's node list (as `vmoodle deploy --nodelist` reads it): shortname is the
/// token; vhostname, name, description, vdbname, vdblogin, vdatapath, vdbprefix, mnet and
/// vtemplate preset each row; `config_NAME` and `plugin|setting` columns set settings.
fn nodelist_rows(text: &[u8], template: &str) -> Result<ReadRows, String> {
    let path = std::env::temp_dir().join(format!("vmoodle-nodelist-{}.csv", auth::random_token()));
    std::fs::write(&path, text).map_err(|e| format!("cannot keep the upload: {e}"))?;
    let read = vmoodle_ops::import::read_nodelist(&path, &["shortname"]);
    let _ = std::fs::remove_file(&path);
    let (headers, rows) =
        read.map_err(|e| format!("{e:#}").replace(&path.display().to_string(), "the node list"))?;
    Ok(rows
        .into_iter()
        .map(|(label, row)| {
            let params = row.map(|row| {
                let get = |k: &str| row.get(k).cloned().flatten();
                let mut r = DeployParams {
                    token: get("shortname").unwrap_or_default(),
                    name: get("name"),
                    description: get("description"),
                    host: get("vhostname"),
                    dbname: get("vdbname"),
                    dbuser: get("vdblogin"),
                    dataroot: get("vdatapath"),
                    prefix: get("vdbprefix"),
                    mnet: get("mnet").and_then(|m| m.parse().ok()),
                    template: get("vtemplate").unwrap_or_else(|| template.trim().to_string()),
                    ..Default::default()
                };
                for h in &headers {
                    let Some(v) = get(h) else { continue };
                    if let Some(name) = h.strip_prefix("config_") {
                        r.plugin_config.push((String::new(), name.to_string(), v));
                    } else if let Some((plugin, setting)) = h.split_once('|') {
                        r.plugin_config
                            .push((plugin.to_string(), setting.to_string(), v));
                    }
                }
                r
            });
            (label, params)
        })
        .collect())
}

/// Reads the multipart upload: its CSRF field (checked), template and file.
async fn read_upload(mut m: Multipart, p: &Principal) -> Result<(String, Vec<u8>), Response> {
    let (mut csrf, mut template, mut file) = (String::new(), String::new(), Vec::new());
    while let Ok(Some(field)) = m.next_field().await {
        match field.name().unwrap_or("") {
            "csrf" => csrf = field.text().await.unwrap_or_default(),
            "template" => template = field.text().await.unwrap_or_default(),
            "nodelist" => file = field.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
            _ => {}
        }
    }
    if !auth::same(&csrf, p.csrf()) {
        return Err(auth::csrf_refused());
    }
    Ok((template, file))
}

async fn preview(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    req: Request,
) -> Response {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    let rows: ReadRows = if multipart {
        let m = match Multipart::from_request(req, &state).await {
            Ok(m) => m,
            Err(e) => return e.into_response(),
        };
        let (template, file) = match read_upload(m, &p).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        if file.is_empty() {
            return refused(
                templates(&state).await,
                &p,
                "nodelist: choose a node list file (semicolon-separated, header line first)."
                    .into(),
            );
        }
        match nodelist_rows(&file, &template) {
            Ok(r) => r,
            Err(e) => return refused(templates(&state).await, &p, format!("nodelist: {e}")),
        }
    } else {
        let Ok(Form(f)) = Form::<PatternForm>::from_request(req, &state).await else {
            return refused(
                templates(&state).await,
                &p,
                "the form could not be read".into(),
            );
        };
        match pattern_rows(&f) {
            Ok(r) => r
                .into_iter()
                .enumerate()
                .map(|(i, r)| (format!("row {}", i + 1), Ok(r)))
                .collect(),
            Err(e) => return refused(templates(&state).await, &p, e),
        }
    };
    if rows.len() > MAX_ROWS {
        return refused(
            templates(&state).await,
            &p,
            format!(
                "the list has {} rows; at most {MAX_ROWS} at once",
                rows.len()
            ),
        );
    }
    let (shown, valid) = validate(&state, rows).await;
    let id = auth::random_token();
    let n = valid.len();
    {
        let mut s = stash().lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, (_, _, t)| t.elapsed() < STASH_TTL);
        // A few previews per administrator wait for "Run"; older ones give way.
        let mut mine: Vec<(String, Instant)> = s
            .iter()
            .filter(|(_, (a, _, _))| *a == p.admin)
            .map(|(k, (_, _, t))| (k.clone(), *t))
            .collect();
        mine.sort_by_key(|(_, t)| *t);
        while mine.len() >= MAX_STASHED {
            let (k, _) = mine.remove(0);
            s.remove(&k);
        }
        s.insert(id.clone(), (p.admin.clone(), valid, Instant::now()));
    }
    page(BulkPage {
        chrome: Chrome::new(&p, "bulk"),
        templates: templates(&state).await,
        error: None,
        rows: shown,
        valid: n,
        stash_id: id,
    })
}

/// Plans every row (as the deploy would) and keeps the valid ones; a token twice is refused
/// the second time.
async fn validate(state: &AppState, rows: ReadRows) -> (Vec<Row>, Vec<DeployParams>) {
    let mut seen = HashSet::new();
    let mut shown = Vec::new();
    let mut valid = Vec::new();
    let fresh = state.fresh().await.ok();
    let home = fresh.as_deref().unwrap_or(&state.home);
    for (label, r) in rows {
        let (token, template, verdict) = match r {
            Err(e) => (String::new(), String::new(), Err(e)),
            Ok(d) => {
                let v = if !seen.insert(d.token.clone()) {
                    Err(format!("token `{}` is twice in the list", d.token))
                } else {
                    vmoodle_ops::deploy::plan(home, &d.request())
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:#}"))
                };
                let (t, tpl) = (d.token.clone(), d.template.clone());
                if v.is_ok() {
                    valid.push(d);
                }
                (t, tpl, v)
            }
        };
        shown.push(Row {
            label,
            token,
            template,
            ok: verdict.is_ok(),
            reason: verdict.err().unwrap_or_default(),
        });
    }
    (shown, valid)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RunForm {
    stash: String,
    parallel: String,
}

async fn run(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(f): Form<RunForm>,
) -> Response {
    let parallel = match f.parallel.trim() {
        "" => 2,
        s => match s.parse::<usize>() {
            Ok(n) if (1..=32).contains(&n) => n,
            _ => {
                return refused(
                    templates(&state).await,
                    &p,
                    format!("parallel `{s}` must be a number from 1 to 32"),
                )
            }
        },
    };
    let taken = {
        let mut s = stash().lock().unwrap_or_else(|e| e.into_inner());
        s.remove(&f.stash)
    };
    let items = match taken {
        Some((admin, items, t)) if admin == p.admin && t.elapsed() < STASH_TTL => items,
        _ => {
            return refused(
                templates(&state).await,
                &p,
                "This preview expired or was already run; preview the list again.".into(),
            )
        }
    };
    if items.is_empty() {
        return refused(
            templates(&state).await,
            &p,
            "No valid row to deploy.".into(),
        );
    }
    match runner::submit(&state, &p.actor(), Op::BulkDeploy { items, parallel }).await {
        Ok(id) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => refused(templates(&state).await, &p, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_gives_tokens_and_names_bad_fields() {
        let f = PatternForm {
            count: "3".into(),
            pattern: "school{N}".into(),
            start: "9".into(),
            template: "t".into(),
        };
        let t: Vec<_> = pattern_rows(&f)
            .unwrap()
            .into_iter()
            .map(|r| r.token)
            .collect();
        assert_eq!(t, ["school9", "school10", "school11"]);
        let f = PatternForm {
            count: "0".into(),
            pattern: "x{N}".into(),
            ..Default::default()
        };
        assert!(pattern_rows(&f).unwrap_err().starts_with("count `0`"));
        let f = PatternForm {
            count: "2".into(),
            pattern: "school".into(),
            ..Default::default()
        };
        assert!(pattern_rows(&f).unwrap_err().contains("{N}"));
    }
}
