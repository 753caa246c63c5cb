//! `cluster destroy`: instances repointed to the primary first, then the proxies stopped, the
//! replicas put back as they were before their seed (their seeded data kept aside by the agent),
//! the slots and the replication account dropped, and the register entry removed. Each step can
//! be repeated: a destroy that stopped half-way is finished by running it again.

use anyhow::{bail, Context, Result};

use super::{node_client, republish};
use crate::journal::{Events, Journal};
use crate::Home;

pub async fn destroy(home: &Home, name: &str, events: Events<'_>) -> Result<()> {
    let mut c = home.registry.cluster(name).await?;
    // Only the first primary's data is the server's own (every other node goes back to what it
    // was before its seed): after a switchover, switch back to it first.
    let primary = c
        .members
        .iter()
        .find(|m| m.role == "primary")
        .map(|m| m.node_id);
    if let (Some(origin), Some(p)) = (c.origin_node_id, primary) {
        if origin != p {
            let Some(o) = c.members.iter().find(|m| m.node_id == origin) else {
                bail!("the first primary of cluster `{name}` is no longer one of its members: take it apart by hand");
            };
            let o = o.node.clone();
            super::switchover(home, name, &o, events)
                .await
                .with_context(|| format!("switching back to `{o}`, the first primary, before taking the cluster apart"))?;
            c = home.registry.cluster(name).await?;
        }
    }
    let members = c.members.clone();
    let mut j = Journal::start(home, "cluster-destroy", name, 4 + members.len(), events).await?;
    let r = async {
        home.registry.set_cluster_state(c.id, "destroying").await?;
        j.step("repoint").await?;
        home.registry
            .set_dbserver_endpoint(
                c.dbserver_id,
                &c.orig_host,
                c.orig_port,
                c.orig_socket.as_deref(),
                None,
                "standalone",
            )
            .await?;
        let server = home.registry.dbserver_by_id(c.dbserver_id).await?;
        republish(home, &server).await?;
        for m in members.iter().filter(|m| m.role == "proxy") {
            j.step(&format!("proxy {}", m.node)).await?;
            node_client(home, &m.node)
                .await?
                .remove_proxy()
                .await
                .with_context(|| format!("stopping the proxies on `{}`", m.node))?;
        }
        for m in members.iter().filter(|m| m.role == "replica") {
            j.step(&format!("replica {}", m.node)).await?;
            node_client(home, &m.node)
                .await?
                .undo_replica()
                .await
                .with_context(|| format!("taking replica `{}` apart", m.node))?;
            if let Some(slot) = &m.slot {
                super::drop_slot(home, &server, slot).await?;
            }
        }
        j.step("replication account").await?;
        let admin = crate::dbservers::admin_spec(home, &server)?;
        vmoodle_dbserver::admin::drop_user(&admin, &c.repl_user).await?;
        j.step("unregister").await?;
        home.registry.remove_cluster(c.id).await?;
        anyhow::Ok(())
    }
    .await;
    match r {
        Ok(()) => {
            j.finish().await?;
            Ok(())
        }
        Err(e) => {
            let _ = j.fail(&format!("{e:#}")).await;
            Err(e.context(format!(
                "cluster `{name}` was not fully taken apart; fix the cause and run `vmoodle cluster destroy {name}` again"
            )))
        }
    }
}
