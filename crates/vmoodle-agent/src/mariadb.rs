//! MariaDB on a database node: the probe behind the health checks, the facts `cluster create`
//! checks, the hot backup stream of a primary and the seeding of a replica from one.
//!
//! Every client call goes through the server's socket as root (unix_socket authentication),
//! with `--defaults-file` first when the node names one (it keeps /etc/mysql/my.cnf out). SQL
//! goes on the client's stdin, so the replication password never reaches argv.
//!
//! What the node's `[database]` settings must give (MariaDB):
//! - `socket`, and `defaults_file` when the server's options are not in /etc/mysql/my.cnf;
//! - `managed_config`: a file the server's configuration includes *after* its own `[mysqld]`
//!   settings (`!include`, or a late file in mariadb.conf.d), so that the replica's settings
//!   (server_id, log_bin, read_only=ON...) win; the agent writes it and undo puts it back;
//! - `start`: returns once the server is started (a daemonising command such as
//!   `setsid -f mariadbd --defaults-file=..` or `systemctl start mariadb`; its output goes to
//!   STATE/service.log); the agent then waits up to 30 s for the server to answer;
//! - `stop`: returns once the server is down (`mariadb-admin --defaults-file=.. shutdown`,
//!   `systemctl stop mariadb`); the agent then waits up to 60 s for it to stop answering;
//! - `os_user`: the account that owns the data directory (mysql).

mod parse;
mod seed;
pub mod switch;

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncRead;
use vmoodle_exec::{ExecError, Tool};

use crate::config::{AgentHome, DatabaseConfig, Engine};
use crate::protocol::{DbState, ReplicaPlan, Role, ServerFacts};

pub use parse::{backup_gtid, replica_config, sql_literal, state_from_rows, vertical_rows};

/// Whether the agent seeded this node's server (its previous data is kept for an undo).
pub fn is_seeded(home: &AgentHome) -> Result<bool> {
    seed::is_seeded(&state_dir(home)?)
}

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The settings `facts` reports.
const FACT_SETTINGS: &[&str] = &[
    "log_bin",
    "log_bin_basename",
    "server_id",
    "binlog_format",
    "log_slave_updates",
    "gtid_strict_mode",
    "gtid_domain_id",
    "gtid_binlog_pos",
    "gtid_current_pos",
    "bind_address",
    "port",
    "socket",
    "datadir",
    "read_only",
    "innodb_buffer_pool_size",
    "skip_name_resolve",
    "max_connections",
    "version",
];

/// The client's arguments that reach the local server as root: `--defaults-file` (first, when
/// set), `--socket`, `-uroot`.
pub fn client_args(cfg: &DatabaseConfig) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    if let Some(f) = &cfg.defaults_file {
        let mut s = OsString::from("--defaults-file=");
        s.push(f);
        a.push(s);
    }
    let mut s = OsString::from("--socket=");
    s.push(&cfg.socket);
    a.push(s);
    a.push("-uroot".into());
    a
}

/// Runs SQL (on stdin) through the local socket as root; `extra` are client options such as
/// `-E` or `-N`. Returns stdout.
pub async fn run_sql(
    cfg: &DatabaseConfig,
    extra: &[&str],
    sql: &str,
    timeout: Duration,
) -> Result<String, ExecError> {
    let out = Tool::new("mariadb")
        .args(client_args(cfg))
        .args(["--batch", "--connect-timeout=2"])
        .args(extra.iter().copied())
        .stdin(sql.as_bytes().to_vec())
        .timeout(timeout)
        .run()
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like `run_sql`, with an error that says what was being done and what to check.
async fn sql_step(
    cfg: &DatabaseConfig,
    what: &str,
    sql: &str,
    timeout: Duration,
) -> Result<String> {
    run_sql(cfg, &[], sql, timeout).await.with_context(|| {
        format!(
            "{what} on the local MariaDB server (socket {}) failed; check that it runs and that \
             root may log in through the socket",
            cfg.socket.display()
        )
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Probes the local server once (read_only, SHOW SLAVE STATUS, gtid_current_pos). A server that
/// does not answer gives `role: Some(Role::Down)`.
pub async fn probe(cfg: &DatabaseConfig) -> DbState {
    const SQL: &str = "SELECT @@read_only AS read_only, @@gtid_current_pos AS gtid_current_pos;\n\
                       SHOW SLAVE STATUS;\n";
    match run_sql(cfg, &["-E"], SQL, PROBE_TIMEOUT).await {
        Ok(text) => state_from_rows(&vertical_rows(&text), now()),
        Err(e) => {
            tracing::debug!("MariaDB probe: {e}");
            DbState {
                role: Some(Role::Down),
                probed_at: now(),
                ..DbState::default()
            }
        }
    }
}

/// Polls `probe` until `done` holds for its state, at most `limit`; returns the last state.
pub async fn wait_for(
    cfg: &DatabaseConfig,
    limit: Duration,
    done: impl Fn(&DbState) -> bool,
) -> (bool, DbState) {
    let start = std::time::Instant::now();
    loop {
        let st = probe(cfg).await;
        if done(&st) {
            return (true, st);
        }
        if start.elapsed() >= limit {
            return (false, st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn facts(cfg: &DatabaseConfig) -> Result<ServerFacts> {
    let list = FACT_SETTINGS
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT 'version', VERSION();\nSHOW GLOBAL VARIABLES WHERE Variable_name IN ({list});\n"
    );
    let answer = run_sql(cfg, &["-N"], &sql, Duration::from_secs(5)).await;
    let mut settings = std::collections::BTreeMap::new();
    let mut version = String::new();
    let up = match answer {
        Ok(text) => {
            for line in text.lines() {
                if let Some((k, v)) = line.split_once('\t') {
                    settings.insert(k.to_string(), v.to_string());
                }
            }
            // `version` from SHOW VARIABLES is the same text as VERSION(); the first line wins.
            if let Some(v) = text.lines().next().and_then(|l| l.split_once('\t')) {
                version = v.1.to_string();
            }
            true
        }
        Err(e) => {
            tracing::info!("MariaDB facts: the server does not answer: {e}");
            false
        }
    };
    let datadir = cfg.datadir.clone();
    let data_bytes = tokio::task::spawn_blocking(move || tree_bytes(&datadir))
        .await
        .context("measuring the data directory")?
        .with_context(|| format!("measuring the data directory {}", cfg.datadir.display()))?;
    let free_bytes = free_bytes(&cfg.datadir)?;
    Ok(ServerFacts {
        engine: Engine::Mariadb,
        version,
        settings,
        hba_replication: Vec::new(),
        data_bytes,
        free_bytes,
        up,
    })
}

/// The bytes of the regular files under `dir`, symbolic links neither followed nor counted. A
/// missing directory counts 0.
pub fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let m = entry.metadata()?; // DirEntry::metadata does not follow symlinks
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    Ok(total)
}

/// Free bytes (for an unprivileged user) on the file system holding `path` (or its nearest
/// existing parent).
pub fn free_bytes(path: &Path) -> Result<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    let st =
        nix::sys::statvfs::statvfs(p).with_context(|| format!("statvfs of {}", p.display()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The agent's state directory, created 0700.
pub(crate) fn state_dir(home: &AgentHome) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = home.state();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating the agent's state directory {}", dir.display()))?;
    Ok(dir)
}

/// A running `mariabackup --backup --stream=xbstream` of the local server: its stdout, and the
/// child to wait on (its exit status says whether the stream is whole).
pub async fn backup(cfg: &DatabaseConfig, home: &AgentHome) -> Result<crate::server::Streaming> {
    let state = state_dir(home)?;
    let log = state.join("backup.log");
    let log_file = std::fs::File::create(&log)
        .with_context(|| format!("creating the backup log {}", log.display()))?;
    let mut cmd = tokio::process::Command::new("mariabackup");
    cmd.env_clear();
    for key in ["PATH", "LANG", "LC_ALL", "TZ", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    if let Some(f) = &cfg.defaults_file {
        let mut s = OsString::from("--defaults-file=");
        s.push(f);
        cmd.arg(s);
    }
    let mut sock = OsString::from("--socket=");
    sock.push(&cfg.socket);
    // --stream is essential: without it (and without --target-dir) mariabackup silently writes
    // a backup directory into its working directory. The working directory is the state
    // directory, so stray temporary files land there.
    cmd.args(["--backup", "--stream=xbstream", "--user=root"])
        .arg(sock)
        .current_dir(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("could not start mariabackup; install the mariadb-backup package")?;
    let stdout = child.stdout.take().context("mariabackup's stdout")?;
    Ok(crate::server::Streaming { stdout, child, log })
}

/// Seeds this node from a backup stream and starts replicating as `plan` says.
pub async fn seed(
    cfg: &DatabaseConfig,
    home: &AgentHome,
    plan: &ReplicaPlan,
    stream: impl AsyncRead + Unpin + Send,
) -> Result<()> {
    seed::seed(cfg, home, plan, stream).await
}

/// Stops the server and puts back the data directory and managed configuration it had before
/// the last seed (nothing to do when there was none).
pub async fn undo_seed(cfg: &DatabaseConfig, home: &AgentHome) -> Result<()> {
    seed::undo_seed(cfg, home).await
}
