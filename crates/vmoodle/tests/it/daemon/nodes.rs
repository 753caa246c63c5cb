//! Two daemons (the real binary) on one PostgreSQL register, each with a home of its own (same
//! vmoodle.toml and secret.key, own hosts/): scheduled work is claimed by one of them per turn,
//! and a change made through one node's CLI reaches the other node's host files in seconds.

use super::*;
use crate::common::Backend;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `vmoodle serve --listen 127.0.0.1:0` process, killed when dropped.
struct Node {
    child: Child,
    url: String,
}

impl Node {
    fn start(home: &Path) -> Self {
        Self::start_env(home, &[])
    }

    fn start_env(home: &Path, env: &[(&str, &Path)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmoodle"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .env("VMOODLE_HOME", home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmoodle serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let url = loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "vmoodle serve ended before serving"
            );
            if let Some(rest) = line.trim().strip_prefix("vmoodle serving on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in err.lines() {});
        Self { child, url }
    }

    fn metrics(&self, token: &str) -> String {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second home on the register of `vm`: copies of its settings, key and markers (a SQLite
/// register is linked, not copied); its own hosts/ and lock.
fn second_home(vm: &Vm) -> PathBuf {
    let home = vm.dir.path().join("node2");
    std::fs::create_dir_all(&home).unwrap();
    for e in std::fs::read_dir(&vm.home).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "registry.sqlite" {
            std::os::unix::fs::symlink(e.path(), home.join(&name)).unwrap();
        } else if e.file_type().unwrap().is_file()
            && !name.contains("lock")
            && !name.starts_with("registry.sqlite")
        {
            std::fs::copy(e.path(), home.join(&name)).unwrap();
        }
    }
    home
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn two_daemons_share_scheduled_work_and_keep_host_files_in_step() {
    let vm = Vm::new(Backend::Postgres);
    vm.add_local_servers();
    vm.ok_stdin(
        &["instance", "add", "--token", "school1", "--password-stdin"],
        "pw-school1",
    );
    let host = vm.json(&["instance", "show", "school1", "--json"])["host"]
        .as_str()
        .unwrap()
        .to_string();
    let (_write, read) = admin_and_tokens(&vm);
    let home2 = second_home(&vm);
    let a = Node::start(&vm.home);
    let b = Node::start(&home2);

    // Node b publishes its own hosts/ from the register at start.
    let file2 = home2
        .join("hosts")
        .join(format!("{}.php", host.replace(':', "_")));
    wait_for("node 2 writes the host file", 20, || {
        std::fs::read_to_string(&file2).is_ok_and(|t| t.contains("'enabled' => true"))
    });

    // Disabled through node a's CLI: node b's host file follows within a few seconds.
    vm.ok(&["instance", "disable", "school1"]);
    let took = wait_for("node 2's host file says disabled", 5, || {
        std::fs::read_to_string(&file2).is_ok_and(|t| t.contains("'enabled' => false"))
    });
    assert!(took < Duration::from_secs(3), "sync took {took:?}");

    // Both have had several scheduler ticks: the first turn of each piece of scheduled work ran
    // on exactly one of them.
    wait_for("both daemons heartbeat", 20, || {
        sample(&a.metrics(&read), "vmoodle_nodes ") == Some(2.0)
    });
    for name in ["mnet renew", "spares"] {
        let line = format!("vmoodle_schedule_runs_total{{name=\"{name}\"}}");
        let runs: f64 = [&a, &b]
            .iter()
            .map(|n| sample(&n.metrics(&read), &line).unwrap_or(0.0))
            .sum();
        assert_eq!(runs, 1.0, "`{name}` ran {runs} times across two nodes");
    }
    let m = b.metrics(&read);
    assert_eq!(
        sample(&m, "vmoodle_instances{state=\"disabled\"}"),
        Some(1.0),
        "{m}"
    );
}

/// A daemon killed (SIGKILL) in the middle of a job it runs (a warm-spare fill the scheduler
/// started, held at a pause point after its database was recorded): the other daemon sees it
/// dead and rolls the job back, dropping the half-made database.
#[test]
fn a_job_of_a_killed_daemon_is_recovered_by_the_other() {
    // Two nodes on one PostgreSQL register, as web nodes share it.
    let mut s = crate::deploy::setup_on(crate::common::Backend::Postgres);
    let tpl = crate::deploy::token("nk");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    s.vm.set("spares.keep", "1");
    let vm = &s.vm;
    let home2 = second_home(vm);
    let point = Path::new("spares fill:spare 1:intended");
    let (p1, p2) = (vm.dir.path().join("pause1"), vm.dir.path().join("pause2"));
    let mut a = Some(Node::start_env(
        &vm.home,
        &[
            ("VMOODLE_TEST_PAUSE", point),
            ("VMOODLE_TEST_PAUSE_FILE", &p1),
        ],
    ));
    let mut b = Some(Node::start_env(
        &home2,
        &[
            ("VMOODLE_TEST_PAUSE", point),
            ("VMOODLE_TEST_PAUSE_FILE", &p2),
        ],
    ));
    // One of them claims the spares turn and holds its fill job at the pause point.
    wait_for("a spares fill reaches its pause point", 120, || {
        p1.exists() || p2.exists()
    });
    let (victim, survivor) = if p1.exists() {
        (a.take().unwrap(), b.take().unwrap())
    } else {
        (b.take().unwrap(), a.take().unwrap())
    };
    let jobs = vm.json(&["jobs", "list", "--json"]);
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "spares fill")
        .unwrap_or_else(|| panic!("no spares fill job: {jobs}"))
        .clone();
    let id = job["id"].as_i64().unwrap();
    assert_eq!(job["state"], "running", "{job}");
    drop(victim); // SIGKILL
    let took = wait_for("the other daemon recovers the job", 40, || {
        vm.json(&["jobs", "show", &id.to_string(), "--json"])["state"] == "rolled back"
    });
    assert!(
        took < Duration::from_secs(25),
        "recovered after {took:?}, beyond the lease"
    );
    let j = vm.json(&["jobs", "show", &id.to_string(), "--json"]);
    assert!(
        crate::deploy::spares_of(vm, &tpl).is_empty(),
        "the half-made spare is dropped: {j}"
    );
    drop(survivor);
}
