//! MNET: the subnetworks and their members, each instance's key expiry, the health of every
//! peer pair in words, and the jobs that renew keys and repair peerings.

use super::{page, see_other, when, Chrome};
use crate::auth::Principal;
use crate::runner::{self, Op};
use crate::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use std::collections::BTreeMap;
use vmoodle_core::MnetMode;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/mnet", get(show))
        .route("/mnet/renew", post(renew))
        .route("/mnet/repair", post(repair))
}

struct Member {
    instance: String,
    expires: String,
    /// `due`, `ok` or `no key`.
    renewal: &'static str,
    badge: &'static str,
}

struct Subnet {
    title: String,
    members: Vec<Member>,
}

struct Pair {
    a: String,
    b: String,
    ok: bool,
    /// What is wrong, in words (empty when healthy).
    problem: String,
}

#[derive(Template)]
#[template(path = "mnet.html")]
struct MnetPage {
    chrome: Chrome,
    subnets: Vec<Subnet>,
    pairs: Vec<Pair>,
    /// Instances whose database could not be read, and why.
    unreadable: Vec<(String, String)>,
    error: Option<String>,
    instances: Vec<String>,
}

/// Says what is wrong with one side of a pair.
fn side(holder: &str, other: &str, holds: bool, deleted: bool) -> Option<String> {
    match (holds, deleted) {
        (true, _) => None,
        (false, true) => Some(format!(
            "{holder}'s administrator deleted {other} (left deleted)"
        )),
        (false, false) => Some(format!("{holder} holds a stale or no key of {other}")),
    }
}

async fn show(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let chrome = Chrome::new(&p, "mnet");
    let st = match vmoodle_ops::mnet::status(&state.home).await {
        Ok(st) => st,
        Err(e) => {
            return page(MnetPage {
                chrome,
                subnets: Vec::new(),
                pairs: Vec::new(),
                unreadable: Vec::new(),
                error: Some(format!("{e:#}")),
                instances: Vec::new(),
            })
        }
    };
    // What was just read also feeds the pool's expiry column and the metrics.
    state.cache.set_mnet_expiry(
        st.instances
            .iter()
            .filter_map(|i| Some((i.instance.clone(), i.expires?)))
            .collect(),
    );
    let mut groups: BTreeMap<i64, Vec<Member>> = BTreeMap::new();
    for i in st.instances.iter().filter(|i| i.mnet >= 0) {
        let (renewal, badge) = match (i.has_key, i.due) {
            (false, _) => ("no key", "bad"),
            (true, true) => ("due", "warn"),
            (true, false) => ("ok", "ok"),
        };
        groups.entry(i.mnet).or_default().push(Member {
            instance: i.instance.clone(),
            expires: i.expires.map(when).unwrap_or_default(),
            renewal,
            badge,
        });
    }
    let subnets = groups
        .into_iter()
        .map(|(n, members)| Subnet {
            title: MnetMode(n).describe(),
            members,
        })
        .collect();
    let pairs = st
        .pairs
        .iter()
        .map(|x| {
            let problems: Vec<String> = [
                side(&x.a, &x.b, x.a_holds_b, x.a_deleted_b),
                side(&x.b, &x.a, x.b_holds_a, x.b_deleted_a),
            ]
            .into_iter()
            .flatten()
            .collect();
            Pair {
                a: x.a.clone(),
                b: x.b.clone(),
                ok: x.ok(),
                problem: problems.join("; "),
            }
        })
        .collect();
    let instances = st
        .instances
        .iter()
        .filter(|i| i.mnet >= 0)
        .map(|i| i.instance.clone())
        .collect();
    page(MnetPage {
        chrome,
        subnets,
        pairs,
        unreadable: st
            .errors
            .iter()
            .map(|e| (e.instance.clone(), e.error.clone()))
            .collect(),
        error: None,
        instances,
    })
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RenewForm {
    /// `due`, `all` or `one`.
    what: String,
    instance: String,
}

async fn submit(state: &AppState, p: &Principal, op: Op) -> Response {
    match runner::submit(state, &p.actor(), op).await {
        Ok(id) => see_other(&format!("/jobs/{id}"), "Started."),
        Err(e) => see_other("/mnet", &format!("Not started: {e:#}")),
    }
}

async fn renew(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(f): Form<RenewForm>,
) -> Response {
    let op = match f.what.as_str() {
        "all" => Op::MnetRenew {
            instance: None,
            all: true,
        },
        "one" if !f.instance.trim().is_empty() => Op::MnetRenew {
            instance: Some(f.instance.trim().to_string()),
            all: false,
        },
        "one" => return see_other("/mnet", "Not started: choose the instance to renew."),
        _ => Op::MnetRenew {
            instance: None,
            all: false,
        },
    };
    submit(&state, &p, op).await
}

async fn repair(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    submit(&state, &p, Op::MnetRepair).await
}
