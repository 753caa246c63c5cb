//! PostgreSQL on a database node: the probe behind the health checks, the facts `cluster create`
//! checks, and the seeding of a standby with pg_basebackup run here against the primary.
//! (Filled in by the engine work; signatures are the contract with `server`.)

use crate::config::{AgentHome, DatabaseConfig};
use crate::protocol::{DbState, ReplicaPlan, ServerFacts};
use anyhow::Result;

/// Probes the local server once (pg_is_in_recovery, pg_stat_wal_receiver, replay LSN and lag). A server that
/// does not answer gives `role: Some(Role::Down)`.
pub async fn probe(cfg: &DatabaseConfig) -> DbState {
    let _ = cfg;
    DbState::default()
}

pub async fn facts(cfg: &DatabaseConfig) -> Result<ServerFacts> {
    let _ = cfg;
    anyhow::bail!("not yet")
}

/// Seeds this node with `pg_basebackup -X stream -R -C -S SLOT` from the primary and starts it
/// as a standby.
pub async fn seed(cfg: &DatabaseConfig, home: &AgentHome, plan: &ReplicaPlan) -> Result<()> {
    let _ = (cfg, home, plan);
    anyhow::bail!("not yet")
}

/// Stops the server and puts back the data directory and managed configuration it had before
/// the last seed (nothing to do when there was none).
pub async fn undo_seed(cfg: &DatabaseConfig, home: &AgentHome) -> Result<()> {
    let _ = (cfg, home);
    anyhow::bail!("not yet")
}
