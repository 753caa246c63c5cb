//! Durable jobs: what the journal costs a deploy, and what a crash costs afterwards.
//!
//! 1. Cost: deploys on the fresh Moodle 5.1 fixtures (MariaDB and PostgreSQL). For each, the
//!    register writes the journal made (read back with `jobs show`) beside the one write per
//!    step of the journal before (stop 5), and the time of one such write on this home's SQLite
//!    register, so the journal's share of a deploy is measured, not guessed.
//! 2. Crash: a bulk deploy killed with SIGKILL in the middle, then `vmoodle jobs recover`: how
//!    long recovery takes and what is left behind. Baseline: the journal before kept step names
//!    only, so each interrupted deploy left its database, user and partial dataroot, and the
//!    re-run failed with "database already exists" (issue 7).
//!
//! Run: ./scripts/bench-jobs [BULK]   (default 8)

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmoodle_test::{mariadb_sql, pg_sql, MariaDb, PgDb, TempDir};

mod runner;

fn vm(home: &Path, args: &[&str]) -> Result<String> {
    runner::vmoodle(home, args, "")
}

fn extract(tar: &str, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into)?;
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(vmoodle_test::fixtures_dir().join(tar))
        .arg("-C")
        .arg(into)
        .status()?;
    if !ok.success() {
        bail!("tar {tar} failed");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Register writes one deploy's journal made: start, one per step, two per undo record
/// (intended, then made or cancelled), finish.
fn writes_of(job: &serde_json::Value) -> (usize, usize) {
    let steps = job["steps"].as_array().map_or(0, Vec::len);
    let undo = job["undo"].as_array().map_or(0, Vec::len);
    (2 + steps + 2 * undo, 2 + steps)
}

/// Milliseconds per journal write on this home's register: a job's record rewritten 200
/// times with a deploy-sized journal, as `Journal::save` does.
fn write_ms(home: &Path) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let reg = vmoodle_registry::Registry::open_sqlite(&home.join("registry.sqlite")).await?;
        let id = reg.start_job("bench", "journal", "bench/0/0").await?;
        let steps = serde_json::json!([{"step": "database and user", "ms": 20}, {"step": "fill the database", "ms": 400}]).to_string();
        let undo = serde_json::json!([{"do": "drop_database", "server_id": 1, "database": "vmb_x", "step": "database and user", "state": "made"}, {"do": "drop_user", "server_id": 1, "user": "vmb_x", "step": "database and user", "state": "made"}]).to_string();
        let n = 200;
        let t = Instant::now();
        for _ in 0..n {
            reg.save_job(
                id,
                &vmoodle_registry::JobUpdate {
                    state: "running",
                    steps: &steps,
                    undo: &undo,
                    forward: None,
                    error: None,
                    undone: "[]",
                },
            )
            .await?;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
        reg.save_job(
            id,
            &vmoodle_registry::JobUpdate {
                state: "done",
                steps: &steps,
                undo: &undo,
                forward: None,
                error: None,
                undone: "[]",
            },
        )
        .await?;
        reg.close().await;
        anyhow::Ok(ms)
    })
}

struct Src {
    label: &'static str,
    shortname: &'static str,
    server: &'static str,
    maria: bool,
}

fn main() -> Result<()> {
    let bulk: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let dir = TempDir::new("jobsbench");
    let home = dir.path().join("home");
    let base = dir.path().join("instances");
    std::fs::create_dir_all(&base)?;
    vm(&home, &["init"])?;
    for (args, password) in vmoodle_test::local_server_args() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        runner::vmoodle(&home, &args, &password)?;
    }
    for (k, v) in [
        (
            "schema.dataroot",
            format!("{}/<%%INSTANCE%%>", base.display()),
        ),
        ("schema.db_name", "vmj_<%%INSTANCE%%>".into()),
        ("schema.db_login", "vmj_<%%INSTANCE%%>".into()),
        (
            "schema.wwwroot",
            "http://<%%INSTANCE%%>.bench.example.org".into(),
        ),
    ] {
        vm(&home, &["settings", "set", k, &v])?;
    }
    eprintln!("loading the fixtures ...");
    let my = MariaDb::create("jfresh");
    my.load_fixture("fresh-mariadb.sql.gz");
    let my = my.with_user("src-pw");
    let pg = PgDb::create("jfreshpg");
    pg.load_fixture("fresh-pgsql.sql.gz");
    let pg = pg.with_user("src-pw");
    extract("fresh-dataroot.tar.gz", &dir.path().join("srcmy"))?;
    extract("fresh-pgsql-dataroot.tar.gz", &dir.path().join("srcpg"))?;
    for (short, www, server, db, dr) in [
        ("srcmy", "http://mj.bench.test", "maria", &my.name, "srcmy"),
        ("srcpg", "http://pj.bench.test", "pg", &pg.name, "srcpg"),
    ] {
        runner::vmoodle(
            &home,
            &[
                "instance",
                "add",
                "--wwwroot",
                www,
                "--shortname",
                short,
                "--dbserver",
                server,
                "--dbname",
                db,
                "--dbuser",
                db,
                "--dataroot",
                dir.path().join(dr).to_str().unwrap(),
                "--password-stdin",
            ],
            "src-pw",
        )?;
    }
    let srcs = [
        Src {
            label: "MariaDB",
            shortname: "srcmy",
            server: "maria",
            maria: true,
        },
        Src {
            label: "PostgreSQL",
            shortname: "srcpg",
            server: "pg",
            maria: false,
        },
    ];
    let mut tokens: Vec<String> = Vec::new();
    let mut templates: Vec<String> = Vec::new();
    let mut cost_rows = Vec::new();
    let mut crash_rows = Vec::new();
    let write = write_ms(&home)?;
    let result: Result<()> = (|| {
        for (i, s) in srcs.iter().enumerate() {
            let tpl = format!("vmjb{i}_{}", std::process::id());
            templates.push(tpl.clone());
            vm(&home, &["snapshot", s.shortname, "--template", &tpl])?;
            vm(&home, &["template", "load", &tpl, "--dbserver", s.server])?;
            // 1. Cost.
            let mut ms = Vec::new();
            let mut writes = (0, 0);
            for n in 0..5 {
                let t = format!("c{i}x{n}p{}", std::process::id() % 10000);
                tokens.push(t.clone());
                let out = vm(
                    &home,
                    &[
                        "deploy",
                        "--template",
                        &tpl,
                        "--token",
                        &t,
                        "--dbserver",
                        s.server,
                        "--json",
                    ],
                )?;
                let v: serde_json::Value = serde_json::from_str(&out)?;
                ms.push(v[0]["outcome"]["ms"].as_f64().context("deploy ms")?);
                let jobs: serde_json::Value = serde_json::from_str(&vm(
                    &home,
                    &["jobs", "list", "--kind", "deploy", "--target", &t, "--json"],
                )?)?;
                let id = jobs[0]["id"].as_i64().context("job id")?.to_string();
                let job: serde_json::Value =
                    serde_json::from_str(&vm(&home, &["jobs", "show", &id, "--json"])?)?;
                writes = writes_of(&job);
            }
            let deploy_ms = median(ms);
            let added = (writes.0 - writes.1) as f64 * write;
            cost_rows.push(format!(
                "| {} | {:.0} | {} | {} | {:.2} | {:.1} | {:.1}% |",
                s.label,
                deploy_ms,
                writes.1,
                writes.0,
                write,
                added,
                100.0 * added / deploy_ms
            ));
            // 2. Crash in the middle of a bulk deploy, then recovery.
            let pattern = format!("k{i}p{}n{{N}}", std::process::id() % 10000);
            let bulk_tokens: Vec<String> = (1..=bulk)
                .map(|n| pattern.replace("{N}", &n.to_string()))
                .collect();
            tokens.extend(bulk_tokens.clone());
            let mut child = Command::new(runner::bin())
                .args([
                    "deploy",
                    "--template",
                    &tpl,
                    "--count",
                    &bulk.to_string(),
                    "--token-pattern",
                    &pattern,
                    "--dbserver",
                    s.server,
                    "--parallel",
                    "2",
                ])
                .env("VMOODLE_HOME", &home)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            // Half of the bulk's expected time, so some deploys are done, some mid-way.
            let half = Duration::from_secs_f64(deploy_ms / 1000.0 * bulk as f64 / 4.0);
            std::thread::sleep(half);
            child.kill()?;
            child.wait()?;
            let t = Instant::now();
            let out = vm(&home, &["jobs", "recover", "--json"])?;
            let recover_s = t.elapsed().as_secs_f64();
            let rec: serde_json::Value = serde_json::from_str(&out)?;
            let recovered = rec.as_array().map_or(0, Vec::len);
            let list: serde_json::Value =
                serde_json::from_str(&vm(&home, &["instance", "list", "--json"])?)?;
            let registered: Vec<String> = list
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| i["shortname"].as_str().map(str::to_string))
                .collect();
            let done = bulk_tokens
                .iter()
                .filter(|t| registered.contains(t))
                .count();
            let mut left = 0;
            for t in bulk_tokens.iter().filter(|t| !registered.contains(t)) {
                let db = format!("vmj_{t}");
                let exists = if s.maria {
                    mariadb_sql(None, &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'")).trim() != "0"
                        || mariadb_sql(None, &format!("SELECT COUNT(*) FROM mysql.user WHERE User = '{db}'")).trim() != "0"
                } else {
                    pg_sql(
                        "postgres",
                        &format!("SELECT COUNT(*) FROM pg_database WHERE datname = '{db}'"),
                    )
                    .trim()
                        != "0"
                        || pg_sql(
                            "postgres",
                            &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{db}'"),
                        )
                        .trim()
                            != "0"
                };
                if exists || base.join(t).exists() {
                    left += 1;
                }
            }
            let staging = std::fs::read_dir(&base)?
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('.'))
                })
                .count();
            crash_rows.push(format!(
                "| {} | {bulk} | {done} | {recovered} | {recover_s:.2} | {left} databases, users or dataroots; {staging} staging dirs | every interrupted one left its database, user and partial dataroot |",
                s.label
            ));
        }
        Ok(())
    })();
    eprintln!("cleaning up ...");
    for t in &tokens {
        let _ = std::panic::catch_unwind(|| {
            mariadb_sql(
                None,
                &format!("DROP DATABASE IF EXISTS `vmj_{t}`; DROP USER IF EXISTS 'vmj_{t}'@'%';"),
            )
        });
        let _ = std::panic::catch_unwind(|| {
            pg_sql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"vmj_{t}\" WITH (FORCE)"),
            )
        });
        let _ = std::panic::catch_unwind(|| {
            pg_sql("postgres", &format!("DROP ROLE IF EXISTS \"vmj_{t}\""))
        });
    }
    for t in &templates {
        let _ = vm(&home, &["template", "delete", t, "--yes"]);
    }
    result?;
    println!("What the durable journal costs a deploy (median of 5 deploys, warm live template)\n");
    println!("| database | deploy ms | register writes, journal before | register writes, now | ms per write (SQLite register) | added ms per deploy | share |\n|---|---:|---:|---:|---:|---:|---:|");
    for r in &cost_rows {
        println!("{r}");
    }
    println!("\nA bulk deploy killed (SIGKILL) half-way, then `vmoodle jobs recover`\n");
    println!("| database | deploys asked | done before the kill | interrupted, recovered | recover s | left behind | before (stop 5) |\n|---|---:|---:|---:|---:|---|---|");
    for r in &crash_rows {
        println!("{r}");
    }
    Ok(())
}
