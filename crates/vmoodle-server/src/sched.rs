//! The background loops of a daemon: its heartbeat (so another node can tell it died and
//! recover its jobs), cancel requests made on other nodes, and scheduled work.

use crate::AppState;
use std::time::Duration;
use tokio::sync::watch;

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let node = vmoodle_ops::journal::node_name();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let reg = &state.home.registry;
        if n.is_multiple_of(5) {
            if let Err(e) = reg.heartbeat(&state.owner, &node, &state.cfg.listen).await {
                tracing::warn!("heartbeat: {e}");
            }
            let _ = reg.touch_jobs(&state.owner).await;
        }
        if let Ok(ids) = reg.cancel_requests(&state.owner).await {
            for id in ids {
                vmoodle_ops::cancel::request_job(id);
            }
        }
        n += 1;
    }
}
