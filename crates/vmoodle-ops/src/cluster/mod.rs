//! Database clusters: a standalone database server becomes a primary with replicas behind two
//! HAProxy nodes and a keepalived virtual IP (`create`), is watched (`status`) and taken apart
//! again (`destroy`); replicas are added and removed while it runs (`add_replica`,
//! `remove_replica`). Every node is reached through its agent (vmoodle-agent); the engines
//! themselves (mariadb-backup, pg_basebackup, HAProxy, keepalived) do the work.

mod checks;
mod create;
mod destroy;
mod events;
mod replicas;
mod status;
mod switchover;

pub use checks::{plan, Plan};
pub use create::create;
pub use destroy::destroy;
pub use events::{events, Event};
pub use replicas::{
    add_replica, finish_remove_replica, plan_replica, remove_replica, reseed_replica,
};
pub use status::{status, ClusterStatus, NodeLine, ProxyLine};
pub use switchover::{finish_switchover, switchover};

use anyhow::{bail, Context, Result};
use vmoodle_agent::client::AgentClient;
use vmoodle_agent::{Backend, ProxySpec};
use vmoodle_core::DbKind;
use vmoodle_registry::{Cluster, ClusterNode, DbServer};

use crate::Home;

/// What `cluster create` was given.
#[derive(Debug, Clone)]
pub struct CreateCluster {
    pub name: String,
    /// The database server that becomes the cluster.
    pub from: String,
    /// The node the server runs on (default: the node whose address is the server's host).
    pub primary: Option<String>,
    pub replicas: Vec<String>,
    pub proxies: Vec<String>,
    /// The virtual IP with its prefix (10.0.0.100/24).
    pub vip: String,
    /// The interface of the proxy nodes that carries the virtual IP.
    pub interface: String,
    /// Default: the engine's port (3306, 5432).
    pub writer_port: Option<u16>,
    /// Default: the writer port + 1.
    pub reader_port: Option<u16>,
    /// Replicas lagging more than this many seconds leave the reader pool.
    pub max_lag: u32,
    /// The replication account (created with only replication rights).
    pub repl_user: String,
}

pub const DEFAULT_REPL_USER: &str = "vmoodle_repl";
pub const DEFAULT_MAX_LAG: u32 = 10;

/// The agent client of a registered node, by name.
pub async fn node_client(home: &Home, name: &str) -> Result<AgentClient> {
    let n = home.registry.cluster_node(name).await?;
    crate::nodes::client(home, &n)
}

/// A cluster's members resolved to their registered nodes (proxies in the order they joined:
/// the first gets the higher VRRP priority).
#[derive(Debug, Clone)]
pub struct Topology {
    pub primary: ClusterNode,
    /// Each replica with its MariaDB server_id and PostgreSQL slot.
    pub replicas: Vec<(ClusterNode, Option<i64>, Option<String>)>,
    pub proxies: Vec<ClusterNode>,
}

impl Topology {
    pub async fn of(home: &Home, c: &Cluster) -> Result<Topology> {
        let nodes = home.registry.cluster_nodes().await?;
        let node = |name: &str| {
            nodes
                .iter()
                .find(|n| n.name == name)
                .cloned()
                .with_context(|| {
                    format!(
                        "cluster `{}` names node `{name}`, which is not registered",
                        c.name
                    )
                })
        };
        let mut primary = None;
        let mut replicas = Vec::new();
        let mut proxies = Vec::new();
        for m in &c.members {
            match m.role.as_str() {
                "primary" => primary = Some(node(&m.node)?),
                "replica" => replicas.push((node(&m.node)?, m.server_id, m.slot.clone())),
                _ => proxies.push(node(&m.node)?),
            }
        }
        Ok(Topology {
            primary: primary
                .with_context(|| format!("cluster `{}` has no primary in the register", c.name))?,
            replicas,
            proxies,
        })
    }

    pub fn replica_nodes(&self) -> Vec<ClusterNode> {
        self.replicas.iter().map(|(n, _, _)| n.clone()).collect()
    }
}

/// What proxy node number `i` of `proxies` serves for cluster `c` with these database nodes.
pub fn proxy_spec(
    c: &Cluster,
    primary: &ClusterNode,
    replicas: &[ClusterNode],
    proxies: &[ClusterNode],
    i: usize,
) -> ProxySpec {
    let backend = |n: &ClusterNode| Backend {
        name: n.name.clone(),
        host: n.address.clone(),
        // Every database node listens on the port the primary's server had.
        port: c.orig_port,
        agent_port: n.agent_port,
        // HAProxy checks the agent against the certificate pinned when the node was added.
        cert_pem: Some(n.cert_pem.clone()),
    };
    ProxySpec {
        cluster: c.name.clone(),
        vip: c.vip.clone(),
        interface: c.interface.clone(),
        self_address: proxies[i].address.clone(),
        peers: proxies
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, p)| p.address.clone())
            .collect(),
        priority: if i == 0 { 101 } else { 100 },
        router_id: router_id(&c.name),
        writer_port: c.writer_port,
        reader_port: c.reader_port,
        max_lag: c.max_lag,
        primary: backend(primary),
        replicas: replicas.iter().map(backend).collect(),
    }
}

/// A VRRP router id (1-255) stable for a cluster name, so two clusters on one network rarely
/// share one.
fn router_id(name: &str) -> u8 {
    let h = openssl::sha::sha256(name.as_bytes());
    (h[0] % 254) + 1
}

/// The PostgreSQL replication slot of a replica node.
pub(crate) fn slot_name(node: &str) -> String {
    format!(
        "vmoodle_{}",
        node.replace(['-', '.'], "_").to_ascii_lowercase()
    )
}

/// Nodes that already serve a cluster: (node, cluster, role).
pub(crate) async fn taken_nodes(home: &Home) -> Result<Vec<(String, String, String)>> {
    Ok(home
        .registry
        .clusters()
        .await?
        .into_iter()
        .flat_map(|c| {
            c.members
                .into_iter()
                .map(move |m| (m.node, c.name.clone(), m.role))
        })
        .collect())
}

/// The virtual IP without its prefix length.
pub(crate) fn vip_host(c: &Cluster) -> String {
    c.vip.split('/').next().unwrap_or(&c.vip).to_string()
}

/// `ADDR/PREFIX` split and checked.
pub fn parse_vip(vip: &str) -> Result<(std::net::IpAddr, u8)> {
    let (a, p) = vip.split_once('/').with_context(|| {
        format!("--vip `{vip}` has no prefix length: give ADDR/PREFIX, e.g. 10.0.0.100/24")
    })?;
    let addr: std::net::IpAddr = a
        .parse()
        .with_context(|| format!("--vip `{vip}`: `{a}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|n| *n >= 1 && *n <= max)
        .with_context(|| format!("--vip `{vip}`: the prefix length must be 1 to {max}"))?;
    Ok((addr, prefix))
}

/// An interface name as the kernel allows it (1-15 characters, no `/`, spaces or `:`).
pub fn check_interface(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        bail!("--interface `{name}` is not an interface name (1-15 letters, digits, `_ - .`)");
    }
    Ok(())
}

pub(crate) fn engine_of(kind: DbKind) -> vmoodle_agent::Engine {
    if kind.is_mysql_family() {
        vmoodle_agent::Engine::Mariadb
    } else {
        vmoodle_agent::Engine::Postgresql
    }
}

/// Republishes the host files of every instance on a server (each file atomically, one at a
/// time), after its endpoint changed.
pub(crate) async fn republish(home: &Home, server: &DbServer) -> Result<usize> {
    let mut n = 0;
    for i in home.registry.instances().await? {
        if i.dbserver_id == server.id && !i.is_master {
            crate::publish::write_host_file(home, &i).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Drops a PostgreSQL replication slot on a server if it is there (an active slot's walsender
/// is ended first).
pub(crate) async fn drop_slot(home: &Home, server: &DbServer, slot: &str) -> Result<()> {
    if server.kind.is_mysql_family() {
        return Ok(());
    }
    let mut spec = crate::dbservers::admin_spec(home, server)?;
    if let Some(c) = home.registry.cluster_of_dbserver(server.id).await? {
        // Slots live on the primary itself, not behind the proxies: the first primary through
        // the server's own endpoint, another (after a switchover) at its node's address.
        let t = Topology::of(home, &c).await?;
        if c.origin_node_id.is_none_or(|o| o == t.primary.id) {
            spec.host = c.orig_host.clone();
            spec.port = c.orig_port;
            spec.socket = c.orig_socket.clone();
        } else {
            spec.host = t.primary.address.clone();
            spec.port = c.orig_port;
            spec.socket = None;
        }
    }
    let mut c = vmoodle_dbserver::connect(&spec, None).await?;
    let p = [vmoodle_dbserver::Param::Str(slot.to_string())];
    let r = async {
        c.exec(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = ? AND active_pid IS NOT NULL",
            &p,
        )
        .await?;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        c.exec(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ?",
            &p,
        )
        .await
    }
    .await;
    vmoodle_dbserver::close(c).await;
    r.with_context(|| format!("dropping replication slot `{slot}` on `{}`", server.name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_and_interface_are_checked() {
        assert_eq!(parse_vip("10.0.0.100/24").unwrap().1, 24);
        assert!(parse_vip("10.0.0.100")
            .unwrap_err()
            .to_string()
            .contains("ADDR/PREFIX"));
        assert!(parse_vip("10.0.0.300/24").is_err());
        assert!(parse_vip("10.0.0.1/33").is_err());
        assert!(parse_vip("fd00::1/64").is_ok());
        assert!(check_interface("eth0").is_ok());
        assert!(check_interface("eth0; rm -rf /").is_err());
        assert!(check_interface("averyveryverylongname").is_err());
    }
}
