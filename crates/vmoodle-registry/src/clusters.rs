//! Database clusters (the `clusters` and `cluster_members` tables): what a database server became
//! (primary, replicas, proxies, virtual IP), and the endpoint it had before.

use super::{q, Registry, RegistryError, Result};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use vmoodle_core::now_unix;

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub id: i64,
    pub name: String,
    pub dbserver_id: i64,
    /// `building`, `active`, `destroying`.
    pub state: String,
    /// The virtual IP with its prefix (10.0.0.100/24).
    pub vip: String,
    pub interface: String,
    pub writer_port: u16,
    pub reader_port: u16,
    pub max_lag: u32,
    pub orig_host: String,
    pub orig_port: u16,
    pub orig_socket: Option<String>,
    pub repl_user: String,
    #[serde(skip)]
    pub repl_password_sealed: String,
    /// The node that was the primary when the cluster was built.
    pub origin_node_id: Option<i64>,
    pub members: Vec<Member>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub node_id: i64,
    pub node: String,
    /// `primary`, `replica`, `proxy`.
    pub role: String,
    pub server_id: Option<i64>,
    pub slot: Option<String>,
}

/// Fields of a new cluster (its members are added one by one as they are built).
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub name: String,
    pub dbserver_id: i64,
    pub vip: String,
    pub interface: String,
    pub writer_port: u16,
    pub reader_port: u16,
    pub max_lag: u32,
    pub orig_host: String,
    pub orig_port: u16,
    pub orig_socket: Option<String>,
    pub repl_user: String,
    pub repl_password_sealed: String,
}

fn port(r: &AnyRow, col: &str) -> Result<u16> {
    let v: i64 = r.try_get(col).map_err(q("reading a cluster"))?;
    Ok(u16::try_from(v).unwrap_or(0))
}

fn cluster_from_row(r: &AnyRow) -> Result<Cluster> {
    let g = || q("reading a cluster");
    let max_lag: i64 = r.try_get("max_lag").map_err(g())?;
    Ok(Cluster {
        id: r.try_get("id").map_err(g())?,
        name: r.try_get("name").map_err(g())?,
        dbserver_id: r.try_get("dbserver_id").map_err(g())?,
        state: r.try_get("state").map_err(g())?,
        vip: r.try_get("vip").map_err(g())?,
        interface: r.try_get("interface").map_err(g())?,
        writer_port: port(r, "writer_port")?,
        reader_port: port(r, "reader_port")?,
        max_lag: u32::try_from(max_lag).unwrap_or(0),
        orig_host: r.try_get("orig_host").map_err(g())?,
        orig_port: port(r, "orig_port")?,
        orig_socket: r.try_get("orig_socket").map_err(g())?,
        repl_user: r.try_get("repl_user").map_err(g())?,
        repl_password_sealed: r.try_get("repl_password").map_err(g())?,
        origin_node_id: r.try_get("origin_node_id").map_err(g())?,
        members: Vec::new(),
        created_at: r.try_get("created_at").map_err(g())?,
        updated_at: r.try_get("updated_at").map_err(g())?,
    })
}

impl Registry {
    pub async fn add_cluster(&self, c: &NewCluster) -> Result<Cluster> {
        if self.find_cluster(&c.name).await?.is_some() {
            return Err(RegistryError::Conflict(format!(
                "cluster `{}` already exists",
                c.name
            )));
        }
        let now = now_unix();
        sqlx::query(
            "INSERT INTO clusters (name, dbserver_id, state, vip, interface, writer_port, reader_port, max_lag, \
             orig_host, orig_port, orig_socket, repl_user, repl_password, created_at, updated_at) \
             VALUES ($1, $2, 'building', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&c.name)
        .bind(c.dbserver_id)
        .bind(&c.vip)
        .bind(&c.interface)
        .bind(i64::from(c.writer_port))
        .bind(i64::from(c.reader_port))
        .bind(i64::from(c.max_lag))
        .bind(&c.orig_host)
        .bind(i64::from(c.orig_port))
        .bind(c.orig_socket.clone())
        .bind(&c.repl_user)
        .bind(&c.repl_password_sealed)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("adding a cluster"))?;
        self.cluster(&c.name).await
    }

    pub async fn clusters(&self) -> Result<Vec<Cluster>> {
        let rows = sqlx::query("SELECT * FROM clusters ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing clusters"))?;
        let mut out = Vec::new();
        for r in &rows {
            let mut c = cluster_from_row(r)?;
            c.members = self.cluster_members(c.id).await?;
            out.push(c);
        }
        Ok(out)
    }

    pub async fn find_cluster(&self, name: &str) -> Result<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM clusters WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a cluster"))?;
        match row {
            Some(r) => {
                let mut c = cluster_from_row(&r)?;
                c.members = self.cluster_members(c.id).await?;
                Ok(Some(c))
            }
            None => Ok(None),
        }
    }

    pub async fn cluster(&self, name: &str) -> Result<Cluster> {
        self.find_cluster(name)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                what: "cluster",
                name: name.into(),
                hint: "\nhint: `vmoodle cluster list` shows the clusters".into(),
            })
    }

    /// The cluster a database server became, if any.
    pub async fn cluster_of_dbserver(&self, dbserver_id: i64) -> Result<Option<Cluster>> {
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM clusters WHERE dbserver_id = $1")
                .bind(dbserver_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(q("reading a cluster"))?;
        match name {
            Some(n) => self.find_cluster(&n).await,
            None => Ok(None),
        }
    }

    async fn cluster_members(&self, cluster_id: i64) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT m.node_id, n.name, m.role, m.server_id, m.slot FROM cluster_members m \
             JOIN cluster_nodes n ON n.id = m.node_id WHERE m.cluster_id = $1 ORDER BY m.role, n.name",
        )
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading a cluster's members"))?;
        rows.iter()
            .map(|r| {
                let g = || q("reading a cluster's members");
                Ok(Member {
                    node_id: r.try_get(0).map_err(g())?,
                    node: r.try_get(1).map_err(g())?,
                    role: r.try_get(2).map_err(g())?,
                    server_id: r.try_get(3).map_err(g())?,
                    slot: r.try_get(4).map_err(g())?,
                })
            })
            .collect()
    }

    pub async fn add_cluster_member(
        &self,
        cluster_id: i64,
        node_id: i64,
        role: &str,
        server_id: Option<i64>,
        slot: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO cluster_members (cluster_id, node_id, role, server_id, slot) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(cluster_id)
        .bind(node_id)
        .bind(role)
        .bind(server_id)
        .bind(slot.map(str::to_string))
        .execute(&self.pool)
        .await
        .map_err(q("adding a cluster member"))?;
        Ok(())
    }

    pub async fn remove_cluster_member(
        &self,
        cluster_id: i64,
        node_id: i64,
        role: &str,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM cluster_members WHERE cluster_id = $1 AND node_id = $2 AND role = $3",
        )
        .bind(cluster_id)
        .bind(node_id)
        .bind(role)
        .execute(&self.pool)
        .await
        .map_err(q("removing a cluster member"))?;
        Ok(())
    }

    /// Records the node that was the primary when the cluster was built.
    pub async fn set_cluster_origin(&self, id: i64, node_id: i64) -> Result<()> {
        sqlx::query("UPDATE clusters SET origin_node_id = $1, updated_at = $2 WHERE id = $3")
            .bind(node_id)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("recording a cluster's first primary"))?;
        Ok(())
    }

    /// Swaps the primary role after a switchover: `new_primary` (a replica) becomes the primary,
    /// the old primary a replica with `old_server_id` and `old_slot`, in one transaction.
    pub async fn swap_cluster_primary(
        &self,
        cluster_id: i64,
        old_primary: i64,
        new_primary: i64,
        old_server_id: Option<i64>,
        old_slot: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(q("swapping the primary"))?;
        sqlx::query(
            "UPDATE cluster_members SET role = 'replica', server_id = $1, slot = $2 \
             WHERE cluster_id = $3 AND node_id = $4 AND role = 'primary'",
        )
        .bind(old_server_id)
        .bind(old_slot.map(str::to_string))
        .bind(cluster_id)
        .bind(old_primary)
        .execute(&mut *tx)
        .await
        .map_err(q("swapping the primary"))?;
        sqlx::query(
            "UPDATE cluster_members SET role = 'primary' \
             WHERE cluster_id = $1 AND node_id = $2 AND role = 'replica'",
        )
        .bind(cluster_id)
        .bind(new_primary)
        .execute(&mut *tx)
        .await
        .map_err(q("swapping the primary"))?;
        sqlx::query("UPDATE clusters SET updated_at = $1 WHERE id = $2")
            .bind(now_unix())
            .bind(cluster_id)
            .execute(&mut *tx)
            .await
            .map_err(q("swapping the primary"))?;
        tx.commit().await.map_err(q("swapping the primary"))?;
        Ok(())
    }

    pub async fn set_cluster_state(&self, id: i64, state: &str) -> Result<()> {
        sqlx::query("UPDATE clusters SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("changing a cluster's state"))?;
        Ok(())
    }

    pub async fn remove_cluster(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("removing a cluster"))?;
        Ok(())
    }

    /// Points a database server at a new endpoint: the cluster's writer port (with its reader
    /// port for reads), or back at the server itself (`reader` none, topology standalone).
    pub async fn set_dbserver_endpoint(
        &self,
        id: i64,
        host: &str,
        port: u16,
        socket: Option<&str>,
        reader: Option<(&str, u16)>,
        topology: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE db_servers SET host = $1, port = $2, socket = $3, reader_host = $4, reader_port = $5, \
             topology = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(host)
        .bind(i64::from(port))
        .bind(socket.map(str::to_string))
        .bind(reader.map(|r| r.0.to_string()))
        .bind(reader.map(|r| i64::from(r.1)))
        .bind(topology)
        .bind(now_unix())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("repointing a database server"))?;
        Ok(())
    }
}
