//! `cluster status`: what every node's agent says now (role, read_only, replication threads,
//! lag, position), HAProxy's backend states on each proxy node, and who holds the virtual IP.

use anyhow::Result;
use serde::Serialize;
use std::time::Duration;
use vmoodle_agent::{BackendState, DbState, Role};
use vmoodle_registry::Cluster;

use super::node_client;
use crate::Home;

#[derive(Debug, Clone, Serialize)]
pub struct NodeLine {
    pub node: String,
    /// What the register says it is (primary, replica).
    pub member_as: String,
    pub state: Option<DbState>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyLine {
    pub node: String,
    pub haproxy_running: bool,
    pub keepalived_running: bool,
    pub holds_vip: bool,
    pub backends: Vec<BackendState>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: Cluster,
    pub databases: Vec<NodeLine>,
    pub proxies: Vec<ProxyLine>,
    /// What is wrong, one line each; empty when healthy.
    pub problems: Vec<String>,
}

impl ClusterStatus {
    pub fn degraded(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// How long one node's agent may take to answer before it counts as down.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// A call to a node's agent, bounded by `NODE_TIMEOUT`.
async fn ask<T>(what: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(NODE_TIMEOUT, what)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "its agent did not answer within {} s",
                NODE_TIMEOUT.as_secs()
            ))
        })
}

/// Asks every node at once (each bounded in time), so one hung agent costs seconds, not the
/// whole answer.
pub async fn status(home: &Home, name: &str) -> Result<ClusterStatus> {
    let cluster = home.registry.cluster(name).await?;
    let mut problems = Vec::new();
    if cluster.state != "active" {
        problems.push(format!("the cluster is `{}`, not active", cluster.state));
    }
    let dbs: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| m.role != "proxy")
        .collect();
    let pxs: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| m.role == "proxy")
        .collect();
    let (db_answers, proxy_answers) = tokio::join!(
        futures::future::join_all(
            dbs.iter()
                .map(|m| ask(async { node_client(home, &m.node).await?.status().await }))
        ),
        futures::future::join_all(
            pxs.iter()
                .map(|m| ask(async { node_client(home, &m.node).await?.proxy_status().await }))
        ),
    );
    let mut databases = Vec::new();
    for (m, r) in dbs.into_iter().zip(db_answers) {
        let (state, error) = match r {
            Ok(s) => (s.database, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        match (&state, &error) {
            (_, Some(e)) => problems.push(format!("{}: {e}", m.node)),
            (Some(s), None) => {
                let role = s.role.unwrap_or(Role::Down);
                if m.role == "primary" && role != Role::Primary {
                    problems.push(format!(
                        "{} should be the primary but is {}",
                        m.node,
                        role.as_str()
                    ));
                }
                if m.role == "replica" {
                    if role != Role::Replica {
                        problems.push(format!(
                            "{} should be a replica but is {}",
                            m.node,
                            role.as_str()
                        ));
                    } else if s.io_running != Some(true) || s.sql_running != Some(true) {
                        problems.push(format!(
                            "{}: replication is stopped{}",
                            m.node,
                            s.error
                                .as_deref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        ));
                    } else if s.lag_seconds.unwrap_or(f64::MAX) > f64::from(cluster.max_lag) {
                        problems.push(format!(
                            "{} lags {:.0} s behind (max {} s): out of the reader pool",
                            m.node,
                            s.lag_seconds.unwrap_or(-1.0),
                            cluster.max_lag
                        ));
                    }
                }
            }
            (None, None) => problems.push(format!("{}: its agent has no database state", m.node)),
        }
        databases.push(NodeLine {
            node: m.node.clone(),
            member_as: m.role.clone(),
            state,
            error,
        });
    }
    let mut proxies = Vec::new();
    for (m, r) in pxs.into_iter().zip(proxy_answers) {
        let line = match r {
            Ok(s) => {
                if !s.haproxy_running {
                    problems.push(format!("{}: HAProxy is not running", m.node));
                }
                if !s.keepalived_running {
                    problems.push(format!("{}: keepalived is not running", m.node));
                }
                // The writer has every database server, and only the primary passes its check.
                let writers: Vec<_> = s
                    .backends
                    .iter()
                    .filter(|b| b.listener == "writer" && b.status.starts_with("UP"))
                    .map(|b| b.server.clone())
                    .collect();
                if writers.len() != 1 {
                    problems.push(format!(
                        "{}: the writer port has {} servers up ({}), not one",
                        m.node,
                        writers.len(),
                        writers.join(", ")
                    ));
                }
                for b in &s.backends {
                    if b.listener == "reader" && !b.backup && !b.status.starts_with("UP") {
                        problems.push(format!(
                            "{}: replica {} is out of the reader pool: {} ({})",
                            m.node, b.server, b.status, b.check_status
                        ));
                    }
                }
                ProxyLine {
                    node: m.node.clone(),
                    haproxy_running: s.haproxy_running,
                    keepalived_running: s.keepalived_running,
                    holds_vip: s.holds_vip,
                    backends: s.backends,
                    error: None,
                }
            }
            Err(e) => {
                problems.push(format!("{}: {e:#}", m.node));
                ProxyLine {
                    node: m.node.clone(),
                    haproxy_running: false,
                    keepalived_running: false,
                    holds_vip: false,
                    backends: Vec::new(),
                    error: Some(format!("{e:#}")),
                }
            }
        }
        .clone();
        proxies.push(line);
    }
    match proxies.iter().filter(|p| p.holds_vip).count() {
        1 => {}
        0 => problems.push(format!(
            "no proxy node holds the virtual IP {}",
            cluster.vip
        )),
        n => problems.push(format!(
            "{n} proxy nodes hold the virtual IP {} at once",
            cluster.vip
        )),
    }
    Ok(ClusterStatus {
        cluster,
        databases,
        proxies,
        problems,
    })
}
