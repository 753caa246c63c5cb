//! `vmoodle cluster switchover` on a lab of network namespaces (vmoodle_test::lab), beside the
//! manual runbook switchover an operator's script would do, on MariaDB and PostgreSQL.
//!
//! A lab server (db1) holds N instances (default 3) deployed by vmoodle from a template of the
//! fresh fixture; `vmoodle cluster create prod` makes db1 the primary, db2 and db3 replicas,
//! lb1/lb2 HAProxy + keepalived with a VIP. Then:
//! - ours: `vmoodle cluster switchover prod --to <db2|db1>`, back and forth, R runs (default 10);
//! - the baseline, on the same cluster afterwards, R runs back and forth, straight on the
//!   servers (their sockets; no vmoodle, no agent calls). MariaDB: on the old primary
//!   `SET GLOBAL read_only=ON`; on the candidate `MASTER_GTID_WAIT(<old gtid_binlog_pos>, 30);
//!   STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only=OFF`; the other replica and the old
//!   primary `CHANGE MASTER TO <candidate> ... MASTER_USE_GTID=current_pos; START SLAVE` (with
//!   the bench's own replication account `bench_repl`). PostgreSQL: `primary_conninfo` of the
//!   old primary set to the candidate (ALTER SYSTEM; ignored until it runs as a standby),
//!   `pg_ctl -m fast stop` of the old primary, the candidate waits until it has replayed past
//!   the old primary's shutdown checkpoint (pg_controldata), `SELECT pg_promote()`, the other
//!   standby repointed (ALTER SYSTEM primary_conninfo + pg_reload_conf()), the old primary
//!   started with standby.signal. The baseline's standbys use no replication slot
//!   (primary_slot_name=''; wal_keep_size keeps the WAL). HAProxy (as vmoodle configured it)
//!   follows through the agents' health checks in both cases.
//!
//! All along, a writer thread in the lab's app namespace (the Moodle server) commits one row
//! per transaction (autocommit INSERT of a fresh id) through the VIP's writer port with the
//! first instance's own account (from its host file), over a persistent connection that it
//! reopens on any error (1 s connect timeout), in a tight loop with no pause. Per run: the
//! longest gap between acknowledged commits across the switchover; the gap from the last commit
//! acknowledged before the first failed write to the first acknowledged after the last failed
//! one; the command's (or the script's) wall time; and the acknowledged writes missing on the
//! new primary afterwards (every acknowledged id is looked for there).
//!
//! Needs root (network namespaces), HAProxy, keepalived, MariaDB, PostgreSQL 15.
//! Run: ./scripts/bench-switchover [--engine mariadb|postgresql] [--instances N] [--runs N]

use anyhow::{bail, Context, Result};
use std::collections::HashSet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmoodle_test::lab::{Engine, Lab, LabSpec, PG_BIN};
use vmoodle_test::{MariaDb, PgDb, TempDir};

mod cluster_common;
mod runner;

use cluster_common::*;

const CLUSTER: &str = "prod";
/// The table the writer inserts into, in the first instance's database.
const PROBE: &str = "vmb_switch_probe";
/// The baseline's replication account.
const REPL: &str = "bench_repl";

// ---- the host files (as cluster_bench.rs reads them) --------------------------------------------

// ---- SQL from the app namespace (sqlx) ----------------------------------------------------------

enum Conn {
    My(sqlx::MySqlConnection),
    Pg(sqlx::PgConnection),
}

/// Connects (1 s timeout) to `host:port` with the target's account and database.
async fn connect(
    engine: Engine,
    t: &DbTarget,
    host: &str,
    port: u16,
) -> std::result::Result<Conn, String> {
    use sqlx::{ConnectOptions, Connection};
    let fut = async {
        Ok::<Conn, sqlx::Error>(match engine {
            Engine::Mariadb => {
                let o = sqlx::mysql::MySqlConnectOptions::new()
                    .host(host)
                    .port(port)
                    .username(&t.user)
                    .password(&t.pass)
                    .database(&t.name)
                    .ssl_mode(sqlx::mysql::MySqlSslMode::Disabled)
                    .disable_statement_logging();
                Conn::My(sqlx::MySqlConnection::connect_with(&o).await?)
            }
            Engine::Postgresql => {
                let o = sqlx::postgres::PgConnectOptions::new()
                    .host(host)
                    .port(port)
                    .username(&t.user)
                    .password(&t.pass)
                    .database(&t.name)
                    .ssl_mode(sqlx::postgres::PgSslMode::Disable)
                    .disable_statement_logging();
                Conn::Pg(sqlx::PgConnection::connect_with(&o).await?)
            }
        })
    };
    match tokio::time::timeout(Duration::from_secs(1), fut).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: no answer within 1 s".into()),
    }
}

async fn execute(c: &mut Conn, sql: &str, args: &[i64]) -> std::result::Result<(), String> {
    let fut = async {
        match c {
            Conn::My(c) => {
                let mut q = sqlx::query(sql);
                for a in args {
                    q = q.bind(*a);
                }
                q.execute(c).await.map(|_| ())
            }
            Conn::Pg(c) => {
                let mut q = sqlx::query(sql);
                for a in args {
                    q = q.bind(*a);
                }
                q.execute(c).await.map(|_| ())
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), fut).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
    }
}

fn join_netns(ns: &str) -> Result<tokio::runtime::Runtime> {
    let netns = PathBuf::from("/run/netns").join(ns);
    let f = std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
    // Network namespaces are per thread: this thread joins the app host's.
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("joining the app host's network namespace")?;
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The probe ids between lo and hi (inclusive) on the server at `host` (its own address, not
/// the VIP), read with the instance's account from the app namespace.
fn ids_on(
    ns: &str,
    engine: Engine,
    t: &DbTarget,
    host: &str,
    port: u16,
    lo: i64,
    hi: i64,
) -> Result<HashSet<i64>> {
    let (ns, t, host) = (ns.to_string(), t.clone(), host.to_string());
    std::thread::spawn(move || -> Result<HashSet<i64>> {
        let rt = join_netns(&ns)?;
        rt.block_on(async move {
            use sqlx::Row;
            let mut c = connect(engine, &t, &host, port)
                .await
                .map_err(|e| anyhow::anyhow!("{host}: {e}"))?;
            let rows = match &mut c {
                Conn::My(c) => {
                    sqlx::query(&format!("SELECT id FROM {PROBE} WHERE id BETWEEN ? AND ?"))
                        .bind(lo)
                        .bind(hi)
                        .fetch_all(c)
                        .await?
                        .iter()
                        .map(|r| r.try_get::<i64, _>(0))
                        .collect::<std::result::Result<HashSet<i64>, _>>()?
                }
                Conn::Pg(c) => sqlx::query(&format!(
                    "SELECT id FROM {PROBE} WHERE id BETWEEN $1 AND $2"
                ))
                .bind(lo)
                .bind(hi)
                .fetch_all(c)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<std::result::Result<HashSet<i64>, _>>()?,
            };
            Ok(rows)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the reading thread panicked"))?
}

// ---- the writer ---------------------------------------------------------------------------------

#[derive(Default)]
struct WriterLog {
    /// Acknowledged commits: when, which id.
    acks: Vec<(Instant, i64)>,
    /// Failed attempts (connect or insert).
    fails: Vec<(Instant, String)>,
}

struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<WriterLog>>,
    handle: std::thread::JoinHandle<Result<()>>,
}

/// Starts the writer in namespace `ns`, through `t` (the VIP's writer port); returns once it
/// has made its table and committed once.
fn start_writer(ns: &str, engine: Engine, t: DbTarget) -> Result<Writer> {
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(WriterLog::default()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
    let (stop2, log2, ns) = (stop.clone(), log.clone(), ns.to_string());
    let handle = std::thread::spawn(move || -> Result<()> {
        let rt = match join_netns(&ns) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("{e:#}")));
                return Err(e);
            }
        };
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {PROBE} (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)"
        );
        let insert = match engine {
            Engine::Mariadb => format!("INSERT INTO {PROBE} (id, at) VALUES (?, ?)"),
            Engine::Postgresql => format!("INSERT INTO {PROBE} (id, at) VALUES ($1, $2)"),
        };
        rt.block_on(async move {
            let first = async {
                let mut c = connect(engine, &t, &t.host, t.port).await?;
                execute(&mut c, &create, &[]).await?;
                execute(&mut c, &insert, &[0, 0]).await?;
                Ok::<Conn, String>(c)
            }
            .await;
            let mut conn = match first {
                Ok(c) => Some(c),
                Err(e) => {
                    let msg = format!("the writer cannot write through {}: {e}", t.host);
                    let _ = ready_tx.send(Err(msg.clone()));
                    bail!(msg);
                }
            };
            let _ = ready_tx.send(Ok(()));
            let t0 = Instant::now();
            let mut id: i64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(engine, &t, &t.host, t.port).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            log2.lock().unwrap().fails.push((Instant::now(), e));
                            // Refused connections fail at once: do not spin flat out.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                    },
                };
                id += 1;
                let r = execute(c, &insert, &[id, t0.elapsed().as_millis() as i64]).await;
                let at = Instant::now();
                match r {
                    Ok(()) => log2.lock().unwrap().acks.push((at, id)),
                    Err(e) => {
                        log2.lock().unwrap().fails.push((at, e));
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            Ok(())
        })
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Writer { stop, log, handle }),
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
    fn acks_len(&self) -> usize {
        self.log.lock().unwrap().acks.len()
    }
    /// Waits until a commit is acknowledged after `t` (and `settle` has passed since `t`).
    fn wait_resumed(&self, t: Instant, settle: Duration, within: Duration) -> Result<()> {
        loop {
            let ok = self
                .log
                .lock()
                .unwrap()
                .acks
                .last()
                .is_some_and(|(a, _)| *a > t);
            if ok && t.elapsed() >= settle {
                return Ok(());
            }
            if t.elapsed() > within {
                let last = self
                    .log
                    .lock()
                    .unwrap()
                    .fails
                    .last()
                    .map(|(_, e)| e.clone());
                bail!("the writer did not commit within {within:?} after the switchover (last error: {last:?})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(r) => r,
            Err(_) => bail!("the writer thread panicked"),
        }
    }
}

// ---- one run ------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Run {
    to: String,
    wall_s: f64,
    /// Longest gap between acknowledged commits overlapping the switchover, ms.
    longest_ms: f64,
    /// Last ack before the first failed write to the first ack after the last failed one, ms.
    fail_ms: Option<f64>,
    failures: usize,
    acked: usize,
    lost: usize,
    first_failure: Option<String>,
}

/// What the writer saw around a switchover that ran from `s` to `e`, up to `until`.
fn analyse(
    log: &WriterLog,
    s: Instant,
    e: Instant,
    until: Instant,
) -> (f64, Option<f64>, usize, Option<String>) {
    let a = &log.acks;
    let mut longest = 0.0f64;
    for w in a.windows(2) {
        let (x, y) = (w[0].0, w[1].0);
        if y >= s && x <= e {
            longest = longest.max(ms(y - x));
        }
    }
    let fails: Vec<&(Instant, String)> = log
        .fails
        .iter()
        .filter(|(t, _)| *t >= s && *t <= until)
        .collect();
    let fail_ms = match (fails.first(), fails.last()) {
        (Some((f0, _)), Some((f1, _))) => {
            let before = a.iter().rev().find(|(t, _)| t < f0).map(|(t, _)| *t);
            let after = a.iter().find(|(t, _)| t > f1).map(|(t, _)| *t);
            match (before, after) {
                (Some(b), Some(c)) => Some(ms(c - b)),
                _ => None,
            }
        }
        _ => None,
    };
    (
        longest,
        fail_ms,
        fails.len(),
        fails.first().map(|(_, m)| m.clone()),
    )
}

struct Ctx<'a> {
    lab: &'a Lab,
    engine: Engine,
    home: &'a Path,
    target: DbTarget,
    writer: &'a Writer,
    /// Acks already checked on a primary.
    checked: usize,
}

impl Ctx<'_> {
    /// Runs one switchover to `to` (`f` does it), then measures and checks.
    fn measure(&mut self, to: &str, f: impl FnOnce() -> Result<()>) -> Result<Run> {
        let s = Instant::now();
        f()?;
        let e = Instant::now();
        self.writer
            .wait_resumed(e, Duration::from_secs(1), Duration::from_secs(30))?;
        let until = Instant::now();
        // Every acknowledged id so far (since the previous check) on the new primary.
        let cut = self.writer.acks_len();
        let (ids, analysed) = {
            let log = self.writer.log.lock().unwrap();
            let ids: Vec<i64> = log.acks[self.checked..cut]
                .iter()
                .map(|(_, i)| *i)
                .collect();
            (ids, analyse(&log, s, e, until))
        };
        let (lo, hi) = (
            ids.iter().copied().min().unwrap_or(0),
            ids.iter().copied().max().unwrap_or(0),
        );
        let ip = self.lab.node(to).ip.clone();
        let have = ids_on(
            &self.lab.ns("app"),
            self.engine,
            &self.target,
            &ip,
            self.lab.db_port(),
            lo,
            hi,
        )?;
        let lost = ids.iter().filter(|i| !have.contains(i)).count();
        let acked_in = {
            let log = self.writer.log.lock().unwrap();
            log.acks
                .iter()
                .filter(|(t, _)| *t >= s && *t <= until)
                .count()
        };
        self.checked = cut;
        let (longest_ms, fail_ms, failures, first_failure) = analysed;
        Ok(Run {
            to: to.to_string(),
            wall_s: secs(e - s),
            longest_ms,
            fail_ms,
            failures,
            acked: acked_in,
            lost,
            first_failure,
        })
    }
}

fn other_of(p: &str) -> &'static str {
    if p == "db1" {
        "db2"
    } else {
        "db1"
    }
}

// ---- waiting for a settled cluster --------------------------------------------------------------

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until every replica replicates from `primary` and has applied what it holds now.
fn wait_replicas(lab: &Lab, engine: Engine, primary: &str, replicas: &[&str]) -> Result<()> {
    match engine {
        Engine::Mariadb => {
            let pos = lab
                .local_sql(primary, "SELECT @@gtid_binlog_pos")?
                .trim()
                .to_string();
            for r in replicas {
                let v = lab.local_sql(r, &format!("SELECT MASTER_GTID_WAIT('{pos}', 30)"))?;
                if v.trim() != "0" {
                    let st = lab.local_sql(r, "SHOW SLAVE STATUS\\G").unwrap_or_default();
                    bail!("{r} did not reach {pos} of {primary}:\n{st}");
                }
            }
        }
        Engine::Postgresql => {
            let lsn = lab
                .local_sql(primary, "SELECT pg_current_wal_lsn()")?
                .trim()
                .to_string();
            for r in replicas {
                eventually(
                    &format!("{r} streaming and past {lsn} of {primary}"),
                    Duration::from_secs(30),
                    || {
                        lab.local_sql(
                            r,
                            &format!(
                                "SELECT (SELECT status FROM pg_stat_wal_receiver) = 'streaming' \
                                 AND pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
                            ),
                        )
                        .is_ok_and(|v| v.trim() == "t")
                    },
                )?;
            }
        }
    }
    Ok(())
}

// ---- the baseline -------------------------------------------------------------------------------

fn pgpass_of(lab: &Lab, host: &str) -> Result<PathBuf> {
    Ok(server_dir(lab, host)?.join("bench_repl.pgpass"))
}

/// Creates the baseline's replication account on the primary (it replicates to the others)
/// and, on PostgreSQL, a password file for it on each database host (0600, postgres).
fn baseline_setup(lab: &Lab, engine: Engine, primary: &str, pw: &str) -> Result<()> {
    match engine {
        Engine::Mariadb => {
            lab.local_sql(
                primary,
                &format!(
                    "CREATE USER '{REPL}'@'%' IDENTIFIED BY '{pw}';\n\
                     GRANT REPLICATION SLAVE ON *.* TO '{REPL}'@'%';"
                ),
            )?;
        }
        Engine::Postgresql => {
            lab.local_sql(
                primary,
                &format!("CREATE ROLE {REPL} WITH REPLICATION LOGIN PASSWORD '{pw}'"),
            )?;
            for h in ["db1", "db2", "db3"] {
                let p = pgpass_of(lab, h)?;
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(true)
                        .write(true)
                        .mode(0o600)
                        .open(&p)?;
                    f.write_all(format!("*:5432:*:{REPL}:{pw}\n").as_bytes())?;
                }
                run(Command::new("chown").arg("postgres:postgres").arg(&p))?;
            }
        }
    }
    Ok(())
}

fn baseline_mariadb(lab: &Lab, old: &str, new: &str, other: &str, pw: &str) -> Result<()> {
    let pos = lab
        .local_sql(old, "SET GLOBAL read_only = ON;\nSELECT @@gtid_binlog_pos;")?
        .trim()
        .to_string();
    let w = lab.local_sql(new, &format!("SELECT MASTER_GTID_WAIT('{pos}', 30)"))?;
    if w.trim() != "0" {
        bail!("{new} did not reach {pos} within 30 s");
    }
    lab.local_sql(
        new,
        "STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL read_only = OFF;",
    )?;
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT=3306, MASTER_USER='{REPL}', \
         MASTER_PASSWORD='{pw}', MASTER_USE_GTID=current_pos, MASTER_CONNECT_RETRY=1;\nSTART SLAVE;",
        lab.node(new).ip
    );
    lab.local_sql(other, &format!("STOP SLAVE;\n{change}"))?;
    lab.local_sql(old, &change)?;
    Ok(())
}

fn pg_conninfo(lab: &Lab, to: &str, me: &str) -> Result<String> {
    Ok(format!(
        "host={} port=5432 user={REPL} passfile={} application_name={me}",
        lab.node(to).ip,
        pgpass_of(lab, me)?.display()
    ))
}

fn baseline_pg(lab: &Lab, old: &str, new: &str, other: &str) -> Result<()> {
    // The old primary's standby settings first (a primary ignores them).
    lab.local_sql(
        old,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = '{}';\nALTER SYSTEM SET primary_slot_name = '';",
            pg_conninfo(lab, new, old)?
        ),
    )?;
    let data = lab.datadir(old);
    let d = data.to_str().context("UTF-8 path")?;
    run(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        &format!("{PG_BIN}/pg_ctl"),
        "-D",
        d,
        "-m",
        "fast",
        "-w",
        "stop",
    ]))
    .context("stopping the old primary")?;
    let cd = run(Command::new(format!("{PG_BIN}/pg_controldata"))
        .arg("-D")
        .arg(&data)
        .env("LC_ALL", "C"))?;
    let get = |k: &str| {
        cd.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    if get("Database cluster state:").as_deref() != Some("shut down") {
        bail!("{old} did not shut down cleanly");
    }
    let lsn = get("Latest checkpoint location:").context("no checkpoint location")?;
    eventually(
        &format!("{new} replayed past {lsn}"),
        Duration::from_secs(30),
        || {
            lab.local_sql(
                new,
                &format!("SELECT pg_last_wal_replay_lsn() > '{lsn}'::pg_lsn"),
            )
            .is_ok_and(|v| v.trim() == "t")
        },
    )?;
    let p = lab.local_sql(new, "SELECT pg_promote()")?;
    if p.trim() != "t" {
        bail!("pg_promote on {new} answered {p:?}");
    }
    lab.local_sql(
        other,
        &format!(
            "ALTER SYSTEM SET primary_conninfo = '{}';\nALTER SYSTEM SET primary_slot_name = '';\nSELECT pg_reload_conf();",
            pg_conninfo(lab, new, other)?
        ),
    )?;
    let signal = data.join("standby.signal");
    std::fs::write(&signal, "")?;
    run(Command::new("chown").arg("postgres:postgres").arg(&signal))?;
    let log = server_dir(lab, old)?.join("server.log");
    run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.ns(old),
        "runuser",
        "-u",
        "postgres",
        "--",
        &format!("{PG_BIN}/pg_ctl"),
        "-D",
        d,
        "-l",
        log.to_str().context("UTF-8 path")?,
        "-w",
        "start",
    ]))
    .context("starting the old primary as a standby")?;
    Ok(())
}

/// Gives the servers back to the agents' settings (PostgreSQL: the ALTER SYSTEM values reset).
fn baseline_restore(lab: &Lab, engine: Engine) -> Result<()> {
    if engine == Engine::Postgresql {
        for h in ["db1", "db2", "db3"] {
            lab.local_sql(
                h,
                "ALTER SYSTEM RESET primary_conninfo;\nALTER SYSTEM RESET primary_slot_name;\nSELECT pg_reload_conf();",
            )?;
        }
    }
    Ok(())
}

// ---- one engine ---------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Outcome {
    lab_build_s: f64,
    deploy_s: f64,
    create_s: f64,
    destroy_s: f64,
    ours: Vec<Run>,
    base: Vec<Run>,
    base_left_out: Option<String>,
    teardown_s: f64,
}

fn make_template(
    home: &Path,
    dir: &Path,
    engine: Engine,
) -> Result<(String, Box<dyn std::any::Any>)> {
    let (server, dump, tar, www) = match engine {
        Engine::Mariadb => (
            "maria",
            "fresh-mariadb.sql.gz",
            "fresh-dataroot.tar.gz",
            "http://master.moodle.test",
        ),
        Engine::Postgresql => (
            "pg",
            "fresh-pgsql.sql.gz",
            "fresh-pgsql-dataroot.tar.gz",
            "http://masterpg.moodle.test",
        ),
    };
    let (name, keep, user, password): (String, Box<dyn std::any::Any>, String, String) =
        match engine {
            Engine::Mariadb => {
                let d = MariaDb::create("swsrc");
                d.load_fixture(dump);
                (
                    d.name.clone(),
                    Box::new(d),
                    vmoodle_test::mariadb_user(),
                    vmoodle_test::mariadb_password(),
                )
            }
            Engine::Postgresql => {
                let d = PgDb::create("swsrc");
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
            "--force-admin-account",
        ],
        &password,
    )?;
    let tpl = format!("sw{}", std::process::id());
    runner::vmoodle(home, &["snapshot", "src", "--template", &tpl], "")?;
    Ok((tpl, keep))
}

fn bench_engine(engine: Engine, n: usize, runs: usize) -> Result<Outcome> {
    let mut o = Outcome::default();
    let dir = TempDir::new("switchbench");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    let home = dir.path().join("home");
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
    let tag = engine.as_str();
    eprintln!("[{tag}] template ...");
    let (tpl, _source) = make_template(&home, dir.path(), engine)?;
    eprintln!("[{tag}] lab ...");
    let mut lab = Lab::new(engine, LabSpec::new(runner::bin())).context("building the lab")?;
    o.lab_build_s = secs(lab.built_in());
    eprintln!(
        "[{tag}] lab {} on {}.0/24 built in {:.1} s",
        lab.prefix(),
        lab.net_prefix(),
        o.lab_build_s
    );
    let r = with_lab(&lab, engine, n, runs, &home, &tpl, &mut o);
    o.teardown_s = secs(lab.teardown());
    r?;
    Ok(o)
}

fn with_lab(
    lab: &Lab,
    engine: Engine,
    n: usize,
    runs: usize,
    home: &Path,
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
            "sw{n}",
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
    let vip = format!("{}/24", lab.vip());
    let create = [
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
    eprintln!("[{tag}] cluster create ...");
    let t = Instant::now();
    vm(lab, home, &create, "")?;
    o.create_s = secs(t.elapsed());
    eprintln!("[{tag}] cluster create: {:.1} s", o.create_s);

    // The first instance's host file: the VIP's writer port and the instance's own account.
    let mut files: Vec<PathBuf> = std::fs::read_dir(home.join("hosts"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("sw") && f.ends_with(".bench.example.org.php"))
        })
        .collect();
    files.sort();
    if files.len() != n {
        bail!("expected {n} host files, found {}", files.len());
    }
    let target = read_host_file(&files[0])?;
    if target.host != lab.vip() {
        bail!("{} names {}, not the VIP", files[0].display(), target.host);
    }
    eprintln!(
        "[{tag}] writer through {}:{} as {} ...",
        target.host, target.port, target.user
    );
    let writer = start_writer(&lab.ns("app"), engine, target.clone())?;
    std::thread::sleep(Duration::from_secs(1));
    let r = switchovers(lab, engine, runs, home, target, &writer, o);
    let w = writer.finish();
    let r = r.and(w);
    eprintln!("[{tag}] cluster destroy ...");
    let t = Instant::now();
    let d = vm(lab, home, &["cluster", "destroy", CLUSTER, "--yes"], "");
    o.destroy_s = secs(t.elapsed());
    // The baseline's replication account (db1 holds the instances' data again).
    let drop = match engine {
        Engine::Mariadb => {
            format!("SET SESSION sql_log_bin = 0;\nDROP USER IF EXISTS '{REPL}'@'%';")
        }
        Engine::Postgresql => format!("DROP ROLE IF EXISTS {REPL}"),
    };
    for h in ["db1", "db2", "db3"] {
        let _ = lab.local_sql(h, &drop);
        if let Ok(p) = pgpass_of(lab, h) {
            let _ = std::fs::remove_file(p);
        }
    }
    r?;
    d?;
    Ok(())
}

fn switchovers(
    lab: &Lab,
    engine: Engine,
    runs: usize,
    home: &Path,
    target: DbTarget,
    writer: &Writer,
    o: &mut Outcome,
) -> Result<()> {
    let tag = engine.as_str();
    let mut ctx = Ctx {
        lab,
        engine,
        home,
        target,
        writer,
        checked: 0,
    };
    let healthy = |what: &str| {
        eventually(what, Duration::from_secs(30), || {
            lab.vmoodle(home, &["cluster", "status", CLUSTER, "--json"], "")
                .status
                .success()
        })
    };
    healthy("a healthy cluster before the first switchover")?;
    let mut primary = "db1";
    for i in 0..runs {
        let to = other_of(primary);
        let r = ctx.measure(to, || {
            vm(
                lab,
                ctx.home,
                &["cluster", "switchover", CLUSTER, "--to", to],
                "",
            )
            .map(|_| ())
        })?;
        eprintln!(
            "[{tag}] ours {}/{runs} {primary}->{to}: {:.2} s, longest gap {:.0} ms, failing {} ms, {} failed, {} acked, {} lost",
            i + 1,
            r.wall_s,
            r.longest_ms,
            r.fail_ms.map_or("-".into(), |v| format!("{v:.0}")),
            r.failures,
            r.acked,
            r.lost
        );
        o.ours.push(r);
        primary = to;
        wait_replicas(lab, engine, primary, &[other_of(primary), "db3"])?;
        healthy("a healthy cluster after a switchover")?;
        std::thread::sleep(Duration::from_millis(500));
    }

    eprintln!("[{tag}] baseline: the runbook's switchover, straight on the servers ...");
    let pw = random_hex(12)?;
    baseline_setup(lab, engine, primary, &pw)?;
    wait_replicas(lab, engine, primary, &[other_of(primary), "db3"])?;
    let registered = primary;
    let step = |old: &str, new: &str| match engine {
        Engine::Mariadb => baseline_mariadb(lab, old, new, "db3", &pw),
        Engine::Postgresql => baseline_pg(lab, old, new, "db3"),
    };
    // An odd number of runs leaves the other server primary: one more switch (not measured)
    // gives the register's primary back before destroy.
    let extra = runs % 2 == 1;
    for i in 0..runs + usize::from(extra) {
        let to = other_of(primary);
        if i == runs {
            eprintln!("[{tag}] baseline: back to {to} (not measured)");
            step(primary, to)?;
            primary = to;
            wait_replicas(lab, engine, primary, &[other_of(primary), "db3"])?;
            break;
        }
        let from = primary;
        let r = ctx.measure(to, || step(from, to))?;
        eprintln!(
            "[{tag}] baseline {}/{runs} {primary}->{to}: {:.2} s, longest gap {:.0} ms, failing {} ms, {} failed, {} acked, {} lost",
            i + 1,
            r.wall_s,
            r.longest_ms,
            r.fail_ms.map_or("-".into(), |v| format!("{v:.0}")),
            r.failures,
            r.acked,
            r.lost
        );
        o.base.push(r);
        primary = to;
        wait_replicas(lab, engine, primary, &[other_of(primary), "db3"])?;
        std::thread::sleep(Duration::from_millis(1500));
    }
    if primary != registered {
        bail!("the baseline left {primary} primary, the register says {registered}");
    }
    baseline_restore(lab, engine)?;
    wait_replicas(lab, engine, primary, &[other_of(primary), "db3"])?;
    if engine == Engine::Postgresql {
        o.base_left_out = Some("replication slots (the baseline's standbys stream without one; wal_keep_size=64MB keeps the WAL)".into());
    }
    Ok(())
}

// ---- output -------------------------------------------------------------------------------------

fn pct(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Nearest rank.
    let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[k - 1])
}

fn cell(v: &[f64], digits: usize) -> String {
    match (pct(v, 0.5), pct(v, 1.0)) {
        (Some(a), Some(b)) => format!("{a:.digits$} / {b:.digits$}"),
        _ => "not run".into(),
    }
}

fn print_table(results: &[(Engine, Option<Outcome>)], n: usize, runs: usize) {
    let get = |e: Engine| {
        results
            .iter()
            .find(|(x, _)| *x == e)
            .and_then(|(_, o)| o.as_ref())
    };
    let (m, p) = (get(Engine::Mariadb), get(Engine::Postgresql));
    println!(
        "Switchover of a 1+2 cluster (2 HAProxy + keepalived proxies, a VIP), {n} instances, {runs} runs each way back and forth (p50 / max over the runs)\n"
    );
    println!(
        "| figure | MariaDB ours | MariaDB baseline | PostgreSQL ours | PostgreSQL baseline |"
    );
    println!("|---|---:|---:|---:|---:|");
    type Pick = fn(&Run) -> Option<f64>;
    let rows: Vec<(&str, Pick, usize)> = vec![
        ("write stall, ms: last commit acknowledged before the first failed write to the first acknowledged after the last", |r| r.fail_ms, 0),
        ("write stall, ms: longest gap between acknowledged commits", |r| Some(r.longest_ms), 0),
        ("switchover wall time, s", |r| Some(r.wall_s), 2),
        ("acknowledged writes lost", |r| Some(r.lost as f64), 0),
        ("failed write attempts (connect or commit)", |r| Some(r.failures as f64), 0),
    ];
    for (label, pick, d) in rows {
        let c = |o: Option<&Outcome>, base: bool| {
            o.map_or("not run".into(), |o| {
                let v: Vec<f64> = if base { &o.base } else { &o.ours }
                    .iter()
                    .filter_map(pick)
                    .collect();
                cell(&v, d)
            })
        };
        println!(
            "| {label} | {} | {} | {} | {} |",
            c(m, false),
            c(m, true),
            c(p, false),
            c(p, true)
        );
    }
    for (e, o) in results {
        let Some(o) = o else { continue };
        println!("\n{}:", engine_name(*e));
        println!(
            "- lab built in {:.1} s; {} instances deployed in {:.1} s; `cluster create` {:.1} s; `cluster destroy` {:.1} s; lab teardown {:.1} s",
            o.lab_build_s, n, o.deploy_s, o.create_s, o.destroy_s, o.teardown_s
        );
        for (what, rs) in [("ours", &o.ours), ("baseline", &o.base)] {
            let total_lost: usize = rs.iter().map(|r| r.lost).sum();
            let acked: usize = rs.iter().map(|r| r.acked).sum();
            println!(
                "- {what}: {} runs, {total_lost} acknowledged writes lost in all; {acked} commits acknowledged across the runs' windows; per run (to, wall s, stall ms): {}",
                rs.len(),
                rs.iter()
                    .map(|r| format!(
                        "{} {:.2} {}",
                        r.to,
                        r.wall_s,
                        r.fail_ms.map_or(format!("{:.0}", r.longest_ms), |v| format!("{v:.0}"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(f) = rs.iter().find_map(|r| r.first_failure.clone()) {
                println!("- {what}: a failed write: {f}");
            }
        }
        if let Some(l) = &o.base_left_out {
            println!("- baseline leaves out: {l}");
        }
    }
    println!(
        "\nThe writer commits one row per transaction through the VIP's writer port with the first instance's own account, over one persistent connection reopened on error (1 s connect timeout), with no pause. Lost = acknowledged ids missing on the new primary after each run. 2 cores shared with other work: expect noise."
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: switchover-bench [--engine mariadb|postgresql|all] [--instances N] [--runs N]"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let mut engines = vec![Engine::Mariadb, Engine::Postgresql];
    let (mut instances, mut runs) = (3usize, 10usize);
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
            "--runs" => {
                runs = value().parse().unwrap_or_else(|_| usage());
                if runs == 0 {
                    usage();
                }
            }
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
        match bench_engine(e, instances, runs) {
            Ok(o) => results.push((e, Some(o))),
            Err(err) => {
                eprintln!("[{}] failed: {err:#}", e.as_str());
                failed.push(e.as_str());
                results.push((e, None));
            }
        }
    }
    print_table(&results, instances, runs);
    if !failed.is_empty() {
        bail!("the benchmark failed on {}", failed.join(", "));
    }
    Ok(())
}
