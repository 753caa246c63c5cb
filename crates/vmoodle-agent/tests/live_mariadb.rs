//! Two private MariaDB servers (own datadir, socket, pid file, random port on 127.0.0.1) in a
//! tempdir: db1 is a GTID primary; db2, a fresh server, is seeded from db1's streamed backup
//! and replicates; then the seed is undone. Needs root (unix_socket login, the mysql account).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmoodle_agent::config::{AgentHome, DatabaseConfig, Engine};
use vmoodle_agent::mariadb;
use vmoodle_agent::protocol::{ReplicaPlan, Role};
use vmoodle_core::Secret;

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

fn free_port() -> u16 {
    for _ in 0..100 {
        let port = 20000 + (random_u64() % 40000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// A private server; stopped (and killed if need be) when dropped.
struct Db {
    root: PathBuf,
    cnf: PathBuf,
    port: u16,
    cfg: DatabaseConfig,
}

impl Db {
    fn create(lab: &Path, name: &str, server_id: u32, primary: bool) -> Db {
        let root = lab.join(name);
        std::fs::create_dir(&root).unwrap();
        let mysql = nix::unistd::User::from_name("mysql").unwrap().unwrap();
        nix::unistd::chown(&root, Some(mysql.uid), Some(mysql.gid)).unwrap();
        let port = free_port();
        let (cnf, sock, data, managed) = (
            root.join("my.cnf"),
            root.join("mysqld.sock"),
            root.join("data"),
            root.join("managed.cnf"),
        );
        std::fs::write(&managed, "").unwrap();
        let binlog = if primary {
            "log_bin=mysql-bin\nbinlog_format=ROW\nlog_slave_updates=ON\ngtid_strict_mode=ON\n"
        } else {
            ""
        };
        let text = format!(
            "[client]\nsocket={sock}\n[mysqld]\nuser=mysql\ndatadir={data}\nsocket={sock}\n\
             pid-file={root}/mysqld.pid\nlog-error={root}/error.log\nbind-address=127.0.0.1\n\
             port={port}\nserver_id={server_id}\n{binlog}skip-name-resolve\n\
             innodb_buffer_pool_size=64M\ninnodb_log_file_size=48M\nperformance_schema=OFF\n\
             !include {managed}\n",
            sock = sock.display(),
            data = data.display(),
            root = root.display(),
            managed = managed.display(),
        );
        std::fs::write(&cnf, text).unwrap();
        let defaults = format!("--defaults-file={}", cnf.display());
        let out = Command::new("mariadb-install-db")
            .args([&defaults, "--skip-test-db"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mariadb-install-db: {out:?}");
        let cfg = DatabaseConfig {
            engine: Engine::Mariadb,
            datadir: data,
            port,
            socket: sock,
            defaults_file: Some(cnf.clone()),
            managed_config: managed,
            bindir: None,
            os_user: "mysql".into(),
            start: vec![
                "setsid".into(),
                "-f".into(),
                "/usr/sbin/mariadbd".into(),
                defaults.clone(),
            ],
            stop: vec!["mariadb-admin".into(), defaults, "shutdown".into()],
        };
        let db = Db {
            root,
            cnf,
            port,
            cfg,
        };
        let st = Command::new(&db.cfg.start[0])
            .args(&db.cfg.start[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        db.wait_ping();
        db
    }

    fn wait_ping(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let ok = Command::new("mariadb-admin")
                .arg(format!("--defaults-file={}", self.cnf.display()))
                .args(["--connect-timeout=1", "ping"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not start:\n{}",
            self.root.display(),
            std::fs::read_to_string(self.root.join("error.log")).unwrap_or_default()
        );
    }

    /// Runs SQL as root through the socket; Err(stderr) on failure.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg(format!("--defaults-file={}", self.cnf.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL as the unprivileged `app` account over TCP.
    fn app_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uapp", "-papppass"])
            .arg(format!("-P{}", self.port))
            .args(["-N", "-B", "labdb", "-e", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.root.join("mysqld.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let _ = Command::new("mariadb-admin")
            .arg(format!("--defaults-file={}", self.cnf.display()))
            .args(["--connect-timeout=2", "shutdown"])
            .output();
        if let Some(pid) = pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            let t = Instant::now();
            while nix::sys::signal::kill(pid, None).is_ok() && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Every file under `dir` whose bytes contain `needle` (symbolic links not followed).
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mariadb_seed_replicate_undo() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (unix_socket login as root, the mysql account)");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("vmoodle_agent=info")
        .with_test_writer()
        .try_init();
    // Dropped last: the servers (below) stop first.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lab = tmp.path();
    let t = Instant::now();
    let db1 = Db::create(lab, "db1", 1, true);
    let db2 = Db::create(lab, "db2", 2, false);
    eprintln!("two servers installed and started in {:?}", t.elapsed());
    let home1 = AgentHome::new(lab.join("agent1"));
    let home2 = AgentHome::new(lab.join("agent2"));
    let password = Secret::random_password();

    db1.sql(&format!(
        "CREATE USER repl@'127.0.0.1' IDENTIFIED BY '{pw}';
         GRANT REPLICATION SLAVE ON *.* TO repl@'127.0.0.1';
         CREATE USER app@'127.0.0.1' IDENTIFIED BY 'apppass';
         GRANT ALL ON labdb.* TO app@'127.0.0.1';
         CREATE DATABASE labdb; CREATE TABLE labdb.t (id INT PRIMARY KEY, v TEXT);
         INSERT INTO labdb.t VALUES (1,'one'),(2,'two');",
        pw = password.expose()
    ))
    .unwrap();

    let t = Instant::now();
    let st1 = mariadb::probe(&db1.cfg).await;
    eprintln!("probe took {:?}", t.elapsed());
    assert_eq!(st1.role, Some(Role::Primary), "{st1:?}");
    assert_eq!(st1.read_only, Some(false));
    assert!(
        st1.position
            .as_deref()
            .is_some_and(|p| p.starts_with("0-1-")),
        "{st1:?}"
    );
    assert_eq!(st1.io_running, None);
    assert!(st1.probed_at > 0);
    assert_eq!(mariadb::probe(&db2.cfg).await.role, Some(Role::Primary));

    let f = mariadb::facts(&db1.cfg).await.unwrap();
    assert!(f.up);
    assert_eq!(
        f.settings.get("log_bin").map(String::as_str),
        Some("ON"),
        "{f:?}"
    );
    assert_eq!(f.settings.get("server_id").map(String::as_str), Some("1"));
    assert_eq!(f.settings.get("port"), Some(&db1.port.to_string()));
    assert!(f.version.contains("MariaDB"), "{}", f.version);
    assert!(f.data_bytes > 1_000_000 && f.free_bytes > 0, "{f:?}");
    let f2 = mariadb::facts(&db2.cfg).await.unwrap();
    assert_eq!(f2.settings.get("log_bin").map(String::as_str), Some("OFF"));

    // The backup of db1 streamed straight into the seed of db2.
    let plan = ReplicaPlan {
        primary_host: "127.0.0.1".into(),
        primary_port: db1.port,
        repl_user: "repl".into(),
        repl_password: Secret::new(password.expose()),
        server_id: Some(2),
        slot: None,
        application_name: "db2".into(),
    };
    // A stream that is not a backup fails before the server is touched.
    let e = mariadb::seed(&db2.cfg, &home2, &plan, &b"not a backup"[..])
        .await
        .unwrap_err();
    eprintln!("garbage stream: {e:#}");
    assert!(format!("{e:#}").contains("mbstream"), "{e:#}");
    assert_eq!(mariadb::probe(&db2.cfg).await.role, Some(Role::Primary));
    assert!(!home2.state().join("seed-prev").exists());
    assert!(!home2.state().join("seed-staging").exists());

    let t = Instant::now();
    let mut backup = mariadb::backup(&db1.cfg, &home1).await.unwrap();
    let seeded = mariadb::seed(&db2.cfg, &home2, &plan, &mut backup.stdout).await;
    let status = backup.child.wait().await.unwrap();
    eprintln!("backup + seed took {:?}", t.elapsed());
    seeded.unwrap();
    assert!(
        status.success(),
        "mariabackup: {}",
        std::fs::read_to_string(&backup.log).unwrap_or_default()
    );
    assert!(!home2.state().join("seed-staging").exists());
    let managed = std::fs::read_to_string(&db2.cfg.managed_config).unwrap();
    assert!(managed.contains("server_id=2") && managed.contains("read_only=ON"));
    assert_eq!(db2.sql("SELECT COUNT(*) FROM labdb.t").unwrap(), "2");

    // A row written on db1 now reaches db2.
    db1.sql("INSERT INTO labdb.t VALUES (3,'three')").unwrap();
    let t = Instant::now();
    loop {
        if db2.sql("SELECT v FROM labdb.t WHERE id=3").unwrap() == "three" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "row 3 never reached db2"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("a row reached the replica in {:?}", t.elapsed());

    let st2 = mariadb::probe(&db2.cfg).await;
    assert_eq!(st2.role, Some(Role::Replica), "{st2:?}");
    assert_eq!(st2.read_only, Some(true));
    assert_eq!((st2.io_running, st2.sql_running), (Some(true), Some(true)));
    assert_eq!(st2.lag_seconds, Some(0.0));
    assert_eq!(st2.source, Some(format!("127.0.0.1:{}", db1.port)));
    assert_eq!(st2.error, None);
    assert_eq!(
        st2.position,
        Some(db1.sql("SELECT @@gtid_current_pos").unwrap())
    );
    let e = db2.app_sql("INSERT INTO t VALUES (9,'nine')").unwrap_err();
    assert!(e.contains("1290") && e.contains("read-only"), "{e}");
    assert_eq!(db1.app_sql("SELECT COUNT(*) FROM t").unwrap(), "3");

    db2.sql("STOP SLAVE SQL_THREAD").unwrap();
    let st2 = mariadb::probe(&db2.cfg).await;
    assert_eq!(st2.role, Some(Role::Replica));
    assert_eq!((st2.io_running, st2.sql_running), (Some(true), Some(false)));

    // Seeding again with a wrong password: the seeded server is replaced (and kept aside), and
    // the seed fails with the replication error within seconds.
    let wrong = ReplicaPlan {
        repl_password: Secret::new(format!("wrong-{}", password.expose())),
        ..plan.clone()
    };
    let t = Instant::now();
    let mut backup = mariadb::backup(&db1.cfg, &home1).await.unwrap();
    let e = mariadb::seed(&db2.cfg, &home2, &wrong, &mut backup.stdout)
        .await
        .unwrap_err();
    assert!(backup.child.wait().await.unwrap().success());
    eprintln!("failed re-seed took {:?}: {e:#}", t.elapsed());
    assert!(format!("{e:#}").contains("Access denied"), "{e:#}");
    assert!(!format!("{e:#}").contains(wrong.repl_password.expose()));
    assert_eq!(mariadb::probe(&db2.cfg).await.io_running, Some(false));

    // Undo: db2's own empty server comes back, writable, with its (empty) managed config.
    let t = Instant::now();
    mariadb::undo_seed(&db2.cfg, &home2).await.unwrap();
    eprintln!("undo took {:?}", t.elapsed());
    let st2 = mariadb::probe(&db2.cfg).await;
    assert_eq!(st2.role, Some(Role::Primary), "{st2:?}");
    assert_eq!(st2.read_only, Some(false));
    assert_eq!(
        std::fs::read_to_string(&db2.cfg.managed_config).unwrap(),
        ""
    );
    assert_eq!(db2.sql("SHOW DATABASES LIKE 'labdb'").unwrap(), "");
    assert_eq!(db2.sql("SELECT @@server_id").unwrap(), "2");
    let undone: Vec<_> = std::fs::read_dir(home2.state())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        undone.iter().any(|n| n.starts_with("seed-undone-"))
            && !undone.contains(&"seed-prev".into()),
        "{undone:?}"
    );
    // Idempotent: nothing left to undo.
    mariadb::undo_seed(&db2.cfg, &home2).await.unwrap();
    assert_eq!(mariadb::probe(&db2.cfg).await.role, Some(Role::Primary));

    // The replication password is nowhere in the agents' homes (state, logs, the undone data
    // directory) nor in db2's files.
    for pw in [password.expose(), wrong.repl_password.expose()] {
        for dir in [&home1.dir, &home2.dir, &db2.root] {
            let hits = files_containing(dir, pw.as_bytes());
            assert!(hits.is_empty(), "the password is in {hits:?}");
        }
    }
    // A server that is down probes as Down, and its facts say so.
    drop(db2);
    let cfg2 = DatabaseConfig {
        socket: lab.join("db2/mysqld.sock"),
        ..db1.cfg.clone()
    };
    assert_eq!(mariadb::probe(&cfg2).await.role, Some(Role::Down));
    drop(db1);
    drop(tmp);
}
