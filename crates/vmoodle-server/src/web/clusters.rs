//! Database clusters: the list of clusters and registered nodes (from the register only, so it
//! is fast), and a cluster's page with its topology and what every node's agent says now
//! (`vmoodle_ops::cluster::status`, bounded in time so a hung agent cannot hang the page), then
//! each replica's lag over the last hour as the daemon's watcher sampled it (`clusterwatch`),
//! drawn as a small SVG made here (no script). Read-only: `vmoodle node add` and
//! `vmoodle cluster create` build them.

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

/// A replica's lag over the last hour: an inline SVG sparkline whose numbers are computed here
/// (the template writes them into a fixed frame; see `sparkline`).
struct Spark {
    /// `x,y x,y ...` of the line, in the SVG's viewBox.
    points: String,
    /// The last sample's point, marked (a single sample draws no line).
    last_x: String,
    last_y: String,
    /// The top of the y axis: the largest lag (1 s when every sample is 0).
    top: String,
    /// What it shows (min, max, last), for screen readers and as its tooltip.
    label: String,
}

struct LagRow {
    node: String,
    member_as: String,
    /// None: no sample yet (the watcher has not run, or the replica reported no lag).
    spark: Option<Spark>,
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
    /// The replicas' lag over the last hour.
    lag: Vec<LagRow>,
    /// When the watcher last took the cluster's status (`12 s ago`), empty when it has not.
    sampled: String,
    watch_secs: u64,
    /// What was done to the cluster, newest first.
    events: Vec<EventRow>,
}

/// One of a cluster's events (a job that changed it).
struct EventRow {
    job: i64,
    when: String,
    what: String,
    by: String,
    state: String,
    why: String,
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

/// The sparkline's frame, in viewBox units (cluster.html draws the same): the plot spans x from
/// `PLOT_LEFT` (an hour ago) to `PLOT_RIGHT` (now), y from `PLOT_BOTTOM` (0 s) up to `PLOT_TOP`
/// (the largest lag); the axis labels sit left of and below it.
const PLOT_LEFT: f64 = 44.0;
const PLOT_RIGHT: f64 = 316.0;
const PLOT_TOP: f64 = 8.0;
const PLOT_BOTTOM: f64 = 56.0;

fn secs(v: f64) -> String {
    format!("{v:.1} s")
}

/// The sparkline of `node`'s lag `samples` (unix time, seconds; oldest first) over the hour
/// ending at `now`; None without samples. Every number is formatted here, so the SVG holds
/// only digits, dots, commas and spaces where it has coordinates.
fn sparkline(node: &str, samples: &[(i64, f64)], now: i64) -> Option<Spark> {
    let window = crate::metrics::LAG_WINDOW_SECS;
    let (_, last) = *samples.last()?;
    let min = samples
        .iter()
        .map(|(_, v)| *v)
        .fold(f64::INFINITY, f64::min);
    let max = samples.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let point = |(t, v): (i64, f64)| {
        let age = (now - t).clamp(0, window) as f64;
        let x = PLOT_RIGHT - age / window as f64 * (PLOT_RIGHT - PLOT_LEFT);
        let y = PLOT_BOTTOM - (v.max(0.0) / top) * (PLOT_BOTTOM - PLOT_TOP);
        (format!("{x:.1}"), format!("{y:.1}"))
    };
    let points: Vec<String> = samples
        .iter()
        .map(|s| {
            let (x, y) = point(*s);
            format!("{x},{y}")
        })
        .collect();
    let (last_x, last_y) = point(*samples.last()?);
    Some(Spark {
        points: points.join(" "),
        last_x,
        last_y,
        top: secs(top),
        label: format!(
            "Replication lag of {node} over the last hour: min {}, max {}, last {} ({} sample{})",
            secs(min),
            secs(max),
            secs(last),
            samples.len(),
            if samples.len() == 1 { "" } else { "s" }
        ),
    })
}

/// A row for every database member registered as a replica, and for any other that has lag
/// samples (a replica promoted within the hour), in the topology's order.
fn lag_rows(state: &AppState, c: &Cluster, now: i64) -> Vec<LagRow> {
    c.members
        .iter()
        .filter(|m| m.role != "proxy")
        .filter_map(|m| {
            let h = state.cache.lag_history(&c.name, &m.node, now);
            if m.role != "replica" && h.is_empty() {
                return None;
            }
            Some(LagRow {
                node: m.node.clone(),
                member_as: m.role.clone(),
                spark: sparkline(&m.node, &h, now),
            })
        })
        .collect()
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
    let events = vmoodle_ops::cluster::events(&state.home, &c.name, 20)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| EventRow {
            job: e.job,
            when: when(e.started_at),
            what: e.what,
            by: e.started_by,
            state: e.state,
            why: e.error.unwrap_or_default(),
        })
        .collect();
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
    let now = vmoodle_core::now_unix();
    let lag = lag_rows(&state, &c, now);
    let sampled = state
        .cache
        .cluster_sampled_at(&c.name)
        .map(|at| format!("{} s ago", (now - at).max(0)))
        .unwrap_or_default();
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
        lag,
        sampled,
        watch_secs: crate::clusterwatch::WATCH_SECS,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_the_last_hour() {
        let now = 1_800_000_000;
        assert!(sparkline("db2", &[], now).is_none(), "no samples: no line");

        // An hour ago (left edge), half an hour ago, now (right edge); the largest lag is the
        // top of the plot, 0 its bottom.
        let s = sparkline(
            "db2",
            &[(now - 3600, 0.0), (now - 1800, 5.0), (now, 2.5)],
            now,
        )
        .unwrap();
        assert_eq!(s.points, "44.0,56.0 180.0,8.0 316.0,32.0");
        assert_eq!((s.last_x.as_str(), s.last_y.as_str()), ("316.0", "32.0"));
        assert_eq!(s.top, "5.0 s");
        assert_eq!(
            s.label,
            "Replication lag of db2 over the last hour: min 0.0 s, max 5.0 s, last 2.5 s (3 samples)"
        );
        // Coordinates are numbers only: nothing there for the template to escape.
        assert!(s
            .points
            .chars()
            .all(|c| c.is_ascii_digit() || ", .".contains(c)));

        // One sample, all zero: a point at the bottom right, the axis topped at 1 s; a sample
        // older than the hour (or from a clock ahead) stays on the plot's edge.
        let s = sparkline("r", &[(now, 0.0)], now).unwrap();
        assert_eq!(s.points, "316.0,56.0");
        assert_eq!(s.top, "1.0 s");
        assert!(s.label.ends_with("last 0.0 s (1 sample)"), "{}", s.label);
        let s = sparkline("r", &[(now - 9999, 1.0), (now + 60, 1.0)], now).unwrap();
        assert_eq!(s.points, "44.0,8.0 316.0,8.0");
    }

    fn page(lag: Vec<LagRow>, sampled: &str) -> String {
        ClusterPage {
            chrome: Chrome {
                admin: "alice".into(),
                csrf: "x".into(),
                section: "clusters",
                flash: None,
            },
            name: "c1".into(),
            dbserver: String::new(),
            kind: String::new(),
            state: "active".into(),
            vip: "10.0.0.100/24".into(),
            interface: "eth0".into(),
            writer: String::new(),
            reader: String::new(),
            current: String::new(),
            current_reader: String::new(),
            original: String::new(),
            max_lag: 10,
            repl_user: String::new(),
            created: String::new(),
            members: Vec::new(),
            live: Err("not asked".into()),
            lag,
            sampled: sampled.into(),
            watch_secs: 10,
            events: Vec::new(),
        }
        .render()
        .unwrap()
    }

    #[test]
    fn lag_section_draws_each_replica() {
        let now = 1_800_000_000;
        let html = page(
            vec![
                LagRow {
                    node: "db2".into(),
                    member_as: "replica".into(),
                    spark: sparkline("db2", &[(now - 60, 4.0), (now, 1.0)], now),
                },
                LagRow {
                    node: "db<3>".into(),
                    member_as: "replica".into(),
                    spark: None,
                },
            ],
            "4 s ago",
        );
        let at = html
            .find("<section aria-labelledby=\"lag-h\" id=\"lag\">")
            .unwrap();
        let lag = &html[at..];
        assert!(lag.contains("<h2 id=\"lag-h\">Lag over the last hour</h2>"));
        assert!(lag.contains("every 10 s; last sample 4 s ago."), "{lag}");
        assert!(
            lag.contains(
                "<svg class=\"spark\" viewBox=\"0 0 320 76\" width=\"320\" height=\"76\" role=\"img\" \
                 aria-label=\"Replication lag of db2 over the last hour: min 1.0 s, max 4.0 s, last 1.0 s (2 samples)\">"
            ),
            "{lag}"
        );
        assert!(lag.contains("<title>Replication lag of db2 over the last hour: min 1.0 s"));
        assert!(lag.contains("<text x=\"40\" y=\"12\" text-anchor=\"end\">4.0 s</text>"));
        assert!(
            lag.contains("<polyline points=\"311.5,8.0 316.0,44.0\"/>"),
            "{lag}"
        );
        assert!(lag.contains("<circle cx=\"316.0\" cy=\"44.0\" r=\"2.5\"/>"));
        // The other has none, and its name is text.
        assert!(
            lag.contains("<td data-label=\"Node\">db&#60;3&#62;</td>"),
            "{lag}"
        );
        assert!(lag.contains("<span class=\"muted\">no samples yet</span>"));
        assert!(!lag.contains("<script"));

        let html = page(Vec::new(), "");
        assert!(html.contains("<td colspan=\"3\">No replicas.</td>"));
        assert!(html.contains("samples it every 10 s.</p>"));
    }

    #[test]
    fn vip_host_drops_the_prefix() {
        assert_eq!(super::vip_host("10.0.0.100/24"), "10.0.0.100");
        assert_eq!(super::vip_host("10.0.0.100"), "10.0.0.100");
        assert_eq!(super::vip_host("fd00::10/64"), "[fd00::10]");
    }
}
