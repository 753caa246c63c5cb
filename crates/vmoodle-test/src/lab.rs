//! A lab of simulated hosts for cluster tests, on this one machine (see
//! ../shared/cluster-lab.md): a network namespace per host on a private /24 with no route out,
//! a private database server on each database host, and a real `vmoodle agent` on every node.
//!
//! Hosts (prefix `vml<4 hex>`, net `10.x.y` chosen at random among unused ones):
//! `<p>-db1` .11, `<p>-db2` .12, `<p>-db3` .13 (database nodes), `<p>-lb1` .21, `<p>-lb2` .22
//! (proxy nodes), `<p>-app` .31 (the control node and the clients); the VIP is .100; the bridge
//! lives in `<p>-sw`. db1 is the future primary with an admin account (`vmadmin`); db2 and db3
//! run empty fresh servers, to be seeded by their agents.
//!
//! Needs root. Dropping the lab tears it all down (PostgreSQL stopped with pg_ctl, every process
//! of its namespaces stopped, the namespaces deleted, its directory removed). `sweep` removes
//! what labs of dead test processes left (labs whose test process still runs are left alone:
//! each lab records its owner in /run/vmoodle-lab/<prefix>).
//!
//! Measured here (2 cores): build 2.7–6.2 s (three servers installed in parallel, five agents
//! answering), teardown 0.15–0.7 s bare, 1.2–1.8 s with replicas, HAProxy and keepalived
//! running. Share one lab per test.

mod agent;
mod clients;
mod db;
mod net;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
pub use vmoodle_agent::config::Engine;

pub use db::{ADMIN, PG_BIN};
pub use net::{is_prefix, marker, namespaces, sweep, write_marker, MARKER_DIR};

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The vmoodle binary (`env!("CARGO_BIN_EXE_vmoodle")` in the vmoodle crate's tests).
    pub bin: PathBuf,
    /// Database hosts, 1 to 3 (db1..dbN).
    pub db_hosts: u32,
    /// Proxy hosts, 0 to 2 (lb1..lbN).
    pub lb_hosts: u32,
}

impl LabSpec {
    /// Three database hosts and two proxy hosts.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        LabSpec {
            bin: bin.into(),
            db_hosts: 3,
            lb_hosts: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Database,
    Proxy,
}

/// One node of the lab (a database or proxy host with its agent).
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: Kind,
    pub ip: String,
    /// Its network namespace.
    pub ns: String,
    /// The agent's home (agent.toml, cert, state/).
    pub agent_home: PathBuf,
    /// The file holding the agent's token (0600), for `vmoodle node add --token-file`.
    pub token_file: PathBuf,
    pub token: String,
    /// The agent certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The agent's port.
    pub port: u16,
    /// The host's directory (server files, proxy files, logs).
    pub dir: PathBuf,
}

pub struct Lab {
    engine: Engine,
    spec: LabSpec,
    prefix: String,
    net: String,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    admin_password: String,
    nodes: BTreeMap<String, Node>,
    servers: BTreeMap<String, db::Server>,
    agents: Vec<(String, Child)>,
    namespaces: Vec<String>,
    built_in: Duration,
    torn_down: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("engine", &self.engine)
            .field("prefix", &self.prefix)
            .field("net", &self.net)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    openssl::rand::rand_bytes(&mut b).expect("random bytes");
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether this process may build a lab (root, and the tools installed); says why not.
pub fn unusable(engine: Engine) -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    let mut tools = vec!["ip", "curl", "runuser", "setsid", "haproxy", "keepalived"];
    match engine {
        Engine::Mariadb => tools.extend(["mariadb", "mariadb-install-db", "mariadb-admin"]),
        Engine::Postgresql => {
            if !Path::new(PG_BIN).join("initdb").exists() {
                return Some(format!("no PostgreSQL in {PG_BIN}"));
            }
        }
    }
    for t in tools {
        if vmoodle_exec::find_on_path(&[t]).is_none() {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

impl Lab {
    /// Builds the lab: network, servers, agents; returns once every agent answers /health.
    pub fn new(engine: Engine, spec: LabSpec) -> Result<Lab> {
        let t = Instant::now();
        if !(1..=3).contains(&spec.db_hosts) || spec.lb_hosts > 2 {
            bail!("a lab has 1 to 3 database hosts and 0 to 2 proxy hosts");
        }
        if let Some(why) = unusable(engine) {
            bail!("cannot build a lab: {why}");
        }
        net::sweep();
        let dir = tempfile::Builder::new()
            .prefix("vml-")
            .tempdir()
            .context("making the lab's directory")?;
        let path = dir.path().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let existing = net::namespaces();
        let used = net::used_nets();
        let (prefix, net) = loop {
            let r = random_bytes::<4>();
            let p = format!("vml{}", hex(&r[..2]));
            let n = format!("10.{}.{}", 200 + (r[2] as u32 % 51), r[3]);
            if !existing.iter().any(|e| e.starts_with(&format!("{p}-"))) && !used.contains(&n) {
                break (p, n);
            }
        };
        net::write_marker(&prefix, &path)?;
        let mut lab = Lab {
            engine,
            spec,
            prefix,
            net,
            dir: Some(dir),
            path,
            admin_password: hex(&random_bytes::<12>()),
            nodes: BTreeMap::new(),
            servers: BTreeMap::new(),
            agents: Vec::new(),
            namespaces: Vec::new(),
            built_in: Duration::ZERO,
            torn_down: false,
        };
        lab.build()?;
        lab.built_in = t.elapsed();
        Ok(lab)
    }

    fn hosts(&self) -> Vec<(String, String, Option<Kind>)> {
        let mut v = Vec::new();
        for i in 1..=self.spec.db_hosts {
            v.push((format!("db{i}"), self.ip_of(10 + i), Some(Kind::Database)));
        }
        for i in 1..=self.spec.lb_hosts {
            v.push((format!("lb{i}"), self.ip_of(20 + i), Some(Kind::Proxy)));
        }
        v.push(("app".into(), self.ip_of(31), None));
        v
    }

    fn ip_of(&self, last: u32) -> String {
        format!("{}.{last}", self.net)
    }

    fn build(&mut self) -> Result<()> {
        let hosts = self.hosts();
        self.namespaces.push(format!("{}-sw", self.prefix));
        self.namespaces
            .extend(hosts.iter().map(|(h, _, _)| format!("{}-{h}", self.prefix)));
        let pairs: Vec<(String, String)> = hosts
            .iter()
            .map(|(h, ip, _)| (h.clone(), ip.clone()))
            .collect();
        net::build(&self.prefix, &pairs).context("building the lab's network")?;
        for (h, _, kind) in &hosts {
            if *kind == Some(Kind::Proxy) {
                net::run(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.ns(h),
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_nonlocal_bind=1",
                ])?;
            }
        }
        // Database servers: installed in parallel, then started in their namespaces.
        let engine = self.engine;
        let installs: Vec<_> = hosts
            .iter()
            .filter(|(_, _, k)| *k == Some(Kind::Database))
            .enumerate()
            .map(|(i, (h, ip, _))| {
                let (dir, ip, net, h) =
                    (self.path.join(h), ip.clone(), self.net.clone(), h.clone());
                std::thread::spawn(move || {
                    db::Server::install(engine, &dir.join("server"), i as u32 + 1, &ip, &net)
                        .map(|s| (h, s))
                })
            })
            .collect();
        // Every install finishes before an error is returned (teardown removes their files).
        let installed: Vec<Result<_>> = installs
            .into_iter()
            .map(|j| j.join().expect("install thread"))
            .collect();
        for r in installed {
            let (h, server) = r?;
            self.servers.insert(h, server);
        }
        for (h, server) in &self.servers {
            server.start(&self.ns(h))?;
        }
        self.servers["db1"].create_admin(&self.admin_password)?;
        std::fs::create_dir_all(self.path.join("app"))?;
        self.write_client_files()?;
        // Agents.
        for (h, ip, kind) in &hosts {
            let Some(kind) = *kind else { continue };
            let dir = self.path.join(h);
            std::fs::create_dir_all(&dir)?;
            let home = dir.join("agent");
            let token_file = dir.join("token");
            let port = vmoodle_agent::DEFAULT_PORT;
            let fingerprint = agent::init(
                &self.spec.bin,
                &home,
                &format!("{ip}:{port}"),
                h,
                (kind == Kind::Database).then_some(self.engine),
                kind == Kind::Proxy,
                &token_file,
            )?;
            let proxy_dir = (kind == Kind::Proxy).then(|| dir.join("proxy"));
            if let Some(p) = &proxy_dir {
                std::fs::create_dir_all(p)?;
            }
            let dbcfg = self.servers.get(h).map(|s| s.agent_config());
            agent::rewrite(&home, dbcfg.as_ref(), proxy_dir.as_deref())
                .with_context(|| format!("agent.toml of {h}"))?;
            let token = std::fs::read_to_string(&token_file)?.trim().to_string();
            let child = agent::serve(&self.spec.bin, &home, &self.ns(h), &dir.join("agent.log"))?;
            self.agents.push((h.clone(), child));
            self.nodes.insert(
                h.clone(),
                Node {
                    name: h.clone(),
                    kind,
                    ip: ip.clone(),
                    ns: self.ns(h),
                    agent_home: home,
                    token_file,
                    token,
                    fingerprint,
                    port,
                    dir,
                },
            );
        }
        let app = self.ns("app");
        for n in self.nodes.values() {
            agent::wait_health(&app, &n.ip, n.port, Duration::from_secs(30)).with_context(
                || {
                    format!(
                        "agent {}; its log:\n{}",
                        n.name,
                        std::fs::read_to_string(n.dir.join("agent.log")).unwrap_or_default()
                    )
                },
            )?;
        }
        Ok(())
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }
    /// The lab's prefix (`vml1a2b`); its namespaces are `<prefix>-<host>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The network namespace of a host (db1, lb1, app, sw...).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }
    /// The first three octets of the lab's /24 ("10.x.y").
    pub fn net_prefix(&self) -> &str {
        &self.net
    }
    /// The address of the app host (the control node and clients).
    pub fn app_ip(&self) -> String {
        self.ip_of(31)
    }
    pub fn vip(&self) -> String {
        self.ip_of(100)
    }
    /// The database port on every database host (3306 or 5432).
    pub fn db_port(&self) -> u16 {
        match self.engine {
            Engine::Mariadb => 3306,
            Engine::Postgresql => 5432,
        }
    }
    pub fn admin_user(&self) -> &str {
        ADMIN
    }
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }
    /// The lab's directory (one subdirectory per host; logs are there).
    pub fn dir(&self) -> &Path {
        &self.path
    }
    /// How long `new` took.
    pub fn built_in(&self) -> Duration {
        self.built_in
    }
    /// A node (db1..db3, lb1, lb2); panics on an unknown name.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("the lab has no node {name}"))
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
    /// The data directory of a database host's server.
    pub fn datadir(&self, host: &str) -> PathBuf {
        self.servers[host].datadir.clone()
    }

    /// Runs SQL on a database host's server as its local administrator, through its socket from
    /// the root namespace (MariaDB root by unix_socket, PostgreSQL postgres by peer, database
    /// postgres); for what vmadmin may not do (PostgreSQL: create a REPLICATION role).
    pub fn server_sql(&self, host: &str, sql: &str) -> Result<String> {
        self.servers
            .get(host)
            .with_context(|| format!("{host} is not a database host of the lab"))?
            .local_sql(sql)
    }

    /// The same as `server_sql`.
    pub fn local_sql(&self, host: &str, sql: &str) -> Result<String> {
        self.server_sql(host, sql)
    }

    /// Tears the lab down (what Drop does) and says how long it took. Idempotent.
    pub fn teardown(&mut self) -> Duration {
        let t = Instant::now();
        if self.torn_down {
            return Duration::ZERO;
        }
        self.torn_down = true;
        // 1. PostgreSQL stopped cleanly.
        for s in self.servers.values() {
            s.stop_pg();
        }
        // 2. Agents (our children) and every process of the namespaces.
        for (_, c) in &mut self.agents {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        net::remove_namespaces(&self.namespaces, Duration::from_secs(5));
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        // 3. The directory and the marker.
        if let Some(d) = self.dir.take() {
            if crate::keep() {
                eprintln!("kept the lab's directory {}", d.keep().display());
            } else {
                let _ = d.close();
            }
        }
        let _ = std::fs::remove_file(net::marker(&self.prefix));
        t.elapsed()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}
