//! PostgreSQL 15 for real: two private clusters on 127.0.0.1 in a tempdir; pg2 is seeded as a
//! standby of pg1 by `postgres::seed`, probed, paused, and put back by `undo_seed`.
//! Needs root (the agent runs tools as postgres) and /usr/lib/postgresql/15/bin.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmoodle_agent::postgres;
use vmoodle_agent::{AgentHome, DatabaseConfig, Engine, ReplicaPlan, Role};
use vmoodle_core::Secret;

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("runuser runs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops every server still running under the lab directory (wherever a seed or undo moved its
/// data directory), then the tempdir removes the rest.
struct Lab {
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            if d.join("postmaster.pid").exists() {
                let _ = as_postgres(&[
                    &format!("{BIN}/pg_ctl"),
                    "-D",
                    d.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ]);
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
}

struct Node {
    cfg: DatabaseConfig,
}

impl Node {
    /// initdb and start a private cluster under `lab/name` (a new random port when the first
    /// one is taken).
    fn new(lab: &Path, name: &str) -> Node {
        let dir = lab.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid()), Some(gid())).unwrap();
        let data = dir.join("data");
        let out = as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--data-checksums",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        ]);
        assert!(out.status.success(), "initdb: {out:?}");
        let managed = dir.join("vmoodle.conf");
        let log = dir.join("server.log");
        for attempt in 0..5 {
            let port = free_port();
            let conf = format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 wal_level = replica\nmax_wal_senders = 5\nmax_replication_slots = 5\n\
                 shared_buffers = 16MB\ninclude_if_exists = '{}'\n",
                dir.display(),
                managed.display()
            );
            let base = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            let base = base.split("# vmoodle test\n").next().unwrap().to_string();
            std::fs::write(
                data.join("postgresql.conf"),
                format!("{base}# vmoodle test\n{conf}"),
            )
            .unwrap();
            let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
            if !hba.contains("host replication repl") {
                std::fs::write(
                    data.join("pg_hba.conf"),
                    format!("{hba}host replication repl 127.0.0.1/32 scram-sha-256\n"),
                )
                .unwrap();
            }
            let ctl = format!("{BIN}/pg_ctl");
            let d = data.to_str().unwrap().to_string();
            let l = log.to_str().unwrap().to_string();
            let runuser = |v: &[&str]| -> Vec<String> {
                ["runuser", "-u", "postgres", "--"]
                    .iter()
                    .chain(v)
                    .map(|s| s.to_string())
                    .collect()
            };
            let cfg = DatabaseConfig {
                engine: Engine::Postgresql,
                datadir: data.clone(),
                port,
                socket: dir.clone(),
                defaults_file: None,
                managed_config: managed.clone(),
                bindir: Some(PathBuf::from(BIN)),
                os_user: "postgres".into(),
                start: runuser(&[&ctl, "-D", &d, "-l", &l, "-w", "start"]),
                stop: runuser(&[&ctl, "-D", &d, "-m", "fast", "-w", "stop"]),
            };
            let out = Command::new(&cfg.start[0])
                .args(&cfg.start[1..])
                .current_dir("/")
                .output()
                .unwrap();
            if out.status.success() {
                return Node { cfg };
            }
            eprintln!("start on port {port} failed (attempt {attempt}): {out:?}");
        }
        panic!("{name} did not start; see {}", log.display());
    }

    /// psql as postgres; SQL on stdin (so no password lands in argv). Err(stderr) on failure.
    fn sql(&self, sql: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{BIN}/psql")])
            .arg("-h")
            .arg(&self.cfg.socket)
            .args([
                "-p",
                &self.cfg.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1"])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

fn uid() -> u32 {
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}
fn gid() -> u32 {
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .unwrap()
        .gid
        .as_raw()
}

fn usable() -> bool {
    if !nix::unistd::getuid().is_root() || !Path::new(BIN).join("initdb").exists() {
        eprintln!("skipped: needs root and PostgreSQL 15 in {BIN}");
        return false;
    }
    true
}

/// Every file under `root` (symlinks not followed) that contains `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                let data = std::fs::read(e.path()).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(e.path());
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_postgres_seed_probe_undo() {
    if !usable() {
        return;
    }
    let lab = Lab {
        dir: tempfile::tempdir().unwrap(),
    };
    let root = lab.dir.path();
    std::os::unix::fs::chown(root, Some(uid()), Some(gid())).unwrap();
    let home_dir = root.join("agent");
    std::fs::create_dir(&home_dir).unwrap();
    let home = AgentHome::new(&home_dir);

    let t = Instant::now();
    let pg1 = Node::new(root, "pg1");
    let pg2 = Node::new(root, "pg2");
    eprintln!("two clusters up in {:.2} s", t.elapsed().as_secs_f64());

    // A password with the characters a pgpass file must escape.
    let core = Secret::random_password();
    let password = format!("Rp:{}\\x", core.expose());
    pg1.sql(&format!(
        "CREATE ROLE repl WITH REPLICATION LOGIN PASSWORD '{}';\n\
         CREATE TABLE t (id int PRIMARY KEY, v text);\n\
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;",
        password.replace('\'', "''")
    ))
    .unwrap();
    pg2.sql("CREATE TABLE mine (v text); INSERT INTO mine VALUES ('pg2 own data');")
        .unwrap();

    // Probe and facts of a primary.
    let p1 = postgres::probe(&pg1.cfg).await;
    assert_eq!(p1.role, Some(Role::Primary), "{p1:?}");
    assert_eq!(p1.read_only, Some(false));
    assert!(p1.position.as_deref().unwrap_or("").contains('/'), "{p1:?}");
    let f = postgres::facts(&pg1.cfg).await.unwrap();
    assert!(f.up && f.version.starts_with("15"), "{f:?}");
    assert_eq!(
        f.settings.get("wal_level").map(String::as_str),
        Some("replica")
    );
    assert_eq!(
        f.settings.get("data_checksums").map(String::as_str),
        Some("on")
    );
    assert_eq!(f.settings.get("port"), Some(&pg1.cfg.port.to_string()));
    assert!(
        f.hba_replication
            .iter()
            .any(|l| l == "host replication repl 127.0.0.1 255.255.255.255 scram-sha-256"),
        "{:?}",
        f.hba_replication
    );
    assert!(f.data_bytes > 10_000_000 && f.free_bytes > 0, "{f:?}");

    // A server that does not answer.
    let mut gone = pg1.cfg.clone();
    gone.socket = root.join("nowhere");
    let d = postgres::probe(&gone).await;
    assert_eq!(d.role, Some(Role::Down));
    assert!(d.error.is_some());
    let fd = postgres::facts(&gone).await.unwrap();
    assert!(!fd.up && fd.data_bytes > 0);

    // A seed with a wrong password fails with pg_basebackup's reason, and undo puts pg2 back.
    let bad = ReplicaPlan {
        primary_host: "127.0.0.1".into(),
        primary_port: pg1.cfg.port,
        repl_user: "repl".into(),
        repl_password: Secret::new("wrong"),
        server_id: None,
        slot: Some("vm_bad".into()),
        application_name: "pg2".into(),
    };
    let e = format!(
        "{:#}",
        postgres::seed(&pg2.cfg, &home, &bad).await.unwrap_err()
    );
    assert!(
        e.contains("pg_basebackup") && e.contains("password authentication failed"),
        "{e}"
    );
    eprintln!("failed seed says: {e}");
    assert_eq!(postgres::probe(&pg2.cfg).await.role, Some(Role::Down));
    postgres::undo_seed(&pg2.cfg, &home).await.unwrap();
    assert_eq!(pg2.sql("SELECT v FROM mine").unwrap(), "pg2 own data");
    assert!(!postgres::passfile_path(&pg2.cfg).exists());
    assert_eq!(
        pg1.sql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );

    // Seed pg2 from pg1.
    let plan = ReplicaPlan {
        primary_host: "127.0.0.1".into(),
        primary_port: pg1.cfg.port,
        repl_user: "repl".into(),
        repl_password: Secret::new(password.clone()),
        server_id: None,
        slot: Some("vm_pg2".into()),
        application_name: "pg2".into(),
    };
    let t = Instant::now();
    postgres::seed(&pg2.cfg, &home, &plan).await.unwrap();
    eprintln!(
        "seed (stop, basebackup, start, streaming) took {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let passfile = postgres::passfile_path(&pg2.cfg);
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&passfile).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o600, uid()), "{passfile:?}");
    }
    let replication = pg1
        .sql("SELECT application_name, state FROM pg_stat_replication")
        .unwrap();
    assert_eq!(replication, "pg2|streaming");
    let slot = pg1
        .sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'vm_pg2'")
        .unwrap();
    assert_eq!(slot, "t");

    // A row written on pg1 now is on pg2 soon.
    pg1.sql("INSERT INTO t VALUES (1000, 'after the seed')")
        .unwrap();
    let t = Instant::now();
    loop {
        if pg2.sql("SELECT v FROM t WHERE id = 1000").as_deref() == Ok("after the seed") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the row did not arrive on pg2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("row replicated after {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!(pg2.sql("SELECT count(*) FROM t").unwrap(), "101");

    let p2 = postgres::probe(&pg2.cfg).await;
    assert_eq!(p2.role, Some(Role::Replica), "{p2:?}");
    assert_eq!(p2.read_only, Some(true));
    assert_eq!(
        (p2.io_running, p2.sql_running),
        (Some(true), Some(true)),
        "{p2:?}"
    );
    assert_eq!(p2.source, Some(format!("127.0.0.1:{}", pg1.cfg.port)));
    assert!(p2.lag_seconds.is_some_and(|l| l < 10.0), "{p2:?}");
    assert!(p2.position.is_some());
    let err = pg2.sql("INSERT INTO t VALUES (2000, 'no')").unwrap_err();
    assert!(err.contains("read-only transaction"), "{err}");

    pg2.sql("SELECT pg_wal_replay_pause()").unwrap();
    let t = Instant::now();
    loop {
        let p = postgres::probe(&pg2.cfg).await;
        if p.sql_running == Some(false) {
            assert_eq!(p.role, Some(Role::Replica));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The password is in the 0600 passfile and nowhere else (state, logs, configuration).
    let hits = files_containing(root, core.expose().as_bytes());
    assert_eq!(hits, vec![passfile.clone()], "the password leaked");
    assert_eq!(
        std::fs::read_to_string(&passfile).unwrap(),
        postgres::passfile_line("127.0.0.1", pg1.cfg.port, "repl", &password)
    );

    // Seeding again over the standby (a new slot) keeps the record of the data from before the
    // first seed: undo still goes back to it.
    let again = ReplicaPlan {
        slot: Some("vm_pg2b".into()),
        ..plan.clone()
    };
    let t = Instant::now();
    postgres::seed(&pg2.cfg, &home, &again).await.unwrap();
    eprintln!("re-seed took {:.2} s", t.elapsed().as_secs_f64());
    let p2 = postgres::probe(&pg2.cfg).await;
    assert_eq!(
        (p2.role, p2.sql_running),
        (Some(Role::Replica), Some(true)),
        "{p2:?}"
    );
    assert_eq!(pg2.sql("SELECT count(*) FROM t").unwrap(), "101");

    // Undo: pg2 is its old self again, twice over.
    let t = Instant::now();
    postgres::undo_seed(&pg2.cfg, &home).await.unwrap();
    eprintln!("undo took {:.2} s", t.elapsed().as_secs_f64());
    postgres::undo_seed(&pg2.cfg, &home).await.unwrap();
    let p2 = postgres::probe(&pg2.cfg).await;
    assert_eq!(p2.role, Some(Role::Primary), "{p2:?}");
    assert_eq!(pg2.sql("SELECT v FROM mine").unwrap(), "pg2 own data");
    assert!(pg2.sql("SELECT count(*) FROM t").is_err());
    assert!(!passfile.exists());
    assert!(!pg2.cfg.managed_config.exists());
    assert!(files_containing(root, core.expose().as_bytes()).is_empty());
    // The seeded data directory was kept aside, not deleted.
    let kept: Vec<_> = std::fs::read_dir(home.state().join("seed-prev"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter().any(|n| n.starts_with("seeded-data-")),
        "{kept:?}"
    );

    // (A walsender may take a moment to let go of a slot.)
    let t = Instant::now();
    while let Err(e) = pg1.sql(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name IN ('vm_pg2', 'vm_pg2b')",
    ) {
        assert!(t.elapsed() < Duration::from_secs(5), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pg1.sql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "0"
    );
}
