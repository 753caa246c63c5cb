//! The pool (`/`): every instance, searched, filtered, sorted and paginated in SQL; select rows
//! and act on them (enable, disable, snapshot, delete after a confirmation page, renew MNET
//! keys). Each action starts jobs through the runner; the instance page posts here too.

use super::{page, see_other, Chrome};
use crate::auth::{self, Principal};
use crate::runner::{self, Op};
use crate::AppState;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use vmoodle_registry::{Instance, PoolFilter, PoolSort};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pool))
        .route("/pool/act", post(act))
        .route("/pool/delete", post(delete))
}

/// Instances per page.
pub const PAGE_SIZE: i64 = 50;

/// The pool's query string; every value a string so that an empty select means "any".
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct PoolQuery {
    pub q: String,
    pub state: String,
    pub dbserver: String,
    pub template: String,
    pub mnet: String,
    pub sort: String,
    pub dir: String,
    pub page: String,
    pub msg: Option<String>,
}

impl PoolQuery {
    /// The register filter, or what is wrong with the query (naming the parameter).
    fn filter(&self) -> Result<(PoolFilter, i64), String> {
        let sort = match self.sort.as_str() {
            "" => PoolSort::Name,
            s => PoolSort::parse(s).ok_or_else(|| {
                format!(
                    "sort `{s}` is not a column; use name, host, dbserver, state, mnet or template"
                )
            })?,
        };
        let enabled = match self.state.as_str() {
            "" => None,
            "enabled" => Some(true),
            "disabled" => Some(false),
            s => return Err(format!("state `{s}` is not enabled or disabled")),
        };
        let mnet = match self.mnet.trim() {
            "" => None,
            m => Some(m.parse::<i64>().map_err(|_| {
                format!("mnet `{m}` is not a subnetwork number (-1 none, 0 free, N)")
            })?),
        };
        let page = match self.page.trim() {
            "" => 1,
            p => p
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .ok_or_else(|| format!("page `{p}` is not a page number (1, 2, ...)"))?,
        };
        let some = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok((
            PoolFilter {
                search: some(&self.q),
                enabled,
                dbserver: some(&self.dbserver),
                template: some(&self.template),
                mnet,
                sort,
                descending: self.dir == "desc",
                limit: PAGE_SIZE,
                offset: (page - 1) * PAGE_SIZE,
            },
            page,
        ))
    }

    /// This view's link with some parameters changed.
    fn link(&self, sort: &str, dir: &str, page: i64) -> String {
        let mut s = String::from("/?");
        for (k, v) in [
            ("q", self.q.as_str()),
            ("state", &self.state),
            ("dbserver", &self.dbserver),
            ("template", &self.template),
            ("mnet", &self.mnet),
            ("sort", sort),
            ("dir", dir),
        ] {
            if !v.is_empty() {
                s += &format!("{k}={}&", auth::urlencode(v));
            }
        }
        s + &format!("page={page}")
    }
}

/// A sortable column heading.
struct Col {
    key: &'static str,
    label: &'static str,
    href: String,
    /// `ascending`, `descending` or `none` (aria-sort).
    aria: &'static str,
}

#[derive(Template)]
#[template(path = "pool.html")]
struct PoolPage {
    chrome: Chrome,
    q: PoolQuery,
    error: Option<String>,
    rows: Vec<PoolRow>,
    total: i64,
    page: i64,
    pages: i64,
    first: i64,
    last: i64,
    prev: Option<String>,
    next: Option<String>,
    cols: Vec<Col>,
    dbservers: Vec<String>,
    templates: Vec<String>,
    nets: Vec<i64>,
}

/// A row of the pool as shown.
struct PoolRow {
    i: Instance,
    mnet: String,
    /// Its MNET key's expiry as last read by the scheduler or the MNET page (reading every
    /// site's database on each page load would not stay fast at 10,000 instances).
    expiry: String,
    /// Its last cron pass: when, and how it ended (`ok`, `failed`...); `never`.
    cron: String,
    cron_status: String,
    /// Time since its last successful cron pass.
    cron_gap: String,
    /// Its Moodle release (version) as last read (hourly, by the scheduler).
    version: String,
}

/// How an MNET value reads.
pub fn mnet_words(m: &i64) -> String {
    match *m {
        -1 => "none".into(),
        0 => "free".into(),
        n => format!("subnetwork {n}"),
    }
}

async fn pool(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<PoolQuery>,
) -> Response {
    let reg = &state.home.registry;
    let (filter, page_no, error) = match q.filter() {
        Ok((f, n)) => (f, n, None),
        Err(e) => (
            PoolFilter {
                limit: PAGE_SIZE,
                ..Default::default()
            },
            1,
            Some(e),
        ),
    };
    let expiry = state
        .cache
        .mnet_expiry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (rows, total) = match reg.pool_page(&filter).await {
        Ok(r) => r,
        Err(e) => {
            return super::message(
                &p,
                StatusCode::SERVICE_UNAVAILABLE,
                "Register unavailable",
                &e.to_string(),
            )
        }
    };
    // Cron and Moodle versions: a few queries for the whole register, no site database read.
    let facts = crate::cron::Facts::load(reg).await.unwrap_or_default();
    let (templates, nets) = reg.pool_choices().await.unwrap_or_default();
    let dbservers = super::dbserver_names(&state.home).await;
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let sort = filter.sort.key();
    let dir = if filter.descending { "desc" } else { "asc" };
    let cols = [
        ("name", "Name"),
        ("host", "Host"),
        ("dbserver", "Database server"),
        ("state", "State"),
        ("mnet", "MNET"),
        ("template", "Template"),
    ]
    .into_iter()
    .map(|(key, label)| {
        let current = key == sort;
        let flip = if current && dir == "asc" {
            "desc"
        } else {
            "asc"
        };
        Col {
            key,
            label,
            href: q.link(key, flip, 1),
            aria: match (current, dir) {
                (false, _) => "none",
                (true, "asc") => "ascending",
                _ => "descending",
            },
        }
    })
    .collect();
    let shown = rows.len() as i64;
    page(PoolPage {
        chrome: Chrome::new(&p, "pool"),
        error,
        total,
        page: page_no,
        pages,
        first: if shown == 0 { 0 } else { filter.offset + 1 },
        last: filter.offset + shown,
        prev: (page_no > 1).then(|| q.link(sort, dir, page_no - 1)),
        next: (page_no < pages).then(|| q.link(sort, dir, page_no + 1)),
        cols,
        rows: rows
            .into_iter()
            .map(|i| {
                let f = facts.of(i.id);
                PoolRow {
                    cron: f
                        .last_cron_at
                        .map(super::when)
                        .unwrap_or_else(|| "never".into()),
                    cron_status: f.last_cron_status.unwrap_or_default(),
                    cron_gap: f
                        .cron_gap_s
                        .map(vmoodle_ops::fleet::cron::gap_words)
                        .unwrap_or_else(|| "—".into()),
                    version: match (f.moodle_release, f.moodle_version) {
                        (Some(r), Some(v)) if !r.is_empty() => format!("{r} ({v})"),
                        (_, Some(v)) => v,
                        _ => "not read yet".into(),
                    },
                    mnet: mnet_words(&i.mnet),
                    expiry: if i.mnet < 0 {
                        "—".into()
                    } else {
                        expiry
                            .get(&i.shortname)
                            .map(|t| super::when(*t))
                            .unwrap_or_else(|| "not read yet".into())
                    },
                    i,
                }
            })
            .collect(),
        dbservers,
        templates,
        nets,
        q,
    })
}

/// A posted selection: the chosen action, the chosen rows (or every row shown, with `all`),
/// the template name of a snapshot, where to come back to.
#[derive(Debug, Default)]
struct Selection {
    action: String,
    names: Vec<String>,
    template: String,
    back: String,
}

fn selection(body: &[u8]) -> Selection {
    let mut s = Selection::default();
    let mut rows = Vec::new();
    let mut all = false;
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "action" => s.action = v.into_owned(),
            "sel" => s.names.push(v.into_owned()),
            "row" => rows.push(v.into_owned()),
            "all" => all = true,
            "template" => s.template = v.trim().to_string(),
            "back" => s.back = v.into_owned(),
            _ => {}
        }
    }
    if all {
        s.names = rows;
    }
    s.names.dedup();
    if !crate::auth::local_path(&s.back) {
        s.back = "/".into();
    }
    s
}

async fn act(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Response {
    let s = selection(&body);
    if s.names.is_empty() {
        return see_other(&s.back, "Select at least one instance first.");
    }
    let ops: Vec<Op> = match s.action.as_str() {
        "enable" => s
            .names
            .iter()
            .map(|i| Op::Enable {
                instance: i.clone(),
            })
            .collect(),
        "disable" => s
            .names
            .iter()
            .map(|i| Op::Disable {
                instance: i.clone(),
            })
            .collect(),
        "renew" => s
            .names
            .iter()
            .map(|i| Op::MnetRenew {
                instance: Some(i.clone()),
                all: false,
            })
            .collect(),
        "snapshot" => {
            if s.names.len() != 1 {
                return see_other(
                    &s.back,
                    "A snapshot is taken of one instance: select exactly one.",
                );
            }
            if let Err(e) = vmoodle_ops::templates::check_name(&s.template) {
                return see_other(&s.back, &format!("Template name: {e:#}"));
            }
            vec![Op::Snapshot {
                source: s.names[0].clone(),
                template: s.template.clone(),
            }]
        }
        "delete" => return confirm_delete(&state, &p, s.names).await,
        "fleet" => return to_fleet(&s.names),
        a => return see_other(&s.back, &format!("Unknown action `{a}`: see the buttons.")),
    };
    start(&state, &p, ops, &s.back).await
}

/// A fleet operation on the selected rows: the fleet page, with them filled in.
fn to_fleet(names: &[String]) -> Response {
    let names: String = url::form_urlencoded::byte_serialize(names.join(",").as_bytes()).collect();
    Redirect::to(&format!("/fleet?instances={names}")).into_response()
}

/// Submits each operation; redirects to the job when there is one, else to the jobs list.
async fn start(state: &AppState, p: &Principal, ops: Vec<Op>, back: &str) -> Response {
    let mut ids = Vec::new();
    let mut refused = Vec::new();
    for op in ops {
        let target = op.target();
        match runner::submit(state, &p.actor(), op).await {
            Ok(id) => ids.push(id),
            Err(e) => refused.push(format!("{target}: {e:#}")),
        }
    }
    match (ids.as_slice(), refused.is_empty()) {
        ([], _) => see_other(back, &format!("Nothing started. {}", refused.join("; "))),
        ([id], true) => axum::response::Redirect::to(&format!("/jobs/{id}")).into_response(),
        (ids, _) => {
            let mut msg = format!("Started {} job(s).", ids.len());
            if !refused.is_empty() {
                msg += &format!(" Refused: {}", refused.join("; "));
            }
            see_other("/jobs", &msg)
        }
    }
}

#[derive(Template)]
#[template(path = "pool_delete.html")]
struct DeletePage {
    chrome: Chrome,
    rows: Vec<Instance>,
    missing: Vec<String>,
}

/// The second page of a delete: what will be deleted (archived first), to confirm.
async fn confirm_delete(state: &AppState, p: &Principal, names: Vec<String>) -> Response {
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        match state.home.registry.find_instance(&n).await {
            Ok(Some(i)) => rows.push(i),
            _ => missing.push(n),
        }
    }
    page(DeletePage {
        chrome: Chrome::new(p, "pool"),
        rows,
        missing,
    })
}

async fn delete(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Response {
    let s = selection(&body);
    let confirmed = auth::form_field(&body, "confirm").as_deref() == Some("yes");
    if !confirmed || s.names.is_empty() {
        return see_other("/", "Nothing deleted (not confirmed).");
    }
    let ops = s
        .names
        .iter()
        .map(|i| Op::Delete {
            instance: i.clone(),
            archive: true,
        })
        .collect();
    start(&state, &p, ops, "/").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_errors_name_the_parameter() {
        let q = PoolQuery {
            sort: "size".into(),
            ..Default::default()
        };
        assert!(q.filter().unwrap_err().contains("sort `size`"));
        let q = PoolQuery {
            page: "0".into(),
            ..Default::default()
        };
        assert!(q.filter().unwrap_err().contains("page `0`"));
        let q = PoolQuery {
            page: "3".into(),
            state: "disabled".into(),
            ..Default::default()
        };
        let (f, n) = q.filter().unwrap();
        assert_eq!((f.offset, n, f.enabled), (100, 3, Some(false)));
    }

    #[test]
    fn select_all_takes_every_shown_row() {
        let s = selection(b"action=enable&all=1&row=a&row=b&sel=a&back=//evil");
        assert_eq!(s.names, ["a", "b"]);
        assert_eq!(s.back, "/");
    }
}
