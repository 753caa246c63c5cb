//! Cluster nodes (the `cluster_nodes` table): where each node's agent listens, its pinned certificate,
//! and its sealed token.

use super::{q, Registry, RegistryError, Result};
use serde::Serialize;
use sqlx::Row;
use vmoodle_core::now_unix;

#[derive(Debug, Clone, Serialize)]
pub struct ClusterNode {
    pub id: i64,
    pub name: String,
    pub address: String,
    pub agent_port: u16,
    #[serde(skip)]
    pub token_sealed: String,
    #[serde(skip)]
    pub cert_pem: String,
    pub fingerprint: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Fields of a new node.
#[derive(Debug, Clone)]
pub struct NewClusterNode {
    pub name: String,
    pub address: String,
    pub agent_port: u16,
    pub token_sealed: String,
    pub cert_pem: String,
    pub fingerprint: String,
}

fn node_from_row(r: &sqlx::any::AnyRow) -> Result<ClusterNode> {
    let get = q("reading a node");
    let port: i64 = r.try_get("agent_port").map_err(q("reading a node"))?;
    Ok(ClusterNode {
        id: r.try_get("id").map_err(q("reading a node"))?,
        name: r.try_get("name").map_err(q("reading a node"))?,
        address: r.try_get("address").map_err(q("reading a node"))?,
        agent_port: u16::try_from(port).unwrap_or(0),
        token_sealed: r.try_get("token").map_err(q("reading a node"))?,
        cert_pem: r.try_get("cert_pem").map_err(q("reading a node"))?,
        fingerprint: r.try_get("fingerprint").map_err(q("reading a node"))?,
        created_at: r.try_get("created_at").map_err(q("reading a node"))?,
        updated_at: r.try_get("updated_at").map_err(get)?,
    })
}

impl Registry {
    pub async fn add_cluster_node(&self, n: &NewClusterNode) -> Result<ClusterNode> {
        if self.find_cluster_node(&n.name).await?.is_some() {
            return Err(RegistryError::Conflict(format!(
                "node `{}` is already registered (`vmoodle node remove {}` first to replace it)",
                n.name, n.name
            )));
        }
        if let Some(other) = self
            .cluster_nodes()
            .await?
            .into_iter()
            .find(|o| o.address == n.address && o.agent_port == n.agent_port)
        {
            return Err(RegistryError::Conflict(format!(
                "{}:{} is already registered as node `{}`",
                n.address, n.agent_port, other.name
            )));
        }
        let now = now_unix();
        sqlx::query(
            "INSERT INTO cluster_nodes (name, address, agent_port, token, cert_pem, fingerprint, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&n.name)
        .bind(&n.address)
        .bind(i64::from(n.agent_port))
        .bind(&n.token_sealed)
        .bind(&n.cert_pem)
        .bind(&n.fingerprint)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("adding a node"))?;
        self.cluster_node(&n.name).await
    }

    pub async fn cluster_nodes(&self) -> Result<Vec<ClusterNode>> {
        let rows = sqlx::query("SELECT * FROM cluster_nodes ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing nodes"))?;
        rows.iter().map(node_from_row).collect()
    }

    pub async fn find_cluster_node(&self, name: &str) -> Result<Option<ClusterNode>> {
        let row = sqlx::query("SELECT * FROM cluster_nodes WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a node"))?;
        row.as_ref().map(node_from_row).transpose()
    }

    pub async fn cluster_node(&self, name: &str) -> Result<ClusterNode> {
        self.find_cluster_node(name)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                what: "node",
                name: name.into(),
                hint: "\nhint: `vmoodle node list` shows the registered nodes".into(),
            })
    }

    pub async fn remove_cluster_node(&self, name: &str) -> Result<()> {
        let n = self.cluster_node(name).await?;
        sqlx::query("DELETE FROM cluster_nodes WHERE id = $1")
            .bind(n.id)
            .execute(&self.pool)
            .await
            .map_err(q("removing a node"))?;
        Ok(())
    }
}
