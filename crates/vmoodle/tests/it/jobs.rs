//! Durable jobs: a real vmoodle process killed (SIGKILL) at every step of a deploy and of a
//! delete, then the next command recovers it and nothing is left behind (or the delete is
//! finished); SIGINT undoes at the next step boundary; things that appeared meanwhile and belong
//! to someone else are never undone; the home's lock times out with a clear message.
//! Pause points (debug builds only) hold the process at an exact place: `KIND:STEP:start`,
//! `...:intended` (undo record written, action not done), `...:made` (action done).

use crate::common::Vm;
use crate::deploy::{my_value, pg_value, setup, token, Setup};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test setup (crate::deploy::setup) with a template snapshotted from `source`.
fn setup_with_template(tag: &str, source: &str) -> (Setup, String) {
    let mut s = setup();
    let tpl = token(tag);
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", source, "--template", &tpl]);
    (s, tpl)
}

/// Starts `vmoodle ARGS` that stops at pause point `point`; returns once it is there.
fn start_paused(vm: &Vm, args: &[&str], point: &str) -> (Child, PathBuf) {
    let file = vm.dir.path().join(format!("pause-{}", token("p")));
    let mut child = vm
        .cmd(args)
        .env("VMOODLE_TEST_PAUSE", point)
        .env("VMOODLE_TEST_PAUSE_FILE", &file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmoodle");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !file.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("vmoodle {args:?} ended ({status}) before pause point {point}: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "pause point {point} never reached"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, file)
}

fn kill9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn my_exists(db: &str) -> bool {
    my_value(
        "information_schema",
        &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'"),
    ) == "1"
}

fn my_user_exists(u: &str) -> bool {
    my_value(
        "mysql",
        &format!("SELECT COUNT(*) FROM mysql.user WHERE User = '{u}'"),
    ) != "0"
}

fn pg_exists(db: &str) -> bool {
    pg_value(
        "postgres",
        &format!("SELECT COUNT(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "1"
}

fn pg_role_exists(r: &str) -> bool {
    pg_value(
        "postgres",
        &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{r}'"),
    ) == "1"
}

/// Everything a deploy of `t` could have made is absent.
fn nothing_left(s: &Setup, t: &str, maria: bool) {
    let name = format!("vmt_{t}");
    if maria {
        assert!(!my_exists(&name), "database {name} left behind");
        assert!(!my_user_exists(&name), "user {name} left behind");
    } else {
        assert!(!pg_exists(&name), "database {name} left behind");
        assert!(!pg_role_exists(&name), "role {name} left behind");
    }
    assert!(!s.base.join(t).exists(), "dataroot left behind");
    if s.base.exists() {
        for e in std::fs::read_dir(&s.base).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".vmoodle-staging"), "staging dir {n} left");
        }
    }
    let host = format!("{t}.moodle.example.org");
    assert!(
        !s.vm.hosts_dir().join(format!("{host}.php")).exists(),
        "host file left behind"
    );
    let list = s.vm.json(&["instance", "list", "--json"]);
    assert!(
        !list.as_array().unwrap().iter().any(|i| i["shortname"] == t),
        "register entry left behind"
    );
}

fn deploy_points(maria: bool) -> Vec<&'static str> {
    let mut p = vec![
        "deploy:database and user:start",
        "deploy:database and user:intended",
        "deploy:database and user:made",
    ];
    if maria {
        // The database, then the user.
        p.extend([
            "deploy:database and user:intended#2",
            "deploy:database and user:made#2",
        ]);
        p.push("deploy:fill the database:start");
    } else {
        p.extend([
            "deploy:fill the database:start",
            "deploy:fill the database:intended",
            "deploy:fill the database:made",
        ]);
    }
    p.extend([
        "deploy:Moodle fix-ups:start",
        "deploy:dataroot:start",
        "deploy:dataroot:intended",
        "deploy:dataroot:made",
        "deploy:dataroot:intended#2",
        "deploy:dataroot:made#2",
        "deploy:register and publish:start",
        "deploy:register and publish:intended",
        "deploy:register and publish:made",
    ]);
    p
}

fn crash_at_every_deploy_step(maria: bool) {
    let mut s = setup();
    let tpl = token("tj");
    s.clean.templates.push(tpl.clone());
    let src = if maria { "srcmaria" } else { "srcpg" };
    let server = if maria { "maria" } else { "pg" };
    s.vm.ok(&["snapshot", src, "--template", &tpl]);
    // Load the live template first, so every deploy below is the fast path.
    s.vm.ok(&["template", "load", &tpl, "--dbserver", server]);
    let t = token("cr");
    s.clean.tokens.push(t.clone());
    let args = [
        "deploy",
        "--template",
        &tpl,
        "--token",
        &t,
        "--dbserver",
        server,
    ];
    let points = deploy_points(maria);
    for (n, point) in points.iter().enumerate() {
        let (child, _) = start_paused(&s.vm, &args, point);
        kill9(child);
        if n % 2 == 0 {
            // Recovered explicitly...
            let r = s.vm.json(&["jobs", "recover", "--json"]);
            let r = r.as_array().unwrap();
            assert_eq!(r.len(), 1, "{point}: {r:?}");
            assert_eq!(r[0]["state"], "rolled back", "{point}: {r:?}");
            assert_eq!(r[0]["kind"], "deploy");
        } else {
            // ... or by the next command that takes the home's lock.
            let out = s.vm.run(&["instance", "disable", "srcpg"]);
            assert!(out.status.success(), "{point}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("recovered job"), "{point}: {err}");
            s.vm.ok(&["instance", "enable", "srcpg"]);
        }
        nothing_left(&s, &t, maria);
        let jobs = s.vm.json(&["jobs", "list", "--kind", "deploy", "--json"]);
        let last = &jobs[0];
        assert_eq!(last["state"], "rolled back", "{point}: {last}");
        assert!(
            last["error"].as_str().unwrap().contains("interrupted"),
            "{point}: {last}"
        );
    }
    // A crash after the last change: the job was not marked done, so it is undone too; and the
    // re-run of the same deploy then works (no "database already exists").
    let (child, _) = start_paused(&s.vm, &args, "deploy:register and publish:made");
    kill9(child);
    let out = s.vm.json(&[
        "deploy",
        "--template",
        &tpl,
        "--token",
        &t,
        "--dbserver",
        server,
        "--json",
    ]);
    assert_eq!(out[0]["ok"], true, "{out}");
    let show = s.vm.json(&["instance", "show", &t, "--json"]);
    assert_eq!(show["shortname"], t.as_str());
    let shown = s.vm.ok(&["jobs", "show", "1"]);
    assert!(shown.contains("undo records"), "{shown}");
    // A delete killed before its point of no return is undone (archive removed, site back
    // online); one killed after it is finished by the next command.
    let (child, _) = start_paused(&s.vm, &["delete", &t, "--yes"], "delete:take offline:made");
    kill9(child);
    let r = s.vm.json(&["jobs", "recover", "--json"]);
    assert_eq!(r[0]["state"], "rolled back", "{r}");
    assert_eq!(
        s.vm.json(&["instance", "show", &t, "--json"])["enabled"],
        true
    );
    let archives: Vec<_> = std::fs::read_dir(s.vm.home.join("archives"))
        .unwrap()
        .collect();
    assert!(archives.is_empty(), "the partial archive was removed");
    let (child, _) = start_paused(
        &s.vm,
        &["delete", &t, "--yes"],
        "delete:drop database:start",
    );
    kill9(child);
    let r = s.vm.json(&["jobs", "recover", "--json"]);
    assert_eq!(r[0]["state"], "done", "{r}");
    assert_eq!(r[0]["kind"], "delete");
    nothing_left(&s, &t, maria);
    assert_eq!(
        std::fs::read_dir(s.vm.home.join("archives"))
            .unwrap()
            .count(),
        1,
        "the archive of the finished delete is kept"
    );
}

#[test]
fn crash_at_every_deploy_step_mariadb() {
    crash_at_every_deploy_step(true);
}

#[test]
fn crash_at_every_deploy_step_postgres() {
    crash_at_every_deploy_step(false);
}

/// SIGINT stops the job at its next step boundary and undoes it; exit code 130.
#[test]
fn sigint_undoes_at_the_next_step_boundary() {
    let (mut s, tpl) = setup_with_template("ts", "srcpg");
    let t = token("si");
    s.clean.tokens.push(t.clone());
    let (child, _) = start_paused(
        &s.vm,
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &t,
            "--dbserver",
            "pg",
        ],
        "deploy:Moodle fix-ups:start",
    );
    let pid = child.id();
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("SIGINT"), "{err}");
    nothing_left(&s, &t, false);
    let jobs = s.vm.json(&["jobs", "list", "--json"]);
    assert_eq!(jobs[0]["state"], "rolled back", "{jobs}");
    assert!(jobs[0]["undone"].as_array().unwrap().len() >= 2, "{jobs}");
}

/// A database or a dataroot that appears while a deploy runs belongs to someone else: the
/// deploy fails, and its undo never touches it.
#[test]
fn what_appeared_meanwhile_is_never_undone() {
    let (mut s, tpl) = setup_with_template("tw", "srcmaria");
    // A database created by someone else between the checks and the creation.
    let t = token("ap");
    s.clean.tokens.push(t.clone());
    let args = [
        "deploy",
        "--template",
        &tpl,
        "--token",
        &t,
        "--dbserver",
        "maria",
    ];
    let (child, file) = start_paused(&s.vm, &args, "deploy:database and user:start");
    vmoodle_test::mariadb_sql(
        None,
        &format!("CREATE DATABASE `vmt_{t}`; CREATE TABLE `vmt_{t}`.theirs (id INT)"),
    );
    std::fs::remove_file(&file).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        my_value(&format!("vmt_{t}"), "SELECT COUNT(*) FROM theirs"),
        "0",
        "their database is still there"
    );
    vmoodle_test::mariadb_sql(None, &format!("DROP DATABASE `vmt_{t}`"));
    // A directory created at the dataroot's path while the copy ran.
    let t2 = token("ap");
    s.clean.tokens.push(t2.clone());
    let args = [
        "deploy",
        "--template",
        &tpl,
        "--token",
        &t2,
        "--dbserver",
        "maria",
    ];
    let (child, file) = start_paused(&s.vm, &args, "deploy:dataroot:made");
    let theirs = s.base.join(&t2);
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("precious.txt"), "theirs").unwrap();
    std::fs::remove_file(&file).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(theirs.join("precious.txt")).unwrap(),
        "theirs"
    );
    std::fs::remove_dir_all(&theirs).unwrap();
    nothing_left(&s, &t2, true);
}

/// A second command waits for the lock, then gives up with exit 75, naming the holder.
#[test]
fn lock_wait_times_out_clearly() {
    let (mut s, tpl) = setup_with_template("tl", "srcpg");
    let t = token("lk");
    s.clean.tokens.push(t.clone());
    let (child, file) = start_paused(
        &s.vm,
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &t,
            "--dbserver",
            "pg",
        ],
        "deploy:dataroot:start",
    );
    let pid = child.id().to_string();
    let err =
        s.vm.fails(&["--lock-wait", "1", "instance", "disable", "srcpg"], 75);
    assert!(err.contains(&pid) && err.contains("deploy"), "{err}");
    let err = s.vm.fails(&["--lock-wait", "1", "init"], 75);
    assert!(err.contains(&pid), "init waits for the lock too: {err}");
    std::fs::remove_file(&file).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s
        .vm
        .hosts_dir()
        .join(format!("{t}.moodle.example.org.php"))
        .exists());
}

/// A snapshot killed at any point leaves no template directory, partial capture or register
/// entry once recovered; then the same snapshot works.
#[test]
fn crash_during_snapshot_is_undone() {
    let mut s = setup();
    let tpl = token("tc");
    s.clean.templates.push(tpl.clone());
    for point in [
        "snapshot:capture:intended",
        "snapshot:capture:made",
        "snapshot:register:made",
        "snapshot:register:made#2",
    ] {
        let (child, _) = start_paused(&s.vm, &["snapshot", "srcpg", "--template", &tpl], point);
        kill9(child);
        let r = s.vm.json(&["jobs", "recover", "--json"]);
        assert_eq!(r[0]["state"], "rolled back", "{point}: {r}");
        let left: Vec<String> = std::fs::read_dir(s.vm.home.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{point}: {left:?}");
        let list = s.vm.json(&["template", "list", "--json"]);
        assert_eq!(list.as_array().unwrap().len(), 0, "{point}: {list}");
    }
    s.vm.ok(&["snapshot", "srcpg", "--template", &tpl]);
    // Destructive commands confirm alike: without a terminal, --yes is required.
    let err = s.vm.fails(&["template", "delete", &tpl], 1);
    assert!(err.contains("give --yes"), "{err}");
    s.vm.ok(&["template", "delete", &tpl, "--yes"]);
}

/// `{n}` in help text is clap's line break: the help must show the placeholder itself.
#[test]
fn deploy_help_shows_the_number_placeholder() {
    let vm = Vm::new(crate::common::Backend::Sqlite);
    let help = vm.ok(&["deploy", "--help"]);
    assert!(help.contains("with {N} where the number goes"), "{help}");
    assert!(help.contains("--token-pattern 'school{N}'"), "{help}");
}

/// The MNET rows a deploy wrote into its peers' databases are removed when the deploy is
/// undone (here: killed after its MNET step, before it was marked done).
#[test]
fn crash_after_mnet_step_removes_rows_in_peers() {
    let (mut s, tpl) = setup_with_template("tn", "srcpg");
    let (a, b) = (token("na"), token("nb"));
    s.clean.tokens.extend([a.clone(), b.clone()]);
    s.vm.ok(&[
        "deploy",
        "--template",
        &tpl,
        "--token",
        &a,
        "--dbserver",
        "pg",
        "--mnet",
        "1",
    ]);
    let b_www = format!("http://{b}.moodle.example.org");
    let rows_for_b = || {
        pg_value(
            &format!("vmt_{a}"),
            &format!("SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot = '{b_www}'"),
        )
    };
    let (child, _) = start_paused(
        &s.vm,
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &b,
            "--dbserver",
            "pg",
            "--mnet",
            "1",
        ],
        "deploy:MNET key and peers:made",
    );
    assert_eq!(rows_for_b(), "1", "the peer row was written");
    kill9(child);
    let r = s.vm.json(&["jobs", "recover", "--json"]);
    assert_eq!(r[0]["state"], "rolled back", "{r}");
    assert_eq!(
        rows_for_b(),
        "0",
        "the row in the peer's database was removed"
    );
    nothing_left(&s, &b, false);
    // The surviving instance's own MNET is intact.
    let a_www = format!("http://{a}.moodle.example.org");
    assert_eq!(
        pg_value(
            &format!("vmt_{a}"),
            &format!(
                "SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot = '{a_www}' AND public_key <> ''"
            ),
        ),
        "1"
    );
    // The same deploy now works, and `delete` removes the peer row it made in A.
    s.vm.ok(&[
        "deploy",
        "--template",
        &tpl,
        "--token",
        &b,
        "--dbserver",
        "pg",
        "--mnet",
        "1",
    ]);
    assert_eq!(rows_for_b(), "1");
    s.vm.ok(&["delete", &b, "--yes", "--no-archive"]);
    assert_eq!(rows_for_b(), "0", "delete removed the peering vmoodle made");
    nothing_left(&s, &b, false);
}

/// `mnet renew` killed between rotating keys and updating the peers is finished by recovery:
/// every peer then holds the new keys.
#[test]
fn crash_during_mnet_renew_is_finished() {
    let (mut s, tpl) = setup_with_template("tr", "srcpg");
    let (a, b) = (token("ra"), token("rb"));
    s.clean.tokens.extend([a.clone(), b.clone()]);
    s.vm.ok(&[
        "deploy",
        "--template",
        &tpl,
        "--tokens",
        &format!("{a},{b}"),
        "--dbserver",
        "pg",
        "--mnet",
        "1",
    ]);
    let (child, _) = start_paused(
        &s.vm,
        &["mnet", "renew", "--all"],
        "mnet renew:update peers and caches:start",
    );
    kill9(child);
    // The peers still hold the old keys: stale.
    assert_eq!(s.vm.run(&["mnet", "status"]).status.code(), Some(3));
    let out = s.vm.run(&["jobs", "recover", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r[0]["kind"], "mnet renew", "{r}");
    assert_eq!(
        out.status.code(),
        Some(if r[0]["state"] == "done" { 0 } else { 3 }),
        "{r}"
    );
    // Without moodle.dir the caches cannot be purged through Moodle: the job says so and stays
    // incomplete; the keys and peers are done.
    assert!(
        r[0]["state"] == "done" || r[0]["state"] == "incomplete",
        "{r}"
    );
    let st = s.vm.json(&["mnet", "status", "--json"]);
    for p in st["pairs"].as_array().unwrap() {
        assert_eq!(p["a_holds_b"], true, "{p}");
        assert_eq!(p["b_holds_a"], true, "{p}");
    }
}

/// `spares fill` is a job: killed while making its second spare, recovery drops that one and
/// keeps the first, complete one.
#[test]
fn crash_during_spares_fill_keeps_finished_spares() {
    let (s, tpl) = setup_with_template("tq", "srcmaria");
    let (child, _) = start_paused(
        &s.vm,
        &[
            "spares",
            "fill",
            "--template",
            &tpl,
            "--dbserver",
            "maria",
            "--count",
            "3",
        ],
        "spares fill:spare 2:made",
    );
    let before = crate::deploy::spares_of(&s.vm, &tpl);
    assert_eq!(before.len(), 2, "{before:?}");
    kill9(child);
    let r = s.vm.json(&["jobs", "recover", "--json"]);
    assert_eq!(r[0]["kind"], "spares fill", "{r}");
    assert_eq!(r[0]["state"], "rolled back", "{r}");
    let after = crate::deploy::spares_of(&s.vm, &tpl);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(before.contains(&after[0]));
}
