//! MariaDB on a database node: the probe behind the health checks, the facts `cluster create`
//! checks, the hot backup stream of a primary and the seeding of a replica from one.
//! (Filled in by the engine work; signatures are the contract with `server`.)

use anyhow::Result;
use tokio::io::AsyncRead;

use crate::config::{AgentHome, DatabaseConfig};
use crate::protocol::{DbState, ReplicaPlan, ServerFacts};

/// Probes the local server once (read_only, SHOW SLAVE STATUS, gtid_current_pos). A server that
/// does not answer gives `role: Some(Role::Down)`.
pub async fn probe(cfg: &DatabaseConfig) -> DbState {
    let _ = cfg;
    DbState::default()
}

pub async fn facts(cfg: &DatabaseConfig) -> Result<ServerFacts> {
    let _ = cfg;
    anyhow::bail!("not yet")
}

/// A running `mariabackup --backup --stream=xbstream` of the local server: its stdout, and the
/// child to wait on (its exit status says whether the stream is whole).
pub async fn backup(cfg: &DatabaseConfig, home: &AgentHome) -> Result<crate::server::Streaming> {
    let _ = (cfg, home);
    anyhow::bail!("not yet")
}

/// Seeds this node from a backup stream and starts replicating as `plan` says.
pub async fn seed(
    cfg: &DatabaseConfig,
    home: &AgentHome,
    plan: &ReplicaPlan,
    stream: impl AsyncRead + Unpin + Send,
) -> Result<()> {
    let _ = (cfg, home, plan, stream);
    anyhow::bail!("not yet")
}

/// Stops the server and puts back the data directory and managed configuration it had before
/// the last seed (nothing to do when there was none).
pub async fn undo_seed(cfg: &DatabaseConfig, home: &AgentHome) -> Result<()> {
    let _ = (cfg, home);
    anyhow::bail!("not yet")
}
