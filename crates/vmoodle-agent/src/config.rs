//! The agent's own settings: `agent.toml` in the agent's home (default /etc/vmoodle-agent), with
//! the home's other files beside it: `token.sha256` (the hash of the token the control node
//! presents), `cert.pem` and `key.pem` (the agent's TLS identity, made by `vmoodle agent init`),
//! and `state/` (what the agent keeps between steps: previous configurations, moved-aside data
//! directories, its keepalived check script).
//!
//! A node is a database node (`[database]`), a proxy node (`[proxy]`), or both. Every command
//! the agent runs to start, stop or reload a service is an argv list (no shell); the defaults are
//! Debian's with systemd, and a test harness names its own.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file name of the agent's settings inside its home.
pub const CONFIG_FILE: &str = "agent.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent listens (HTTPS), e.g. "10.0.0.11:8008". HAProxy's health checks come here.
    pub listen: SocketAddr,
    /// The node's name, shown in answers and logs (default: the host name).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Mariadb,
    Postgresql,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Mariadb => "mariadb",
            Engine::Postgresql => "postgresql",
        }
    }
}

/// The local database server of a database node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub engine: Engine,
    /// The server's data directory (/var/lib/mysql, /var/lib/postgresql/15/main).
    pub datadir: PathBuf,
    /// The TCP port the server listens on (3306, 5432).
    pub port: u16,
    /// MariaDB: the socket file; PostgreSQL: the socket directory. The agent connects through it
    /// as the server's administrator (MariaDB root by unix_socket, PostgreSQL `postgres` by peer).
    pub socket: PathBuf,
    /// MariaDB: the option file every client tool and mariabackup reads first
    /// (`--defaults-file`); none: the tools' own defaults (/etc/mysql/my.cnf).
    #[serde(default)]
    pub defaults_file: Option<PathBuf>,
    /// The file the agent owns and rewrites with the settings a role needs (server_id, read_only,
    /// log_bin... for MariaDB; primary_conninfo and friends for PostgreSQL). The server's own
    /// configuration must include it (MariaDB: a file in mariadb.conf.d or `!include`;
    /// PostgreSQL: `include_if_exists` or a conf.d file).
    pub managed_config: PathBuf,
    /// PostgreSQL: the directory of initdb, pg_ctl, pg_basebackup, pg_rewind
    /// (/usr/lib/postgresql/15/bin).
    #[serde(default)]
    pub bindir: Option<PathBuf>,
    /// The operating-system account the server runs as (mysql, postgres).
    pub os_user: String,
    /// Starts the server and returns once it answers (or the agent waits for it).
    pub start: Vec<String>,
    /// Stops the server and returns once it is down.
    pub stop: Vec<String>,
}

/// HAProxy and keepalived on a proxy node.
///
/// Commands: every `*_start`, `*_reload` and `*_stop` is an argv (no shell). In `*_reload` and
/// `*_stop`, an argument `{pid}` is replaced by the pid read from the service's pid file
/// (`haproxy_pidfile`, `keepalived_pidfile`); when the pid file names no live process, a stop
/// with `{pid}` is skipped (already stopped) and a reload with `{pid}` starts the service
/// instead. E.g. a lab: `haproxy_reload = ["haproxy", "-D", "-f", CFG, "-p", PID, "-sf",
/// "{pid}"]`, `keepalived_stop = ["kill", "-TERM", "{pid}"]`; Debian with systemd:
/// `["systemctl", "reload", "haproxy"]`. After a stop the agent waits (10 s) for the pid file's
/// process to exit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The configuration file the agent writes for HAProxy (/etc/haproxy/haproxy.cfg).
    pub haproxy_config: PathBuf,
    /// HAProxy's pid file (the keepalived check reads it). HAProxy must write it: the rendered
    /// configuration names it in `global` (`pidfile`); `-p` on the command line also does.
    pub haproxy_pidfile: PathBuf,
    /// HAProxy's admin socket (`show stat`, `show servers state`).
    pub haproxy_socket: PathBuf,
    /// Where the agent saves HAProxy's server states (`show servers state`) right before a
    /// reload, for the new process to start from them (`server-state-file`) instead of every
    /// server "UP 1/2" until its first check. Default: beside the pid file, named after it with
    /// `.server-state` (/run/haproxy.pid: /run/haproxy.server-state), so a reboot clears it
    /// like the pid file.
    #[serde(default)]
    pub haproxy_state_file: Option<PathBuf>,
    pub haproxy_start: Vec<String>,
    /// A reload that keeps the listening sockets (systemctl reload haproxy; `-sf {pid}` in a
    /// lab).
    pub haproxy_reload: Vec<String>,
    pub haproxy_stop: Vec<String>,
    /// The configuration file the agent writes for keepalived (/etc/keepalived/keepalived.conf).
    pub keepalived_config: PathBuf,
    /// keepalived's main pid file (`-p`; Debian: /run/keepalived.pid). Without it the agent
    /// looks for a process named keepalived, and `{pid}` cannot be used.
    #[serde(default)]
    pub keepalived_pidfile: Option<PathBuf>,
    pub keepalived_start: Vec<String>,
    pub keepalived_reload: Vec<String>,
    pub keepalived_stop: Vec<String>,
    /// The `ip` command the agent lists the VIP's interface with (`ip -o addr show dev IF`);
    /// default `["ip"]`. A lab whose proxy runs in a network namespace names
    /// `["ip", "-n", "NAMESPACE"]`.
    #[serde(default = "default_ip_command")]
    pub ip_command: Vec<String>,
}

fn default_ip_command() -> Vec<String> {
    vec!["ip".into()]
}

impl ProxyConfig {
    /// HAProxy's server-state file: `haproxy_state_file`, or beside the pid file.
    pub fn server_state_file(&self) -> PathBuf {
        if let Some(f) = &self.haproxy_state_file {
            return f.clone();
        }
        let stem = self
            .haproxy_pidfile
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "haproxy".into());
        self.haproxy_pidfile
            .with_file_name(format!("{stem}.server-state"))
    }
}

impl AgentConfig {
    pub fn load(home: &Path) -> Result<Self> {
        let path = home.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the agent's settings {}", path.display()))?;
        let cfg: AgentConfig = toml::from_str(&text)
            .with_context(|| format!("the agent's settings {}", path.display()))?;
        cfg.check()
            .with_context(|| format!("the agent's settings {}", path.display()))?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<()> {
        if self.database.is_none() && self.proxy.is_none() {
            bail!("neither [database] nor [proxy] is set: the agent would have nothing to do");
        }
        if let Some(d) = &self.database {
            for (what, argv) in [("start", &d.start), ("stop", &d.stop)] {
                if argv.is_empty() {
                    bail!("database.{what} is empty: name the command that {what}s the server");
                }
            }
            if d.engine == Engine::Postgresql && d.bindir.is_none() {
                bail!("database.bindir is not set: name PostgreSQL's bin directory (e.g. /usr/lib/postgresql/15/bin)");
            }
        }
        if let Some(p) = &self.proxy {
            for (what, argv) in [
                ("haproxy_start", &p.haproxy_start),
                ("haproxy_reload", &p.haproxy_reload),
                ("haproxy_stop", &p.haproxy_stop),
                ("keepalived_start", &p.keepalived_start),
                ("keepalived_reload", &p.keepalived_reload),
                ("keepalived_stop", &p.keepalived_stop),
            ] {
                if argv.is_empty() {
                    bail!("proxy.{what} is empty: name the command");
                }
            }
            if p.keepalived_pidfile.is_none()
                && [&p.keepalived_reload, &p.keepalived_stop]
                    .iter()
                    .any(|a| a.iter().any(|x| x == "{pid}"))
            {
                bail!("proxy.keepalived_reload or keepalived_stop uses {{pid}} but proxy.keepalived_pidfile is not set: name keepalived's pid file");
            }
            if p.haproxy_state_file
                .as_ref()
                .is_some_and(|f| !f.is_absolute())
            {
                bail!("proxy.haproxy_state_file must be an absolute path");
            }
            if p.ip_command.is_empty() {
                bail!("proxy.ip_command is empty: name the ip command (default [\"ip\"])");
            }
        }
        Ok(())
    }

    pub fn node_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "node".into())
        })
    }
}

/// Paths of the agent's home.
#[derive(Debug, Clone)]
pub struct AgentHome {
    pub dir: PathBuf,
}

impl AgentHome {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AgentHome { dir: dir.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }
    pub fn token_hash(&self) -> PathBuf {
        self.dir.join("token.sha256")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    /// What the agent keeps between steps (0700).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The newest PostgreSQL major version installed under /usr/lib/postgresql (Debian's layout).
fn debian_pg_version() -> Option<u32> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
}

impl DatabaseConfig {
    /// Debian 12's packages under systemd.
    pub fn debian(engine: Engine) -> Result<Self> {
        Ok(match engine {
            Engine::Mariadb => DatabaseConfig {
                engine,
                datadir: "/var/lib/mysql".into(),
                port: 3306,
                socket: "/run/mysqld/mysqld.sock".into(),
                defaults_file: None,
                managed_config: "/etc/mysql/mariadb.conf.d/99-vmoodle.cnf".into(),
                bindir: None,
                os_user: "mysql".into(),
                start: argv(&["systemctl", "start", "mariadb"]),
                stop: argv(&["systemctl", "stop", "mariadb"]),
            },
            Engine::Postgresql => {
                let v = debian_pg_version()
                    .context("no PostgreSQL under /usr/lib/postgresql: install postgresql first")?;
                DatabaseConfig {
                    engine,
                    datadir: format!("/var/lib/postgresql/{v}/main").into(),
                    port: 5432,
                    socket: "/var/run/postgresql".into(),
                    defaults_file: None,
                    managed_config: format!("/etc/postgresql/{v}/main/conf.d/99-vmoodle.conf")
                        .into(),
                    bindir: Some(format!("/usr/lib/postgresql/{v}/bin").into()),
                    os_user: "postgres".into(),
                    start: argv(&["systemctl", "start", &format!("postgresql@{v}-main")]),
                    stop: argv(&["systemctl", "stop", &format!("postgresql@{v}-main")]),
                }
            }
        })
    }
}

impl ProxyConfig {
    /// Debian 12's haproxy and keepalived under systemd.
    pub fn debian() -> Self {
        ProxyConfig {
            haproxy_config: "/etc/haproxy/haproxy.cfg".into(),
            haproxy_pidfile: "/run/haproxy.pid".into(),
            haproxy_socket: "/run/haproxy/admin.sock".into(),
            haproxy_state_file: None,
            haproxy_start: argv(&["systemctl", "start", "haproxy"]),
            haproxy_reload: argv(&["systemctl", "reload", "haproxy"]),
            haproxy_stop: argv(&["systemctl", "stop", "haproxy"]),
            keepalived_config: "/etc/keepalived/keepalived.conf".into(),
            keepalived_pidfile: Some("/run/keepalived.pid".into()),
            ip_command: default_ip_command(),
            keepalived_start: argv(&["systemctl", "start", "keepalived"]),
            keepalived_reload: argv(&["systemctl", "reload", "keepalived"]),
            keepalived_stop: argv(&["systemctl", "stop", "keepalived"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent.toml written before `haproxy_state_file` existed.
    const OLD_PROXY_TOML: &str = r#"
listen = "10.0.0.21:8008"
[proxy]
haproxy_config = "/etc/haproxy/haproxy.cfg"
haproxy_pidfile = "/run/haproxy.pid"
haproxy_socket = "/run/haproxy/admin.sock"
haproxy_start = ["systemctl", "start", "haproxy"]
haproxy_reload = ["systemctl", "reload", "haproxy"]
haproxy_stop = ["systemctl", "stop", "haproxy"]
keepalived_config = "/etc/keepalived/keepalived.conf"
keepalived_pidfile = "/run/keepalived.pid"
keepalived_start = ["systemctl", "start", "keepalived"]
keepalived_reload = ["systemctl", "reload", "keepalived"]
keepalived_stop = ["systemctl", "stop", "keepalived"]
"#;

    #[test]
    fn old_proxy_settings_load_and_the_state_file_defaults_beside_the_pid_file() {
        let cfg: AgentConfig = toml::from_str(OLD_PROXY_TOML).unwrap();
        cfg.check().unwrap();
        let p = cfg.proxy.unwrap();
        assert_eq!(p.haproxy_state_file, None);
        assert_eq!(
            p.server_state_file(),
            PathBuf::from("/run/haproxy.server-state")
        );
        assert_eq!(
            ProxyConfig::debian().server_state_file(),
            PathBuf::from("/run/haproxy.server-state")
        );
        let text = OLD_PROXY_TOML.replace(
            "[proxy]\n",
            "[proxy]\nhaproxy_state_file = \"/var/lib/haproxy/state\"\n",
        );
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(
            cfg.proxy.unwrap().server_state_file(),
            PathBuf::from("/var/lib/haproxy/state")
        );
        let text = OLD_PROXY_TOML.replace("[proxy]\n", "[proxy]\nhaproxy_state_file = \"state\"\n");
        let cfg: AgentConfig = toml::from_str(&text).unwrap();
        assert!(cfg.check().unwrap_err().to_string().contains("absolute"));
    }
}
