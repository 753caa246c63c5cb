//! `cluster switchover`: a planned change of primary with no committed write lost.
//!
//! 1. Checks: the candidate is a replica whose replication runs within the lag bound, and every
//!    database node answers.
//! 2. The old primary is fenced: MariaDB read_only with its client sessions closed; PostgreSQL
//!    a clean shutdown. HAProxy's writer check (`/primary`) fails on it from then on.
//! 3. The candidate waits until it has applied everything the old primary committed (GTID, or
//!    the shutdown checkpoint's LSN). If it cannot, the fence is lifted and nothing changed.
//! 4. Past this point the job only goes forward (`jobs recover` finishes it): the candidate is
//!    promoted (PostgreSQL: with a slot for every server that will follow it), the register
//!    swaps the roles, the other replicas and then the old primary follow the new primary, the
//!    proxies get the new reader pool, and the writer port is checked to reach the new primary.
//!
//! Writes stall from the fence until HAProxy marks the new primary up (its agent re-probes at
//! once after the promotion; HAProxy needs two passing checks).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use vmoodle_agent::{FollowPlan, Promotion, ReplicaPlan, Role};
use vmoodle_core::Binding;
use vmoodle_dbserver::ConnSpec;
use vmoodle_registry::Cluster;

use super::{node_client, proxy_spec, slot_name, Topology};
use crate::journal::{Events, Journal, Undo};
use crate::Home;

/// How long the candidate may take to apply what the old primary committed.
const CATCH_UP_SECS: u32 = 30;

/// What a switchover past its point of no return still has to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SwitchPlan {
    cluster: String,
    old: String,
    new: String,
}

/// Switches the primary role of cluster `name` to replica `to`.
pub async fn switchover(home: &Home, name: &str, to: &str, events: Events<'_>) -> Result<Cluster> {
    let c = home.registry.cluster(name).await?;
    if c.state != "active" {
        bail!("cluster `{name}` is `{}`, not active", c.state);
    }
    let t = Topology::of(home, &c).await?;
    if t.primary.name == to {
        bail!("`{to}` is already the primary of cluster `{name}`");
    }
    if !t.replicas.iter().any(|(n, _, _)| n.name == to) {
        let names: Vec<_> = t.replicas.iter().map(|(n, _, _)| n.name.as_str()).collect();
        bail!(
            "`{to}` is not a replica of cluster `{name}`; its replicas: {}",
            names.join(", ")
        );
    }
    // Every database node must answer, the candidate must replicate within the bound; a
    // replica that is reconnecting (its primary just restarted) gets 10 s.
    let since = Instant::now();
    loop {
        let problems = readiness(home, &c, &t, to).await?;
        if problems.is_empty() {
            break;
        }
        if since.elapsed() > Duration::from_secs(10) {
            bail!(
                "cluster `{name}` cannot switch over to `{to}`; nothing was changed:\n  - {}",
                problems.join("\n  - ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    if c.origin_node_id.is_none() {
        // Built before the register kept its first primary, so never switched over (switchover
        // came with that record): the primary now is the first one.
        home.registry.set_cluster_origin(c.id, t.primary.id).await?;
    }
    let total = 5 + t.replicas.len() + t.proxies.len();
    let mut j = Journal::start(home, "cluster-switchover", name, total, events).await?;
    let plan = SwitchPlan {
        cluster: name.to_string(),
        old: t.primary.name.clone(),
        new: to.to_string(),
    };
    let r = async {
        let old = node_client(home, &plan.old).await?;
        j.step(&format!("fence {}", plan.old)).await?;
        j.intend(Undo::Unfence {
            node: plan.old.clone(),
        })
        .await?;
        let mut position = old.fence().await.context("fencing the old primary")?.position;
        j.made().await?;
        j.step(&format!("catch up {to}")).await?;
        let candidate = node_client(home, to).await?;
        // An account with READ_ONLY ADMIN (MariaDB) writes through read_only: the position is
        // read again after the catch-up, and the candidate catches up again until it holds.
        let mut tries = 0;
        loop {
            candidate
                .catch_up(&position, CATCH_UP_SECS)
                .await
                .with_context(|| format!("`{to}` catching up with {position}"))?;
            let again = old.fence().await.context("fencing the old primary")?.position;
            if again == position {
                break;
            }
            tries += 1;
            if tries >= 5 {
                bail!(
                    "the old primary `{}` still takes writes after it was made read-only ({position} then {again}): an account with READ_ONLY ADMIN or SUPER writes to it directly; stop that client and retry",
                    plan.old
                );
            }
            position = again;
        }
        j.go_forward(&plan).await?;
        switch_forward(home, &mut j, &plan).await
    }
    .await;
    let old = plan.old.clone();
    j.conclude(r, |forward| {
        if forward {
            format!(
                "`{to}` is the primary of cluster `{name}` now, but the switchover stopped before every server followed it; fix the cause and run `vmoodle jobs recover`"
            )
        } else {
            format!("cluster `{name}` did not switch over; `{old}` takes writes again as before")
        }
    })
    .await?;
    Ok(home.registry.cluster(name).await?)
}

/// What keeps the cluster from switching over to `to` now (empty: nothing).
async fn readiness(home: &Home, c: &Cluster, t: &Topology, to: &str) -> Result<Vec<String>> {
    let st = super::status(home, &c.name).await?;
    let mut problems = Vec::new();
    for d in &st.databases {
        let Some(s) = &d.state else {
            problems.push(format!(
                "{}: {}",
                d.node,
                d.error.as_deref().unwrap_or("no answer")
            ));
            continue;
        };
        if d.node == t.primary.name && s.role != Some(Role::Primary) {
            problems.push(format!(
                "{} should be the primary but is {}",
                d.node,
                s.role.map_or("unknown", Role::as_str)
            ));
        }
        if d.node == to {
            if s.role != Some(Role::Replica)
                || s.io_running != Some(true)
                || s.sql_running != Some(true)
            {
                problems.push(format!(
                    "{to} does not replicate (io {:?}, sql {:?}{})",
                    s.io_running,
                    s.sql_running,
                    s.error
                        .as_deref()
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                ));
            } else if s.lag_seconds.unwrap_or(f64::MAX) > f64::from(c.max_lag) {
                problems.push(format!(
                    "{to} lags {:.0} s behind (max {} s)",
                    s.lag_seconds.unwrap_or(-1.0),
                    c.max_lag
                ));
            }
        }
    }
    Ok(problems)
}

/// The steps past the point of no return; each can run again.
async fn switch_forward(home: &Home, j: &mut Journal<'_>, plan: &SwitchPlan) -> Result<()> {
    let c = home.registry.cluster(&plan.cluster).await?;
    let server = home.registry.dbserver_by_id(c.dbserver_id).await?;
    let pg = !server.kind.is_mysql_family();
    let nodes = home.registry.cluster_nodes().await?;
    let node = |n: &str| {
        nodes
            .iter()
            .find(|x| x.name == n)
            .cloned()
            .with_context(|| format!("node `{n}` is not registered"))
    };
    let (old, new) = (node(&plan.old)?, node(&plan.new)?);
    let new_client = crate::nodes::client(home, &new)?;

    j.step(&format!("promote {}", plan.new)).await?;
    let t = Topology::of(home, &c).await?;
    // The servers that will follow the new primary: every other replica and the old primary.
    let mut followers: Vec<_> = t
        .replicas
        .iter()
        .map(|(n, _, _)| n.clone())
        .filter(|n| n.name != plan.new && n.name != plan.old)
        .collect();
    followers.push(old.clone());
    let slots = if pg {
        followers.iter().map(|n| slot_name(&n.name)).collect()
    } else {
        Vec::new()
    };
    new_client
        .promote(&Promotion { slots })
        .await
        .with_context(|| format!("promoting `{}`", plan.new))?;

    j.step("register").await?;
    if t.primary.name == plan.old {
        let old_server_id = if pg {
            None
        } else {
            crate::nodes::client(home, &old)?
                .facts()
                .await
                .ok()
                .and_then(|f| f.settings.get("server_id").and_then(|v| v.parse().ok()))
        };
        home.registry
            .swap_cluster_primary(
                c.id,
                old.id,
                new.id,
                old_server_id,
                pg.then(|| slot_name(&old.name)).as_deref(),
            )
            .await?;
    }

    let repl_password = home
        .secrets
        .open(&c.repl_password_sealed, &Binding::cluster_repl(&c.name))?;
    for f in &followers {
        let step = format!("follow {}", f.name);
        if j.did_step(&step) {
            continue;
        }
        j.step(&step).await?;
        let fp = FollowPlan {
            plan: ReplicaPlan {
                primary_host: new.address.clone(),
                primary_port: c.orig_port,
                repl_user: c.repl_user.clone(),
                repl_password: repl_password.clone(),
                server_id: None,
                slot: pg.then(|| slot_name(&f.name)),
                application_name: f.name.clone(),
            },
            // The old primary held a slot for every replica; they live on the new one now.
            drop_slots: if pg && f.name == old.name {
                t.replicas
                    .iter()
                    .map(|(n, _, _)| slot_name(&n.name))
                    .collect()
            } else {
                Vec::new()
            },
        };
        crate::nodes::client(home, f)?
            .follow(&fp)
            .await
            .with_context(|| format!("`{}` following the new primary `{}`", f.name, new.name))?;
    }

    let c = home.registry.cluster(&plan.cluster).await?;
    let t = Topology::of(home, &c).await?;
    let replicas = t.replica_nodes();
    for (i, p) in t.proxies.iter().enumerate() {
        j.step(&format!("proxy {}", p.name)).await?;
        crate::nodes::client(home, p)?
            .apply_proxy(&proxy_spec(&c, &t.primary, &replicas, &t.proxies, i))
            .await
            .with_context(|| format!("reloading HAProxy on `{}`", p.name))?;
    }

    j.step("writer").await?;
    let ident = if pg {
        format!("false {}", new.address)
    } else {
        let id = new_client
            .facts()
            .await?
            .settings
            .get("server_id")
            .cloned()
            .unwrap_or_default();
        format!("0 {id}")
    };
    wait_writer(home, &c, &server, &ident).await
}

/// Waits (15 s) until the writer port on the VIP reaches the new primary, writable: `want` is
/// what it answers then (MariaDB `0 SERVER_ID`, PostgreSQL `false ADDRESS`).
async fn wait_writer(
    home: &Home,
    c: &Cluster,
    server: &vmoodle_registry::DbServer,
    want: &str,
) -> Result<()> {
    let admin = crate::dbservers::admin_spec(home, server)?;
    let spec = ConnSpec {
        host: super::vip_host(c),
        port: c.writer_port,
        socket: None,
        ..admin
    };
    let sql = if server.kind.is_mysql_family() {
        "SELECT CONCAT(IF(@@read_only, '1', '0'), ' ', @@server_id)"
    } else {
        "SELECT pg_is_in_recovery()::text || ' ' || host(inet_server_addr())"
    };
    let start = Instant::now();
    loop {
        let last = match vmoodle_dbserver::connect(&spec, None).await {
            Ok(mut conn) => {
                let v = conn.column(sql, &[]).await;
                vmoodle_dbserver::close(conn).await;
                match v {
                    Ok(v) => {
                        let v = v.into_iter().next().unwrap_or_default();
                        if v == want {
                            return Ok(());
                        }
                        v
                    }
                    Err(e) => format!("{e:#}"),
                }
            }
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > Duration::from_secs(15) {
            bail!(
                "the writer port {}:{} does not reach the new primary after 15 s (it answers `{last}`, not `{want}`)",
                spec.host,
                spec.port
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Finishes a switchover found past its point of no return (`jobs recover`).
pub async fn finish_switchover(home: &Home, mut j: Journal<'_>) -> Result<()> {
    let Some(plan) = j.forward_plan::<SwitchPlan>() else {
        let msg = "the switchover job has no readable plan";
        j.fail(msg).await;
        bail!(msg);
    };
    let r = switch_forward(home, &mut j, &plan).await;
    j.conclude(r, |_| "finishing a switchover".into()).await
}
