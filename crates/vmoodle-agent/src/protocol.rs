//! What the control node and an agent say to each other (JSON over HTTPS).
//!
//! Unauthenticated (HAProxy's checks, like Patroni's REST API; they reveal only the role):
//! - `GET /health`: 200 while the agent runs, with `Health`;
//! - `GET /primary`: 200 only on a writable primary;
//! - `GET /replica?max_lag=SECONDS`: 200 only on a read-only replica whose replication runs and
//!   whose lag is at most the bound;
//! - `GET /read-only`: 200 on any server that is up and answers reads (a primary or a replica);
//!   HAProxy checks the reader pool's backup server here.
//!
//! Authenticated (`Authorization: Bearer TOKEN`):
//! - `GET /v1/status` -> `NodeStatus`
//! - `GET /v1/db/facts` -> `ServerFacts` (what `cluster create` checks)
//! - `GET /v1/db/backup` -> a hot backup of this (primary) server as a byte stream
//!   (MariaDB: `mariabackup --backup --stream=xbstream`)
//! - `POST /v1/db/replica` with `ReplicaPlan` -> `SeedTicket`; MariaDB then
//!   `POST /v1/db/replica/{ticket}/stream` with the backup stream as the body -> `NodeStatus`
//!   (PostgreSQL: the plan call itself runs pg_basebackup from the primary and answers
//!   `NodeStatus`; its ticket is "done")
//! - `POST /v1/db/replica/undo` -> stops the server and puts back the data directory and
//!   managed configuration it had before the seed
//! - `PUT /v1/proxy` with `ProxySpec` -> `ProxyStatus` (config written, checked, started or
//!   reloaded; answers once no HAProxy check is still initialising)
//! - `DELETE /v1/proxy` -> stops keepalived and HAProxy and puts back the previous configuration
//! - `GET /v1/proxy/status` -> `ProxyStatus`

use serde::{Deserialize, Serialize};
use vmoodle_core::Secret;

use crate::config::Engine;

/// The default port of the agent.
pub const DEFAULT_PORT: u16 = 8008;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub name: String,
    pub version: String,
    /// The role of the local database server, when the node has one.
    #[serde(default)]
    pub role: Option<Role>,
    /// Whether the node is a proxy node.
    pub proxy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Up and writable.
    Primary,
    /// Up, read-only and configured to replicate.
    Replica,
    /// Up and read-only, but replicating from nobody.
    Readonly,
    /// Not answering.
    Down,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Readonly => "read-only",
            Role::Down => "down",
        }
    }
}

/// What a database node says about its server (as of its last probe, at most a second or two
/// old).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DbState {
    pub role: Option<Role>,
    pub read_only: Option<bool>,
    /// MariaDB: Slave_IO_Running; PostgreSQL: a WAL receiver is streaming.
    pub io_running: Option<bool>,
    /// MariaDB: Slave_SQL_Running; PostgreSQL: replay is not paused.
    pub sql_running: Option<bool>,
    /// Seconds behind the primary (MariaDB Seconds_Behind_Master; PostgreSQL now() minus the
    /// last replayed transaction's time, 0 when receive = replay).
    pub lag_seconds: Option<f64>,
    /// MariaDB: gtid_current_pos; PostgreSQL: the current (primary) or replayed (replica) LSN.
    pub position: Option<String>,
    /// Where this replica replicates from (host:port).
    pub source: Option<String>,
    /// The last replication error, if any.
    pub error: Option<String>,
    /// Unix time (seconds) of the probe this state comes from.
    pub probed_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub database: Option<DbState>,
    #[serde(default)]
    pub proxy: Option<ProxyStatus>,
}

/// Facts about a server that `cluster create` checks before it changes anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerFacts {
    pub engine: Engine,
    /// The server's version string (`SELECT VERSION()`; PostgreSQL `server_version`).
    pub version: String,
    /// Settings by name, as the server reports them (MariaDB: log_bin, server_id,
    /// binlog_format, log_slave_updates, gtid_strict_mode, bind_address, read_only...;
    /// PostgreSQL: wal_level, max_wal_senders, max_replication_slots, wal_log_hints,
    /// data_checksums, listen_addresses, hot_standby...).
    pub settings: std::collections::BTreeMap<String, String>,
    /// PostgreSQL: the replication lines of pg_hba.conf (as pg_hba_file_rules reports them:
    /// "type database user address method").
    #[serde(default)]
    pub hba_replication: Vec<String>,
    /// Bytes the server's data takes (the data directory).
    pub data_bytes: u64,
    /// Free bytes on the file system of the data directory.
    pub free_bytes: u64,
    /// Whether the server answers at all.
    pub up: bool,
}

/// How a node becomes a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaPlan {
    /// The primary's address as the replica reaches it.
    pub primary_host: String,
    pub primary_port: u16,
    /// The replication account (only replication rights).
    pub repl_user: String,
    #[serde(with = "secret_field")]
    pub repl_password: Secret,
    /// MariaDB: this replica's server_id (unique in the cluster).
    #[serde(default)]
    pub server_id: Option<u32>,
    /// PostgreSQL: the physical replication slot pg_basebackup creates on the primary (-C -S).
    #[serde(default)]
    pub slot: Option<String>,
    /// The name the replica gives itself towards the primary (PostgreSQL application_name).
    pub application_name: String,
}

impl ReplicaPlan {
    /// Refuses values that could not come from a sane control node: they end up in SQL,
    /// configuration files and connection strings.
    pub fn check(&self) -> Result<(), String> {
        let plain = |what: &str, v: &str, extra: &[u8]| {
            if v.is_empty()
                || v.len() > 253
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b) || extra.contains(&b))
            {
                Err(format!(
                    "{what} `{}` is not allowed (letters, digits, `_ - .`{})",
                    v.escape_debug(),
                    if extra.is_empty() {
                        ""
                    } else {
                        ", `:` in an IPv6 address"
                    }
                ))
            } else {
                Ok(())
            }
        };
        plain("primary_host", &self.primary_host, b":")?;
        plain("repl_user", &self.repl_user, b"")?;
        plain("application_name", &self.application_name, b"")?;
        if let Some(s) = &self.slot {
            plain("slot", s, b"")?;
        }
        if self.primary_port == 0 {
            return Err("primary_port 0 is not a port".into());
        }
        if self.repl_password.expose().chars().any(char::is_control) {
            return Err("the replication password holds control characters".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedTicket {
    /// MariaDB: where to POST the backup stream; PostgreSQL: "done".
    pub ticket: String,
    /// PostgreSQL: the node's state once seeded.
    #[serde(default)]
    pub status: Option<NodeStatus>,
}

/// A database server behind the proxies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The node's name (HAProxy server name).
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The node's agent port (HAProxy checks /primary, /replica, /read-only there, over TLS).
    pub agent_port: u16,
    /// The node's agent certificate (PEM), as the control node pinned it: HAProxy's checks
    /// verify the agent against it (`check-ssl verify required ca-file`). None (a control node
    /// from before this field): the checks do not verify the certificate (`verify none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
}

/// The answer to `POST /v1/db/fence`: the old primary of a switchover takes no more writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fenced {
    /// What a replica must have applied to hold every committed write: MariaDB the primary's
    /// `gtid_binlog_pos`; PostgreSQL the LSN of the clean shutdown's checkpoint.
    pub position: String,
}

/// `POST /v1/db/catch-up`: wait until this replica has applied `position`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUp {
    pub position: String,
    pub timeout_secs: u32,
}

/// `POST /v1/db/promote`: this replica becomes the primary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Promotion {
    /// PostgreSQL: the physical replication slots to create on the new primary, one for each
    /// server that will follow it.
    #[serde(default)]
    pub slots: Vec<String>,
}

/// `POST /v1/db/follow`: this server (a replica of the old primary, or the old primary itself,
/// fenced) replicates from a new primary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowPlan {
    /// The new primary (`server_id` is not used: a server keeps its own).
    pub plan: ReplicaPlan,
    /// PostgreSQL: replication slots this server held as the primary, dropped once it follows.
    #[serde(default)]
    pub drop_slots: Vec<String>,
}

/// What a proxy node serves: the writer and reader ports, and its part of the VRRP pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySpec {
    /// The cluster's name (HAProxy and keepalived name things after it).
    pub cluster: String,
    /// The virtual IP with its prefix, e.g. "10.251.0.100/24".
    pub vip: String,
    /// The interface keepalived puts the VIP on.
    pub interface: String,
    /// This proxy node's own address (unicast_src_ip, and HAProxy also binds it).
    pub self_address: String,
    /// The other proxy nodes' addresses (unicast peers).
    pub peers: Vec<String>,
    /// VRRP priority of this node (the first proxy gets the higher one).
    pub priority: u8,
    /// VRRP virtual router id (1-255), the same on both proxies.
    pub router_id: u8,
    /// VRRP authentication is not used (unicast between known peers); the password-free
    /// configuration keeps secrets out of keepalived.conf.
    pub writer_port: u16,
    pub reader_port: u16,
    /// The replicas' lag bound for the reader pool (`/replica?max_lag=`).
    pub max_lag: u32,
    pub primary: Backend,
    pub replicas: Vec<Backend>,
}

/// One server line of HAProxy's `show stat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendState {
    /// "writer" or "reader".
    pub listener: String,
    pub server: String,
    /// UP, DOWN, MAINT, "UP 1/2"...
    pub status: String,
    /// L7OK, L7STS, L4CON, INI...
    pub check_status: String,
    pub backup: bool,
    pub current_sessions: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub haproxy_running: bool,
    pub keepalived_running: bool,
    /// Whether this node holds the virtual IP now.
    pub holds_vip: bool,
    pub backends: Vec<BackendState>,
}

/// An error answer: `{"error": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A secret inside a request body (sent over TLS to an authenticated agent only); never logged:
/// `Secret`'s Debug hides it.
mod secret_field {
    use serde::{Deserialize, Deserializer, Serializer};
    use vmoodle_core::Secret;

    pub fn serialize<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Secret, D::Error> {
        Ok(Secret::new(String::deserialize(de)?))
    }
}
