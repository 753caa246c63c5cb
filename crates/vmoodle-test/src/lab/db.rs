//! The private database server of a lab host: MariaDB (cluster-lab.md §2) or PostgreSQL 15 (§5),
//! its files under the host's directory, started inside the host's namespace.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmoodle_agent::config::{DatabaseConfig, Engine};

use super::net::{output, run, run_stdin};

/// PostgreSQL's binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The admin account the control node uses.
pub const ADMIN: &str = "vmadmin";

/// One host's server: where its files are and how the agent starts and stops it.
#[derive(Debug, Clone)]
pub struct Server {
    pub engine: Engine,
    /// The host's directory (socket, pid file, logs, managed configuration).
    pub dir: PathBuf,
    pub datadir: PathBuf,
    pub port: u16,
    /// MariaDB: my.cnf; PostgreSQL: none.
    pub defaults_file: Option<PathBuf>,
    pub managed_config: PathBuf,
    pub log: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

fn owner_of(user: &str) -> Result<(u32, u32)> {
    let u = nix::unistd::User::from_name(user)
        .with_context(|| format!("looking up the account {user}"))?
        .with_context(|| format!("there is no account {user}: install the server package"))?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

fn chown(p: &Path, user: &str) -> Result<()> {
    let (u, g) = owner_of(user)?;
    std::os::unix::fs::chown(p, Some(u), Some(g))
        .with_context(|| format!("chown {user} {}", p.display()))
}

fn write(p: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

impl Server {
    /// Lays out and initialises (install-db / initdb) the server of host number `n` at `ip`.
    pub fn install(engine: Engine, dir: &Path, n: u32, ip: &str, net: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        match engine {
            Engine::Mariadb => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
                chown(dir, "mysql")?;
                // A private tmpdir: parallel installs sharing /tmp lose each other's temporary
                // tables (`Unknown table 'mysql.tmp_user_sys'`).
                std::fs::create_dir_all(dir.join("tmp"))?;
                chown(&dir.join("tmp"), "mysql")?;
                let cnf = dir.join("my.cnf");
                let managed = dir.join("vmoodle.cnf");
                let d = s(dir);
                write(
                    &cnf,
                    &format!(
                        "[client]\nsocket={d}/mysqld.sock\n[mysqld]\nuser=mysql\n\
                         datadir={d}/data\ntmpdir={d}/tmp\nsocket={d}/mysqld.sock\npid-file={d}/mysqld.pid\n\
                         log-error={d}/error.log\nbind-address={ip}\nport=3306\nserver_id={n}\n\
                         log_bin=mysql-bin\nbinlog_format=ROW\nlog_slave_updates=ON\n\
                         gtid_strict_mode=ON\nskip-name-resolve\ninnodb_buffer_pool_size=64M\n\
                         innodb_log_file_size=48M\nperformance_schema=OFF\n\
                         !include {d}/vmoodle.cnf\n"
                    ),
                    0o644,
                )?;
                chown(&cnf, "mysql")?;
                write(&managed, "", 0o644)?;
                chown(&managed, "mysql")?;
                run(&[
                    "mariadb-install-db",
                    &format!("--defaults-file={}", s(&cnf)),
                    "--skip-test-db",
                ])
                .context("mariadb-install-db for a lab host")?;
                Ok(Server {
                    engine,
                    dir: dir.into(),
                    datadir: dir.join("data"),
                    port: 3306,
                    defaults_file: Some(cnf),
                    managed_config: managed,
                    log: dir.join("error.log"),
                })
            }
            Engine::Postgresql => {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                chown(dir, "postgres")?;
                let data = dir.join("data");
                let managed = dir.join("vmoodle.conf");
                run(&[
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    &format!("{PG_BIN}/initdb"),
                    "-D",
                    s(&data),
                    "-U",
                    "postgres",
                    "--data-checksums",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                ])
                .context("initdb for a lab host")?;
                let conf = data.join("postgresql.conf");
                let mut text = std::fs::read_to_string(&conf)?;
                text.push_str(&format!(
                    "\n# vmoodle lab\nlisten_addresses = '{ip}'\nport = 5432\n\
                     unix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\n\
                     max_replication_slots = 10\nwal_keep_size = 64MB\nhot_standby = on\n\
                     shared_buffers = 32MB\ninclude_if_exists = '{}'\n",
                    s(dir),
                    s(&managed)
                ));
                std::fs::write(&conf, text)?;
                let hba = data.join("pg_hba.conf");
                let mut text = std::fs::read_to_string(&hba)?;
                text.push_str(&format!(
                    "host replication all {net}.0/24 scram-sha-256\n\
                     host all all {net}.0/24 scram-sha-256\n"
                ));
                std::fs::write(&hba, text)?;
                write(&managed, "", 0o644)?;
                chown(&managed, "postgres")?;
                Ok(Server {
                    engine,
                    dir: dir.into(),
                    datadir: data,
                    port: 5432,
                    defaults_file: None,
                    managed_config: managed,
                    log: dir.join("server.log"),
                })
            }
        }
    }

    /// The `[database]` settings of the host's agent (which runs inside the namespace).
    pub fn agent_config(&self) -> DatabaseConfig {
        let st = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self.engine {
            Engine::Mariadb => {
                let df = format!(
                    "--defaults-file={}",
                    s(self.defaults_file.as_ref().unwrap())
                );
                DatabaseConfig {
                    engine: self.engine,
                    datadir: self.datadir.clone(),
                    port: self.port,
                    socket: self.dir.join("mysqld.sock"),
                    defaults_file: self.defaults_file.clone(),
                    managed_config: self.managed_config.clone(),
                    bindir: None,
                    os_user: "mysql".into(),
                    start: st(&["setsid", "-f", "/usr/sbin/mariadbd", &df]),
                    stop: st(&["mariadb-admin", &df, "shutdown"]),
                }
            }
            Engine::Postgresql => {
                let ctl = format!("{PG_BIN}/pg_ctl");
                let (d, l) = (s(&self.datadir), s(&self.log));
                DatabaseConfig {
                    engine: self.engine,
                    datadir: self.datadir.clone(),
                    port: self.port,
                    socket: self.dir.clone(),
                    defaults_file: None,
                    managed_config: self.managed_config.clone(),
                    bindir: Some(PG_BIN.into()),
                    os_user: "postgres".into(),
                    start: st(&[
                        "runuser", "-u", "postgres", "--", &ctl, "-D", d, "-l", l, "-w", "start",
                    ]),
                    stop: st(&[
                        "runuser", "-u", "postgres", "--", &ctl, "-D", d, "-m", "fast", "-w",
                        "stop",
                    ]),
                }
            }
        }
    }

    /// Starts the server inside namespace `ns` and waits until it answers.
    pub fn start(&self, ns: &str) -> Result<()> {
        let cfg = self.agent_config();
        let mut argv = vec!["ip", "netns", "exec", ns];
        argv.extend(cfg.start.iter().map(String::as_str));
        run(&argv).context("starting a lab server")?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the lab server in {} did not answer within 30 s; its log:\n{}",
            ns,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Whether the server answers on its socket.
    pub fn ping(&self) -> bool {
        let argv: Vec<String> = match self.engine {
            Engine::Mariadb => vec![
                "mariadb-admin".into(),
                format!(
                    "--defaults-file={}",
                    s(self.defaults_file.as_ref().unwrap())
                ),
                "--connect-timeout=2".into(),
                "ping".into(),
            ],
            Engine::Postgresql => vec![
                format!("{PG_BIN}/pg_isready"),
                "-h".into(),
                s(&self.dir).into(),
                "-p".into(),
                "5432".into(),
                "-t".into(),
                "2".into(),
            ],
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        output(&argv, None).is_ok_and(|o| o.status.success())
    }

    /// Runs SQL as the server's administrator through its socket (MariaDB root by unix_socket,
    /// PostgreSQL postgres by peer); the SQL goes on stdin.
    pub fn local_sql(&self, sql: &str) -> Result<String> {
        let out = match self.engine {
            Engine::Mariadb => run_stdin(
                &[
                    "mariadb",
                    &format!(
                        "--defaults-file={}",
                        s(self.defaults_file.as_ref().unwrap())
                    ),
                    "-N",
                    "-B",
                ],
                Some(sql),
            ),
            Engine::Postgresql => run_stdin(
                &[
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    &format!("{PG_BIN}/psql"),
                    "-h",
                    s(&self.dir),
                    "-p",
                    "5432",
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    "postgres",
                ],
                Some(sql),
            ),
        }
        .context("SQL on a lab server through its socket")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates the control node's admin account (MariaDB: ALL ON *.* WITH GRANT OPTION from
    /// anywhere; PostgreSQL: LOGIN CREATEDB CREATEROLE, what `dbserver check` wants).
    pub fn create_admin(&self, password: &str) -> Result<()> {
        let sql = match self.engine {
            Engine::Mariadb => format!(
                "CREATE USER '{ADMIN}'@'%' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'%' WITH GRANT OPTION;\n"
            ),
            Engine::Postgresql => {
                format!("CREATE ROLE {ADMIN} LOGIN CREATEDB CREATEROLE PASSWORD '{password}';\n")
            }
        };
        self.local_sql(&sql).map(|_| ())
    }

    /// Stops a PostgreSQL server (teardown step 1); MariaDB stops with its namespace's processes.
    pub fn stop_pg(&self) {
        if self.engine == Engine::Postgresql && self.datadir.join("postmaster.pid").exists() {
            let _ = output(
                &[
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    &format!("{PG_BIN}/pg_ctl"),
                    "-D",
                    s(&self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "20",
                    "stop",
                ],
                None,
            );
        }
    }
}
