//! Database clusters and their nodes (read-only here; `vmoodle cluster create` builds them).

use super::{read_err, Api, ApiResult, Problem};
use crate::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

pub fn add(api: Api) -> Api {
    api.op::<__path_list, _, _>(list)
        .op::<__path_status, _, _>(status)
        .op::<__path_nodes, _, _>(nodes)
}

/// A node of a cluster and its part in it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub node: String,
    /// `primary`, `replica` or `proxy`.
    pub role: String,
}

/// A database server that became a cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    pub name: String,
    pub dbserver: String,
    /// `building`, `active` or `destroying`.
    pub state: String,
    pub vip: String,
    pub interface: String,
    pub writer_port: u16,
    pub reader_port: u16,
    pub max_lag: u32,
    pub members: Vec<MemberView>,
}

/// A registered cluster node (its token is write-only, its certificate pinned).
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    pub agent_port: u16,
    pub fingerprint: String,
}

/// What every node's agent says now: per database node its role, read_only, replication
/// threads, lag and position; per proxy node HAProxy's backends and whether it holds the VIP;
/// and the problems found (empty when healthy).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    pub degraded: bool,
    #[schema(value_type = Object)]
    pub status: serde_json::Value,
}

/// Lists clusters.
#[utoipa::path(get, path = "/clusters", tag = "clusters",
    responses((status = 200, body = Vec<ClusterView>)))]
async fn list(State(state): State<AppState>) -> ApiResult<Vec<ClusterView>> {
    let reg = &state.home.registry;
    let servers = reg.dbservers().await.map_err(read_err)?;
    let all = reg.clusters().await.map_err(read_err)?;
    Ok(Json(
        all.into_iter()
            .map(|c| ClusterView {
                dbserver: servers
                    .iter()
                    .find(|s| s.id == c.dbserver_id)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                name: c.name,
                state: c.state,
                vip: c.vip,
                interface: c.interface,
                writer_port: c.writer_port,
                reader_port: c.reader_port,
                max_lag: c.max_lag,
                members: c
                    .members
                    .into_iter()
                    .map(|m| MemberView {
                        node: m.node,
                        role: m.role,
                    })
                    .collect(),
            })
            .collect(),
    ))
}

/// Asks every node of a cluster how it is.
#[utoipa::path(get, path = "/clusters/{name}/status", tag = "clusters",
    params(("name" = String, Path)),
    responses((status = 200, body = StatusView), (status = 404, body = Problem)))]
async fn status(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<StatusView> {
    let s = vmoodle_ops::cluster::status(&state.home, &name)
        .await
        .map_err(read_err)?;
    Ok(Json(StatusView {
        degraded: s.degraded(),
        status: serde_json::to_value(&s).map_err(read_err)?,
    }))
}

/// Lists the registered cluster nodes.
#[utoipa::path(get, path = "/nodes", tag = "clusters",
    responses((status = 200, body = Vec<NodeView>)))]
async fn nodes(State(state): State<AppState>) -> ApiResult<Vec<NodeView>> {
    let all = state
        .home
        .registry
        .cluster_nodes()
        .await
        .map_err(read_err)?;
    Ok(Json(
        all.into_iter()
            .map(|n| NodeView {
                name: n.name,
                address: n.address,
                agent_port: n.agent_port,
                fingerprint: n.fingerprint,
            })
            .collect(),
    ))
}
