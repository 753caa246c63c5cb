//! `vmoodle cluster create|list|status|add-replica|remove-replica|reseed|switchover|events|destroy`: a database server
//! scaled into a primary with replicas behind two HAProxy nodes and a keepalived virtual IP.

use anyhow::Result;
use vmoodle_ops::cluster::{self, CreateCluster};
use vmoodle_ops::Home;

use super::{exit, output, progress::Progress};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Turn a standalone database server into a cluster: checks (and says what to change), a
    /// replication account, each replica seeded from a hot backup of the running server
    /// (mariabackup stream / pg_basebackup), HAProxy on both proxy nodes (writer port: the
    /// primary; reader port: replicas within --max-lag, the primary as backup), keepalived with
    /// the virtual IP, then every instance on the server repointed: writes to VIP:writer, reads
    /// to VIP:reader through Moodle's own read-replica option. Journaled: a failure undoes every
    /// step before it.
    ///
    /// Example: vmoodle cluster create prod --from db1 --replica db2 --replica db3 --proxy lb1 --proxy lb2 --vip 10.0.0.100/24 --interface eth0
    Create {
        name: String,
        /// The registered database server that becomes the cluster.
        #[arg(long)]
        from: String,
        /// The node the server runs on (default: the node whose address is the server's host).
        #[arg(long)]
        primary: Option<String>,
        /// A node to seed as a replica (repeat for each).
        #[arg(long = "replica", required = true)]
        replicas: Vec<String>,
        /// A proxy node (HAProxy + keepalived); name two.
        #[arg(long = "proxy", required = true)]
        proxies: Vec<String>,
        /// The virtual IP with its prefix length.
        #[arg(long, value_name = "ADDR/PREFIX")]
        vip: String,
        /// The proxy nodes' interface that carries the virtual IP.
        #[arg(long)]
        interface: String,
        /// The writer port on the VIP (default: the engine's port).
        #[arg(long)]
        writer_port: Option<u16>,
        /// The reader port on the VIP (default: writer port + 1).
        #[arg(long)]
        reader_port: Option<u16>,
        /// Replicas further behind than this (seconds) leave the reader pool.
        #[arg(long, default_value_t = cluster::DEFAULT_MAX_LAG)]
        max_lag: u32,
        /// The replication account to create (only replication rights).
        #[arg(long, default_value = cluster::DEFAULT_REPL_USER)]
        repl_user: String,
        /// Run the checks only.
        #[arg(long)]
        dry_run: bool,
    },
    /// List clusters.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Every node's role, replication and lag, the proxies' backends and who holds the VIP;
    /// exit 3 when something is degraded.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Seed a registered node as one more replica of a running cluster (a hot backup of the
    /// primary, streamed through the agents), then put it in the reader pool of both proxies
    /// (HAProxy reloaded with its listeners kept). Journaled: a failure undoes every step.
    ///
    /// Example: vmoodle cluster add-replica prod db4
    AddReplica {
        name: String,
        /// The registered node to seed (`vmoodle node add`); it must serve no other cluster.
        node: String,
        /// Run the checks only.
        #[arg(long)]
        dry_run: bool,
    },
    /// Take a replica out of a running cluster: out of the reader pool of both proxies first,
    /// then its server put back as it was before it joined (its replicated data kept aside on
    /// the node), its replication slot dropped. Reads fall back to the primary when no
    /// replica is left.
    ///
    /// Example: vmoodle cluster remove-replica prod db4 --yes
    RemoveReplica {
        name: String,
        node: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// What was done to a cluster, newest first: each create, add-replica, remove-replica,
    /// reseed, switchover and destroy, who started it, how it ended and, for a failure, why
    /// and what was undone.
    Events {
        name: String,
        /// How many (newest first).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a broken replica from a fresh hot backup of the primary: out of the reader pool
    /// first, seeded again, back in the pool once healthy.
    ///
    /// Example: vmoodle cluster reseed prod db3
    Reseed { name: String, node: String },
    /// Make a replica the primary, with no committed write lost: the old primary stops taking
    /// writes (MariaDB read_only with its sessions closed; PostgreSQL a clean shutdown), the
    /// replica applies everything it committed, is promoted, and every other server, the old
    /// primary included, replicates from it; HAProxy's writer port follows through the agents'
    /// checks. If the replica cannot catch up, the old primary takes writes again and nothing
    /// changed.
    ///
    /// Example: vmoodle cluster switchover prod --to db2
    Switchover {
        name: String,
        /// The replica to promote.
        #[arg(long)]
        to: String,
    },
    /// Take a cluster apart: instances back on the primary first, proxies stopped, replicas
    /// put back as they were before, the replication account dropped.
    Destroy {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &std::path::Path) -> Result<u8> {
        match self {
            Cmd::Create {
                name,
                from,
                primary,
                replicas,
                proxies,
                vip,
                interface,
                writer_port,
                reader_port,
                max_lag,
                repl_user,
                dry_run,
            } => {
                let home = super::open_locked(root).await?;
                let req = CreateCluster {
                    name,
                    from,
                    primary,
                    replicas,
                    proxies,
                    vip,
                    interface,
                    writer_port,
                    reader_port,
                    max_lag,
                    repl_user,
                };
                let plan = cluster::plan(&home, &req).await?;
                eprintln!(
                    "checks passed: `{}` ({} on {}) -> primary + {} replica(s), proxies {}, VIP {} (writer :{}, reader :{})",
                    plan.server.name,
                    plan.engine.as_str(),
                    plan.primary.name,
                    plan.replicas.len(),
                    plan.proxies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                    plan.req.vip,
                    plan.writer_port,
                    plan.reader_port
                );
                if dry_run {
                    return Ok(exit::OK);
                }
                let p = Progress::new(0);
                let r = cluster::create(&home, &plan, &|e| p.event(e)).await;
                p.finish();
                let c = r?;
                eprintln!(
                    "cluster `{}` is active: instances on `{}` now write to {}:{} and read from {}:{}",
                    c.name, plan.server.name, plan.vip_addr, c.writer_port, plan.vip_addr, c.reader_port
                );
            }
            Cmd::List { json } => {
                let home = Home::open(root).await?;
                let list = home.registry.clusters().await?;
                if json {
                    output::json(&list)?;
                } else {
                    let servers = home.registry.dbservers().await?;
                    output::table(
                        &[
                            "name", "server", "state", "vip", "writer", "reader", "nodes",
                        ],
                        list.iter()
                            .map(|c| {
                                vec![
                                    c.name.clone(),
                                    servers
                                        .iter()
                                        .find(|s| s.id == c.dbserver_id)
                                        .map_or("-".into(), |s| s.name.clone()),
                                    c.state.clone(),
                                    c.vip.clone(),
                                    c.writer_port.to_string(),
                                    c.reader_port.to_string(),
                                    c.members
                                        .iter()
                                        .map(|m| format!("{} ({})", m.node, m.role))
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Cmd::Status { name, json } => {
                let home = Home::open(root).await?;
                let s = cluster::status(&home, &name).await?;
                if json {
                    output::json(&s)?;
                } else {
                    print_status(&s);
                }
                if s.degraded() {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::AddReplica {
                name,
                node,
                dry_run,
            } => {
                let home = super::open_locked(root).await?;
                let plan = cluster::plan_replica(&home, &name, &node).await?;
                eprintln!(
                    "checks passed: `{node}` can join cluster `{name}` as a replica of `{}`",
                    plan.topology.primary.name
                );
                if dry_run {
                    return Ok(exit::OK);
                }
                let p = Progress::new(0);
                let r = cluster::add_replica(&home, &plan, &|e| p.event(e)).await;
                p.finish();
                let c = r?;
                eprintln!(
                    "`{node}` replicates from `{}` and serves reads in cluster `{name}` ({} replica(s))",
                    plan.topology.primary.name,
                    c.members.iter().filter(|m| m.role == "replica").count()
                );
            }
            Cmd::RemoveReplica { name, node, yes } => {
                let home = super::open_locked(root).await?;
                if !super::confirm(
                    yes,
                    &format!("take replica `{node}` out of cluster `{name}` (its server goes back to what it was before it joined)"),
                    &node,
                )? {
                    return Ok(exit::ERROR);
                }
                let p = Progress::new(0);
                let r = cluster::remove_replica(&home, &name, &node, &|e| p.event(e)).await;
                p.finish();
                let c = r?;
                let left = c.members.iter().filter(|m| m.role == "replica").count();
                eprintln!("`{node}` left cluster `{name}`; {left} replica(s) serve reads");
                if left == 0 {
                    eprintln!("warning: no replica is left: reads go to the primary (add one with `vmoodle cluster add-replica {name} NODE`)");
                }
            }
            Cmd::Events { name, limit, json } => {
                let home = Home::open(root).await?;
                let list = cluster::events(&home, &name, limit).await?;
                if json {
                    output::json(&list)?;
                } else if list.is_empty() {
                    eprintln!("no events for cluster `{name}`");
                } else {
                    output::table(
                        &["job", "started", "what", "by", "outcome", "took", "why"],
                        list.iter()
                            .map(|e| {
                                vec![
                                    e.job.to_string(),
                                    output::time(e.started_at),
                                    e.what.clone(),
                                    e.started_by.clone(),
                                    e.state.clone(),
                                    e.finished_at.map_or("-".into(), |f| {
                                        format!("{} s", (f - e.started_at).max(0))
                                    }),
                                    e.error.clone().unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Cmd::Reseed { name, node } => {
                let home = super::open_locked(root).await?;
                let p = Progress::new(0);
                let r = cluster::reseed_replica(&home, &name, &node, &|e| p.event(e)).await;
                p.finish();
                r?;
                eprintln!("`{node}` was reseeded and serves reads in cluster `{name}` again");
            }
            Cmd::Switchover { name, to } => {
                let home = super::open_locked(root).await?;
                let t = std::time::Instant::now();
                let p = Progress::new(0);
                let r = cluster::switchover(&home, &name, &to, &|e| p.event(e)).await;
                p.finish();
                r?;
                eprintln!(
                    "`{to}` is the primary of cluster `{name}` ({:.1} s); every other server replicates from it",
                    t.elapsed().as_secs_f64()
                );
            }
            Cmd::Destroy { name, yes } => {
                let home = super::open_locked(root).await?;
                if !super::confirm(
                    yes,
                    &format!("take cluster `{name}` apart (instances back on the primary, replicas and proxies stopped)"),
                    &name,
                )? {
                    return Ok(exit::ERROR);
                }
                let p = Progress::new(0);
                let r = cluster::destroy(&home, &name, &|e| p.event(e)).await;
                p.finish();
                r?;
                eprintln!("cluster `{name}` is gone; its server is standalone again");
            }
        }
        Ok(exit::OK)
    }
}

fn print_status(s: &cluster::ClusterStatus) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    output::table(
        &[
            "node",
            "as",
            "role",
            "read_only",
            "io",
            "sql",
            "lag (s)",
            "position",
            "state",
        ],
        s.databases
            .iter()
            .map(|d| {
                let st = d.state.as_ref();
                vec![
                    d.node.clone(),
                    d.member_as.clone(),
                    opt(st.and_then(|x| x.role).map(|r| r.as_str().to_string())),
                    opt(st.and_then(|x| x.read_only).map(|b| b.to_string())),
                    opt(st.and_then(|x| x.io_running).map(|b| b.to_string())),
                    opt(st.and_then(|x| x.sql_running).map(|b| b.to_string())),
                    opt(st.and_then(|x| x.lag_seconds).map(|l| format!("{l:.1}"))),
                    opt(st.and_then(|x| x.position.clone())),
                    d.error.clone().unwrap_or_else(|| "ok".into()),
                ]
            })
            .collect(),
    );
    output::table(
        &["proxy", "haproxy", "keepalived", "VIP", "backends"],
        s.proxies
            .iter()
            .map(|p| {
                vec![
                    p.node.clone(),
                    if p.haproxy_running {
                        "running"
                    } else {
                        "stopped"
                    }
                    .into(),
                    if p.keepalived_running {
                        "running"
                    } else {
                        "stopped"
                    }
                    .into(),
                    if p.holds_vip { "holds it" } else { "-" }.into(),
                    p.backends
                        .iter()
                        .map(|b| format!("{}/{} {}", b.listener, b.server, b.status))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            })
            .collect(),
    );
    if s.problems.is_empty() {
        eprintln!("cluster `{}` is healthy", s.cluster.name);
    } else {
        eprintln!("cluster `{}` is degraded:", s.cluster.name);
        for p in &s.problems {
            eprintln!("  - {p}");
        }
    }
}
