//! Keeps this node's hosts/ (and hook.php) in step with the register. Every change of instances
//! or database servers bumps the register's generation number (a trigger, on SQLite and
//! PostgreSQL alike); polling it every second is one tiny query, and republishing on a change
//! puts a change made on any node into this node's host files within about a second.
//!
//! Republishing writes every host file atomically from the register and removes the files of
//! hosts no longer registered (`publish::publish_all`), so a missed generation, a file edited
//! by hand or one left by a crash is mended at the next change too.

use crate::AppState;
use std::time::Duration;
use tokio::sync::watch;

/// How often the generation number is read.
pub const POLL: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true. Publishes once at start (the register may have changed while
/// this daemon was down), then on every change of the generation number.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut seen: Option<i64> = None;
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let generation = match state.home.registry.generation().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("host-file sync: reading the generation: {e}");
                continue;
            }
        };
        if seen == Some(generation) {
            continue;
        }
        match vmoodle_ops::publish::publish_all(&state.home).await {
            Ok(r) => {
                tracing::debug!(
                    generation,
                    written = r.written.len(),
                    removed = r.removed.len(),
                    "host files republished"
                );
                seen = Some(generation);
            }
            // Tried again at the next tick.
            Err(e) => tracing::warn!("host-file sync: publishing: {e:#}"),
        }
    }
}
