//! `/metrics` (Prometheus text), `/healthz` (public: the process answers) and `/readyz` (the
//! register answers).
//!
//! A scrape reads aggregated counts from the register (instances, jobs, the durations of the
//! last day's jobs, nodes). What would need a connection to every site or server (MNET key
//! expiry, warm spares) comes from a cache the scheduler refreshes (see `sched`), so a scrape
//! never walks the fleet. So do the database clusters' metrics: the watcher (see
//! `clusterwatch`) asks every cluster's agents every few seconds and keeps the latest status
//! and an hour of each replica's lag here.

use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use vmoodle_agent::Role;
use vmoodle_core::DbKind;
use vmoodle_ops::cluster::ClusterStatus;

/// Finished jobs of this many seconds back feed the duration histogram.
pub const DURATION_WINDOW_SECS: i64 = 24 * 3600;

/// Bucket bounds of job durations, in seconds: a toggle takes well under a second, a deploy tens
/// of seconds, a large bulk run or snapshot many minutes.
const DURATION_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Lag samples of this many seconds back are kept (the cluster page draws them).
pub const LAG_WINDOW_SECS: i64 = 3600;
/// At most this many lag samples per node: an hour at one every 10 s is 360; the bound holds
/// whatever the watcher's pace.
pub const LAG_MAX_SAMPLES: usize = 720;

type Labels = Vec<(String, String)>;

/// One status of a cluster, as the watcher took it.
#[derive(Debug, Clone)]
pub struct ClusterSample {
    /// Unix time (seconds) the status came back.
    pub at: i64,
    /// The engine of the cluster's database server; None when the register has no such server.
    pub kind: Option<DbKind>,
    pub status: ClusterStatus,
}

/// (unix time, lag seconds), oldest first.
pub type LagHistory = VecDeque<(i64, f64)>;

/// What the scheduler learnt that is too costly to learn per scrape.
#[derive(Debug, Default)]
pub struct Cache {
    /// instance shortname -> expiry (unix seconds) of its MNET key.
    pub mnet_expiry: Mutex<BTreeMap<String, i64>>,
    /// (template, dbserver) -> warm spares.
    pub spares: Mutex<BTreeMap<(String, String), i64>>,
    /// scheduled work name -> runs this node claimed.
    pub schedule_runs: Mutex<BTreeMap<String, u64>>,
    /// cron pass outcome (`ok`, `failed`, `timeout`, `skipped`) -> passes this node ran.
    pub cron_runs: Mutex<BTreeMap<String, u64>>,
    /// cluster -> its latest status (see `clusterwatch`).
    pub clusters: Mutex<BTreeMap<String, ClusterSample>>,
    /// (cluster, node) -> the lag its replica reported over the last `LAG_WINDOW_SECS`.
    pub lag: Mutex<BTreeMap<(String, String), LagHistory>>,
}

impl Cache {
    pub fn set_mnet_expiry(&self, v: BTreeMap<String, i64>) {
        *self.mnet_expiry.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
    pub fn set_spares(&self, v: BTreeMap<(String, String), i64>) {
        *self.spares.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
    pub fn count_cron(&self, status: &str) {
        *self
            .cron_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status.to_string())
            .or_default() += 1;
    }
    /// Keeps `sample` as its cluster's latest status, adds the lag of each of its replicas that
    /// reports one to their histories, and drops the cluster's samples older than the window.
    pub fn set_cluster(&self, sample: ClusterSample) {
        let cluster = sample.status.cluster.name.clone();
        let at = sample.at;
        {
            let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
            for l in &sample.status.databases {
                let Some(s) = &l.state else { continue };
                let secs = s.lag_seconds.filter(|v| v.is_finite() && *v >= 0.0);
                let (Some(Role::Replica), Some(secs)) = (s.role, secs) else {
                    continue;
                };
                let h = lag.entry((cluster.clone(), l.node.clone())).or_default();
                // Time goes forward: a sample at or before the last one replaces nothing.
                if !matches!(h.back(), Some((t, _)) if *t >= at) {
                    h.push_back((at, secs));
                }
            }
            lag.retain(|(c, _), h| {
                if *c == cluster {
                    trim_lag(h, at);
                }
                !h.is_empty()
            });
        }
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster, sample);
    }

    /// Forgets the clusters that are not in `clusters` any more, and the lag of nodes that are
    /// no longer database members of their cluster.
    pub fn retain_clusters(&self, clusters: &[vmoodle_registry::Cluster]) {
        let names: BTreeSet<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        let members: BTreeSet<(&str, &str)> = clusters
            .iter()
            .flat_map(|c| {
                c.members
                    .iter()
                    .filter(|m| m.role != "proxy")
                    .map(|m| (c.name.as_str(), m.node.as_str()))
            })
            .collect();
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c, _| names.contains(c.as_str()));
        self.lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, n), _| members.contains(&(c.as_str(), n.as_str())));
    }

    /// When the watcher last took the status of `cluster`.
    pub fn cluster_sampled_at(&self, cluster: &str) -> Option<i64> {
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .map(|s| s.at)
    }

    /// The lag samples of `node` in `cluster` within the window ending at `now`, oldest first.
    pub fn lag_history(&self, cluster: &str, node: &str, now: i64) -> Vec<(i64, f64)> {
        let from = now - LAG_WINDOW_SECS;
        self.lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(cluster.to_string(), node.to_string()))
            .map(|h| h.iter().copied().filter(|(t, _)| *t >= from).collect())
            .unwrap_or_default()
    }

    pub fn count_run(&self, name: &str) {
        *self
            .schedule_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
    }
}

/// Drops the samples older than `LAG_WINDOW_SECS` before `now`, then the oldest beyond
/// `LAG_MAX_SAMPLES`.
pub fn trim_lag(h: &mut LagHistory, now: i64) {
    let from = now - LAG_WINDOW_SECS;
    while h.front().is_some_and(|(t, _)| *t < from) {
        h.pop_front();
    }
    while h.len() > LAG_MAX_SAMPLES {
        h.pop_front();
    }
}

/// A PostgreSQL LSN (`X/Y`, both hexadecimal 32-bit halves) as a byte position:
/// `(X << 32) + Y`. None for anything else (a MariaDB GTID, an empty position).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let half = |x: &str| {
        if x.is_empty() || x.len() > 8 || !x.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(x, 16).ok()
    };
    Some((u64::from(half(hi)?) << 32) | u64::from(half(lo)?))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.home.registry.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("register: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    match render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the register: {e:#}\n"),
        )
            .into_response(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The whole exposition, built afresh from the register and the cache.
pub async fn render(state: &AppState) -> anyhow::Result<String> {
    let reg = &state.home.registry;
    let mut r = Registry::default();

    let instances = Family::<Labels, Gauge>::default();
    let (on, off) = reg.instance_counts().await?;
    instances
        .get_or_create(&labels(&[("state", "enabled")]))
        .set(on);
    instances
        .get_or_create(&labels(&[("state", "disabled")]))
        .set(off);
    r.register(
        "vmoodle_instances",
        "Registered instances by state",
        instances,
    );

    let jobs = Family::<Labels, Counter>::default();
    for c in reg.job_counts().await? {
        jobs.get_or_create(&labels(&[("kind", &c.kind), ("state", &c.state)]))
            .inc_by(u64::try_from(c.n).unwrap_or(0));
    }
    r.register(
        "vmoodle_jobs",
        "Jobs in the register by kind and state",
        jobs,
    );

    let durations = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
        Histogram::new(DURATION_BUCKETS)
    });
    let since = vmoodle_core::now_unix() - DURATION_WINDOW_SECS;
    for (kind, secs) in reg.job_durations(since).await? {
        durations
            .get_or_create(&labels(&[("kind", &kind)]))
            .observe(secs.max(0) as f64);
    }
    r.register(
        "vmoodle_job_duration_seconds",
        "Durations of the jobs finished in the last 24 hours, by kind",
        durations,
    );

    let expiry = Family::<Labels, Gauge>::default();
    for (inst, at) in state
        .cache
        .mnet_expiry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        expiry
            .get_or_create(&labels(&[("instance", inst)]))
            .set(*at);
    }
    r.register(
        "vmoodle_mnet_key_expiry_timestamp_seconds",
        "When each MNET instance's key expires (refreshed by the scheduler every few minutes)",
        expiry,
    );

    let spares = Family::<Labels, Gauge>::default();
    for ((t, s), n) in state
        .cache
        .spares
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        spares
            .get_or_create(&labels(&[("template", t), ("dbserver", s)]))
            .set(*n);
    }
    r.register(
        "vmoodle_spares",
        "Warm spare databases by template and MariaDB server (refreshed by the scheduler)",
        spares,
    );

    let runs = Family::<Labels, Counter>::default();
    for (name, n) in state
        .cache
        .schedule_runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        runs.get_or_create(&labels(&[("name", name)])).inc_by(*n);
    }
    r.register(
        "vmoodle_schedule_runs",
        "Scheduled work this node claimed and ran, by name",
        runs,
    );

    cron_metrics(state, &mut r).await?;
    cluster_metrics(&state.cache, &mut r);

    let cutoff = vmoodle_core::now_unix() - vmoodle_ops::jobs::DAEMON_LEASE_SECS;
    let nodes = reg.nodes().await?;
    let live = nodes.iter().filter(|n| n.heartbeat_at >= cutoff).count();
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(live).unwrap_or(i64::MAX));
    r.register(
        "vmoodle_nodes",
        "Daemons whose heartbeat is within the lease",
        g,
    );
    let up = Gauge::<i64>::default();
    up.set(1);
    r.register("vmoodle_up", "This daemon answers", up);

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

fn bit(b: bool) -> i64 {
    i64::from(b)
}

/// Database clusters, from the watcher's latest status of each (never from the agents): for
/// every database node whether it is up, read-only, the writable primary, and its replication
/// lag in seconds and (PostgreSQL) bytes; HAProxy's backends on every proxy node; who holds the
/// virtual IP; whether the cluster is degraded and when its status was taken.
pub fn cluster_metrics(cache: &Cache, r: &mut Registry) {
    let up = Family::<Labels, Gauge>::default();
    let read_only = Family::<Labels, Gauge>::default();
    let primary = Family::<Labels, Gauge>::default();
    let lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let lag_bytes = Family::<Labels, Gauge>::default();
    let backend_up = Family::<Labels, Gauge>::default();
    let vip = Family::<Labels, Gauge>::default();
    let degraded = Family::<Labels, Gauge>::default();
    let taken = Family::<Labels, Gauge>::default();
    for (name, sample) in cache
        .clusters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let s = &sample.status;
        let c = name.as_str();
        // The writable primary's position, when exactly one node is it (PostgreSQL only).
        let primaries: Vec<_> = s
            .databases
            .iter()
            .filter_map(|l| l.state.as_ref())
            .filter(|st| st.role == Some(Role::Primary))
            .collect();
        let primary_lsn = match (sample.kind, primaries.as_slice()) {
            (Some(DbKind::Pgsql), [p]) => p.position.as_deref().and_then(parse_lsn),
            _ => None,
        };
        for l in &s.databases {
            let node = labels(&[("cluster", c), ("node", &l.node)]);
            let st = l.state.as_ref().filter(|_| l.error.is_none());
            let role = st.and_then(|st| st.role);
            up.get_or_create(&node)
                .set(bit(role.is_some_and(|r| r != Role::Down)));
            primary.get_or_create(&node).set(bit(
                role == Some(Role::Primary) && st.and_then(|st| st.read_only) != Some(true)
            ));
            let Some(st) = st else { continue };
            if let Some(ro) = st.read_only {
                read_only.get_or_create(&node).set(bit(ro));
            }
            if role != Some(Role::Replica) {
                continue;
            }
            if let Some(secs) = st.lag_seconds.filter(|v| v.is_finite()) {
                lag.get_or_create(&node).set(secs);
            }
            if let (Some(p), Some(at)) = (primary_lsn, st.position.as_deref().and_then(parse_lsn)) {
                lag_bytes
                    .get_or_create(&node)
                    .set(i64::try_from(p.saturating_sub(at)).unwrap_or(i64::MAX));
            }
        }
        for p in &s.proxies {
            vip.get_or_create(&labels(&[("cluster", c), ("node", &p.node)]))
                .set(bit(p.holds_vip));
            for b in &p.backends {
                backend_up
                    .get_or_create(&labels(&[
                        ("cluster", c),
                        ("proxy", &p.node),
                        ("listener", &b.listener),
                        ("server", &b.server),
                    ]))
                    .set(bit(b.status.starts_with("UP")));
            }
        }
        let cl = labels(&[("cluster", c)]);
        degraded.get_or_create(&cl).set(bit(s.degraded()));
        taken.get_or_create(&cl).set(sample.at);
    }
    r.register(
        "vmoodle_cluster_node_up",
        "Database node of a cluster whose agent answered and whose server is not down",
        up,
    );
    r.register(
        "vmoodle_cluster_node_read_only",
        "Database node whose server is read-only (absent when its agent did not say)",
        read_only,
    );
    r.register(
        "vmoodle_cluster_primary",
        "1 on the database node whose server is the writable primary, 0 on the others",
        primary,
    );
    r.register(
        "vmoodle_cluster_replica_lag_seconds",
        "Seconds a replica is behind its primary (MariaDB Seconds_Behind_Master; PostgreSQL now() \
         minus the last replayed transaction's time), for replicas that report it",
        lag,
    );
    r.register(
        "vmoodle_cluster_replica_lag_bytes",
        "PostgreSQL only: the primary's current WAL LSN minus the replica's replay LSN, as the \
         agents last probed them; MariaDB has no byte lag (GTIDs count transactions), so its \
         replicas have none",
        lag_bytes,
    );
    r.register(
        "vmoodle_haproxy_backend_up",
        "HAProxy server of a listener (writer, reader) on a cluster's proxy node whose status \
         is UP",
        backend_up,
    );
    r.register(
        "vmoodle_cluster_vip_holder",
        "1 on the proxy node that holds the cluster's virtual IP, 0 on the others",
        vip,
    );
    r.register(
        "vmoodle_cluster_degraded",
        "Cluster with at least one problem (a node down or not in its role, replication \
         stopped or lagging, a proxy or the virtual IP wrong)",
        degraded,
    );
    r.register(
        "vmoodle_cluster_status_timestamp_seconds",
        "When the cluster's status the other cluster metrics come from was taken (the daemon \
         asks every 10 s; time() minus this is the age of that status)",
        taken,
    );
}

/// Cron: passes this node's scheduler ran by outcome; from the register (a few queries, whatever
/// node ran them), the last successful pass of each enabled instance and how many are overdue
/// (no successful pass within 2 x cron.interval, or never).
async fn cron_metrics(state: &AppState, r: &mut Registry) -> anyhow::Result<()> {
    let runs = Family::<Labels, Counter>::default();
    for status in ["ok", "failed", "timeout", "skipped"] {
        let _ = runs.get_or_create(&labels(&[("status", status)]));
    }
    for (status, n) in state
        .cache
        .cron_runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        runs.get_or_create(&labels(&[("status", status)]))
            .inc_by(*n);
    }
    r.register(
        "vmoodle_cron_runs",
        "Cron passes the scheduler of this node ran, by outcome",
        runs,
    );
    let reg = &state.home.registry;
    let interval = i64::from(state.fresh().await?.settings.cron.interval);
    let now = vmoodle_core::now_unix();
    let states = reg.cron_states().await?;
    let last_ok = Family::<Labels, Gauge>::default();
    let mut overdue = 0;
    for i in reg.instances().await?.iter().filter(|i| i.enabled) {
        match states
            .iter()
            .find(|s| s.instance_id == i.id)
            .and_then(|s| s.last_ok_at)
        {
            Some(at) => {
                last_ok
                    .get_or_create(&labels(&[("instance", &i.shortname)]))
                    .set(at);
                if now - at > 2 * interval {
                    overdue += 1;
                }
            }
            None => overdue += 1,
        }
    }
    r.register(
        "vmoodle_cron_last_success_timestamp_seconds",
        "When the last successful cron pass of each enabled instance started",
        last_ok,
    );
    let g = Gauge::<i64>::default();
    g.set(overdue);
    r.register(
        "vmoodle_cron_overdue_instances",
        "Enabled instances with no successful cron pass within 2 x cron.interval, or never",
        g,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmoodle_agent::{BackendState, DbState};
    use vmoodle_ops::cluster::{NodeLine, ProxyLine};
    use vmoodle_registry::{Cluster, Member};

    fn cluster(name: &str, members: &[(&str, &str)]) -> Cluster {
        Cluster {
            id: 1,
            name: name.into(),
            dbserver_id: 1,
            state: "active".into(),
            vip: "10.0.0.100/24".into(),
            interface: "eth0".into(),
            writer_port: 3306,
            reader_port: 3307,
            max_lag: 10,
            orig_host: "10.0.0.11".into(),
            orig_port: 3306,
            orig_socket: None,
            repl_user: "repl".into(),
            repl_password_sealed: String::new(),
            origin_node_id: None,
            members: members
                .iter()
                .enumerate()
                .map(|(i, (node, role))| Member {
                    node_id: i as i64 + 1,
                    node: (*node).into(),
                    role: (*role).into(),
                    server_id: None,
                    slot: None,
                })
                .collect(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn db(node: &str, member_as: &str, state: DbState) -> NodeLine {
        NodeLine {
            node: node.into(),
            member_as: member_as.into(),
            state: Some(state),
            error: None,
        }
    }

    fn primary(position: &str) -> DbState {
        DbState {
            role: Some(Role::Primary),
            read_only: Some(false),
            position: Some(position.into()),
            probed_at: 1,
            ..Default::default()
        }
    }

    fn replica(lag: f64, position: &str) -> DbState {
        DbState {
            role: Some(Role::Replica),
            read_only: Some(true),
            io_running: Some(true),
            sql_running: Some(true),
            lag_seconds: Some(lag),
            position: Some(position.into()),
            source: Some("10.0.0.11:5432".into()),
            probed_at: 1,
            ..Default::default()
        }
    }

    fn backend(listener: &str, server: &str, status: &str) -> BackendState {
        BackendState {
            listener: listener.into(),
            server: server.into(),
            status: status.into(),
            check_status: "L7OK".into(),
            backup: false,
            current_sessions: 0,
        }
    }

    fn proxy(node: &str, holds_vip: bool, backends: Vec<BackendState>) -> ProxyLine {
        ProxyLine {
            node: node.into(),
            haproxy_running: true,
            keepalived_running: true,
            holds_vip,
            backends,
            error: None,
        }
    }

    fn status(c: Cluster, databases: Vec<NodeLine>, proxies: Vec<ProxyLine>) -> ClusterStatus {
        ClusterStatus {
            cluster: c,
            databases,
            proxies,
            problems: Vec::new(),
        }
    }

    fn exposition(cache: &Cache) -> String {
        let mut r = Registry::default();
        cluster_metrics(cache, &mut r);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    fn lines_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect()
    }

    /// A PostgreSQL pair (with two proxies) and a MariaDB cluster whose replica's agent did not
    /// answer and whose other replica lags: every family, with its labels and values.
    #[test]
    fn cluster_metrics_from_the_cache() {
        let cache = Cache::default();
        let pg = cluster(
            "pg1",
            &[
                ("pgdb1", "primary"),
                ("pgdb2", "replica"),
                ("lb1", "proxy"),
                ("lb2", "proxy"),
            ],
        );
        cache.set_cluster(ClusterSample {
            at: 1_800_000_000,
            kind: Some(DbKind::Pgsql),
            status: status(
                pg,
                vec![
                    // 0x1_00000000 + 0x3000280 minus 0x1_00000000 + 0x3000000 = 640 bytes.
                    db("pgdb1", "primary", primary("1/3000280")),
                    db("pgdb2", "replica", replica(0.25, "1/3000000")),
                ],
                vec![
                    proxy(
                        "lb1",
                        true,
                        vec![
                            backend("writer", "pgdb1", "UP"),
                            backend("writer", "pgdb2", "DOWN"),
                            backend("reader", "pgdb2", "UP 1/2"),
                        ],
                    ),
                    proxy("lb2", false, vec![backend("writer", "pgdb1", "MAINT")]),
                ],
            ),
        });
        let maria = cluster(
            "maria1",
            &[
                ("db1", "primary"),
                ("db2", "replica"),
                ("db3", "replica"),
                ("mlb1", "proxy"),
            ],
        );
        let mut st = status(
            maria,
            vec![
                db("db1", "primary", primary("0-1-1234")),
                db("db2", "replica", replica(12.0, "0-1-1200")),
                NodeLine {
                    node: "db3".into(),
                    member_as: "replica".into(),
                    state: None,
                    error: Some("its agent did not answer within 5 s".into()),
                },
            ],
            vec![ProxyLine {
                error: Some("refused".into()),
                ..proxy("mlb1", false, Vec::new())
            }],
        );
        st.problems = vec!["db3: its agent did not answer within 5 s".into()];
        cache.set_cluster(ClusterSample {
            at: 1_800_000_005,
            kind: Some(DbKind::Mariadb),
            status: st,
        });

        let text = exposition(&cache);
        let want: &[(&str, &[&str])] = &[
            (
                "vmoodle_cluster_node_up",
                &[
                    "vmoodle_cluster_node_up{cluster=\"maria1\",node=\"db1\"} 1",
                    "vmoodle_cluster_node_up{cluster=\"maria1\",node=\"db2\"} 1",
                    "vmoodle_cluster_node_up{cluster=\"maria1\",node=\"db3\"} 0",
                    "vmoodle_cluster_node_up{cluster=\"pg1\",node=\"pgdb1\"} 1",
                    "vmoodle_cluster_node_up{cluster=\"pg1\",node=\"pgdb2\"} 1",
                ],
            ),
            (
                "vmoodle_cluster_node_read_only",
                &[
                    "vmoodle_cluster_node_read_only{cluster=\"maria1\",node=\"db1\"} 0",
                    "vmoodle_cluster_node_read_only{cluster=\"maria1\",node=\"db2\"} 1",
                    "vmoodle_cluster_node_read_only{cluster=\"pg1\",node=\"pgdb1\"} 0",
                    "vmoodle_cluster_node_read_only{cluster=\"pg1\",node=\"pgdb2\"} 1",
                ],
            ),
            (
                "vmoodle_cluster_primary",
                &[
                    "vmoodle_cluster_primary{cluster=\"maria1\",node=\"db1\"} 1",
                    "vmoodle_cluster_primary{cluster=\"maria1\",node=\"db2\"} 0",
                    "vmoodle_cluster_primary{cluster=\"maria1\",node=\"db3\"} 0",
                    "vmoodle_cluster_primary{cluster=\"pg1\",node=\"pgdb1\"} 1",
                    "vmoodle_cluster_primary{cluster=\"pg1\",node=\"pgdb2\"} 0",
                ],
            ),
            (
                "vmoodle_cluster_replica_lag_seconds",
                &[
                    "vmoodle_cluster_replica_lag_seconds{cluster=\"maria1\",node=\"db2\"} 12.0",
                    "vmoodle_cluster_replica_lag_seconds{cluster=\"pg1\",node=\"pgdb2\"} 0.25",
                ],
            ),
            (
                "vmoodle_cluster_replica_lag_bytes",
                &["vmoodle_cluster_replica_lag_bytes{cluster=\"pg1\",node=\"pgdb2\"} 640"],
            ),
            (
                "vmoodle_haproxy_backend_up",
                &[
                    "vmoodle_haproxy_backend_up{cluster=\"pg1\",proxy=\"lb1\",listener=\"writer\",server=\"pgdb1\"} 1",
                    "vmoodle_haproxy_backend_up{cluster=\"pg1\",proxy=\"lb1\",listener=\"writer\",server=\"pgdb2\"} 0",
                    "vmoodle_haproxy_backend_up{cluster=\"pg1\",proxy=\"lb1\",listener=\"reader\",server=\"pgdb2\"} 1",
                    "vmoodle_haproxy_backend_up{cluster=\"pg1\",proxy=\"lb2\",listener=\"writer\",server=\"pgdb1\"} 0",
                ],
            ),
            (
                "vmoodle_cluster_vip_holder",
                &[
                    "vmoodle_cluster_vip_holder{cluster=\"maria1\",node=\"mlb1\"} 0",
                    "vmoodle_cluster_vip_holder{cluster=\"pg1\",node=\"lb1\"} 1",
                    "vmoodle_cluster_vip_holder{cluster=\"pg1\",node=\"lb2\"} 0",
                ],
            ),
            (
                "vmoodle_cluster_degraded",
                &[
                    "vmoodle_cluster_degraded{cluster=\"maria1\"} 1",
                    "vmoodle_cluster_degraded{cluster=\"pg1\"} 0",
                ],
            ),
            (
                "vmoodle_cluster_status_timestamp_seconds",
                &[
                    "vmoodle_cluster_status_timestamp_seconds{cluster=\"maria1\"} 1800000005",
                    "vmoodle_cluster_status_timestamp_seconds{cluster=\"pg1\"} 1800000000",
                ],
            ),
        ];
        for (name, lines) in want {
            assert!(
                text.contains(&format!("# TYPE {name} gauge\n")),
                "{name} is a gauge:\n{text}"
            );
            let mut got = lines_of(&text, name);
            got.sort_unstable();
            let mut lines = lines.to_vec();
            lines.sort_unstable();
            assert_eq!(got, lines, "{name} in:\n{text}");
        }
        // MariaDB has no byte lag, and says so.
        assert!(!text.contains("lag_bytes{cluster=\"maria1\""), "{text}");
        assert!(
            text.contains("# HELP vmoodle_cluster_replica_lag_bytes PostgreSQL only:")
                && text.contains("MariaDB has no byte lag"),
            "{text}"
        );
        // No failover counter: automatic failover does not exist.
        assert!(!text.contains("failover"), "{text}");
    }

    /// Byte lag needs both positions as LSNs and one writable primary.
    #[test]
    fn lag_bytes_only_with_lsns_and_one_primary() {
        let cache = Cache::default();
        let c = cluster(
            "pg2",
            &[("a", "primary"), ("b", "replica"), ("c", "replica")],
        );
        cache.set_cluster(ClusterSample {
            at: 1_800_000_000,
            kind: Some(DbKind::Pgsql),
            status: status(
                c,
                vec![
                    db("a", "primary", primary("0/3000280")),
                    // Ahead of the primary (probed a moment later): no negative lag.
                    db("b", "replica", replica(0.0, "0/3000300")),
                    db("c", "replica", replica(1.0, "")),
                ],
                Vec::new(),
            ),
        });
        let text = exposition(&cache);
        assert_eq!(
            lines_of(&text, "vmoodle_cluster_replica_lag_bytes"),
            ["vmoodle_cluster_replica_lag_bytes{cluster=\"pg2\",node=\"b\"} 0"]
        );
        // Two primaries (split brain): no byte lag at all.
        let c = cluster("pg2", &[("a", "primary"), ("b", "replica")]);
        cache.set_cluster(ClusterSample {
            at: 1_800_000_010,
            kind: Some(DbKind::Pgsql),
            status: status(
                c,
                vec![
                    db("a", "primary", primary("0/3000280")),
                    db("x", "primary", primary("0/3000100")),
                    db("b", "replica", replica(0.0, "0/3000000")),
                ],
                Vec::new(),
            ),
        });
        let text = exposition(&cache);
        assert!(
            lines_of(&text, "vmoodle_cluster_replica_lag_bytes").is_empty(),
            "{text}"
        );
    }

    #[test]
    fn lsns_parse_as_postgresql_writes_them() {
        assert_eq!(parse_lsn("0/3000280"), Some(0x300_0280));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) + 0xB374_D848));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        for bad in [
            "",
            "0-1-1234",
            "0/",
            "/1",
            "+1/2",
            "1/2/3",
            "100000000/0",
            "x/1",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }

    /// Samples older than an hour go; so do the oldest beyond the bound.
    #[test]
    fn lag_history_keeps_one_hour() {
        let mut h: LagHistory = (0..10).map(|i| (i * 600, i as f64)).collect();
        trim_lag(&mut h, 6000);
        // 6000 - 3600 = 2400: the samples at 2400..=5400 stay.
        assert_eq!(
            h.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [2400, 3000, 3600, 4200, 4800, 5400]
        );
        trim_lag(&mut h, 100_000);
        assert!(h.is_empty());
        let mut h: LagHistory = (0..LAG_MAX_SAMPLES as i64 + 50).map(|i| (i, 0.0)).collect();
        trim_lag(&mut h, 1000);
        assert_eq!(h.len(), LAG_MAX_SAMPLES);
        assert_eq!(h.front(), Some(&(50, 0.0)));

        // Through the cache: a sample every 10 s for two hours keeps the last hour's 361, of
        // replicas only; a sample no later than the last is not added.
        let cache = Cache::default();
        let c = cluster("c", &[("p", "primary"), ("r", "replica")]);
        let t0 = 1_800_000_000;
        for i in 0..=720 {
            cache.set_cluster(ClusterSample {
                at: t0 + i * 10,
                kind: Some(DbKind::Mariadb),
                status: status(
                    c.clone(),
                    vec![
                        db("p", "primary", primary("0-1-1")),
                        db("r", "replica", replica(i as f64, "0-1-1")),
                    ],
                    Vec::new(),
                ),
            });
        }
        let now = t0 + 7200;
        let h = cache.lag_history("c", "r", now);
        assert_eq!(h.len(), 361);
        assert_eq!(h.first(), Some(&(now - 3600, 360.0)));
        assert_eq!(h.last(), Some(&(now, 720.0)));
        assert!(cache.lag_history("c", "p", now).is_empty());
        assert_eq!(
            cache.lag.lock().unwrap()[&("c".into(), "r".into())].len(),
            361
        );
        // Read later, without new samples: only what is still within the hour.
        assert_eq!(cache.lag_history("c", "r", now + 1800).len(), 181);

        // A cluster gone from the register leaves the cache; so does a replica removed.
        let other = cluster("d", &[("r", "replica")]);
        cache.retain_clusters(std::slice::from_ref(&other));
        assert!(cache.clusters.lock().unwrap().is_empty());
        assert!(cache.lag.lock().unwrap().is_empty());
        cache.set_cluster(ClusterSample {
            at: now,
            kind: None,
            status: status(
                c.clone(),
                vec![db("r", "replica", replica(1.0, ""))],
                Vec::new(),
            ),
        });
        cache.retain_clusters(&[cluster("c", &[("p", "primary")])]);
        assert_eq!(cache.cluster_sampled_at("c"), Some(now));
        assert!(cache.lag_history("c", "r", now).is_empty());
    }
}
