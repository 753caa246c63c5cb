//! The lab itself: every agent answers the control node in the app namespace, db1's admin
//! account works from there, and teardown leaves nothing behind.

use serde_json::Value;
use std::path::Path;
use vmoodle_test::lab::Engine;

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn smoke(engine: Engine) {
    let Some(mut lab) = super::lab(engine) else {
        return;
    };
    let prefix = lab.prefix().to_string();
    let home = lab.dir().join("control");
    ok(&lab.vmoodle(&home, &["init"], ""), "vmoodle init");
    let names: Vec<String> = lab.nodes().map(|n| n.name.clone()).collect();
    assert_eq!(names, ["db1", "db2", "db3", "lb1", "lb2"]);
    for name in &names {
        let n = lab.node(name);
        let token_file = n.token_file.to_str().unwrap();
        ok(
            &lab.vmoodle(
                &home,
                &[
                    "node",
                    "add",
                    name,
                    "--address",
                    &n.ip,
                    "--token-file",
                    token_file,
                    "--fingerprint",
                    &n.fingerprint,
                ],
                "",
            ),
            &format!("node add {name}"),
        );
    }
    let out = ok(
        &lab.vmoodle(&home, &["node", "check", "--json"], ""),
        "node check",
    );
    let reports: Vec<Value> = serde_json::from_str(&out).expect("node check --json");
    assert_eq!(reports.len(), 5, "{out}");
    for r in &reports {
        assert!(r["error"].is_null(), "{out}");
        let proxy = r["health"]["proxy"].as_bool().expect("health.proxy");
        let name = r["node"]["name"].as_str().unwrap();
        assert_eq!(proxy, name.starts_with("lb"), "{out}");
    }

    // db1's /health, from the app namespace: primary once the engine probes are in (the agent
    // probes once a second). The stubs never probe (probed_at 0 in /v1/status): accepted.
    let health = || -> Value {
        let (code, body) = lab.agent_call("db1", "GET", "/health", None);
        assert_eq!(code, 200, "GET /health of db1: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health: {e}: {body}"))
    };
    let t = std::time::Instant::now();
    let mut h = health();
    while h["role"] != "primary" && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        h = health();
    }
    assert_eq!(h["name"], "db1", "{h}");
    if h["role"] != "primary" && !h["role"].is_null() {
        let (code, body) = lab.agent_call("db1", "GET", "/v1/status", None);
        assert_eq!(code, 200, "GET /v1/status of db1: {body}");
        let st: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            st["database"]["probed_at"], 0,
            "db1 is not primary though its agent probes it: {h} {st}"
        );
        eprintln!("db1's agent has no engine probe yet (role {})", h["role"]);
    }

    // The admin account answers over the lab network; the root namespace cannot reach it.
    let v = lab.sql("db1", "SELECT 1+1").expect("SQL as vmadmin on db1");
    assert_eq!(v.trim(), "2");
    let none = lab.exec_in(
        "app",
        &["curl", "-sk", "--max-time", "1", "https://10.0.0.1:1/"],
    );
    assert!(!none.status.success(), "the lab reached outside its /24");
    assert!(Path::new("/run/netns").join(lab.ns("db1")).exists());

    let down = lab.teardown();
    eprintln!("lab {prefix} torn down in {:.2} s", down.as_secs_f64());
    let left: Vec<String> = vmoodle_test::lab::namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!lab.dir().exists(), "the lab's directory is still there");
}

#[test]
fn lab_mariadb() {
    smoke(Engine::Mariadb);
}

#[test]
fn lab_postgresql() {
    smoke(Engine::Postgresql);
}

/// `sweep` (run by every `Lab::new`) removes what a dead test process left (its processes and
/// namespaces) and leaves a lab whose test process still runs alone.
#[test]
fn sweep_removes_leftovers_only() {
    use std::process::{Command, Stdio};
    if let Some(why) = vmoodle_test::lab::unusable(Engine::Mariadb) {
        eprintln!("skipped: {why}");
        return;
    }
    let rnd = || {
        let mut b = [0u8; 2];
        openssl::rand::rand_bytes(&mut b).unwrap();
        format!("vml{:02x}{:02x}", b[0], b[1])
    };
    let (dead, live) = (rnd(), rnd());
    let run = |a: &[&str]| {
        let o = Command::new(a[0]).args(&a[1..]).output().unwrap();
        assert!(o.status.success(), "{a:?}: {o:?}");
    };
    let (dead_ns, live_ns) = (format!("{dead}-db1"), format!("{live}-db1"));
    run(&["ip", "netns", "add", &dead_ns]);
    run(&["ip", "netns", "add", &live_ns]);
    // A leftover: a process still in its namespace, a marker naming a process that is gone.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &dead_ns, "sleep", "300"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(vmoodle_test::lab::MARKER_DIR).unwrap();
    std::fs::write(
        vmoodle_test::lab::marker(&dead),
        "4194304999 1 /nonexistent\n",
    )
    .unwrap();
    // A live lab: its marker names this very process.
    vmoodle_test::lab::write_marker(&live, Path::new("/nonexistent")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));

    let removed = vmoodle_test::lab::sweep();
    let left = vmoodle_test::lab::namespaces();
    let orphan_status = orphan.wait().unwrap();
    let live_kept = left.contains(&live_ns);
    let _ = Command::new("ip").args(["netns", "del", &live_ns]).status();
    let _ = std::fs::remove_file(vmoodle_test::lab::marker(&live));

    assert!(removed.contains(&dead), "{removed:?}");
    assert!(!removed.contains(&live), "{removed:?}");
    assert!(!left.contains(&dead_ns), "{left:?}");
    assert!(live_kept, "the live lab's namespace was removed: {left:?}");
    assert!(
        !orphan_status.success(),
        "the leftover's process was not stopped"
    );
    assert!(!vmoodle_test::lab::marker(&dead).exists());
}
