//! Everything `cluster create` checks before it changes anything, with what to change for each
//! failure: names, nodes and their agents, the primary's replication settings, versions, room on
//! the replicas, the virtual IP.

use anyhow::{bail, Result};
use std::collections::BTreeSet;
use vmoodle_agent::{Engine, ServerFacts};
use vmoodle_core::validate;
use vmoodle_registry::{ClusterNode, DbServer};

use super::{check_interface, engine_of, parse_vip, CreateCluster};
use crate::Home;

/// A checked request: what `create` will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub req: CreateCluster,
    pub server: DbServer,
    pub engine: Engine,
    pub primary: ClusterNode,
    pub primary_facts: ServerFacts,
    /// Each replica with its MariaDB server_id and PostgreSQL slot.
    pub replicas: Vec<(ClusterNode, u32, String)>,
    pub proxies: Vec<ClusterNode>,
    /// The VIP address without its prefix.
    pub vip_addr: String,
    pub writer_port: u16,
    pub reader_port: u16,
}

fn on(v: Option<&String>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_uppercase().as_str(), "ON" | "1" | "TRUE" | "YES"))
}

fn major(version: &str) -> String {
    // "10.11.6-MariaDB-0+deb12u1" -> "10.11"; "15.8 (Debian 15.8-0+deb12u1)" -> "15"
    let v = version
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or("");
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() >= 3 {
        format!("{}.{}", parts[0], parts[1])
    } else {
        parts[0].to_string()
    }
}

/// Settings the primary must have, each with what to change.
pub fn primary_problems(engine: Engine, f: &ServerFacts, replicas: usize) -> Vec<String> {
    let s = &f.settings;
    let get = |k: &str| s.get(k).cloned().unwrap_or_default();
    let mut p = Vec::new();
    match engine {
        Engine::Mariadb => {
            if !on(s.get("log_bin")) {
                p.push(
                    "binary logging is off: set `log_bin = mysql-bin` in [mysqld] and restart"
                        .into(),
                );
            }
            if get("server_id").parse::<u32>().unwrap_or(0) == 0 {
                p.push("server_id is 0 or unset: set a unique `server_id = 1` in [mysqld]".into());
            }
            if !get("binlog_format").eq_ignore_ascii_case("ROW") {
                p.push(format!(
                    "binlog_format is `{}`: set `binlog_format = ROW`",
                    get("binlog_format")
                ));
            }
            if !on(s.get("log_slave_updates")) {
                p.push("log_slave_updates is off: set `log_slave_updates = ON` (a replica promoted later must log what it applied)".into());
            }
            if !on(s.get("gtid_strict_mode")) {
                p.push("gtid_strict_mode is off: set `gtid_strict_mode = ON`".into());
            }
            let bind = get("bind_address");
            if matches!(bind.as_str(), "127.0.0.1" | "localhost" | "::1") {
                p.push(format!("the server listens on {bind} only: set `bind_address` to an address the replicas and proxies reach"));
            }
        }
        Engine::Postgresql => {
            if !matches!(get("wal_level").as_str(), "replica" | "logical") {
                p.push(format!(
                    "wal_level is `{}`: set `wal_level = replica` and restart",
                    get("wal_level")
                ));
            }
            let senders = get("max_wal_senders").parse::<usize>().unwrap_or(0);
            if senders < replicas + 2 {
                p.push(format!("max_wal_senders is {senders}: set it to at least {} (replicas + 2) and restart", replicas + 2));
            }
            let slots = get("max_replication_slots").parse::<usize>().unwrap_or(0);
            if slots < replicas + 1 {
                p.push(format!(
                    "max_replication_slots is {slots}: set it to at least {} and restart",
                    replicas + 1
                ));
            }
            if !on(s.get("wal_log_hints")) && !on(s.get("data_checksums")) {
                p.push("neither wal_log_hints nor data checksums is on: set `wal_log_hints = on` (pg_rewind needs it to rejoin an old primary) and restart".into());
            }
            let listen = get("listen_addresses");
            if listen.is_empty() || matches!(listen.as_str(), "localhost" | "127.0.0.1" | "::1") {
                p.push(format!("listen_addresses is `{listen}`: listen on an address the replicas and proxies reach"));
            }
            if f.hba_replication.is_empty() {
                p.push("pg_hba.conf has no replication line: add `host replication vmoodle_repl REPLICA-NETWORK scram-sha-256` and reload".into());
            }
        }
    }
    p
}

/// HAProxy and keepalived are given addresses, never names to resolve.
pub(crate) fn by_ip(n: &ClusterNode) -> Result<()> {
    if n.address.parse::<std::net::IpAddr>().is_err() {
        bail!(
            "node `{}` is registered by the name `{}`: a cluster's nodes need IP addresses (HAProxy and keepalived must not depend on name resolution); `vmoodle node remove {}` and add it with --address IP",
            n.name, n.address, n.name
        );
    }
    Ok(())
}

/// What keeps node `name` (with facts `f`) from becoming a replica of a primary with facts
/// `primary`: another engine, another major version, too little room.
pub(crate) fn replica_problems(
    engine: Engine,
    primary: &ServerFacts,
    name: &str,
    f: &ServerFacts,
) -> Vec<String> {
    let mut problems = Vec::new();
    if f.engine != engine {
        problems.push(format!(
            "replica `{name}` runs {}, not {}",
            f.engine.as_str(),
            engine.as_str()
        ));
    }
    if major(&f.version) != major(&primary.version) {
        problems.push(format!(
            "replica `{name}` runs version {} but the primary runs {}: install the same major version",
            f.version, primary.version
        ));
    }
    let need = primary.data_bytes + primary.data_bytes / 5;
    if f.free_bytes < need {
        problems.push(format!(
            "replica `{name}` has {} MiB free where its data goes; the primary's data takes {} MiB (+20%): free space first",
            f.free_bytes >> 20,
            primary.data_bytes >> 20
        ));
    }
    problems
}

/// Checks a `cluster create` request against the register and every node's agent.
pub async fn plan(home: &Home, req: &CreateCluster) -> Result<Plan> {
    validate::object_name("cluster name", &req.name)?;
    validate::db_user(&req.repl_user)?;
    let (vip, _) = parse_vip(&req.vip)?;
    check_interface(&req.interface)?;
    if home.registry.find_cluster(&req.name).await?.is_some() {
        bail!(
            "cluster `{}` already exists\nhint: `vmoodle cluster status {}`",
            req.name,
            req.name
        );
    }
    let server = home.registry.dbserver(&req.from).await?;
    if let Some(c) = home.registry.cluster_of_dbserver(server.id).await? {
        bail!(
            "database server `{}` is already cluster `{}`",
            server.name,
            c.name
        );
    }
    if server.topology != "standalone" {
        bail!(
            "database server `{}` is not standalone (topology {})",
            server.name,
            server.topology
        );
    }
    let engine = engine_of(server.kind);
    if req.replicas.is_empty() {
        bail!("name at least one --replica NODE");
    }
    if req.proxies.is_empty() || req.proxies.len() > 2 {
        bail!(
            "name two --proxy NODE (one works, without a second proxy to fail over to); {} given",
            req.proxies.len()
        );
    }
    let nodes = home.registry.cluster_nodes().await?;
    let find = |name: &str| {
        nodes.iter().find(|n| n.name == name).cloned().ok_or_else(|| {
            anyhow::anyhow!("node `{name}` is not registered\nhint: `vmoodle node add {name} --address ADDR --token-file FILE`")
        })
    };
    let primary = match &req.primary {
        Some(p) => find(p)?,
        None => nodes
            .iter()
            .find(|n| n.address == server.host)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!(
                "no registered node has the address of database server `{}` ({}): name its node with --primary NODE",
                server.name, server.host
            ))?,
    };
    let mut seen = BTreeSet::from([primary.name.clone()]);
    let mut replicas = Vec::new();
    for r in &req.replicas {
        if !seen.insert(r.clone()) {
            bail!("node `{r}` is named twice (a node is the primary or one replica)");
        }
        replicas.push(find(r)?);
    }
    let mut proxies = Vec::new();
    let mut pseen = BTreeSet::new();
    for p in &req.proxies {
        if !pseen.insert(p.clone()) {
            bail!("proxy node `{p}` is named twice");
        }
        proxies.push(find(p)?);
    }
    // In the register's order (by name): the first gets the higher VRRP priority, the same
    // whenever the proxies are reconfigured later.
    proxies.sort_by(|a, b| a.name.cmp(&b.name));
    // A node serves one cluster: seeding stops its server and moves its data aside.
    let taken = super::taken_nodes(home).await?;
    for n in std::iter::once(&primary).chain(&replicas).chain(&proxies) {
        if let Some((_, c, role)) = taken.iter().find(|(node, _, _)| *node == n.name) {
            bail!(
                "node `{}` is already the {role} of cluster `{c}`; a node serves one cluster",
                n.name
            );
        }
        by_ip(n)?;
    }
    if server.socket.is_some() && server.host.is_empty() {
        bail!("database server `{}` is reached through a socket only: register it with the address the replicas reach", server.name);
    }
    let writer_port = req.writer_port.unwrap_or(server.kind.default_port());
    let reader_port = req.reader_port.unwrap_or(writer_port.saturating_add(1));
    if writer_port == reader_port || writer_port == 0 || reader_port == 0 {
        bail!("the writer port ({writer_port}) and the reader port ({reader_port}) must be two different ports");
    }

    // Ask every agent.
    let mut problems = Vec::new();
    let pc = crate::nodes::client(home, &primary)?;
    let primary_facts = pc.facts().await?;
    if primary_facts.engine != engine {
        problems.push(format!(
            "node `{}` runs {}, but `{}` is a {} server",
            primary.name,
            primary_facts.engine.as_str(),
            server.name,
            server.kind
        ));
    }
    if !primary_facts.up {
        problems.push(format!(
            "the agent on `{}` cannot reach its database server",
            primary.name
        ));
    }
    for p in primary_problems(engine, &primary_facts, replicas.len()) {
        problems.push(format!("primary `{}`: {p}", primary.name));
    }
    let mut used_ids: BTreeSet<u32> = primary_facts
        .settings
        .get("server_id")
        .and_then(|v| v.parse().ok())
        .into_iter()
        .collect();
    let mut planned = Vec::new();
    let mut next_id = used_ids.iter().max().copied().unwrap_or(1);
    for r in &replicas {
        let f = crate::nodes::client(home, r)?.facts().await?;
        problems.extend(replica_problems(engine, &primary_facts, &r.name, &f));
        next_id += 1;
        while !used_ids.insert(next_id) {
            next_id += 1;
        }
        planned.push((r.clone(), next_id, super::slot_name(&r.name)));
    }
    for p in &proxies {
        match crate::nodes::client(home, p)?.health().await {
            Ok(h) if h.proxy => {}
            Ok(_) => problems.push(format!(
                "node `{}` is not a proxy node: its agent.toml has no [proxy]",
                p.name
            )),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!(
            "cluster `{}` cannot be built yet; nothing was changed. Change this first:\n  - {}",
            req.name,
            problems.join("\n  - ")
        );
    }
    Ok(Plan {
        req: req.clone(),
        server,
        engine,
        primary,
        primary_facts,
        replicas: planned,
        proxies,
        vip_addr: vip.to_string(),
        writer_port,
        reader_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(engine: Engine, kv: &[(&str, &str)]) -> ServerFacts {
        ServerFacts {
            engine,
            version: "10.11.6-MariaDB".into(),
            settings: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hba_replication: vec![],
            data_bytes: 0,
            free_bytes: 0,
            up: true,
        }
    }

    #[test]
    fn a_mariadb_primary_must_log_rows_with_gtids() {
        let good = facts(
            Engine::Mariadb,
            &[
                ("log_bin", "ON"),
                ("server_id", "1"),
                ("binlog_format", "ROW"),
                ("log_slave_updates", "ON"),
                ("gtid_strict_mode", "ON"),
                ("bind_address", "10.0.0.11"),
            ],
        );
        assert!(primary_problems(Engine::Mariadb, &good, 2).is_empty());
        let bad = facts(
            Engine::Mariadb,
            &[
                ("log_bin", "OFF"),
                ("server_id", "0"),
                ("binlog_format", "MIXED"),
                ("bind_address", "127.0.0.1"),
            ],
        );
        let p = primary_problems(Engine::Mariadb, &bad, 2).join("\n");
        for want in [
            "log_bin",
            "server_id",
            "binlog_format = ROW",
            "log_slave_updates",
            "gtid_strict_mode",
            "bind_address",
        ] {
            assert!(p.contains(want), "{want} missing in {p}");
        }
    }

    #[test]
    fn a_postgres_primary_needs_wal_senders_slots_hints_and_hba() {
        let mut f = facts(
            Engine::Postgresql,
            &[
                ("wal_level", "replica"),
                ("max_wal_senders", "10"),
                ("max_replication_slots", "10"),
                ("wal_log_hints", "off"),
                ("data_checksums", "on"),
                ("listen_addresses", "*"),
            ],
        );
        f.hba_replication = vec!["host replication all 10.0.0.0/24 scram-sha-256".into()];
        assert!(primary_problems(Engine::Postgresql, &f, 2).is_empty());
        f.settings.insert("max_wal_senders".into(), "2".into());
        f.settings.insert("data_checksums".into(), "off".into());
        f.hba_replication.clear();
        let p = primary_problems(Engine::Postgresql, &f, 2).join("\n");
        assert!(
            p.contains("max_wal_senders is 2")
                && p.contains("wal_log_hints")
                && p.contains("pg_hba"),
            "{p}"
        );
    }

    #[test]
    fn versions_compare_by_major() {
        assert_eq!(major("10.11.6-MariaDB-0+deb12u1"), "10.11");
        assert_eq!(major("15.8 (Debian 15.8-0+deb12u1)"), "15");
        assert_eq!(major("15.14"), "15");
    }
}
