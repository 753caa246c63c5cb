//! `vmoodle cluster create` on a lab of network namespaces (vmoodle_test::lab), beside the
//! runbook's way of seeding the replicas, on MariaDB and PostgreSQL.
//!
//! A lab server (db1) holds N instances (default 20) deployed by vmoodle: on MariaDB from a
//! template of the content fixture (77 courses, 1,002 users), on PostgreSQL from the fresh
//! fixture (there is no content fixture for PostgreSQL). Then:
//! - ours: `vmoodle cluster create` (1 primary + 2 replicas seeded by the agents with a streamed
//!   mariabackup / pg_basebackup, 2 HAProxy + keepalived proxies, the VIP, every instance
//!   repointed), timed whole, and its seed steps as the job records them (`vmoodle jobs show`);
//! - `vmoodle cluster destroy` puts the replicas back as they were before their seed;
//! - the baseline, the runbook's dump-and-load seeding of the same two replicas, one after the
//!   other. MariaDB: `mariadb-dump --all-databases --single-transaction --gtid --master-data=1`
//!   of db1 (once, to a file), loaded with `mariadb` into db2 then db3, each then connected
//!   (`CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos; START SLAVE`), until both have caught up
//!   with db1. PostgreSQL: streaming replication cannot start from a logical dump, so the
//!   baseline there is `pg_dumpall` of db1 loaded with psql into db2 and db3 (the time to get
//!   the data there; no replication).
//!
//! All along, a writer loop (a thread in the lab's app namespace, the Moodle server) does what a
//! Moodle request does: it reads an instance's host file (hosts/<host>.php, the one the config
//! hook reads; the repoint rewrites it from db1's address to the VIP), connects to the dbhost and
//! dbport named there with the instance's own dbuser/dbpass, INSERTs one row into a table of
//! that instance's database, and disconnects; the instances in turn, 20 ms apart. The longest gap
//! between two successful commits is the write stall.
//!
//! Needs root (network namespaces), HAProxy, keepalived, MariaDB, PostgreSQL 15.
//! Run: ./scripts/bench-cluster [--engine mariadb|postgresql] [--instances N]

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmoodle_test::lab::{Engine, Lab, LabSpec, PG_BIN};
use vmoodle_test::{MariaDb, PgDb, TempDir};

mod cluster_common;
mod runner;

use cluster_common::*;

const CLUSTER: &str = "vmb";
/// The table the writer loop inserts into, in every instance's database.
const PROBE: &str = "vmb_writer_probe";
/// The pause between two writes of the writer loop.
const WRITER_PAUSE: Duration = Duration::from_millis(20);

/// Writes a 0600 file (created 0600, so the secret is never readable by others).
fn write_secret(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

// ---- the host files, as the config hook reads them ---------------------------------------------

// ---- the writer loop ---------------------------------------------------------------------------

struct Commit {
    at: Instant,
    /// host:port the host file named.
    endpoint: String,
}

#[derive(Default)]
struct WriterLog {
    commits: Vec<Commit>,
    failures: Vec<(Instant, String)>,
}

struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<WriterLog>>,
}

async fn connect_and(
    engine: Engine,
    t: &DbTarget,
    sql: &str,
    arg: Option<i64>,
) -> std::result::Result<(), String> {
    use sqlx::{ConnectOptions, Connection};
    let fut = async {
        match engine {
            Engine::Mariadb => {
                let o = sqlx::mysql::MySqlConnectOptions::new()
                    .host(&t.host)
                    .port(t.port)
                    .username(&t.user)
                    .password(&t.pass)
                    .database(&t.name)
                    .ssl_mode(sqlx::mysql::MySqlSslMode::Disabled)
                    .disable_statement_logging();
                let mut c = sqlx::MySqlConnection::connect_with(&o).await?;
                let q = sqlx::query(sql);
                let q = match arg {
                    Some(a) => q.bind(a),
                    None => q,
                };
                q.execute(&mut c).await?;
                c.close().await
            }
            Engine::Postgresql => {
                let o = sqlx::postgres::PgConnectOptions::new()
                    .host(&t.host)
                    .port(t.port)
                    .username(&t.user)
                    .password(&t.pass)
                    .database(&t.name)
                    .ssl_mode(sqlx::postgres::PgSslMode::Disable)
                    .disable_statement_logging();
                let mut c = sqlx::PgConnection::connect_with(&o).await?;
                let q = sqlx::query(sql);
                let q = match arg {
                    Some(a) => q.bind(a),
                    None => q,
                };
                q.execute(&mut c).await?;
                c.close().await
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// Starts the writer loop in network namespace `ns` over the instances whose host files are
/// `files`. Returns once it has made its table in every instance's database and written once
/// to each.
fn start_writer(ns: &str, engine: Engine, files: Vec<PathBuf>) -> Result<Writer> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
    let netns = PathBuf::from("/run/netns").join(ns);
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || -> Result<WriterLog> {
        // Network namespaces are per thread: this one joins the app host's.
        let setup = || -> Result<tokio::runtime::Runtime> {
            let f = std::fs::File::open(&netns)
                .with_context(|| format!("opening {}", netns.display()))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("joining the app host's network namespace")?;
            Ok(tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?)
        };
        let rt = match setup() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return Err(e);
            }
        };
        let create = match engine {
            Engine::Mariadb => format!(
                "CREATE TABLE IF NOT EXISTS {PROBE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, at BIGINT NOT NULL) ENGINE=InnoDB"
            ),
            Engine::Postgresql => {
                format!("CREATE TABLE IF NOT EXISTS {PROBE} (id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL)")
            }
        };
        let insert = match engine {
            Engine::Mariadb => format!("INSERT INTO {PROBE} (at) VALUES (?)"),
            Engine::Postgresql => format!("INSERT INTO {PROBE} (at) VALUES ($1)"),
        };
        rt.block_on(async move {
            for f in &files {
                let r = async {
                    let t = read_host_file(f).map_err(|e| format!("{e:#}"))?;
                    connect_and(engine, &t, &create, None).await?;
                    connect_and(engine, &t, &insert, Some(0)).await
                }
                .await;
                if let Err(e) = r {
                    let msg = format!(
                        "the writer cannot write with the credentials of {}: {e}",
                        f.display()
                    );
                    let _ = ready_tx.send(Err(msg.clone()));
                    bail!(msg);
                }
            }
            let _ = ready_tx.send(Ok(()));
            let mut log = WriterLog::default();
            let t0 = Instant::now();
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let f = &files[i % files.len()];
                i += 1;
                // Read the host file afresh each time, as each Moodle request does.
                let r = match read_host_file(f) {
                    Ok(t) => {
                        let n = t0.elapsed().as_millis() as i64;
                        connect_and(engine, &t, &insert, Some(n))
                            .await
                            .map(|()| format!("{}:{}", t.host, t.port))
                    }
                    Err(e) => Err(format!("{e:#}")),
                };
                let at = Instant::now();
                match r {
                    Ok(endpoint) => log.commits.push(Commit { at, endpoint }),
                    Err(e) => log.failures.push((at, e)),
                }
                tokio::time::sleep(WRITER_PAUSE).await;
            }
            Ok(log)
        })
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Writer { stop, handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            bail!(e)
        }
        Err(_) => match handle.join() {
            Ok(Err(e)) => Err(e),
            _ => bail!("the writer thread died"),
        },
    }
}

impl Writer {
    fn finish(self) -> Result<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the writer thread panicked"),
        }
    }
}

/// What the writer saw in a window of time.
#[derive(Debug, Default, Clone)]
struct Stall {
    /// Longest gap between two successful commits that overlaps the window, ms.
    longest_ms: Option<f64>,
    /// When it began, seconds after the window's start (negative: before it).
    longest_at_s: f64,
    /// Endpoints on either side of the longest gap.
    longest_between: (String, String),
    /// Median gap between commits inside the window, ms.
    median_ms: Option<f64>,
    commits: usize,
    failures: usize,
    first_failure: Option<String>,
}

fn stall(log: &WriterLog, from: Instant, to: Instant) -> Stall {
    let mut s = Stall::default();
    let c = &log.commits;
    let mut inside = Vec::new();
    for w in c.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.at < from || a.at > to {
            continue;
        }
        let gap = ms(b.at - a.at);
        if a.at >= from && b.at <= to {
            inside.push(gap);
        }
        if !matches!(s.longest_ms, Some(l) if l >= gap) {
            s.longest_ms = Some(gap);
            s.longest_at_s = if a.at >= from {
                secs(a.at - from)
            } else {
                -secs(from - a.at)
            };
            s.longest_between = (a.endpoint.clone(), b.endpoint.clone());
        }
    }
    inside.sort_by(|x, y| x.partial_cmp(y).unwrap());
    s.median_ms = inside.get(inside.len() / 2).copied();
    s.commits = c.iter().filter(|x| x.at >= from && x.at <= to).count();
    let fails: Vec<_> = log
        .failures
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    s.failures = fails.len();
    s.first_failure = fails.first().map(|(_, e)| e.clone());
    s
}

// ---- one engine --------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Outcome {
    instances: usize,
    fixture: &'static str,
    data_mb: f64,
    datadir_mb: f64,
    databases: usize,
    lab_build_s: f64,
    deploy_s: f64,
    create_s: f64,
    seed_s: f64,
    job_steps: Vec<(String, f64)>,
    step_stalls: Vec<(String, f64, Option<f64>)>,
    ours: Stall,
    repoint: Stall,
    /// Gap between the last commit through db1 and the first through the VIP, ms.
    switch_ms: Option<f64>,
    destroy_s: f64,
    base_total_s: f64,
    base_parts: Vec<(String, f64)>,
    base: Stall,
    teardown_s: f64,
}

fn du_mb(p: &Path) -> f64 {
    run(Command::new("du").arg("-sk").arg(p))
        .ok()
        .and_then(|o| o.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

/// The template on the local server: MariaDB from the content fixture, PostgreSQL from the
/// fresh one. The dataroot is the fresh fixture's (the content site's 177 MB filedir is not
/// shipped, and the database tier is what this measures).
fn make_template(
    home: &Path,
    dir: &Path,
    engine: Engine,
) -> Result<(String, Box<dyn std::any::Any>, &'static str)> {
    let (server, dump, tar, www, fixture) = match engine {
        Engine::Mariadb => (
            "maria",
            "content-mariadb.sql.gz",
            "fresh-dataroot.tar.gz",
            "http://content.moodle.test",
            "content (77 courses, 1,002 users)",
        ),
        Engine::Postgresql => (
            "pg",
            "fresh-pgsql.sql.gz",
            "fresh-pgsql-dataroot.tar.gz",
            "http://masterpg.moodle.test",
            "fresh (no content fixture for PostgreSQL)",
        ),
    };
    let (name, keep, user, password): (String, Box<dyn std::any::Any>, String, String) =
        match engine {
            Engine::Mariadb => {
                let d = MariaDb::create("cbsrc");
                d.load_fixture(dump);
                (
                    d.name.clone(),
                    Box::new(d),
                    vmoodle_test::mariadb_user(),
                    vmoodle_test::mariadb_password(),
                )
            }
            Engine::Postgresql => {
                let d = PgDb::create("cbsrc");
                d.load_fixture(dump);
                (
                    d.name.clone(),
                    Box::new(d),
                    vmoodle_test::pg_user(),
                    vmoodle_test::pg_password(),
                )
            }
        };
    let data = dir.join("source-dataroot");
    std::fs::create_dir_all(&data)?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(vmoodle_test::fixtures_dir().join(tar))
        .arg("-C")
        .arg(&data))?;
    runner::vmoodle(
        home,
        &[
            "instance",
            "add",
            "--wwwroot",
            www,
            "--shortname",
            "src",
            "--dbserver",
            server,
            "--dbname",
            &name,
            "--dbuser",
            &user,
            "--dataroot",
            data.to_str().context("UTF-8 path")?,
            "--password-stdin",
            // The bench's own source database, reached as the administrator.
            "--force-admin-account",
        ],
        &password,
    )?;
    let tpl = format!("cb{}", std::process::id());
    runner::vmoodle(home, &["snapshot", "src", "--template", &tpl], "")?;
    Ok((tpl, keep, fixture))
}

fn bench_engine(engine: Engine, n: usize) -> Result<Outcome> {
    let mut o = Outcome {
        instances: n,
        ..Default::default()
    };
    let dir = TempDir::new("clusterbench");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    let home = dir.path().join("home");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    runner::vmoodle(&home, &["init"], "")?;
    let [maria, pg] = vmoodle_test::local_server_args();
    let (args, password) = match engine {
        Engine::Mariadb => maria,
        Engine::Postgresql => pg,
    };
    runner::vmoodle(
        &home,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &password,
    )?;
    for (k, v) in [
        (
            "schema.dataroot",
            format!("{}/instances/<%%INSTANCE%%>", dir.path().display()),
        ),
        ("schema.db_name", "vmb_<%%INSTANCE%%>".into()),
        ("schema.db_login", "vmb_<%%INSTANCE%%>".into()),
        (
            "schema.wwwroot",
            "http://<%%INSTANCE%%>.bench.example.org".into(),
        ),
    ] {
        runner::vmoodle(&home, &["settings", "set", k, &v], "")?;
    }
    eprintln!("[{}] template ...", engine.as_str());
    let (tpl, _source, fixture) = make_template(&home, dir.path(), engine)?;
    o.fixture = fixture;

    eprintln!("[{}] lab ...", engine.as_str());
    let mut lab = Lab::new(engine, LabSpec::new(runner::bin())).context("building the lab")?;
    o.lab_build_s = secs(lab.built_in());
    eprintln!(
        "[{}] lab {} on {}.0/24 built in {:.1} s",
        engine.as_str(),
        lab.prefix(),
        lab.net_prefix(),
        o.lab_build_s
    );
    let r = with_lab(&lab, engine, n, &home, &work, &tpl, &mut o);
    o.teardown_s = secs(lab.teardown());
    r?;
    Ok(o)
}

fn with_lab(
    lab: &Lab,
    engine: Engine,
    n: usize,
    home: &Path,
    work: &Path,
    tpl: &str,
    o: &mut Outcome,
) -> Result<()> {
    let tag = engine.as_str();
    let db1 = lab.node("db1").ip.clone();
    if engine == Engine::Postgresql {
        // PostgreSQL 15 lets only a superuser give a role REPLICATION (as the tests do).
        lab.local_sql("db1", &format!("ALTER ROLE {} SUPERUSER", lab.admin_user()))?;
    }
    let dbtype = match engine {
        Engine::Mariadb => "mariadb",
        Engine::Postgresql => "pgsql",
    };
    vm(
        lab,
        home,
        &[
            "dbserver",
            "add",
            "lab",
            "--type",
            dbtype,
            "--host",
            &db1,
            "--user",
            lab.admin_user(),
            "--password-stdin",
        ],
        lab.admin_password(),
    )?;
    eprintln!("[{tag}] deploying {n} instances onto db1 ...");
    let t = Instant::now();
    vm(
        lab,
        home,
        &[
            "deploy",
            "--template",
            tpl,
            "--count",
            &n.to_string(),
            "--token-pattern",
            "cb{n}",
            "--parallel",
            "2",
            "--dbserver",
            "lab",
        ],
        "",
    )?;
    o.deploy_s = secs(t.elapsed());
    for node in lab.nodes() {
        vm(
            lab,
            home,
            &[
                "node",
                "add",
                &node.name,
                "--address",
                &node.ip,
                "--token-file",
                node.token_file.to_str().context("UTF-8 path")?,
                "--fingerprint",
                &node.fingerprint,
            ],
            "",
        )?;
    }
    let (size_sql, count_sql) = match engine {
        Engine::Mariadb => (
            "SELECT ROUND(SUM(data_length + index_length) / 1048576, 1) FROM information_schema.tables WHERE table_schema NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')",
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')",
        ),
        Engine::Postgresql => (
            "SELECT ROUND(SUM(pg_database_size(datname)) / 1048576.0, 1) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
            "SELECT COUNT(*) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')",
        ),
    };
    o.data_mb = lab
        .local_sql("db1", size_sql)?
        .trim()
        .parse()
        .unwrap_or(0.0);
    o.databases = lab.local_sql("db1", count_sql)?.trim().parse().unwrap_or(0);
    o.datadir_mb = du_mb(&lab.datadir("db1"));

    // The instances' host files, for the writer loop.
    let mut files: Vec<PathBuf> = std::fs::read_dir(home.join("hosts"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("cb") && f.ends_with(".bench.example.org.php"))
        })
        .collect();
    files.sort();
    if files.len() != n {
        bail!("expected {n} host files, found {}", files.len());
    }
    eprintln!("[{tag}] writer loop ...");
    let writer = start_writer(&lab.ns("app"), engine, files.clone())?;
    std::thread::sleep(Duration::from_secs(2));
    let r = measure(lab, engine, home, work, &files, o);
    let log = writer.finish()?;
    let w = r?;
    o.ours = stall(&log, w.create.0, w.create.1);
    // The repoint step, from its start to the next step's (activate).
    let step_at = |name: &str| w.steps.iter().find(|(_, s)| s == name).map(|(t, _)| *t);
    if let Some(a) = step_at("repoint") {
        let b = step_at("activate").unwrap_or(w.create.1);
        o.repoint = stall(&log, a, b);
    }
    for (i, (t, name)) in w.steps.iter().enumerate() {
        let end = w.steps.get(i + 1).map_or(w.create.1, |(t, _)| *t);
        let s = stall(&log, *t, end);
        o.step_stalls
            .push((name.clone(), secs(end - *t), s.longest_ms));
    }
    // The switch: the first commit through the VIP after the last through db1, any instance.
    let vip = format!("{}:", lab.vip());
    if let Some(first_vip) = log
        .commits
        .iter()
        .position(|c| c.at >= w.create.0 && c.endpoint.starts_with(&vip))
    {
        if first_vip > 0 {
            o.switch_ms = Some(ms(log.commits[first_vip].at - log.commits[first_vip - 1].at));
        }
    }
    o.base = stall(&log, w.baseline.0, w.baseline.1);
    Ok(())
}

struct Windows {
    create: (Instant, Instant),
    /// When each step of `cluster create` began (from its progress lines).
    steps: Vec<(Instant, String)>,
    baseline: (Instant, Instant),
}

fn measure(
    lab: &Lab,
    engine: Engine,
    home: &Path,
    work: &Path,
    files: &[PathBuf],
    o: &mut Outcome,
) -> Result<Windows> {
    let tag = engine.as_str();
    let vip = format!("{}/24", lab.vip());
    let args = [
        "cluster",
        "create",
        CLUSTER,
        "--from",
        "lab",
        "--replica",
        "db2",
        "--replica",
        "db3",
        "--proxy",
        "lb1",
        "--proxy",
        "lb2",
        "--vip",
        &vip,
        "--interface",
        "eth0",
    ];
    eprintln!("[{tag}] vmoodle {} ...", args.join(" "));
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns("app")])
        .arg(runner::bin())
        .args(args)
        .env("VMOODLE_HOME", home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .spawn()
        .context("running vmoodle cluster create")?;
    // Without a terminal the progress is plain lines, `NAME: [n/total] step` as each starts.
    let stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            lines.push((Instant::now(), l));
        }
        lines
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut stdout)?;
    let status = child.wait()?;
    let end = Instant::now();
    let lines = reader.join().map_err(|_| anyhow::anyhow!("reader"))?;
    if !status.success() {
        let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        bail!("cluster create failed:\n{}\n{stdout}", text.join("\n"));
    }
    o.create_s = secs(end - start);
    eprintln!("[{tag}] cluster create: {:.1} s", o.create_s);
    let prefix = format!("{CLUSTER}: [");
    let steps: Vec<(Instant, String)> = lines
        .iter()
        .filter_map(|(t, l)| {
            let rest = l.strip_prefix(&prefix)?;
            let (_, name) = rest.split_once("] ")?;
            Some((*t, name.to_string()))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // The job's own step times.
    let jobs: serde_json::Value = serde_json::from_str(&vm(
        lab,
        home,
        &["jobs", "list", "--kind", "cluster-create", "--json"],
        "",
    )?)?;
    let id = jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["state"] == "done"))
        .and_then(|j| j["id"].as_i64())
        .context("no finished cluster-create job")?;
    let job: serde_json::Value = serde_json::from_str(&vm(
        lab,
        home,
        &["jobs", "show", &id.to_string(), "--json"],
        "",
    )?)?;
    // The job's log goes to stderr (what each agent reported), beside the table.
    for l in job["log"].as_array().into_iter().flatten() {
        eprintln!("[{tag}] job log: {}", l.as_str().unwrap_or_default());
    }
    for s in job["steps"].as_array().into_iter().flatten() {
        let name = s["step"].as_str().unwrap_or("?").to_string();
        let secs = s["ms"].as_f64().unwrap_or(0.0) / 1000.0;
        if name.starts_with("seed ") {
            o.seed_s += secs;
        }
        o.job_steps.push((name, secs));
    }
    // Sanity: healthy, and the host files point at the VIP.
    let st = lab.vmoodle(home, &["cluster", "status", CLUSTER, "--json"], "");
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
    if !st["problems"].as_array().is_some_and(|p| p.is_empty()) {
        eprintln!("[{tag}] warning: cluster status reports {}", st["problems"]);
    }
    for f in files {
        let t = read_host_file(f)?;
        if t.host != lab.vip() {
            bail!("{} still names {} after the repoint", f.display(), t.host);
        }
    }

    eprintln!("[{tag}] cluster destroy ...");
    let t = Instant::now();
    vm(lab, home, &["cluster", "destroy", CLUSTER, "--yes"], "")?;
    o.destroy_s = secs(t.elapsed());
    for r in ["db2", "db3"] {
        let role = lab.node_role(r);
        if role.as_deref() != Some("primary") {
            bail!("{r} is {role:?} after cluster destroy, not a standalone server again");
        }
    }
    std::thread::sleep(Duration::from_secs(2));

    eprintln!("[{tag}] baseline: the runbook's dump and load ...");
    let b0 = Instant::now();
    let parts = match engine {
        Engine::Mariadb => baseline_mariadb(lab, work)?,
        Engine::Postgresql => baseline_pg(lab, work)?,
    };
    let b1 = Instant::now();
    o.base_total_s = secs(b1 - b0);
    o.base_parts = parts;
    eprintln!("[{tag}] baseline: {:.1} s", o.base_total_s);
    std::thread::sleep(Duration::from_secs(2));
    Ok(Windows {
        create: (start, end),
        steps,
        baseline: (b0, b1),
    })
}

// ---- the baseline ------------------------------------------------------------------------------

/// Runs `argv` inside a host's namespace with `input` (a file) on stdin; Err with its stderr.
/// Returns its stderr.
fn run_in_with_file(lab: &Lab, host: &str, argv: &[&str], input: &Path) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(host)])
        .args(argv)
        .stdin(std::fs::File::open(input)?)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir("/")
        .output()
        .with_context(|| format!("{argv:?} in {host}"))?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{argv:?} in {host}: {}", err.trim());
    }
    Ok(err)
}

fn timed<T>(
    parts: &mut Vec<(String, f64)>,
    what: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let t = Instant::now();
    let r = f()?;
    parts.push((what.to_string(), secs(t.elapsed())));
    Ok(r)
}

fn baseline_mariadb(lab: &Lab, work: &Path) -> Result<Vec<(String, f64)>> {
    let mut parts = Vec::new();
    let db1 = lab.node("db1").ip.clone();
    let repl_pw = random_hex(12)?;
    let cnf = work.join("admin.cnf");
    write_secret(
        &cnf,
        &format!(
            "[client]\nuser={}\npassword={}\n",
            lab.admin_user(),
            lab.admin_password()
        ),
    )?;
    let dump = work.join("all.sql");
    write_secret(&dump, "")?;
    timed(&mut parts, "replication account on db1", || {
        lab.sql(
            "db1",
            &format!(
                "CREATE USER 'vmb_repl'@'%' IDENTIFIED BY '{repl_pw}';\n\
                 GRANT REPLICATION SLAVE ON *.* TO 'vmb_repl'@'%';"
            ),
        )
        .map_err(|e| anyhow::anyhow!("creating the replication account: {e}"))
    })?;
    timed(
        &mut parts,
        "mariadb-dump of db1 (from the app host)",
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", &lab.ns("app"), "mariadb-dump"])
                .arg(format!("--defaults-file={}", cnf.display()))
                .args([
                    "-h",
                    &db1,
                    "-P",
                    "3306",
                    "--all-databases",
                    "--single-transaction",
                    "--gtid",
                    "--master-data=1",
                    "--routines",
                    "--events",
                    "--triggers",
                    "--quick",
                ])
                .stdin(Stdio::null())
                .stdout(std::fs::OpenOptions::new().write(true).open(&dump)?)
                .stderr(Stdio::piped())
                .current_dir("/")
                .output()?;
            if !out.status.success() {
                bail!("mariadb-dump: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        },
    )?;
    // The GTID the dump was taken at: --gtid --master-data=1 writes `SET GLOBAL
    // gtid_slave_pos='...'` at the end of the dump (after the mysql schema is loaded).
    let gtid = {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&dump)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        let tail = String::from_utf8_lossy(&tail);
        tail.rsplit_once("gtid_slave_pos='")
            .and_then(|(_, r)| r.split('\'').next())
            .map(str::to_string)
            .context("the dump names no gtid_slave_pos")?
    };
    let dump_mb = std::fs::metadata(&dump)?.len() as f64 / 1_048_576.0;
    eprintln!("  dump: {dump_mb:.0} MB at GTID {gtid}");
    for r in ["db2", "db3"] {
        let cnf = server_dir(lab, r)?.join("my.cnf");
        timed(&mut parts, &format!("load into {r} and connect it"), || {
            // A replica-to-be: no replication, an empty binary log (the load itself is kept
            // out of it, so the replica's GTIDs stay db1's).
            lab.server_sql(r, "STOP SLAVE; RESET SLAVE ALL; RESET MASTER;")?;
            run_in_with_file(
                lab,
                r,
                &[
                    "mariadb",
                    &format!("--defaults-file={}", cnf.display()),
                    "--init-command=SET SESSION sql_log_bin=0",
                ],
                &dump,
            )?;
            lab.server_sql(
                r,
                &format!(
                    "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL gtid_slave_pos = '{gtid}';\n\
                     CHANGE MASTER TO MASTER_HOST='{db1}', MASTER_PORT=3306, MASTER_USER='vmb_repl', \
                     MASTER_PASSWORD='{repl_pw}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;\n\
                     START SLAVE; SET GLOBAL read_only = ON;"
                ),
            )?;
            Ok(())
        })?;
    }
    timed(&mut parts, "both replicas caught up with db1", || {
        let pos = lab
            .sql("db1", "SELECT @@gtid_binlog_pos")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .trim()
            .to_string();
        for r in ["db2", "db3"] {
            let v = lab.server_sql(r, &format!("SELECT MASTER_GTID_WAIT('{pos}', 300)"))?;
            if v.trim() != "0" {
                let st = lab
                    .server_sql(r, "SHOW SLAVE STATUS\\G")
                    .unwrap_or_default();
                bail!("{r} did not reach {pos}: {}\n{st}", v.trim());
            }
            let running = lab.server_sql(
                r,
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVE_RUNNING'",
            )?;
            if running.trim() != "ON" {
                bail!("{r}: replication is not running ({})", running.trim());
            }
        }
        Ok(())
    })?;
    let _ = std::fs::remove_file(&dump);
    Ok(parts)
}

fn baseline_pg(lab: &Lab, work: &Path) -> Result<Vec<(String, f64)>> {
    let mut parts = Vec::new();
    let db1 = lab.node("db1").ip.clone();
    let pgpass = work.join("pgpass");
    write_secret(
        &pgpass,
        &format!("*:*:*:{}:{}\n", lab.admin_user(), lab.admin_password()),
    )?;
    let dump = work.join("all.sql");
    write_secret(&dump, "")?;
    timed(&mut parts, "pg_dumpall of db1 (from the app host)", || {
        run(Command::new("ip")
            .args(["netns", "exec", &lab.ns("app"), "env"])
            .arg(format!("PGPASSFILE={}", pgpass.display()))
            .arg(format!("{PG_BIN}/pg_dumpall"))
            .args([
                "-h",
                &db1,
                "-p",
                "5432",
                "-U",
                lab.admin_user(),
                "-l",
                "postgres",
                "-f",
            ])
            .arg(&dump)
            .current_dir("/"))
        .map(|_| ())
    })?;
    let dump_mb = std::fs::metadata(&dump)?.len() as f64 / 1_048_576.0;
    eprintln!("  dump: {dump_mb:.0} MB");
    for r in ["db2", "db3"] {
        let sock = server_dir(lab, r)?;
        timed(&mut parts, &format!("psql load into {r}"), || {
            let err = run_in_with_file(
                lab,
                r,
                &[
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    &format!("{PG_BIN}/psql"),
                    "-h",
                    sock.to_str().context("UTF-8 path")?,
                    "-p",
                    "5432",
                    "-X",
                    "-q",
                    "-d",
                    "postgres",
                ],
                &dump,
            )?;
            // The one error expected: the dump creates the postgres role, which exists.
            let bad: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("ERROR:") && !l.contains("role \"postgres\" already exists"))
                .collect();
            if !bad.is_empty() {
                bail!("loading into {r}: {}", bad.join("\n"));
            }
            Ok(())
        })?;
    }
    let _ = std::fs::remove_file(&dump);
    Ok(parts)
}

// ---- output ------------------------------------------------------------------------------------

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn ratio(base: f64, ours: f64) -> String {
    if ours > 0.0 && base > 0.0 {
        format!("{:.1}x", base / ours)
    } else {
        String::new()
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

fn print_table(results: &[(Engine, Option<Outcome>)], n: usize) {
    let get = |e: Engine| {
        results
            .iter()
            .find(|(x, _)| *x == e)
            .and_then(|(_, o)| o.as_ref())
    };
    let (m, p) = (get(Engine::Mariadb), get(Engine::Postgresql));
    println!(
        "Cluster create: a 1+2 cluster (2 replicas, 2 HAProxy + keepalived proxies, a VIP) from a lab server holding {n} instances"
    );
    println!(
        "(seconds unless stated; lab of network namespaces on this machine; ratio = baseline / ours, above 1 where ours is faster or stalls less)\n"
    );
    println!("| figure | MariaDB ours | MariaDB baseline | ratio | PostgreSQL ours | PostgreSQL baseline | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    type Cell = fn(&Outcome) -> (String, String, String);
    let rows: Vec<(&str, Cell)> = vec![
        ("fixture of the instances", |o| (o.fixture.to_string(), String::new(), String::new())),
        ("data on db1: its databases, MB (MariaDB: tables + indexes; PostgreSQL: pg_database_size) (whole datadir, MB)", |o| {
            (
                format!("{} ({:.0})", f1(o.data_mb), o.datadir_mb),
                String::new(),
                String::new(),
            )
        }),
        ("seed the two replicas (ours: the job's seed steps; baseline: dump, load into each, connect, caught up)", |o| {
            (f1(o.seed_s), f1(o.base_total_s), ratio(o.base_total_s, o.seed_s))
        }),
        ("build the cluster (ours: whole `cluster create`; baseline: its seeding alone, no proxies, VIP or repoint)", |o| {
            (f1(o.create_s), f1(o.base_total_s), ratio(o.base_total_s, o.create_s))
        }),
        ("longest write stall during the run, ms (ours: `cluster create`; baseline: dump and load)", |o| {
            (
                opt_ms(o.ours.longest_ms),
                opt_ms(o.base.longest_ms),
                match (o.base.longest_ms, o.ours.longest_ms) {
                    (Some(b), Some(u)) => ratio(b, u),
                    _ => String::new(),
                },
            )
        }),
        ("longest write stall across the repoint step, ms (baseline: editing config.php, not measured)", |o| {
            (opt_ms(o.repoint.longest_ms), "—".into(), String::new())
        }),
        ("gap at the switch: last commit via db1 to first via the VIP, ms", |o| {
            (opt_ms(o.switch_ms), "—".into(), String::new())
        }),
        ("failed writes", |o| {
            (o.ours.failures.to_string(), o.base.failures.to_string(), String::new())
        }),
        ("writes committed (median gap between commits, ms)", |o| {
            (
                format!("{} ({})", o.ours.commits, opt_ms(o.ours.median_ms)),
                format!("{} ({})", o.base.commits, opt_ms(o.base.median_ms)),
                String::new(),
            )
        }),
    ];
    for (label, cell) in rows {
        let c = |o: Option<&Outcome>| {
            o.map_or(("not run".into(), "not run".into(), String::new()), cell)
        };
        let (a, b, r) = c(m);
        let (d, e, s) = c(p);
        println!("| {label} | {a} | {b} | {r} | {d} | {e} | {s} |");
    }
    for (e, o) in results {
        let Some(o) = o else { continue };
        println!("\n{}:", engine_name(*e));
        println!(
            "- lab built in {:.1} s; {} instances deployed in {:.1} s; {} databases on db1 (the instances and the template's live copy that deploy clones from)",
            o.lab_build_s, o.instances, o.deploy_s, o.databases
        );
        println!(
            "- `cluster create` steps (the job's record, s; longest write stall while each ran, ms): {}",
            o.job_steps
                .iter()
                .map(|(name, s)| {
                    let st = o
                        .step_stalls
                        .iter()
                        .find(|(n, _, _)| n == name)
                        .and_then(|(_, _, l)| *l);
                    format!("{name} {s:.2} ({})", opt_ms(st))
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        if o.ours.longest_ms.is_some() {
            println!(
                "- ours: the longest stall began {:.1} s into `cluster create`, between commits via {} and {}",
                o.ours.longest_at_s, o.ours.longest_between.0, o.ours.longest_between.1
            );
        }
        println!(
            "- baseline parts (s): {}",
            o.base_parts
                .iter()
                .map(|(w, s)| format!("{w} {s:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if o.base.longest_ms.is_some() {
            println!(
                "- baseline: the longest stall began {:.1} s into it, between commits via {} and {}",
                o.base.longest_at_s, o.base.longest_between.0, o.base.longest_between.1
            );
        }
        for (what, s) in [("ours", &o.ours), ("baseline", &o.base)] {
            if let Some(f) = &s.first_failure {
                println!("- {what}: first failed write: {f}");
            }
        }
        println!(
            "- `cluster destroy` {:.1} s; lab teardown {:.1} s",
            o.destroy_s, o.teardown_s
        );
    }
    println!(
        "\nThe writer loop reads an instance's host file before each write (as the config hook does on each request), connects to the dbhost:dbport it names with the instance's own dbuser/dbpass, inserts one row and disconnects; the {n} instances in turn, {} ms apart. The dataroot is the fresh fixture's (the database tier is what is measured). 2 cores shared with other work: expect noise of tens of percent between runs.",
        WRITER_PAUSE.as_millis()
    );
}

fn usage() -> ! {
    eprintln!("usage: cluster-bench [--engine mariadb|postgresql] [--instances N]");
    std::process::exit(2)
}

fn main() -> Result<()> {
    let mut engines = vec![Engine::Mariadb, Engine::Postgresql];
    let mut instances = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        match key.as_str() {
            "--engine" => {
                engines = match value().as_str() {
                    "mariadb" => vec![Engine::Mariadb],
                    "postgresql" | "pgsql" => vec![Engine::Postgresql],
                    "all" => vec![Engine::Mariadb, Engine::Postgresql],
                    _ => usage(),
                }
            }
            "--instances" => {
                instances = value().parse().unwrap_or_else(|_| usage());
                if instances == 0 {
                    usage();
                }
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    for e in &engines {
        if let Some(why) = vmoodle_test::lab::unusable(*e) {
            bail!("cannot build a lab for {}: {why}", e.as_str());
        }
    }
    let mut results: Vec<(Engine, Option<Outcome>)> = Vec::new();
    let mut failed = Vec::new();
    for e in [Engine::Mariadb, Engine::Postgresql] {
        if !engines.contains(&e) {
            results.push((e, None));
            continue;
        }
        match bench_engine(e, instances) {
            Ok(o) => results.push((e, Some(o))),
            Err(err) => {
                eprintln!("[{}] failed: {err:#}", e.as_str());
                failed.push(e.as_str());
                results.push((e, None));
            }
        }
    }
    print_table(&results, instances);
    if !failed.is_empty() {
        bail!("the benchmark failed on {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_host_file_like_the_hook() {
        let text = "<?php\nreturn [\n    'enabled' => true,\n    'cfg' => [\n        'dbhost' => '10.1.2.100',\n        'dbname' => 'vmb_cb1',\n        'dbuser' => 'vmb_cb1',\n        'dbpass' => 'a\\'b\\\\c',\n        'dboptions' => [\n            'dbpersist' => false,\n            'dbport' => 3306,\n            'dbsocket' => false,\n            'readonly' => [\n                'instance' => [['dbhost' => '10.1.2.100', 'dbport' => 3307]],\n            ],\n        ],\n    ],\n];\n";
        assert_eq!(php_value(text, "dbhost").as_deref(), Some("10.1.2.100"));
        assert_eq!(php_value(text, "dbport").as_deref(), Some("3306"));
        assert_eq!(php_value(text, "dbpass").as_deref(), Some("a'b\\c"));
    }
}
