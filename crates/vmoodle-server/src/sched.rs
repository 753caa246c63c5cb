//! The background loops of a daemon: its heartbeat (so another node can tell it died and
//! recover its jobs), cancel requests made on other nodes, recovery of interrupted jobs, and
//! scheduled work claimed by one node at a time through the register's schedule table (a
//! compare-and-set on `next_run`, so two nodes never both run one turn). Cron (`cron`), the
//! host-file sync (`sync`) and the cluster watcher (`clusterwatch`) run in loops of their own.

use crate::AppState;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vmoodle_core::now_unix;
use vmoodle_registry::JobFilter;

/// Seconds between heartbeats; well inside `jobs::DAEMON_LEASE_SECS` so one late beat does not
/// make other nodes take this node's jobs.
pub const HEARTBEAT_SECS: u64 = 5;
/// Seconds between renewal turns of MNET keys due (`mnet renew --due`); keys live for weeks,
/// the look-forward delay is days: a few minutes of lateness never matters.
pub const MNET_RENEW_SECS: i64 = 300;
/// Seconds between warm-spare turns: a burst of deploys empties the pool within minutes.
pub const SPARES_SECS: i64 = 60;
/// Seconds between recovery passes of jobs whose process (a CLI run, or a daemon whose
/// heartbeat stopped) is gone; each node runs its own, as only it can see its own processes.
pub const RECOVER_SECS: u64 = 30;
/// A spares fill of a template and server that failed is not tried again for this long, so a
/// template that cannot live on a server does not fill the jobs list.
pub const SPARES_BACKOFF_SECS: i64 = 1800;
/// Seconds between reads of every enabled site's Moodle version (for the pool and the upgrade
/// planner; it changes only with an upgrade, which records it itself).
pub const SITE_FACTS_SECS: i64 = 3600;

/// The actor of jobs the scheduler starts.
pub const ACTOR: &str = "scheduler";

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let node = vmoodle_ops::journal::node_name();
    let sync = tokio::spawn(crate::sync::run(state.clone(), stop.clone()));
    // Moodle's cron for every enabled instance (see `cron`): a loop of its own.
    let cron = tokio::spawn(crate::cron::run(state.clone(), stop.clone()));
    // The database clusters' status and lag, for the metrics and the cluster page (see
    // `clusterwatch`): a loop of its own, so a hung agent never delays the heartbeat.
    let clusters = tokio::spawn(crate::clusterwatch::run(state.clone(), stop.clone()));
    let recovering = Arc::new(AtomicBool::new(false));
    let scheduling = Arc::new(AtomicBool::new(false));
    let mut dead_seen = HashSet::new();
    let mut recover_now = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let reg = &state.home.registry;
        if n.is_multiple_of(HEARTBEAT_SECS) {
            if let Err(e) = reg.heartbeat(&state.owner, &node, &state.cfg.listen).await {
                tracing::warn!("heartbeat: {e}");
            }
            let _ = reg.touch_jobs(&state.owner).await;
            spawn_scheduled(&state, &scheduling);
            recover_now |= newly_dead(&state, &mut dead_seen).await;
        }
        if let Ok(ids) = reg.cancel_requests(&state.owner).await {
            for id in ids {
                vmoodle_ops::cancel::request_job(id);
            }
        }
        if (recover_now || n % RECOVER_SECS == RECOVER_SECS / 2)
            && spawn_recovery(&state, &recovering)
        {
            recover_now = false;
        }
        n += 1;
    }
    let _ = sync.await;
    let _ = cron.await;
    let _ = clusters.await;
}

/// Runs the scheduled work in a task of its own: reading every MNET site or database server
/// may take long, and must never delay the heartbeat (other nodes would take this node for
/// dead). One turn at a time.
fn spawn_scheduled(state: &AppState, busy: &Arc<AtomicBool>) {
    if busy.swap(true, Ordering::SeqCst) {
        return;
    }
    let (state, busy) = (state.clone(), busy.clone());
    tokio::spawn(async move {
        scheduled(&state).await;
        busy.store(false, Ordering::SeqCst);
    });
}

/// Claims and runs each piece of scheduled work whose turn has come.
async fn scheduled(state: &AppState) {
    if claim(state, "mnet renew", MNET_RENEW_SECS).await {
        let r = mnet_turn(state).await;
        record(state, "mnet renew", r).await;
    }
    if claim(state, "spares", SPARES_SECS).await {
        let r = spares_turn(state).await;
        record(state, "spares", r).await;
    }
    if claim(state, "site facts", SITE_FACTS_SECS).await {
        let r = facts_turn(state).await;
        record(state, "site facts", r).await;
    }
}

/// Reads the Moodle version and release of every enabled instance (each with its own database
/// account) into the register's site facts.
async fn facts_turn(state: &AppState) -> anyhow::Result<String> {
    let home = &state.home;
    let instances: Vec<_> = home
        .registry
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.enabled)
        .collect();
    // On a thread of its own: the reads' futures are not Send.
    let st = state.clone();
    let rt = tokio::runtime::Handle::current();
    let read = tokio::task::spawn_blocking(move || {
        rt.block_on(vmoodle_ops::fleet::sitedb::refresh_versions(
            &st.home, &instances,
        ))
    })
    .await?;
    let failed: Vec<String> = read
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e:#}")))
        .collect();
    Ok(format!(
        "{} of {} read{}",
        read.len() - failed.len(),
        read.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {}", failed.join("; "))
        }
    ))
}

async fn claim(state: &AppState, name: &str, every: i64) -> bool {
    let now = now_unix();
    match state
        .home
        .registry
        .claim_schedule(name, &state.owner, now, now + every)
        .await
    {
        Ok(true) => {
            state.cache.count_run(name);
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!("claiming `{name}`: {e}");
            false
        }
    }
}

async fn record(state: &AppState, name: &str, r: anyhow::Result<String>) {
    let text = match r {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("scheduled `{name}`: {e:#}");
            format!("error: {e:#}")
        }
    };
    let _ = state.home.registry.schedule_result(name, &text).await;
}

/// Reads the MNET network (keys and expiry, from each MNET site's database) into the metrics
/// cache, and starts `mnet renew --due` when a key is due. Without MNET instances it reads
/// nothing and starts nothing; with none due it starts no job (the jobs list stays clean).
async fn mnet_turn(state: &AppState) -> anyhow::Result<String> {
    let home = &state.home;
    let mnet = home
        .registry
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.mnet >= 0 && !i.is_master)
        .count();
    if mnet == 0 {
        state.cache.set_mnet_expiry(BTreeMap::new());
        return Ok("no MNET instances".into());
    }
    let status = vmoodle_ops::mnet::status(home).await?;
    let expiry = status
        .instances
        .iter()
        .filter_map(|i| Some((i.instance.clone(), i.expires?)))
        .collect();
    state.cache.set_mnet_expiry(expiry);
    let due: Vec<&str> = status
        .instances
        .iter()
        .filter(|i| i.due)
        .map(|i| i.instance.as_str())
        .collect();
    if due.is_empty() {
        return Ok(format!("{mnet} MNET instance(s), none due"));
    }
    let id = crate::runner::submit(
        state,
        ACTOR,
        crate::runner::Op::MnetRenew {
            instance: None,
            all: false,
        },
    )
    .await?;
    Ok(format!("job {id}: renewing {}", due.join(", ")))
}

/// Counts the warm spares of each template on each MariaDB/MySQL server (for the metrics) and,
/// when `spares.keep` is set, starts a fill job for each pair short of it (unless one is queued
/// or running, or one failed within `SPARES_BACKOFF_SECS`).
async fn spares_turn(state: &AppState) -> anyhow::Result<String> {
    let home = &state.home;
    let keep = i64::from(state.fresh().await?.settings.spares.keep);
    let templates = home.registry.templates().await?;
    let servers: Vec<_> = home
        .registry
        .dbservers()
        .await?
        .into_iter()
        .filter(|s| s.kind.is_mysql_family())
        .collect();
    let mut counts = BTreeMap::new();
    let mut started = Vec::new();
    for s in &servers {
        let spec = vmoodle_ops::dbservers::admin_spec(home, s)?;
        for t in &templates {
            let n = match vmoodle_ops::spares::spare_databases(&spec, &t.name).await {
                Ok(v) => i64::try_from(v.len()).unwrap_or(i64::MAX),
                Err(e) => {
                    tracing::warn!("counting spares of {} on {}: {e:#}", t.name, s.name);
                    continue;
                }
            };
            counts.insert((t.name.clone(), s.name.clone()), n);
            if n < keep && may_fill(state, &format!("{}@{}", t.name, s.name)).await? {
                let op = crate::runner::Op::SparesFill {
                    template: t.name.clone(),
                    dbserver: s.name.clone(),
                    count: usize::try_from(keep - n).unwrap_or(1),
                };
                let id = crate::runner::submit(state, ACTOR, op).await?;
                started.push(format!("job {id}: {}@{} +{}", t.name, s.name, keep - n));
            }
        }
    }
    state.cache.set_spares(counts);
    Ok(if started.is_empty() {
        "spares counted".into()
    } else {
        started.join("; ")
    })
}

/// No fill of `target` is queued or running, nor failed recently.
async fn may_fill(state: &AppState, target: &str) -> anyhow::Result<bool> {
    let last = state
        .home
        .registry
        .jobs(&JobFilter {
            kind: Some("spares fill".into()),
            target: Some(target.into()),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    Ok(match last.first() {
        None => true,
        Some(j) if matches!(j.state.as_str(), "queued" | "running" | "recovering") => false,
        Some(j) if j.state == "done" => true,
        Some(j) => j.finished_at.unwrap_or(j.updated_at) < now_unix() - SPARES_BACKOFF_SECS,
    })
}

/// Whether another daemon died since the last look (its heartbeat is older than the lease, or,
/// on this machine, its process is gone): then its jobs are recovered at once rather than at
/// the next periodic pass. Each dead daemon counts once.
async fn newly_dead(state: &AppState, seen: &mut HashSet<String>) -> bool {
    let Ok(nodes) = state.home.registry.nodes().await else {
        return false;
    };
    let cutoff = now_unix() - vmoodle_ops::jobs::DAEMON_LEASE_SECS;
    let mut any = false;
    for n in nodes.iter().filter(|n| n.owner != state.owner) {
        let dead = n.heartbeat_at < cutoff || !vmoodle_ops::journal::owner_alive(&n.owner);
        if dead && seen.insert(n.owner.clone()) {
            tracing::info!(daemon = %n.owner, "a daemon stopped answering; recovering its jobs");
            any = true;
        }
    }
    any
}

/// Recovers interrupted jobs in the background: taking the home's lock (which recovers) may wait
/// for a running job, and must not stall the heartbeat. One pass at a time: false when one is
/// already under way.
fn spawn_recovery(state: &AppState, busy: &Arc<AtomicBool>) -> bool {
    if busy.swap(true, Ordering::SeqCst) {
        return false;
    }
    let root = state.cfg.root.clone();
    let busy = busy.clone();
    // On a thread of its own, as jobs run (the operations' futures need not be Send).
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        match rt.block_on(vmoodle_ops::Home::open_locked(&root)) {
            Ok(home) => {
                for r in &home.recovered {
                    tracing::info!(job = r.id, kind = %r.kind, state = %r.state, "recovered");
                }
            }
            Err(e) => tracing::warn!("recovering interrupted jobs: {e:#}"),
        }
        busy.store(false, Ordering::SeqCst);
    });
    true
}
