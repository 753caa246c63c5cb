//! `vmoodle cron`: Moodle's own cron.php for live instances, one pass each, recorded in the
//! register, never twice at once for one site; `cron status` flags failing and overdue sites.

use super::LiveFleet;
use crate::common::Vm;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The status entry of one instance in `cron status --json`.
fn status_of(vm: &Vm, args: &[&str], inst: &str) -> (serde_json::Value, i32) {
    let mut a = vec!["cron", "status", "--json"];
    a.extend_from_slice(args);
    let out = vm.run(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cron status: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let entry = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance"] == inst)
        .unwrap_or_else(|| panic!("{inst} not in {v}"))
        .clone();
    (entry, out.status.code().unwrap())
}

fn site<'a>(r: &'a serde_json::Value, inst: &str) -> &'a serde_json::Value {
    r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance"] == inst)
        .unwrap_or_else(|| panic!("{inst} not in {r}"))
}

/// `vmoodle ARGS` held at pause point `point` (debug builds); returns once it is there.
fn start_paused(vm: &Vm, args: &[&str], point: &str) -> (Child, PathBuf) {
    let file = vm
        .dir
        .path()
        .join(format!("pause-{}", crate::deploy::token("p")));
    let mut child = vm
        .cmd(args)
        .env("VMOODLE_TEST_PAUSE", point)
        .env("VMOODLE_TEST_PAUSE_FILE", &file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmoodle");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !file.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "vmoodle {args:?} ended ({status}) before {point}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "pause point {point} never reached"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, file)
}

/// Two sites' cron in parallel, recorded; an overlapping pass skips the busy site; a site whose
/// database refuses its password fails while the others succeed, and `cron status` flags it.
fn cron_across_sites(server: &str, overlap: bool) {
    let f = LiveFleet::new(server, 3);
    let (a, b, c) = (&f.tokens[0], &f.tokens[1], &f.tokens[2]);
    let vm = &f.s.vm;

    // Never run yet: overdue, exit 3 for monitoring.
    let (st, code) = status_of(vm, &[a], a);
    assert_eq!(code, 3, "{st}");
    assert_eq!(st["overdue"], true, "{st}");
    assert!(st["last_status"].is_null(), "{st}");

    let r = vm.json(&["cron", a, b, "--parallel", "2", "--json"]);
    assert_eq!(r["operation"], "cron", "{r}");
    for t in [a, b] {
        let s = site(&r, t);
        assert_eq!(s["status"], "ok", "{r}");
        assert_eq!(s["exit_code"], 0, "{r}");
        let log = std::fs::read_to_string(s["log"].as_str().unwrap()).unwrap();
        // Moodle's own cron ran its tasks and said so.
        assert!(log.contains("Cron run completed correctly"), "{log}");
    }
    let j = vm.json(&[
        "jobs",
        "show",
        &r["job"].as_i64().unwrap().to_string(),
        "--json",
    ]);
    assert_eq!(j["kind"], "fleet-cron", "{j}");
    assert_eq!(j["state"], "done", "{j}");
    let (st, code) = status_of(vm, &[a, b], a);
    assert_eq!(code, 0, "{st}");
    assert_eq!(st["last_status"], "ok", "{st}");
    assert_eq!(st["last_exit_code"], 0, "{st}");
    assert_eq!(st["overdue"], false, "{st}");
    assert_eq!(st["failing"], false, "{st}");
    assert_eq!(st["failures_in_a_row"], 0, "{st}");
    assert!(st["running"].is_null(), "{st}");
    let h = vm.json(&["cron", "history", a, "--json"]);
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h[0]["status"], "ok", "{h}");
    assert!(
        h[0]["started_by"].as_str().unwrap().starts_with("cli:"),
        "{h}"
    );
    assert!(h[0]["duration_ms"].as_i64().unwrap() > 0, "{h}");

    if overlap {
        // A first pass holds a's lock (paused after taking it); a second pass skips a, runs b.
        let point = format!("cron:{a}:locked");
        let (child, pause) = start_paused(vm, &["cron", a, "--json"], &point);
        let (st, _) = status_of(vm, &[a], a);
        assert!(st["running"].is_string(), "{st}");
        assert_eq!(st["last_status"], "running", "{st}");
        let r = vm.json(&["cron", a, b, "--parallel", "2", "--json"]);
        let sa = site(&r, a);
        assert_eq!(sa["status"], "skipped", "{r}");
        assert!(
            sa["message"]
                .as_str()
                .unwrap()
                .starts_with("busy: a cron pass of "),
            "{r}"
        );
        assert_eq!(site(&r, b)["status"], "ok", "{r}");
        // The first pass goes on and ends well; a ran once more, not twice at once.
        std::fs::remove_file(&pause).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(site(&r, a)["status"], "ok", "{r}");
        let h = vm.json(&["cron", "history", a, "--json"]);
        assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
        assert!(
            h.as_array().unwrap().iter().all(|x| x["status"] == "ok"),
            "{h}"
        );
    }

    // c's database account no longer takes its password (PostgreSQL: no longer logs in): c fails, a and b succeed, exit 3.
    let ci = vm.json(&["instance", "show", c, "--json"]);
    let user = ci["dbuser"].as_str().unwrap().to_string();
    match server {
        "maria" => {
            vmoodle_test::mariadb_sql(
                None,
                &format!("ALTER USER '{user}'@'%' IDENTIFIED BY 'not-the-right-one'"),
            );
        }
        _ => {
            // The test server trusts 127.0.0.1 (pg_hba), so a new password alone would not lock
            // the account out: the account loses its login as well.
            vmoodle_test::pg_sql(
                "postgres",
                &format!("ALTER ROLE \"{user}\" PASSWORD 'not-the-right-one' NOLOGIN"),
            );
        }
    }
    let out = vm.run(&["cron", a, b, c, "--parallel", "3", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(site(&r, a)["status"], "ok", "{r}");
    assert_eq!(site(&r, b)["status"], "ok", "{r}");
    let sc = site(&r, c);
    assert_eq!(sc["status"], "failed", "{r}");
    assert_ne!(sc["exit_code"], 0, "{r}");
    let (st, code) = status_of(vm, &[a, b, c], c);
    assert_eq!(code, 3, "{st}");
    assert_eq!(st["failing"], true, "{st}");
    assert_eq!(st["overdue"], true, "{st}"); // never succeeded
    assert_eq!(st["last_status"], "failed", "{st}");
    assert_eq!(st["failures_in_a_row"], 1, "{st}");
    let (st, code) = status_of(vm, &[a, b], a);
    assert_eq!(code, 0, "{st}");
    let h = vm.json(&["cron", "history", c, "--json"]);
    assert_eq!(h[0]["status"], "failed", "{h}");
    assert!(!h[0]["output_tail"].as_str().unwrap().is_empty(), "{h}");

    // Bad input is named.
    let e = vm.fails(&["settings", "set", "cron.interval", "5"], 1);
    assert!(
        e.contains("cron.interval") && e.contains("between 10 and 86400"),
        "{e}"
    );
    let e = vm.fails(&["settings", "set", "cron.parallel", "0"], 1);
    assert!(e.contains("cron.parallel"), "{e}");
    let e = vm.fails(&["cron", "nosuchsite"], 1);
    assert!(e.contains("`nosuchsite`"), "{e}");
    let e = vm.fails(&["cron", "history", "nosuchsite"], 1);
    assert!(e.contains("`nosuchsite`"), "{e}");
}

#[test]
fn cron_on_mariadb_sites() {
    cron_across_sites("maria", true);
}

#[test]
fn cron_on_postgres_sites() {
    cron_across_sites("pg", false);
}
