//! The cluster watcher: every `WATCH_SECS`, the status of every database cluster in the register
//! (`vmoodle_ops::cluster::status`, every node asked at once, each within 5 s), kept in the
//! metrics cache with an hour of each replica's lag, for `/metrics` and the cluster page.
//!
//! Each daemon watches for itself (nothing is claimed: a status changes nothing), in a loop of its
//! own, so a hung agent never delays the heartbeat. A cluster whose status cannot be taken keeps
//! its last one (its `vmoodle_cluster_status_timestamp_seconds` then ages); a cluster gone from
//! the register leaves the cache.

use crate::metrics::ClusterSample;
use crate::AppState;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use vmoodle_core::now_unix;

/// Seconds between two looks at the clusters.
pub const WATCH_SECS: u64 = 10;
/// How long the status of one cluster may take as a whole: each node gets 5 s and all are asked
/// at once, so this is a safety net (a register that does not answer), and stays within a turn.
const STATUS_TIMEOUT: Duration = Duration::from_secs(8);

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(WATCH_SECS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut said = Said::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        tokio::select! {
            _ = turn(&state, &mut said) => {}
            _ = stop.changed() => break,
        }
    }
}

/// The failures last logged, so one that lasts is logged once.
#[derive(Default)]
struct Said {
    register: Option<String>,
    /// Cluster -> why its status could not be taken.
    clusters: BTreeMap<String, String>,
}

/// One look at every cluster, all at once.
async fn turn(state: &AppState, said: &mut Said) {
    let reg = &state.home.registry;
    let clusters = match reg.clusters().await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("{e:#}");
            if said.register.as_ref() != Some(&e) {
                tracing::warn!("cluster watcher: reading the clusters: {e}");
                said.register = Some(e);
            }
            return;
        }
    };
    said.register = None;
    state.cache.retain_clusters(&clusters);
    said.clusters
        .retain(|name, _| clusters.iter().any(|c| c.name == *name));
    if clusters.is_empty() {
        return;
    }
    let servers = reg.dbservers().await.unwrap_or_default();
    let home = &state.home;
    let answers = futures::future::join_all(clusters.iter().map(|c| async move {
        let r = tokio::time::timeout(STATUS_TIMEOUT, vmoodle_ops::cluster::status(home, &c.name))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no status within {} s",
                    STATUS_TIMEOUT.as_secs()
                ))
            });
        (c, now_unix(), r)
    }))
    .await;
    for (c, at, r) in answers {
        match r {
            Ok(status) => {
                said.clusters.remove(&c.name);
                state.cache.set_cluster(ClusterSample {
                    at,
                    kind: servers
                        .iter()
                        .find(|s| s.id == c.dbserver_id)
                        .map(|s| s.kind),
                    status,
                });
            }
            Err(e) => {
                let e = format!("{e:#}");
                if said.clusters.get(&c.name) != Some(&e) {
                    tracing::warn!(cluster = %c.name, "cluster watcher: {e}");
                    said.clusters.insert(c.name.clone(), e);
                }
            }
        }
    }
}
