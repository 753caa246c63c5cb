//! `/metrics` (Prometheus text), `/healthz` (public: the process answers) and `/readyz` (the
//! register answers).
//!
//! A scrape reads aggregated counts from the register (instances, jobs, the durations of the
//! last day's jobs, nodes). What would need a connection to every site or server (MNET key
//! expiry, warm spares) comes from a cache the scheduler refreshes (see `sched`), so a scrape
//! never walks the fleet.

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
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Finished jobs of this many seconds back feed the duration histogram.
pub const DURATION_WINDOW_SECS: i64 = 24 * 3600;

/// Bucket bounds of job durations, in seconds: a toggle takes well under a second, a deploy tens
/// of seconds, a large bulk run or snapshot many minutes.
const DURATION_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

type Labels = Vec<(String, String)>;

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
    pub fn count_run(&self, name: &str) {
        *self
            .schedule_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
    }
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
