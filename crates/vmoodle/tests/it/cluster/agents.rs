//! The lab's agent settings (start/stop commands, managed files, HAProxy and keepalived pid
//! files) work with the real engine and proxy code: db2 and db3 seeded from db1 through their
//! agents' API, both proxies applied, the VIP's writer on db1 and its reader on a replica.
//! Skipped while the agent's engine code is the stub (it never probes).

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vmoodle_test::lab::{Engine, Lab};

fn call(lab: &Lab, node: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (code, text) = lab.agent_call(node, method, path, body.map(|b| b.to_string()).as_deref());
    assert_eq!(code, 200, "{method} {path} on {node}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} on {node}: {e}: {text}"))
}

/// Whether db1's agent probes its server (the engine code is in).
fn probes(lab: &Lab) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let st = call(lab, "db1", "GET", "/v1/status", None);
        if st["database"]["probed_at"].as_i64().unwrap_or(0) > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<(T, Duration)> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(v) = f() {
            return Some((v, t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn seed_and_proxy(engine: Engine) {
    let Some(mut lab) = super::lab(engine) else {
        return;
    };
    if !probes(&lab) {
        eprintln!(
            "skipped: the agent's {} code is not in yet",
            engine.as_str()
        );
        return;
    }
    let net = lab.net_prefix().to_string();
    let port = lab.db_port();
    let ip = |n: &str| lab.node(n).ip.clone();
    let pass = vmoodle_test::unique_name("repl");
    let (setup, check) = match engine {
        Engine::Mariadb => {
            lab.sql(
                "db1",
                &format!(
                    "CREATE USER repl@'{net}.%' IDENTIFIED BY '{pass}';\n\
                     GRANT REPLICATION SLAVE ON *.* TO repl@'{net}.%';"
                ),
            )
            .expect("the replication account, as vmadmin");
            (
                "CREATE DATABASE t; CREATE TABLE t.x (i int primary key); INSERT INTO t.x VALUES (7);",
                "SELECT i FROM t.x",
            )
        }
        Engine::Postgresql => {
            // CREATEROLE cannot make REPLICATION roles on PostgreSQL 15: the local superuser does.
            lab.local_sql(
                "db1",
                &format!("CREATE ROLE repl REPLICATION LOGIN PASSWORD '{pass}';"),
            )
            .expect("the replication role");
            (
                "CREATE TABLE x (i int primary key); INSERT INTO x VALUES (7);",
                "SELECT i FROM x",
            )
        }
    };
    lab.local_sql("db1", setup).expect("a row on db1");
    for (n, id) in [("db2", 2), ("db3", 3)] {
        let t = Instant::now();
        let plan = json!({
            "primary_host": ip("db1"), "primary_port": port, "repl_user": "repl",
            "repl_password": pass, "server_id": id, "slot": format!("slot_{n}"),
            "application_name": n,
        });
        let ticket = call(&lab, n, "POST", "/v1/db/replica", Some(&plan));
        let status = match engine {
            Engine::Postgresql => ticket["status"].clone(),
            Engine::Mariadb => {
                let tk = ticket["ticket"].as_str().expect("a ticket");
                let _ = call(&lab, n, "GET", "/v1/status", None); // writes app/auth-<n>
                let _ = call(&lab, "db1", "GET", "/v1/status", None);
                let app = lab.dir().join("app");
                let pipe = format!(
                    "curl -sk --fail -H @{a}/auth-db1 https://{}:8008/v1/db/backup | \
                     curl -sk --fail -X POST -H @{a}/auth-{n} --data-binary @- \
                     https://{}:8008/v1/db/replica/{tk}/stream",
                    ip("db1"),
                    ip(n),
                    a = app.display()
                );
                let out = lab.exec_in("app", &["bash", "-o", "pipefail", "-c", &pipe]);
                assert!(
                    out.status.success(),
                    "streaming db1's backup to {n}: {out:?}"
                );
                serde_json::from_slice(&out.stdout).expect("the seed's answer")
            }
        };
        assert_eq!(status["database"]["role"], "replica", "{n}: {status}");
        eprintln!("{n} seeded in {:.2} s", t.elapsed().as_secs_f64());
        let row = until(Duration::from_secs(10), || {
            lab.local_sql(n, check).ok().filter(|v| v.trim() == "7")
        });
        assert!(row.is_some(), "db1's row never reached {n}");
    }

    let backend = |n: &str| json!({"name": n, "host": ip(n), "port": port, "agent_port": 8008});
    let router = 1 + (std::process::id() % 250);
    let t = Instant::now();
    for (n, peer, prio) in [("lb1", "lb2", 110), ("lb2", "lb1", 100)] {
        let spec = json!({
            "cluster": "lab", "vip": format!("{}/24", lab.vip()), "interface": "eth0",
            "self_address": ip(n), "peers": [ip(peer)], "priority": prio, "router_id": router,
            "writer_port": port, "reader_port": port + 1, "max_lag": 30,
            "primary": backend("db1"), "replicas": [backend("db2"), backend("db3")],
        });
        let st = call(&lab, n, "PUT", "/v1/proxy", Some(&spec));
        assert_eq!(st["haproxy_running"], true, "{n}: {st}");
    }
    let (who, vip_in) = until(Duration::from_secs(15), || {
        let q = match engine {
            Engine::Mariadb => "SELECT @@server_id",
            Engine::Postgresql => "SELECT inet_server_addr()",
        };
        lab.sql(&lab.vip(), q).ok()
    })
    .expect("the VIP's writer never answered");
    eprintln!(
        "VIP writer answered {:.2} s after the proxies were applied ({:.2} s in all)",
        vip_in.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let expect = match engine {
        Engine::Mariadb => "1".to_string(),
        Engine::Postgresql => ip("db1"),
    };
    assert_eq!(who.trim(), expect);
    let q = match engine {
        Engine::Mariadb => "SELECT @@read_only",
        Engine::Postgresql => "SELECT pg_is_in_recovery()",
    };
    let ro = lab
        .sql_port(&lab.vip(), port + 1, q)
        .expect("the VIP's reader");
    assert!(
        ["1", "t"].contains(&ro.trim()),
        "the reader is not a replica: {ro}"
    );
    let holders: Vec<bool> = ["lb1", "lb2"]
        .iter()
        .map(|n| call(&lab, n, "GET", "/v1/proxy/status", None)["holds_vip"] == true)
        .collect();
    assert_eq!(
        holders,
        [true, false],
        "lb1 (priority 110) should hold the VIP"
    );
    assert!(lab.holds_vip("lb1") && !lab.holds_vip("lb2"));
    for n in ["db2", "db3"] {
        assert_eq!(lab.node_role(n).as_deref(), Some("replica"), "{n}");
    }
    assert_eq!(lab.node_role("db1").as_deref(), Some("primary"));

    // HAProxy crashes on the holder: lb2 takes the VIP, and writes go on through it.
    assert!(lab.kill_haproxy("lb1") > 0, "no HAProxy process on lb1");
    let (_, moved) = until(Duration::from_secs(10), || {
        lab.holds_vip("lb2").then_some(())
    })
    .expect("the VIP never moved to lb2");
    eprintln!(
        "VIP moved to lb2 {:.2} s after HAProxy was killed on lb1",
        moved.as_secs_f64()
    );
    let w = until(Duration::from_secs(5), || {
        lab.sql(&lab.vip(), "SELECT 1").ok()
    });
    assert!(w.is_some(), "the VIP's writer does not answer on lb2");

    let down = lab.teardown();
    eprintln!(
        "torn down (replicas, HAProxy, keepalived) in {:.2} s",
        down.as_secs_f64()
    );
}

#[test]
fn agents_seed_and_proxy_mariadb() {
    seed_and_proxy(Engine::Mariadb);
}

#[test]
fn agents_seed_and_proxy_postgresql() {
    seed_and_proxy(Engine::Postgresql);
}
