//! The daemon's cron: every enabled instance gets Moodle's cron every `cron.interval`, a disabled
//! one never; two daemons on one PostgreSQL register never run one site's cron at once.

use super::LiveFleet;
use crate::common::{Backend, Vm};
use crate::daemon::{admin_and_tokens, Daemon};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn history(vm: &Vm, inst: &str) -> Vec<serde_json::Value> {
    vm.json(&["cron", "history", inst, "--json", "--limit", "100"])
        .as_array()
        .unwrap()
        .clone()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_daemon_runs_cron_for_enabled_instances() {
    let f = LiveFleet::new("maria", 3);
    let (a, b, c) = (&f.tokens[0], &f.tokens[1], &f.tokens[2]);
    let vm = &f.s.vm;
    vm.set("cron.interval", "10");
    // Room for the two source sites too (their first passes are long).
    vm.set("cron.parallel", "4");
    vm.ok(&["instance", "disable", c]);
    let (_w, read) = admin_and_tokens(vm);
    let d = Daemon::start(vm);
    // Each enabled site's first pass comes at once (it never ran), then one per period.
    wait_for("three scheduled passes of each enabled site", 120, || {
        [a, b].iter().all(|t| {
            history(vm, t)
                .iter()
                .filter(|r| r["status"] == "ok")
                .count()
                >= 3
        })
    });
    for t in [a, b] {
        let h = history(vm, t);
        assert!(h.iter().all(|r| r["started_by"] == "scheduler"), "{h:?}");
        // Passes of one site come one interval apart (at its own offset), not back to back (the
        // first pass came at the daemon's start, anywhere in the site's period).
        let gap = h[0]["started_at"].as_i64().unwrap() - h[1]["started_at"].as_i64().unwrap();
        assert!(gap >= 5, "passes {gap} s apart: {h:?}");
    }
    assert!(history(vm, c).is_empty(), "a disabled instance got cron");
    let r = d
        .client()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&read)
        .send()
        .unwrap();
    let m = r.text().unwrap();
    assert!(
        sample(&m, "vmoodle_cron_runs_total{status=\"ok\"}").unwrap_or(0.0) >= 6.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            &format!("vmoodle_cron_last_success_timestamp_seconds{{instance=\"{a}\"}}")
        )
        .is_some(),
        "{m}"
    );
    assert!(m.contains("vmoodle_cron_overdue_instances "), "{m}");
    // The API's instance view and the pool page show the last pass and its gap.
    let v: serde_json::Value = d
        .client()
        .get(format!("{}/api/v1/instances/{a}", d.url))
        .bearer_auth(&read)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["last_cron_status"], "ok", "{v}");
    assert!(v["cron_gap_s"].as_i64().is_some(), "{v}");
    // The scheduler read the site's Moodle version at its first turn (Moodle 5.1: 2025...).
    assert!(
        v["moodle_version"]
            .as_str()
            .is_some_and(|s| s.starts_with("2025")),
        "{v}"
    );
    let (status, page) = d.login("alice", crate::daemon::PASSWORD).get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains("Last cron") && page.contains("Cron gap"),
        "{page}"
    );
    assert!(page.contains("class=\"badge ok\">ok</span>"), "{page}");
    drop(d);
    // cron status, with the daemon stopped: a and b well, c (disabled) not listed. (Its exit
    // code depends on the two source sites, whose long passes may leave them overdue.)
    let out = vm.run(&["cron", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = st.as_array().unwrap();
    for t in [a, b] {
        let s = list.iter().find(|s| s["instance"] == t.as_str()).unwrap();
        assert_eq!(s["last_status"], "ok", "{st}");
        assert_eq!(s["failing"], false, "{st}");
    }
    assert!(!list.iter().any(|s| s["instance"] == c.as_str()), "{st}");
}

/// A `vmoodle serve --listen 127.0.0.1:0` process of `home`, killed when dropped.
struct Node(Child);

impl Node {
    fn start(home: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmoodle"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("VMOODLE_HOME", home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmoodle serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "vmoodle serve ended");
            if line.contains("vmoodle serving on ") {
                break;
            }
        }
        std::thread::spawn(move || for _ in err.lines() {});
        Self(child)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A second home on the PostgreSQL register of `vm`: its settings and key, its own hosts/.
fn second_home(vm: &Vm) -> PathBuf {
    let home = vm.dir.path().join("node2");
    std::fs::create_dir_all(&home).unwrap();
    for e in std::fs::read_dir(&vm.home).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_file() && !name.contains("lock") {
            std::fs::copy(e.path(), home.join(&name)).unwrap();
        }
    }
    home
}

#[test]
fn two_daemons_never_run_one_sites_cron_at_once() {
    let f = LiveFleet::new_on(Backend::Postgres, "maria", 2);
    let vm = &f.s.vm;
    vm.set("cron.interval", "10");
    vm.set("cron.parallel", "4");
    let home2 = second_home(vm);
    let n1 = Node::start(&vm.home);
    let n2 = Node::start(&home2);
    wait_for("three scheduled passes of each site", 120, || {
        f.tokens.iter().all(|t| {
            history(vm, t)
                .iter()
                .filter(|r| r["status"] == "ok")
                .count()
                >= 3
        })
    });
    drop((n1, n2));
    for t in &f.tokens {
        let mut h = history(vm, t);
        h.sort_by_key(|r| r["id"].as_i64().unwrap());
        for w in h.windows(2) {
            let (prev, next) = (&w[0], &w[1]);
            let end = prev["finished_at"].as_i64().unwrap_or(i64::MAX);
            assert!(
                next["started_at"].as_i64().unwrap() >= end,
                "{t}: a pass started before the previous one ended: {prev} / {next}"
            );
        }
        assert!(
            h.iter()
                .all(|r| matches!(r["status"].as_str(), Some("ok" | "running"))),
            "{h:?}"
        );
    }
}
