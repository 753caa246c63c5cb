//! Database clusters: the list of clusters and registered nodes (from the register only, so it
//! is fast), and a cluster's page with its topology and what every node's agent says now
//! (`vmoodle_ops::cluster::status`, bounded in time so a hung agent cannot hang the page).
//! Read-only: `vmoodle node add` and `vmoodle cluster create` build them.

use super::{message, page, when, Chrome};
use crate::auth::Principal;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use std::time::Duration;
use vmoodle_ops::cluster::{ClusterStatus, NodeLine, ProxyLine};
use vmoodle_registry::{Cluster, ClusterNode, DbServer};

/// How long the cluster page waits for the status as a whole; a safety net: the status asks
/// every node at once and gives each 5 s, so a hung agent shows as that node's error.
const STATUS_TIMEOUT: Duration = Duration::from_secs(12);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/clusters", get(list))
        .route("/clusters/{name}", get(show))
}

// ---- the list ---------------------------------------------------------------------------------

struct ClusterRow {
    name: String,
    dbserver: String,
    state: String,
    vip: String,
    writer_port: u16,
    reader_port: u16,
    /// (node, role)
    members: Vec<(String, String)>,
}

struct NodeRow {
    name: String,
    address: String,
    agent_port: u16,
    /// (cluster, role) for every cluster the node is a member of; empty: free.
    serves: Vec<(String, String)>,
}

impl NodeRow {
    /// Its roles, joined (`primary`, `proxy`), or empty when the node serves no cluster.
    fn roles(&self) -> String {
        let mut r: Vec<&str> = self.serves.iter().map(|(_, role)| role.as_str()).collect();
        r.dedup();
        r.join(", ")
    }
}

#[derive(Template)]
#[template(path = "clusters.html")]
struct ListPage {
    chrome: Chrome,
    clusters: Vec<ClusterRow>,
    nodes: Vec<NodeRow>,
    error: Option<String>,
}

impl ListPage {
    fn badge(state: &str) -> &'static str {
        state_class(state)
    }
}

/// The badge class of a cluster's state.
fn state_class(state: &str) -> &'static str {
    match state {
        "active" => "ok",
        "building" => "running",
        _ => "warn",
    }
}

/// Members in the order of the topology: the primary, the replicas, then the proxies.
fn topology_order(members: &mut [vmoodle_registry::Member]) {
    let rank = |role: &str| match role {
        "primary" => 0,
        "replica" => 1,
        "proxy" => 2,
        _ => 3,
    };
    members.sort_by(|a, b| (rank(&a.role), &a.node).cmp(&(rank(&b.role), &b.node)));
}

fn dbserver_name(servers: &[DbServer], id: i64) -> String {
    servers
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

async fn list(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let reg = &state.home.registry;
    let read = async {
        anyhow::Ok((
            reg.clusters().await?,
            reg.cluster_nodes().await?,
            reg.dbservers().await?,
        ))
    };
    let (clusters, nodes, servers, error) = match read.await {
        Ok((c, n, s)) => (c, n, s, None),
        Err(e) => (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Some(format!("the register could not be read: {e:#}")),
        ),
    };
    let nodes = nodes
        .into_iter()
        .map(|n| NodeRow {
            serves: clusters
                .iter()
                .flat_map(|c| {
                    c.members
                        .iter()
                        .filter(|m| m.node_id == n.id)
                        .map(|m| (c.name.clone(), m.role.clone()))
                })
                .collect(),
            name: n.name,
            address: n.address,
            agent_port: n.agent_port,
        })
        .collect();
    let clusters = clusters
        .into_iter()
        .map(|mut c| {
            topology_order(&mut c.members);
            c
        })
        .map(|c| ClusterRow {
            dbserver: dbserver_name(&servers, c.dbserver_id),
            members: c.members.into_iter().map(|m| (m.node, m.role)).collect(),
            name: c.name,
            state: c.state,
            vip: c.vip,
            writer_port: c.writer_port,
            reader_port: c.reader_port,
        })
        .collect();
    let mut r = page(ListPage {
        chrome: Chrome::new(&p, "clusters"),
        clusters,
        nodes,
        error: error.clone(),
    });
    if error.is_some() {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

// ---- a cluster --------------------------------------------------------------------------------

struct MemberRow {
    node: String,
    role: String,
    /// `address:port` of its agent (empty if the node is no longer registered).
    agent: String,
}

struct DbRow {
    node: String,
    member_as: String,
    role: String,
    read_only: &'static str,
    io: &'static str,
    sql: &'static str,
    lag: String,
    position: String,
    source: String,
    probed: String,
    /// The agent did not answer (or could not be asked).
    error: Option<String>,
    /// The last replication error the agent reports.
    repl_error: Option<String>,
}

struct BackendRow {
    listener: String,
    server: String,
    status: String,
    check: String,
    backup: bool,
    sessions: u64,
    up: bool,
}

struct ProxyRow {
    node: String,
    haproxy: bool,
    keepalived: bool,
    holds_vip: bool,
    backends: Vec<BackendRow>,
    error: Option<String>,
}

/// What the agents said, or why the page has no answer.
struct Live {
    degraded: bool,
    problems: Vec<String>,
    databases: Vec<DbRow>,
    proxies: Vec<ProxyRow>,
}

#[derive(Template)]
#[template(path = "cluster.html")]
struct ClusterPage {
    chrome: Chrome,
    name: String,
    dbserver: String,
    kind: String,
    state: String,
    vip: String,
    interface: String,
    writer: String,
    reader: String,
    /// Where the database server's register entry points now (what the instances' host
    /// files say).
    current: String,
    current_reader: String,
    original: String,
    max_lag: u32,
    repl_user: String,
    created: String,
    members: Vec<MemberRow>,
    live: Result<Live, String>,
}

impl ClusterPage {
    fn yes(b: &bool) -> &'static str {
        if *b {
            "yes"
        } else {
            "no"
        }
    }
    fn state_class(&self) -> &'static str {
        state_class(&self.state)
    }
}

fn opt_yes(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "–",
    }
}

/// The address of a virtual IP given with its prefix (10.0.0.100/24 -> 10.0.0.100), bracketed
/// when IPv6 so a port can follow.
fn vip_host(vip: &str) -> String {
    let a = vip.split_once('/').map_or(vip, |(a, _)| a);
    if a.contains(':') {
        format!("[{a}]")
    } else {
        a.to_string()
    }
}

fn db_row(l: NodeLine) -> DbRow {
    let s = l.state.unwrap_or_default();
    DbRow {
        node: l.node,
        member_as: l.member_as,
        role: s.role.map(|r| r.as_str().to_string()).unwrap_or_default(),
        read_only: opt_yes(s.read_only),
        io: opt_yes(s.io_running),
        sql: opt_yes(s.sql_running),
        lag: s.lag_seconds.map(|l| format!("{l:.1}")).unwrap_or_default(),
        position: s.position.unwrap_or_default(),
        source: s.source.unwrap_or_default(),
        probed: when(s.probed_at),
        error: l.error,
        repl_error: s.error.filter(|e| !e.is_empty()),
    }
}

fn proxy_row(l: ProxyLine) -> ProxyRow {
    ProxyRow {
        node: l.node,
        haproxy: l.haproxy_running,
        keepalived: l.keepalived_running,
        holds_vip: l.holds_vip,
        backends: l
            .backends
            .into_iter()
            .map(|b| BackendRow {
                up: b.status.starts_with("UP"),
                listener: b.listener,
                server: b.server,
                status: b.status,
                check: b.check_status,
                backup: b.backup,
                sessions: b.current_sessions,
            })
            .collect(),
        error: l.error,
    }
}

fn live(s: ClusterStatus) -> Live {
    Live {
        degraded: s.degraded(),
        problems: s.problems,
        databases: s.databases.into_iter().map(db_row).collect(),
        proxies: s.proxies.into_iter().map(proxy_row).collect(),
    }
}

async fn show(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    let reg = &state.home.registry;
    let mut c: Cluster = match reg.find_cluster(&name).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return message(
                &p,
                StatusCode::NOT_FOUND,
                "No such cluster",
                &format!("There is no cluster `{name}`. The Clusters page lists them."),
            )
        }
        Err(e) => {
            return message(
                &p,
                StatusCode::SERVICE_UNAVAILABLE,
                "The register could not be read",
                &format!("{e:#}"),
            )
        }
    };
    let servers = reg.dbservers().await.unwrap_or_default();
    let nodes: Vec<ClusterNode> = reg.cluster_nodes().await.unwrap_or_default();
    let server = servers.iter().find(|s| s.id == c.dbserver_id);
    let live = match tokio::time::timeout(
        STATUS_TIMEOUT,
        vmoodle_ops::cluster::status(&state.home, &c.name),
    )
    .await
    {
        Ok(Ok(s)) => Ok(live(s)),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!(
            "the nodes' agents did not all answer within {} s; try again, or run `vmoodle cluster status {}`",
            STATUS_TIMEOUT.as_secs(),
            c.name
        )),
    };
    topology_order(&mut c.members);
    let host = vip_host(&c.vip);
    page(ClusterPage {
        chrome: Chrome::new(&p, "clusters"),
        dbserver: server.map(|s| s.name.clone()).unwrap_or_default(),
        kind: server.map(|s| s.kind.to_string()).unwrap_or_default(),
        current: server
            .map(|s| {
                s.socket
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", s.host, s.port))
            })
            .unwrap_or_default(),
        current_reader: server
            .and_then(|s| Some(format!("{}:{}", s.reader_host.as_ref()?, s.reader_port?)))
            .unwrap_or_default(),
        writer: format!("{host}:{}", c.writer_port),
        reader: format!("{host}:{}", c.reader_port),
        original: c
            .orig_socket
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("{}:{}", c.orig_host, c.orig_port)),
        members: c
            .members
            .iter()
            .map(|m| MemberRow {
                node: m.node.clone(),
                role: m.role.clone(),
                agent: nodes
                    .iter()
                    .find(|n| n.id == m.node_id)
                    .map(|n| format!("{}:{}", n.address, n.agent_port))
                    .unwrap_or_default(),
            })
            .collect(),
        created: when(c.created_at),
        name: c.name,
        state: c.state,
        vip: c.vip,
        interface: c.interface,
        max_lag: c.max_lag,
        repl_user: c.repl_user,
        live,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn vip_host_drops_the_prefix() {
        assert_eq!(super::vip_host("10.0.0.100/24"), "10.0.0.100");
        assert_eq!(super::vip_host("10.0.0.100"), "10.0.0.100");
        assert_eq!(super::vip_host("fd00::10/64"), "[fd00::10]");
    }
}
