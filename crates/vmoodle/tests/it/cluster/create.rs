//! `vmoodle cluster create` end to end in the lab, on both engines: a standalone server holding
//! three instances deployed from the real Moodle fixture becomes a primary with two replicas
//! behind two HAProxy nodes and a keepalived VIP; writes reach both replicas, reads reach only
//! replicas, the host files carry Moodle's read-replica option, Moodle's cron.php runs through
//! the VIP, and a Moodle page is served through it; a replica removed and added back (and a
//! failed add undone) while the cluster runs; killing HAProxy on the VIP's holder moves the VIP; a stopped replica leaves the
//! reader pool; a failure injected before a step of each kind of undo leaves the server standalone with every host
//! file as it was; destroy puts it all back.

use crate::fleet::LiveFleet;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmoodle_test::lab::{Engine, Lab};

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ctl<'a> {
    lab: &'a Lab,
    home: PathBuf,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.lab.vmoodle(&self.home, args, "")
    }
    fn ok(&self, args: &[&str]) -> String {
        ok(self.run(args), &format!("vmoodle {}", args.join(" ")))
    }
    fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

/// One value from SQL run as vmadmin from the app namespace against `addr:port`.
fn sql_at(lab: &Lab, addr: &str, port: u16, sql: &str) -> Result<String, String> {
    lab.sql_port(addr, port, sql).map(|v| v.trim().to_string())
}

/// Runs vmoodle in the app namespace with extra environment variables.
fn vmoodle_env(
    lab: &Lab,
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        &lab.ns("app"),
        env!("CARGO_BIN_EXE_vmoodle"),
    ])
    .args(args)
    .env("VMOODLE_HOME", home)
    .env("NO_COLOR", "1")
    .stdin(std::process::Stdio::null())
    .current_dir("/");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("vmoodle in the app namespace")
}

/// The role a node's agent reports for its server.
fn node_role(ctl: &Ctl, node: &str) -> Option<String> {
    let out = ctl.run(&["node", "show", node, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"]["database"]["role"].as_str().map(str::to_string)
}

fn holds_vip(lab: &Lab, proxy: &str) -> bool {
    let out = lab.exec_in(proxy, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {}/", lab.vip()))
}

/// Kills HAProxy (every process of it) in a proxy's namespace.
fn kill_haproxy(lab: &Lab, proxy: &str) {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &lab.ns(proxy)])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "haproxy" {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid])
                .status();
        }
    }
}

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed()
}

fn host_files(home: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(home.join("hosts"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Which server a connection through `port` of the VIP lands on (MariaDB server_id; PostgreSQL
/// its listen address).
fn landed(lab: &Lab, port: u16) -> Result<String, String> {
    sql_at(lab, &lab.vip(), port, ident_sql(lab.engine()))
}

/// What `landed` answers for a server, asked on the server itself.
fn ident_sql(engine: Engine) -> &'static str {
    match engine {
        Engine::Mariadb => "SELECT @@server_id",
        Engine::Postgresql => "SELECT host(inet_server_addr())",
    }
}

/// GET a page from PHP's built-in server in the app namespace: (status, body).
fn page(lab: &Lab, host: &str, port: u16, path: &str) -> (u16, String) {
    let out = lab.exec_in(
        "app",
        &[
            "curl",
            "-s",
            "--max-time",
            "120",
            "-H",
            &format!("Host: {host}"),
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn cluster_end_to_end(engine: Engine) {
    let (server, dbtype) = match engine {
        Engine::Mariadb => ("maria", "mariadb"),
        Engine::Postgresql => ("pg", "pgsql"),
    };
    // The template and the Moodle code (with the hook) come from the local servers.
    let fleet = LiveFleet::new(server, 0);
    let Some(lab) = super::lab(engine) else {
        return;
    };
    if engine == Engine::Postgresql {
        // PostgreSQL 15 lets only a superuser give a role REPLICATION.
        lab.local_sql("db1", &format!("ALTER ROLE {} SUPERUSER", lab.admin_user()))
            .expect("vmadmin superuser");
    }
    let ctl = Ctl {
        lab: &lab,
        home: fleet.s.vm.home.clone(),
    };
    let db1 = lab.node("db1").ip.clone();
    let port = lab.db_port();
    let (writer, reader) = (port, port + 1);
    let out = lab.vmoodle(
        &ctl.home,
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
    );
    ok(out, "dbserver add");
    let tokens: Vec<String> = (0..3)
        .map(|i| crate::deploy::token(&format!("c{i}")))
        .collect();
    let r = ctl.json(&[
        "deploy",
        "--template",
        &fleet.template,
        "--tokens",
        &tokens.join(","),
        "--dbserver",
        "lab",
        "--json",
    ]);
    assert!(r.as_array().unwrap().iter().all(|i| i["ok"] == true), "{r}");
    for n in lab.nodes() {
        ctl.ok(&[
            "node",
            "add",
            &n.name,
            "--address",
            &n.ip,
            "--token-file",
            n.token_file.to_str().unwrap(),
            "--fingerprint",
            &n.fingerprint,
        ]);
    }
    let before = host_files(&ctl.home);
    let vip = format!("{}/24", lab.vip());
    let create: Vec<&str> = vec![
        "cluster",
        "create",
        "prod",
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

    // A failure before each step: everything before it undone, the server standalone, every
    // host file as it was, the replicas back to what they were.
    // One step of each kind of undo (each costs seeds and proxy starts, so not every step):
    // the account alone; a seeded replica; replicas and both proxies with the VIP; all of that
    // and the repointed host files.
    let steps = ["replication account", "seed db3", "virtual IP", "activate"];
    let quick = std::env::var("VMOODLE_TEST_CLUSTER_QUICK").is_ok();
    for step in steps.iter().filter(|_| !quick) {
        let out = vmoodle_env(
            &lab,
            &ctl.home,
            &create,
            &[("VMOODLE_TEST_FAIL_STEP", &format!("cluster-create:{step}"))],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "failing before {step}: {err}");
        assert!(err.contains("every step was undone"), "{step}: {err}");
        assert_eq!(
            host_files(&ctl.home),
            before,
            "host files after a failure before {step}"
        );
        let s = ctl.json(&["dbserver", "show", "lab", "--json"]);
        assert_eq!(s["server"]["topology"], "standalone", "{step}: {s}");
        assert!(s["cluster"].is_null(), "{step}: {s}");
        for r in ["db2", "db3"] {
            let role = node_role(&ctl, r);
            assert_eq!(
                role.as_deref(),
                Some("primary"),
                "{r} after a failure before {step}"
            );
        }
        assert!(
            sql_at(&lab, &lab.vip(), writer, "SELECT 1").is_err(),
            "the VIP still answers after a failure before {step}"
        );
    }

    // The real thing.
    let t = Instant::now();
    ctl.ok(&create);
    eprintln!(
        "cluster create ({}) took {:.1} s",
        engine.as_str(),
        t.elapsed().as_secs_f64()
    );
    let status = ctl.json(&["cluster", "status", "prod", "--json"]);
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status}"
    );

    // The host files: writes to the VIP's writer port, reads to its reader port.
    for (name, text) in host_files(&ctl.home)
        .into_iter()
        .filter(|(n, _)| tokens.iter().any(|t| n.starts_with(t.as_str())))
    {
        assert!(
            text.contains(&format!("'dbhost' => '{}'", lab.vip())),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("'dbport' => {writer}")),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("'dbport' => {reader}]]")),
            "{name}: {text}"
        );
        assert!(text.contains("'latency' => 1"), "{name}: {text}");
    }

    // Writes through the writer port reach both replicas; reads through the reader port reach
    // only replicas.
    let primary_id = landed(&lab, writer).unwrap();
    let db = format!("vmt_{}", tokens[0]);
    if engine == Engine::Mariadb {
        let insert = format!(
            "INSERT INTO `{db}`.mdl_config (name, value) VALUES ('vmoodle_cluster_probe', 'x')"
        );
        sql_at(&lab, &lab.vip(), writer, &insert).unwrap();
        for r in ["db2", "db3"] {
            let ip = lab.node(r).ip.clone();
            eventually(&format!("the row on {r}"), Duration::from_secs(10), || {
                sql_at(
                    &lab,
                    &ip,
                    port,
                    &format!(
                        "SELECT value FROM `{db}`.mdl_config WHERE name = 'vmoodle_cluster_probe'"
                    ),
                )
                .is_ok_and(|v| v == "x")
            });
        }
    } else {
        let ins = "CREATE TABLE IF NOT EXISTS vmoodle_probe (v text); INSERT INTO vmoodle_probe VALUES ('x')";
        sql_at(&lab, &lab.vip(), writer, ins).unwrap();
        for r in ["db2", "db3"] {
            let ip = lab.node(r).ip.clone();
            eventually(&format!("the row on {r}"), Duration::from_secs(10), || {
                sql_at(&lab, &ip, port, "SELECT v FROM vmoodle_probe").is_ok_and(|v| v == "x")
            });
        }
    }
    for _ in 0..6 {
        let r = landed(&lab, reader).unwrap();
        assert_ne!(
            r, primary_id,
            "a read through the reader port reached the primary"
        );
    }

    // Moodle itself, through the VIP: a cron pass of a repointed instance.
    ctl.ok(&["cron", &tokens[0]]);
    let hist = ctl.json(&["cron", "history", &tokens[0], "--json"]);
    assert_eq!(hist[0]["status"], "ok", "{hist}");

    // A Moodle page of a repointed instance, served from the app host through the VIP.
    {
        let _php = fleet.serve_in(Some(&lab.ns("app")));
        let (code, body) = page(
            &lab,
            &fleet.host(&tokens[0]),
            fleet.port,
            "/login/index.php",
        );
        assert_eq!(code, 200, "the login page through the VIP: {body}");
        assert!(
            body.contains("logintoken"),
            "not Moodle's login form: {body}"
        );
    }

    // A replica out of the running cluster and back in.
    let ident = |node: &str| sql_at(&lab, &lab.node(node).ip, port, ident_sql(engine)).unwrap();
    let (db2_id, db3_id) = (ident("db2"), ident("db3"));
    ctl.ok(&["cluster", "remove-replica", "prod", "db3", "--yes"]);
    assert_eq!(
        node_role(&ctl, "db3").as_deref(),
        Some("primary"),
        "db3 after its removal"
    );
    let status = ctl.json(&["cluster", "status", "prod", "--json"]);
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status}"
    );
    assert_eq!(status["databases"].as_array().unwrap().len(), 2, "{status}");
    for _ in 0..6 {
        assert_eq!(
            landed(&lab, reader).unwrap(),
            db2_id,
            "a read after db3 left"
        );
    }
    // A failure before the last step of add-replica: db3 back as it was, the pool as before.
    let add = ["cluster", "add-replica", "prod", "db3"];
    let out = vmoodle_env(
        &lab,
        &ctl.home,
        &add,
        &[("VMOODLE_TEST_FAIL_STEP", "cluster-add-replica:reader pool")],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "add-replica with a failure: {err}"
    );
    assert!(err.contains("every step was undone"), "{err}");
    assert_eq!(
        node_role(&ctl, "db3").as_deref(),
        Some("primary"),
        "db3 after a failed add"
    );
    let status = ctl.json(&["cluster", "status", "prod", "--json"]);
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status}"
    );
    assert_eq!(status["databases"].as_array().unwrap().len(), 2, "{status}");
    for _ in 0..6 {
        assert_eq!(
            landed(&lab, reader).unwrap(),
            db2_id,
            "a read after a failed add"
        );
    }
    // And for real: db3 replicates again and serves reads.
    ctl.ok(&add);
    assert_eq!(node_role(&ctl, "db3").as_deref(), Some("replica"));
    let probe = match engine {
        Engine::Mariadb => format!(
            "INSERT INTO `{db}`.mdl_config (name, value) VALUES ('vmoodle_cluster_probe2', 'y')"
        ),
        Engine::Postgresql => "INSERT INTO vmoodle_probe VALUES ('y')".to_string(),
    };
    sql_at(&lab, &lab.vip(), writer, &probe).unwrap();
    let check = match engine {
        Engine::Mariadb => {
            format!("SELECT value FROM `{db}`.mdl_config WHERE name = 'vmoodle_cluster_probe2'")
        }
        Engine::Postgresql => "SELECT v FROM vmoodle_probe WHERE v = 'y'".to_string(),
    };
    let db3 = lab.node("db3").ip.clone();
    eventually("the new row on db3", Duration::from_secs(10), || {
        sql_at(&lab, &db3, port, &check).is_ok_and(|v| v == "y")
    });
    let reads: Vec<String> = (0..8).map(|_| landed(&lab, reader).unwrap()).collect();
    assert!(
        !reads.contains(&primary_id),
        "a read reached the primary: {reads:?}"
    );
    assert!(reads.contains(&db3_id), "db3 serves no reads: {reads:?}");
    let status = ctl.json(&["cluster", "status", "prod", "--json"]);
    assert!(
        status["problems"].as_array().unwrap().is_empty(),
        "{status}"
    );

    // Switchover to db2 and back, while a writer commits numbered rows through the VIP: every
    // acknowledged row is on the new primary, the old one replicates from it, reads never
    // reach the primary, Moodle's cron runs.
    let (table, create_table) = match engine {
        Engine::Mariadb => (
            "vmoodle_switch.t",
            "CREATE DATABASE IF NOT EXISTS vmoodle_switch; CREATE TABLE IF NOT EXISTS vmoodle_switch.t (n INT PRIMARY KEY)",
        ),
        Engine::Postgresql => (
            "vmoodle_switch",
            "CREATE TABLE IF NOT EXISTS vmoodle_switch (n int PRIMARY KEY)",
        ),
    };
    sql_at(&lab, &lab.vip(), writer, create_table).unwrap();
    let (create_probe, insert_probe) = match engine {
        Engine::Mariadb => (
            "CREATE TABLE IF NOT EXISTS vmoodle_switch.p (n INT)",
            "INSERT INTO vmoodle_switch.p VALUES (1)",
        ),
        Engine::Postgresql => (
            "CREATE TABLE IF NOT EXISTS vmoodle_switch_p (n int)",
            "INSERT INTO vmoodle_switch_p VALUES (1)",
        ),
    };
    sql_at(&lab, &lab.vip(), writer, create_probe).unwrap();
    // The writes come from an account like Moodle's (no READ_ONLY ADMIN, which would write
    // through read_only).
    let cnf = match engine {
        Engine::Mariadb => {
            sql_at(
                &lab,
                &lab.vip(),
                writer,
                "CREATE USER IF NOT EXISTS 'vmswitch'@'%' IDENTIFIED BY 'vmswitch-pw'; \
                 GRANT SELECT, INSERT ON vmoodle_switch.* TO 'vmswitch'@'%'",
            )
            .unwrap();
            Some(lab.client_cnf("vmswitch", "vmswitch-pw").unwrap())
        }
        Engine::Postgresql => None,
    };
    // A switchover that fails before the candidate caught up changes nothing: the old primary
    // takes writes again.
    let out = vmoodle_env(
        &lab,
        &ctl.home,
        &["cluster", "switchover", "prod", "--to", "db2"],
        &[("VMOODLE_TEST_FAIL_STEP", "cluster-switchover:catch up db2")],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "switchover with a failure: {err}"
    );
    assert!(err.contains("did not switch over"), "{err}");
    eventually(
        "writes on the old primary again",
        Duration::from_secs(15),
        || sql_at(&lab, &lab.vip(), writer, insert_probe).is_ok(),
    );
    assert_eq!(landed(&lab, writer).unwrap(), primary_id);
    eventually("a healthy cluster again", Duration::from_secs(30), || {
        ctl.run(&["cluster", "status", "prod", "--json"])
            .status
            .success()
    });
    let mut next = 0u32;
    for (to, want) in [("db2", db2_id.clone()), ("db1", primary_id.clone())] {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (acked, gap, failed) = std::thread::scope(|sc| {
            let w = sc.spawn(|| {
                let (mut acked, mut failed) = (Vec::new(), 0u32);
                let mut last = Instant::now();
                let mut gap = Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = next + acked.len() as u32 + failed;
                    match lab.sql_port_as(
                        cnf.as_deref(),
                        &lab.vip(),
                        writer,
                        &format!("INSERT INTO {table} VALUES ({n})"),
                    ) {
                        Ok(_) => {
                            gap = gap.max(last.elapsed());
                            last = Instant::now();
                            acked.push(n);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (acked, gap, failed)
            });
            std::thread::sleep(Duration::from_millis(500));
            let t = Instant::now();
            let out = ctl.run(&["cluster", "switchover", "prod", "--to", to]);
            if !out.status.success() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                for n in ["db1", "db2", "db3"] {
                    let q = match engine {
                        Engine::Mariadb => "SELECT @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos, @@gtid_binlog_state; SHOW BINARY LOGS; SHOW SLAVE STATUS\\G",
                        Engine::Postgresql => "SELECT pg_is_in_recovery(), pg_current_wal_lsn()",
                    };
                    eprintln!("{n}: {:?}", lab.local_sql(n, q));
                }
                ok(out, &format!("switchover to {to}"));
            }
            eprintln!("switchover to {to} took {:.2} s", t.elapsed().as_secs_f64());
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            w.join().unwrap()
        });
        next += acked.len() as u32 + failed + 1;
        eprintln!(
            "switchover to {to}: {} writes acknowledged, {failed} failed, longest gap between acknowledged writes {:.2} s",
            acked.len(),
            gap.as_secs_f64()
        );
        assert_eq!(
            landed(&lab, writer).unwrap(),
            want,
            "the writer after the switchover to {to}"
        );
        assert_eq!(node_role(&ctl, to).as_deref(), Some("primary"));
        let have = sql_at(
            &lab,
            &lab.vip(),
            writer,
            &format!(
                "SELECT COUNT(*) FROM {table} WHERE n IN ({})",
                acked
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )
        .unwrap();
        assert_eq!(
            have,
            acked.len().to_string(),
            "acknowledged writes lost in the switchover to {to}"
        );
        let status = ctl.json(&["cluster", "status", "prod", "--json"]);
        eventually(
            "a healthy cluster after the switchover",
            Duration::from_secs(15),
            || {
                ctl.run(&["cluster", "status", "prod", "--json"])
                    .status
                    .success()
            },
        );
        let _ = status;
        for _ in 0..6 {
            assert_ne!(
                landed(&lab, reader).unwrap(),
                want,
                "a read reached the new primary"
            );
        }
        ctl.ok(&["cron", &tokens[0]]);
    }

    // A broken replica (its replication stopped) rebuilt from a fresh backup.
    let stop_replication = match engine {
        Engine::Mariadb => "STOP SLAVE",
        Engine::Postgresql => "SELECT pg_wal_replay_pause()",
    };
    lab.local_sql("db3", stop_replication).unwrap();
    eventually("db3 reported broken", Duration::from_secs(10), || {
        ctl.run(&["cluster", "status", "prod", "--json"])
            .status
            .code()
            == Some(3)
    });
    ctl.ok(&["cluster", "reseed", "prod", "db3"]);
    assert_eq!(node_role(&ctl, "db3").as_deref(), Some("replica"));
    sql_at(&lab, &lab.vip(), writer, insert_probe).unwrap();
    let count = match engine {
        Engine::Mariadb => "SELECT COUNT(*) FROM vmoodle_switch.p",
        Engine::Postgresql => "SELECT COUNT(*) FROM vmoodle_switch_p",
    };
    let want_rows = sql_at(&lab, &lab.vip(), writer, count).unwrap();
    eventually(
        "the new row on the reseeded db3",
        Duration::from_secs(10),
        || sql_at(&lab, &db3, port, count).is_ok_and(|v| v == want_rows),
    );
    eventually(
        "a healthy cluster after the reseed",
        Duration::from_secs(15),
        || {
            ctl.run(&["cluster", "status", "prod", "--json"])
                .status
                .success()
        },
    );

    // HAProxy killed on the VIP's holder: the other proxy takes the VIP, writes go on.
    let holder = ["lb1", "lb2"]
        .into_iter()
        .find(|p| holds_vip(&lab, p))
        .expect("a proxy holds the VIP");
    kill_haproxy(&lab, holder);
    let moved = eventually(
        "the VIP on the other proxy",
        Duration::from_secs(10),
        || {
            ["lb1", "lb2"]
                .iter()
                .any(|p| *p != holder && holds_vip(&lab, p))
        },
    );
    eprintln!("VIP moved in {:.2} s", moved.as_secs_f64());
    assert!(
        moved < Duration::from_secs(5),
        "the VIP took {moved:?} to move"
    );
    eventually("writes through the VIP", Duration::from_secs(5), || {
        landed(&lab, writer).is_ok_and(|id| id == primary_id)
    });

    // A replica whose SQL thread (replay) stops leaves the reader pool.
    let stop = match engine {
        Engine::Mariadb => "STOP SLAVE SQL_THREAD",
        Engine::Postgresql => "SELECT pg_wal_replay_pause()",
    };
    lab.local_sql("db2", stop).unwrap();
    eventually(
        "db2 out of the reader pool",
        Duration::from_secs(10),
        || {
            let s = ctl.run(&["cluster", "status", "prod", "--json"]);
            s.status.code() == Some(3)
                && String::from_utf8_lossy(&s.stdout).contains("out of the reader pool")
        },
    );
    for _ in 0..6 {
        assert_ne!(
            landed(&lab, reader).unwrap(),
            db2_id,
            "db2 still serves reads"
        );
    }

    // What was done, newest first, with the failures and what they undid.
    let ev = ctl.json(&["cluster", "events", "prod", "--json", "--limit", "50"]);
    let seen: Vec<(String, String)> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["what"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for e in ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"] == "switchover")
    {
        let steps: Vec<String> = e["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{} {} ms", s["step"].as_str().unwrap_or(""), s["ms"]))
            .collect();
        eprintln!("switchover ({}): {}", e["state"], steps.join(", "));
    }
    for want in [
        ("reseed", "done"),
        ("switchover", "done"),
        ("switchover", "rolled back"),
        ("add-replica", "done"),
        ("add-replica", "rolled back"),
        ("remove-replica", "done"),
        ("create", "done"),
    ] {
        assert!(
            seen.iter().any(|(w, s)| w == want.0 && s == want.1),
            "no {want:?} in {seen:?}"
        );
    }

    // Destroy while db2 is the primary: it switches back to db1 (the server's own data) first,
    // then puts the instances back on it.
    let resume = match engine {
        Engine::Mariadb => "START SLAVE SQL_THREAD",
        Engine::Postgresql => "SELECT pg_wal_replay_resume()",
    };
    lab.local_sql("db2", resume).unwrap();
    // (HAProxy still lies dead on one proxy: the switchover's proxy step starts it again.)
    eventually("db2 replicating again", Duration::from_secs(20), || {
        let out = ctl.run(&["cluster", "status", "prod", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["databases"].as_array().is_some_and(|d| {
            d.iter().any(|n| {
                n["node"] == "db2"
                    && n["state"]["io_running"] == true
                    && n["state"]["sql_running"] == true
            })
        })
    });
    ctl.ok(&["cluster", "switchover", "prod", "--to", "db2"]);
    assert_eq!(landed(&lab, writer).unwrap(), db2_id);
    eventually(
        "a healthy cluster after the last switchover",
        Duration::from_secs(20),
        || {
            ctl.run(&["cluster", "status", "prod", "--json"])
                .status
                .success()
        },
    );
    ctl.ok(&["cluster", "destroy", "prod", "--yes"]);
    assert_eq!(node_role(&ctl, "db1").as_deref(), Some("primary"));
    assert_eq!(host_files(&ctl.home), before);
    ctl.ok(&["cron", &tokens[0]]);
}

#[test]
fn mariadb_cluster_end_to_end() {
    cluster_end_to_end(Engine::Mariadb);
}

#[test]
fn postgres_cluster_end_to_end() {
    cluster_end_to_end(Engine::Postgresql);
}
