//! Cluster nodes: register a node's agent (its certificate pinned after the operator's
//! fingerprint check, its token sealed), list, check and remove them, and the client that
//! reaches a registered node.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use vmoodle_agent::client::{fetch_certificate, AgentClient};
use vmoodle_agent::identity::{fingerprint_pem, normalise_fingerprint};
use vmoodle_agent::{Health, NodeStatus};
use vmoodle_core::{validate, Binding, Secret};
use vmoodle_registry::{ClusterNode, NewClusterNode};

use crate::Home;

/// What `node add` was given.
#[derive(Debug, Clone)]
pub struct AddNode {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub token: Secret,
    /// The certificate fingerprint `vmoodle agent init` printed on the node (SHA-256). Without
    /// it the certificate is trusted on first use and its fingerprint shown.
    pub fingerprint: Option<String>,
}

/// A registered node and what its agent said when it was checked.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: ClusterNode,
    pub health: Option<Health>,
    pub status: Option<NodeStatus>,
    pub error: Option<String>,
}

pub async fn add(home: &Home, a: AddNode) -> Result<(ClusterNode, NodeStatus)> {
    validate::object_name("node name", &a.name)?;
    validate::db_host(&a.address).map_err(|e| anyhow::anyhow!("node address: {e}"))?;
    if a.port == 0 {
        bail!("--port 0 is not a port: give the agent's port (default 8008)");
    }
    if a.token.expose().trim().is_empty() {
        bail!("the agent token is empty: give the token `vmoodle agent init` printed on the node");
    }
    if home.registry.find_cluster_node(&a.name).await?.is_some() {
        bail!(
            "node `{}` is already registered\nhint: `vmoodle node show {}`",
            a.name,
            a.name
        );
    }
    let (address, port) = (a.address.clone(), a.port);
    let cert = tokio::task::spawn_blocking(move || fetch_certificate(&address, port))
        .await
        .context("fetching the agent's certificate")??;
    let fp = fingerprint_pem(cert.as_bytes())?;
    if let Some(want) = &a.fingerprint {
        if normalise_fingerprint(want) != normalise_fingerprint(&fp) {
            bail!(
                "the agent at {}:{} presents a certificate with fingerprint {fp}, not the {want} given with --fingerprint: \
                 this may not be the node you think (or its agent was re-initialised); nothing was registered",
                a.address,
                a.port
            );
        }
    }
    let token = Secret::new(a.token.expose().trim());
    let client = AgentClient::new(&a.name, &a.address, a.port, &cert, token.clone())?;
    let status = client
        .status()
        .await
        .context("checking the token with the agent; nothing was registered")?;
    let node = home
        .registry
        .add_cluster_node(&NewClusterNode {
            name: a.name.clone(),
            address: a.address.clone(),
            agent_port: a.port,
            token_sealed: home.secrets.seal(&token, &Binding::node_token(&a.name))?,
            cert_pem: cert,
            fingerprint: fp,
        })
        .await?;
    Ok((node, status))
}

/// The client of a registered node.
pub fn client(home: &Home, n: &ClusterNode) -> Result<AgentClient> {
    let token = home
        .secrets
        .open(&n.token_sealed, &Binding::node_token(&n.name))
        .with_context(|| format!("the agent token of node `{}`", n.name))?;
    AgentClient::new(&n.name, &n.address, n.agent_port, &n.cert_pem, token)
}

/// Asks a node's agent for its health and status (never fails: the error is in the report).
pub async fn check(home: &Home, n: ClusterNode) -> NodeReport {
    let c = match client(home, &n) {
        Ok(c) => c,
        Err(e) => {
            return NodeReport {
                node: n,
                health: None,
                status: None,
                error: Some(format!("{e:#}")),
            }
        }
    };
    let (health, status) = tokio::join!(c.health(), c.status());
    let error = match (&health, &status) {
        (Err(e), _) | (_, Err(e)) => Some(format!("{e:#}")),
        _ => None,
    };
    NodeReport {
        node: n,
        health: health.ok(),
        status: status.ok(),
        error,
    }
}
