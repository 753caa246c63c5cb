//! Replicas added to and removed from a running cluster.
//!
//! `add_replica`: checks (as `create` does for each replica, plus the primary's room for one
//! more: PostgreSQL's WAL senders and slots), then one journaled job: the node seeded from a
//! hot backup of the running primary, registered, then each proxy node given the new reader
//! pool (HAProxy reloaded with its listeners kept), then a wait until every proxy sees the new
//! replica healthy. A failure undoes every step before it: the proxies get their previous
//! configuration back, the member is unregistered, the seed undone, the slot dropped.
//!
//! `remove_replica`: the proxies stop sending reads to the replica first (undone on failure,
//! so a failure leaves the cluster as it was); from then on the job only goes forward (its
//! point of no return): the node's seed undone (its server back as it was before it joined,
//! its replicated data kept aside by the agent), its slot dropped, the member unregistered.
//! An interrupted removal is finished by `jobs recover` or by running it again.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use vmoodle_core::Binding;
use vmoodle_registry::{Cluster, ClusterNode};

use super::create::{seed_replica, Seed};
use super::{engine_of, node_client, proxy_spec, Topology};
use crate::journal::{Events, Journal, Undo};
use crate::Home;

/// A checked `cluster add-replica`.
#[derive(Debug, Clone)]
pub struct ReplicaAddPlan {
    pub cluster: Cluster,
    pub topology: Topology,
    pub node: ClusterNode,
    /// MariaDB: the new replica's server_id, unique in the cluster.
    pub server_id: u32,
    /// PostgreSQL: its replication slot on the primary.
    pub slot: String,
}

fn active(c: &Cluster) -> Result<()> {
    if c.state != "active" {
        bail!(
            "cluster `{}` is `{}`, not active: finish or undo what it is doing first (`vmoodle jobs list`)",
            c.name,
            c.state
        );
    }
    Ok(())
}

/// Checks that `node` can join cluster `name` as a replica; says what to change otherwise.
pub async fn plan_replica(home: &Home, name: &str, node: &str) -> Result<ReplicaAddPlan> {
    let cluster = home.registry.cluster(name).await?;
    active(&cluster)?;
    let topology = Topology::of(home, &cluster).await?;
    let node = home
        .registry
        .find_cluster_node(node)
        .await?
        .with_context(|| {
            format!("node `{node}` is not registered\nhint: `vmoodle node add {node} --address ADDR --token-file FILE`")
        })?;
    if let Some((_, c, role)) = super::taken_nodes(home)
        .await?
        .into_iter()
        .find(|(n, _, _)| *n == node.name)
    {
        bail!(
            "node `{}` is already the {role} of cluster `{c}`; a node serves one cluster",
            node.name
        );
    }
    super::checks::by_ip(&node)?;
    let server = home.registry.dbserver_by_id(cluster.dbserver_id).await?;
    let engine = engine_of(server.kind);
    let primary_facts = crate::nodes::client(home, &topology.primary)?
        .facts()
        .await?;
    let mut problems: Vec<String> =
        super::checks::primary_problems(engine, &primary_facts, topology.replicas.len() + 1)
            .into_iter()
            .map(|p| format!("primary `{}`: {p}", topology.primary.name))
            .collect();
    let facts = crate::nodes::client(home, &node)?.facts().await?;
    problems.extend(super::checks::replica_problems(
        engine,
        &primary_facts,
        &node.name,
        &facts,
    ));
    if !problems.is_empty() {
        bail!(
            "node `{}` cannot join cluster `{name}` yet; nothing was changed. Change this first:\n  - {}",
            node.name,
            problems.join("\n  - ")
        );
    }
    let used: Vec<i64> = topology
        .replicas
        .iter()
        .filter_map(|(_, id, _)| *id)
        .chain(
            primary_facts
                .settings
                .get("server_id")
                .and_then(|v| v.parse().ok()),
        )
        .collect();
    let server_id = u32::try_from(used.iter().max().copied().unwrap_or(1) + 1)
        .context("no server_id is left for a new replica")?;
    let slot = super::slot_name(&node.name);
    Ok(ReplicaAddPlan {
        cluster,
        topology,
        node,
        server_id,
        slot,
    })
}

/// Gives every proxy node the reader pool `replicas`; the previous configuration of each is
/// journaled first, so a failure gives it back.
async fn reconfigure_proxies(
    home: &Home,
    j: &mut Journal<'_>,
    c: &Cluster,
    t: &Topology,
    replicas: &[ClusterNode],
) -> Result<()> {
    let before = t.replica_nodes();
    for (i, p) in t.proxies.iter().enumerate() {
        j.step(&format!("proxy {}", p.name)).await?;
        j.intend(Undo::ApplyProxy {
            node: p.name.clone(),
            spec: Box::new(proxy_spec(c, &t.primary, &before, &t.proxies, i)),
        })
        .await?;
        crate::nodes::client(home, p)?
            .apply_proxy(&proxy_spec(c, &t.primary, replicas, &t.proxies, i))
            .await
            .with_context(|| format!("reloading HAProxy on `{}`", p.name))?;
        j.made().await?;
    }
    Ok(())
}

/// Waits (20 s) until every proxy node's reader pool has `node` up.
async fn wait_in_reader_pool(home: &Home, t: &Topology, node: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut waiting = Vec::new();
        for p in &t.proxies {
            let st = crate::nodes::client(home, p)?.proxy_status().await;
            let line = st.as_ref().ok().and_then(|s| {
                s.backends
                    .iter()
                    .find(|b| b.listener == "reader" && b.server == node && !b.backup)
                    .cloned()
            });
            match line {
                Some(b) if b.status == "UP" => {}
                Some(b) => waiting.push(format!("{}: {} ({})", p.name, b.status, b.check_status)),
                None => waiting.push(match st {
                    Ok(_) => format!("{}: not in its reader pool", p.name),
                    Err(e) => format!("{}: {e:#}", p.name),
                }),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "replica `{node}` is not healthy in the reader pool after 20 s: {}",
                waiting.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Seeds `plan.node` as a new replica of the running cluster and adds it to the reader pool.
pub async fn add_replica(
    home: &Home,
    plan: &ReplicaAddPlan,
    events: Events<'_>,
) -> Result<Cluster> {
    let c = &plan.cluster;
    let t = &plan.topology;
    let total = 3 + t.proxies.len();
    let mut j = Journal::start(home, "cluster-add-replica", &c.name, total, events).await?;
    let r = async {
        let server = home.registry.dbserver_by_id(c.dbserver_id).await?;
        let repl_password = home
            .secrets
            .open(&c.repl_password_sealed, &Binding::cluster_repl(&c.name))?;
        j.step(&format!("seed {}", plan.node.name)).await?;
        j.intend(Undo::RemoveClusterMember {
            cluster: c.name.clone(),
            node: plan.node.name.clone(),
            role: "replica".into(),
        })
        .await?;
        seed_replica(
            home,
            &mut j,
            &Seed {
                cluster: c,
                server: &server,
                primary: &t.primary,
                node: &plan.node,
                server_id: plan.server_id,
                slot: &plan.slot,
                repl_password: &repl_password,
            },
        )
        .await?;
        j.made().await?;
        let mut replicas = t.replica_nodes();
        replicas.push(plan.node.clone());
        reconfigure_proxies(home, &mut j, c, t, &replicas).await?;
        j.step("reader pool").await?;
        wait_in_reader_pool(home, t, &plan.node.name).await?;
        anyhow::Ok(())
    }
    .await;
    j.conclude(r, |_| {
        format!(
            "`{}` did not join cluster `{}`; every step was undone and the cluster is as it was",
            plan.node.name, c.name
        )
    })
    .await?;
    Ok(home.registry.cluster(&c.name).await?)
}

/// What a removal past its point of no return still has to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RemovePlan {
    cluster: String,
    node: String,
    slot: Option<String>,
}

/// Takes replica `node` out of cluster `name`: out of the reader pool first, then its server put
/// back as it was before it joined.
pub async fn remove_replica(
    home: &Home,
    name: &str,
    node: &str,
    events: Events<'_>,
) -> Result<Cluster> {
    let c = home.registry.cluster(name).await?;
    active(&c)?;
    let t = Topology::of(home, &c).await?;
    let Some((_, _, slot)) = t.replicas.iter().find(|(n, _, _)| n.name == node).cloned() else {
        let names: Vec<_> = t.replicas.iter().map(|(n, _, _)| n.name.as_str()).collect();
        bail!(
            "node `{node}` is not a replica of cluster `{name}`; its replicas: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if t.replicas
        .iter()
        .any(|(n, _, _)| n.name == node && c.origin_node_id == Some(n.id))
    {
        bail!(
            "`{node}` was the primary of cluster `{name}` when it was built: its data is the server's own, so it cannot leave; switch back to it (`vmoodle cluster switchover {name} --to {node}`) or destroy the cluster"
        );
    }
    let keep: Vec<ClusterNode> = t
        .replica_nodes()
        .into_iter()
        .filter(|n| n.name != node)
        .collect();
    let total = 3 + t.proxies.len();
    let mut j = Journal::start(home, "cluster-remove-replica", name, total, events).await?;
    let r = async {
        reconfigure_proxies(home, &mut j, &c, &t, &keep).await?;
        let plan = RemovePlan {
            cluster: name.to_string(),
            node: node.to_string(),
            slot,
        };
        j.go_forward(&plan).await?;
        remove_forward(home, &mut j, &plan).await
    }
    .await;
    j.conclude(r, |forward| {
        if forward {
            format!(
                "replica `{node}` no longer serves reads, but taking it apart stopped half-way; fix the cause and run `vmoodle cluster remove-replica {name} {node}` again"
            )
        } else {
            format!(
                "replica `{node}` was not removed; the proxies were given their previous configuration and cluster `{name}` is as it was"
            )
        }
    })
    .await?;
    Ok(home.registry.cluster(name).await?)
}

/// The steps past the point of no return; each is idempotent.
async fn remove_forward(home: &Home, j: &mut Journal<'_>, plan: &RemovePlan) -> Result<()> {
    let c = home.registry.cluster(&plan.cluster).await?;
    let step = format!("take apart {}", plan.node);
    if !j.did_step(&step) {
        j.step(&step).await?;
        node_client(home, &plan.node)
            .await?
            .undo_replica()
            .await
            .with_context(|| format!("taking replica `{}` apart", plan.node))?;
    }
    if let Some(slot) = &plan.slot {
        if !j.did_step("drop slot") {
            j.step("drop slot").await?;
            let server = home.registry.dbserver_by_id(c.dbserver_id).await?;
            super::drop_slot(home, &server, slot).await?;
        }
    }
    j.step("unregister").await?;
    let n = home.registry.cluster_node(&plan.node).await?;
    home.registry
        .remove_cluster_member(c.id, n.id, "replica")
        .await?;
    Ok(())
}

/// Finishes a removal found past its point of no return (`jobs recover`).
pub async fn finish_remove_replica(home: &Home, mut j: Journal<'_>) -> Result<()> {
    let Some(plan) = j.forward_plan::<RemovePlan>() else {
        let msg = "the remove-replica job has no readable plan";
        j.fail(msg).await;
        bail!(msg);
    };
    let r = remove_forward(home, &mut j, &plan).await;
    j.conclude(r, |_| "finishing the removal of a replica".into())
        .await
}

/// Rebuilds replica `node` of cluster `name` from a fresh hot backup of the primary: out of the
/// reader pool first, its slot dropped (PostgreSQL), seeded again (the agent keeps what it put
/// aside the first time, so a later removal still gives the node its own data back), back in the
/// reader pool once healthy. A failure gives the proxies their previous configuration back.
pub async fn reseed_replica(
    home: &Home,
    name: &str,
    node: &str,
    events: Events<'_>,
) -> Result<Cluster> {
    let c = home.registry.cluster(name).await?;
    active(&c)?;
    let t = Topology::of(home, &c).await?;
    let Some((n, server_id, slot)) = t.replicas.iter().find(|(n, _, _)| n.name == node).cloned()
    else {
        let names: Vec<_> = t.replicas.iter().map(|(n, _, _)| n.name.as_str()).collect();
        bail!(
            "node `{node}` is not a replica of cluster `{name}`; its replicas: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if c.origin_node_id == Some(n.id) {
        bail!(
            "`{node}` was the primary of cluster `{name}` when it was built and holds the server's own data: it is not reseeded; switch back to it (`vmoodle cluster switchover {name} --to {node}`) first"
        );
    }
    let server = home.registry.dbserver_by_id(c.dbserver_id).await?;
    let pg = !server.kind.is_mysql_family();
    let server_id = match server_id {
        Some(id) => u32::try_from(id).context("the replica's server_id is out of range")?,
        None if pg => 0,
        None => bail!("replica `{node}` has no server_id in the register"),
    };
    let all = t.replica_nodes();
    let keep: Vec<ClusterNode> = all.iter().filter(|x| x.name != node).cloned().collect();
    let total = 3 + 2 * t.proxies.len();
    let mut j = Journal::start(home, "cluster-reseed", name, total, events).await?;
    let r = async {
        reconfigure_proxies(home, &mut j, &c, &t, &keep).await?;
        j.step(&format!("seed {node}")).await?;
        if let (true, Some(slot)) = (pg, &slot) {
            // Its old slot holds WAL for the broken standby; pg_basebackup -C makes a new one.
            super::drop_slot(home, &server, slot).await?;
        }
        let repl_password = home
            .secrets
            .open(&c.repl_password_sealed, &Binding::cluster_repl(&c.name))?;
        let plan = vmoodle_agent::ReplicaPlan {
            primary_host: t.primary.address.clone(),
            primary_port: c.orig_port,
            repl_user: c.repl_user.clone(),
            repl_password,
            server_id: (!pg).then_some(server_id),
            slot: if pg { slot.clone() } else { None },
            application_name: node.to_string(),
        };
        let st = crate::nodes::client(home, &n)?
            .seed_replica(&plan, &crate::nodes::client(home, &t.primary)?)
            .await
            .with_context(|| format!("reseeding `{node}`"))?;
        let role = st.database.and_then(|d| d.role);
        if role != Some(vmoodle_agent::Role::Replica) {
            bail!(
                "`{node}` was reseeded but says it is {} rather than a replica",
                role.map_or("unknown", vmoodle_agent::Role::as_str)
            );
        }
        for (i, p) in t.proxies.iter().enumerate() {
            j.step(&format!("proxy {} again", p.name)).await?;
            crate::nodes::client(home, p)?
                .apply_proxy(&proxy_spec(&c, &t.primary, &all, &t.proxies, i))
                .await
                .with_context(|| format!("reloading HAProxy on `{}`", p.name))?;
        }
        j.step("reader pool").await?;
        wait_in_reader_pool(home, &t, node).await
    }
    .await;
    j.conclude(r, |_| {
        format!(
            "`{node}` was not reseeded; the proxies have their previous configuration back (a replica that stays broken stays out of the reader pool by its health check); fix the cause and run `vmoodle cluster reseed {name} {node}` again"
        )
    })
    .await?;
    Ok(home.registry.cluster(name).await?)
}
