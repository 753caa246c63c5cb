//! Database clusters: a standalone database server becomes a primary with replicas behind two
//! HAProxy nodes and a keepalived virtual IP (`create`), is watched (`status`) and taken apart
//! again (`destroy`). Every node is reached through its agent (vmoodle-agent); the engines
//! themselves (mariadb-backup, pg_basebackup, HAProxy, keepalived) do the work.

mod checks;
mod create;
mod destroy;
mod status;

pub use checks::{plan, Plan};
pub use create::create;
pub use destroy::destroy;
pub use status::{status, ClusterStatus, NodeLine, ProxyLine};

use anyhow::{bail, Context, Result};
use vmoodle_agent::client::AgentClient;
use vmoodle_core::DbKind;
use vmoodle_registry::DbServer;

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
        // Slots live on the primary itself, not behind the proxies.
        spec.host = c.orig_host.clone();
        spec.port = c.orig_port;
        spec.socket = c.orig_socket.clone();
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
