//! HAProxy and keepalived on a proxy node: configuration rendered from a `ProxySpec` and the
//! node's own paths, checked (`haproxy -c`), written atomically, started or reloaded without
//! dropping listeners; status from HAProxy's admin socket and the interface's addresses.
//! (Filled in by the proxy work; signatures are the contract with `server`.)

use anyhow::Result;

use crate::config::{AgentHome, ProxyConfig};
use crate::protocol::{ProxySpec, ProxyStatus};

/// Writes, checks and (re)starts HAProxy and keepalived for `spec`; answers once no HAProxy
/// check is still initialising.
pub async fn apply(cfg: &ProxyConfig, home: &AgentHome, spec: &ProxySpec) -> Result<ProxyStatus> {
    let _ = (cfg, home, spec);
    anyhow::bail!("not yet")
}

/// Stops keepalived (the VIP goes) and HAProxy, and puts back the configuration files they had
/// before the first `apply`.
pub async fn remove(cfg: &ProxyConfig, home: &AgentHome) -> Result<()> {
    let _ = (cfg, home);
    anyhow::bail!("not yet")
}

pub async fn status(cfg: &ProxyConfig, home: &AgentHome) -> Result<ProxyStatus> {
    let _ = (cfg, home);
    anyhow::bail!("not yet")
}
