//! `cluster create`: each step journaled before it acts, and undone in reverse when a later one
//! fails (replicas put back as they were, proxies stopped, host files back as they were).

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use vmoodle_agent::{ReplicaPlan, Role};
use vmoodle_core::{Binding, Secret};
use vmoodle_dbserver::ConnSpec;
use vmoodle_registry::{Cluster, NewCluster};

use super::{republish, Plan};
use crate::journal::{Events, Journal, Undo};
use crate::Home;

/// Builds the cluster `plan` describes. Returns the cluster as registered.
pub async fn create(home: &Home, plan: &Plan, events: Events<'_>) -> Result<Cluster> {
    let total = 5 + plan.replicas.len() + plan.proxies.len();
    let mut j = Journal::start(home, "cluster-create", &plan.req.name, total, events).await?;
    let r = build(home, plan, &mut j).await;
    j.conclude(r, |_| {
        format!(
            "cluster `{}` was not built; every step was undone and `{}` is standalone as before",
            plan.req.name, plan.server.name
        )
    })
    .await
}

async fn build(home: &Home, plan: &Plan, j: &mut Journal<'_>) -> Result<Cluster> {
    let server = &plan.server;
    let admin = crate::dbservers::admin_spec(home, server)?;
    let repl_password = Secret::random_password();

    j.step("register").await?;
    j.intend(Undo::RemoveCluster {
        name: plan.req.name.clone(),
    })
    .await?;
    let cluster = home
        .registry
        .add_cluster(&NewCluster {
            name: plan.req.name.clone(),
            dbserver_id: server.id,
            vip: plan.req.vip.clone(),
            interface: plan.req.interface.clone(),
            writer_port: plan.writer_port,
            reader_port: plan.reader_port,
            max_lag: plan.req.max_lag,
            orig_host: server.host.clone(),
            orig_port: server.port,
            orig_socket: server.socket.clone(),
            repl_user: plan.req.repl_user.clone(),
            repl_password_sealed: home
                .secrets
                .seal(&repl_password, &Binding::cluster_repl(&plan.req.name))?,
        })
        .await?;
    j.made().await?;
    home.registry
        .add_cluster_member(cluster.id, plan.primary.id, "primary", None, None)
        .await?;
    home.registry
        .set_cluster_origin(cluster.id, plan.primary.id)
        .await?;

    j.step("replication account").await?;
    if vmoodle_dbserver::admin::user_exists(&admin, &plan.req.repl_user).await? {
        bail!(
            "the account `{}` already exists on `{}`: drop it, or name another with --repl-user",
            plan.req.repl_user,
            server.name
        );
    }
    j.intend(Undo::DropUser {
        server_id: server.id,
        user: plan.req.repl_user.clone(),
    })
    .await?;
    create_repl_account(&admin, &plan.req.repl_user, &repl_password).await?;
    j.made().await?;

    for (node, server_id, slot) in &plan.replicas {
        j.step(&format!("seed {}", node.name)).await?;
        let seed = Seed {
            cluster: &cluster,
            server,
            primary: &plan.primary,
            node,
            server_id: *server_id,
            slot,
            repl_password: &repl_password,
        };
        seed_replica(home, j, &seed).await?;
    }

    let replicas: Vec<_> = plan.replicas.iter().map(|(n, _, _)| n.clone()).collect();
    for (i, node) in plan.proxies.iter().enumerate() {
        j.step(&format!("proxy {}", node.name)).await?;
        let spec = super::proxy_spec(&cluster, &plan.primary, &replicas, &plan.proxies, i);
        j.intend(Undo::RemoveProxy {
            node: node.name.clone(),
        })
        .await?;
        crate::nodes::client(home, node)?
            .apply_proxy(&spec)
            .await
            .with_context(|| format!("starting HAProxy and keepalived on `{}`", node.name))?;
        j.made().await?;
        home.registry
            .add_cluster_member(cluster.id, node.id, "proxy", None, None)
            .await?;
    }

    j.step("virtual IP").await?;
    let via_vip = |port: u16| ConnSpec {
        host: plan.vip_addr.clone(),
        port,
        socket: None,
        ..admin.clone()
    };
    wait_for_vip(home, plan).await?;
    check_writer(&via_vip(plan.writer_port), plan).await?;
    if let Err(e) = check_reader(&via_vip(plan.reader_port)).await {
        return Err(e.context(diagnose(home, plan).await));
    }

    j.step("check instances").await?;
    let instances: Vec<_> = home
        .registry
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.dbserver_id == server.id && !i.is_master)
        .collect();
    for i in &instances {
        let password = home
            .secrets
            .open(&i.dbpass_sealed, &Binding::instance_dbpass(&i.shortname))?;
        for (what, port) in [("writer", plan.writer_port), ("reader", plan.reader_port)] {
            let spec = ConnSpec {
                user: i.dbuser.clone(),
                password: password.clone(),
                ..via_vip(port)
            };
            let c = vmoodle_dbserver::connect(&spec, Some(&i.dbname))
                .await
                .with_context(|| {
                    format!(
                        "instance `{}` cannot reach its database through the {what} port {}:{port}; its host file was left as it was",
                        i.shortname, plan.vip_addr
                    )
                })?;
            vmoodle_dbserver::close(c).await;
        }
    }

    j.step("repoint").await?;
    j.intend(Undo::RestoreEndpoint {
        server_id: server.id,
        host: server.host.clone(),
        port: server.port,
        socket: server.socket.clone(),
    })
    .await?;
    home.registry
        .set_dbserver_endpoint(
            server.id,
            &plan.vip_addr,
            plan.writer_port,
            None,
            Some((&plan.vip_addr, plan.reader_port)),
            "cluster",
        )
        .await?;
    let s = home.registry.dbserver_by_id(server.id).await?;
    republish(home, &s).await?;
    j.made().await?;

    j.step("activate").await?;
    home.registry
        .set_cluster_state(cluster.id, "active")
        .await?;
    Ok(home.registry.cluster(&plan.req.name).await?)
}

/// One replica to seed from the cluster's primary.
pub(super) struct Seed<'a> {
    pub cluster: &'a Cluster,
    pub server: &'a vmoodle_registry::DbServer,
    pub primary: &'a vmoodle_registry::ClusterNode,
    pub node: &'a vmoodle_registry::ClusterNode,
    pub server_id: u32,
    pub slot: &'a str,
    pub repl_password: &'a Secret,
}

/// Seeds one replica through the agents (journaled: its slot and its seed are undone when a
/// later step fails) and registers it as a member of the cluster.
pub(super) async fn seed_replica(home: &Home, j: &mut Journal<'_>, s: &Seed<'_>) -> Result<()> {
    let pg = !s.server.kind.is_mysql_family();
    let c = crate::nodes::client(home, s.node)?;
    if pg {
        j.intend(Undo::DropSlot {
            server_id: s.server.id,
            slot: s.slot.to_string(),
        })
        .await?;
        j.made().await?;
    }
    j.intend(Undo::UndoReplica {
        node: s.node.name.clone(),
    })
    .await?;
    let rp = ReplicaPlan {
        primary_host: s.primary.address.clone(),
        primary_port: s.cluster.orig_port,
        repl_user: s.cluster.repl_user.clone(),
        repl_password: s.repl_password.clone(),
        server_id: Some(s.server_id),
        slot: pg.then(|| s.slot.to_string()),
        application_name: s.node.name.clone(),
    };
    let st = c
        .seed_replica(&rp, &crate::nodes::client(home, s.primary)?)
        .await
        .with_context(|| format!("seeding replica `{}`", s.node.name))?;
    j.made().await?;
    let db = st.database.unwrap_or_default();
    if db.role != Some(Role::Replica) {
        bail!(
            "node `{}` was seeded but says it is {} rather than a replica",
            s.node.name,
            db.role.map_or("unknown", Role::as_str)
        );
    }
    home.registry
        .add_cluster_member(
            s.cluster.id,
            s.node.id,
            "replica",
            Some(i64::from(s.server_id)),
            pg.then_some(s.slot),
        )
        .await?;
    Ok(())
}

async fn create_repl_account(admin: &ConnSpec, user: &str, password: &Secret) -> Result<()> {
    let mut stmts = vmoodle_dbserver::create_user_statements(admin.kind, user, password, None)
        .map_err(|e| anyhow::anyhow!(e))?;
    if admin.kind.is_mysql_family() {
        stmts.push(format!(
            "GRANT REPLICATION SLAVE ON *.* TO {}@'%'",
            vmoodle_dbserver::quote_literal(admin.kind, user)
        ));
    } else {
        stmts.push(format!(
            "ALTER ROLE {} REPLICATION",
            vmoodle_dbserver::quote_ident(admin.kind, user)
        ));
    }
    vmoodle_dbserver::admin::run(admin, None, "creating the replication account", &stmts)
        .await
        .context("creating the replication account (the administrator account needs the right to grant replication: on PostgreSQL 15 a superuser)")?;
    Ok(())
}

/// Waits (15 s) until one proxy node holds the virtual IP.
async fn wait_for_vip(home: &Home, plan: &Plan) -> Result<()> {
    let start = Instant::now();
    loop {
        for p in &plan.proxies {
            if let Ok(s) = crate::nodes::client(home, p)?.proxy_status().await {
                if s.holds_vip {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!(
                "no proxy node took the virtual IP {} within 15 s: check that {} exists on every proxy node and that VRRP (IP protocol 112) passes between them",
                plan.req.vip,
                plan.req.interface
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the proxies and the replicas' agents say, for an error message.
async fn diagnose(home: &Home, plan: &Plan) -> String {
    let mut out = Vec::new();
    for p in &plan.proxies {
        match crate::nodes::client(home, p) {
            Ok(c) => match c.proxy_status().await {
                Ok(s) => out.push(format!(
                    "{}: {}",
                    p.name,
                    s.backends
                        .iter()
                        .map(|b| format!(
                            "{}/{} {} {}",
                            b.listener, b.server, b.status, b.check_status
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(e) => out.push(format!("{}: {e:#}", p.name)),
            },
            Err(e) => out.push(format!("{}: {e:#}", p.name)),
        }
    }
    for (n, _, _) in &plan.replicas {
        if let Ok(c) = crate::nodes::client(home, n) {
            let code = c
                .check(&format!("/replica?max_lag={}", plan.req.max_lag))
                .await
                .map_or_else(|e| format!("{e:#}"), |c| c.to_string());
            let st = c
                .status()
                .await
                .ok()
                .and_then(|s| s.database)
                .map(|d| serde_json::to_string(&d).unwrap_or_default())
                .unwrap_or_default();
            out.push(format!("{} /replica: {code} {st}", n.name));
        }
    }
    format!("what the nodes say: {}", out.join("; "))
}

async fn one_value(spec: &ConnSpec, sql: &str) -> Result<String> {
    let mut c = vmoodle_dbserver::connect(spec, None).await?;
    let v = c.column(sql, &[]).await;
    vmoodle_dbserver::close(c).await;
    v?.into_iter().next().context("the query gave no row")
}

/// The writer port must reach the primary (the server the replicas follow).
async fn check_writer(spec: &ConnSpec, plan: &Plan) -> Result<()> {
    if spec.kind.is_mysql_family() {
        let id = one_value(spec, "SELECT CAST(@@server_id AS CHAR)").await?;
        let want = plan
            .primary_facts
            .settings
            .get("server_id")
            .cloned()
            .unwrap_or_default();
        if id != want {
            bail!(
                "the writer port {}:{} reaches server_id {id}, not the primary's {want}",
                spec.host,
                spec.port
            );
        }
    } else {
        let rec = one_value(spec, "SELECT pg_is_in_recovery()::text").await?;
        if rec != "false" {
            bail!(
                "the writer port {}:{} reaches a standby, not the primary",
                spec.host,
                spec.port
            );
        }
    }
    Ok(())
}

/// The reader port must reach a replica once the checks have settled (they need two passes).
async fn check_reader(spec: &ConnSpec) -> Result<()> {
    let sql = if spec.kind.is_mysql_family() {
        "SELECT IF(@@read_only, '1', '0')"
    } else {
        "SELECT CASE WHEN pg_is_in_recovery() THEN '1' ELSE '0' END"
    };
    let start = Instant::now();
    loop {
        match one_value(spec, sql).await {
            Ok(v) if v == "1" => return Ok(()),
            r => {
                if start.elapsed() > Duration::from_secs(15) {
                    bail!(
                        "the reader port {}:{} does not reach a replica after 15 s ({})",
                        spec.host,
                        spec.port,
                        match r {
                            Ok(_) => "it reaches the primary".to_string(),
                            Err(e) => format!("{e:#}"),
                        }
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
