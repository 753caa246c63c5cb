//! Keeps this node's hosts/ (and hook.php) in step with the register. Every change of instances
//! or database servers bumps the register's generation number (a trigger, on SQLite and
//! PostgreSQL alike); polling it every second is one tiny query, and republishing on a change
//! puts a change made on any node into this node's host files within about a second.
//!
//! A sync renders every host file from one read of the register (instances, servers, master)
//! and rewrites only those whose text differs from the file's (atomically, as `publish` does),
//! and removes the host files of hosts no longer registered; so a file edited by hand or one
//! left by a crash is mended at the next change too, and a change of one instance in a fleet of
//! thousands costs one write.

use crate::AppState;
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::watch;
use vmoodle_ops::publish;
use vmoodle_ops::Home;
use vmoodle_site::hostfile;

/// How often the generation number is read.
pub const POLL: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true. Publishes once at start (the register may have changed while
/// this daemon was down), then on every change of the generation number.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut seen: Option<i64> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let generation = match state.home.registry.generation().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("host-file sync: reading the generation: {e}");
                continue;
            }
        };
        if seen == Some(generation) {
            continue;
        }
        match sync_hosts(&state.home).await {
            Ok((written, removed)) => {
                tracing::debug!(generation, written, removed, "host files in step");
                seen = Some(generation);
            }
            // Tried again at the next tick.
            Err(e) => tracing::warn!("host-file sync: publishing: {e:#}"),
        }
    }
}

/// Brings hook.php and hosts/ in step with the register; returns (files written, removed).
pub async fn sync_hosts(home: &Home) -> Result<(usize, usize)> {
    let reg = &home.registry;
    let instances = reg.instances().await?;
    publish::write_hook(home, &instances)?;
    let servers: HashMap<i64, _> = reg
        .dbservers()
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    let master_config = instances
        .iter()
        .find(|i| i.is_master)
        .map(|m| m.config.clone())
        .unwrap_or_default();
    let hosts = home.hosts_dir();
    let mut keep = HashSet::new();
    let mut written = 0;
    for i in instances.iter().filter(|i| !i.is_master) {
        let Some(server) = servers.get(&i.dbserver_id) else {
            continue; // removed meanwhile: the next generation brings it in step
        };
        let text = publish::render_host_file(home, i, server, &master_config)?;
        let name = hostfile::file_name(&i.host);
        if std::fs::read_to_string(hosts.join(&name)).ok().as_deref() != Some(text.as_str()) {
            publish::write_host_text(home, &i.host, &text)?;
            written += 1;
        }
        keep.insert(name);
    }
    let mut removed = 0;
    if hosts.is_dir() {
        for entry in std::fs::read_dir(&hosts)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if hostfile::is_host_file_name(&name) && !keep.contains(&name) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok((written, removed))
}
