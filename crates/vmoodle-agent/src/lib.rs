//! vmoodle's agent: what runs on each database and proxy node of a cluster (`vmoodle agent
//! serve`), and the client the control node reaches it with. No SSH: the control node asks the
//! agent, over HTTPS with a token, to perform local steps; HAProxy asks it whether its server is
//! the writable primary or a healthy replica, the way Patroni's REST API answers.
//!
//! - `config`: the agent's settings (agent.toml) and home;
//! - `protocol`: the JSON both sides speak;
//! - `server`: the HTTPS server, its token check and routes;
//! - `client`: the control node's side (the agent's certificate pinned, the token sealed at rest);
//! - `mariadb`, `postgres`: probes and local steps of each engine;
//! - `proxy`: HAProxy and keepalived configuration, control and status;
//! - `tls`: HTTPS with OpenSSL (also used by the daemon).

pub mod client;
pub mod config;
pub mod fsutil;
pub mod identity;
pub mod mariadb;
pub mod postgres;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod switch;
pub mod tls;

pub use config::{AgentConfig, AgentHome, DatabaseConfig, Engine, ProxyConfig};
pub use protocol::*;
