//! `vmoodle run`: Moodle's own admin/cli scripts for a selection of live instances.

use super::LiveFleet;

#[test]
fn run_scripts_across_a_selection() {
    let f = LiveFleet::new("maria", 2);
    let (a, b) = (&f.tokens[0], &f.tokens[1]);
    let vm = &f.s.vm;

    // Maintenance on for one site through Moodle's own script; the other is left alone.
    let r = vm.json(&["run", "maintenance.php", a, "--json", "--", "--enable"]);
    assert_eq!(r["sites"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["sites"][0]["status"], "ok", "{r}");
    assert_eq!(r["sites"][0]["exit_code"], 0, "{r}");
    let log = std::fs::read_to_string(r["sites"][0]["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("VMOODLE_HOST=") && log.contains("exit code 0"),
        "{log}"
    );
    let on = crate::deploy::my_value(
        &format!("vmt_{a}"),
        "SELECT value FROM mdl_config WHERE name = 'maintenance_enabled'",
    );
    // Moodle's CLI maintenance: the flag and climaintenance.html in the site's dataroot.
    assert_eq!(on, "cli mode");
    assert!(f.s.base.join(a).join("climaintenance.html").is_file());
    let off = crate::deploy::my_value(
        &format!("vmt_{b}"),
        "SELECT COALESCE((SELECT value FROM mdl_config WHERE name = 'maintenance_enabled'), '0')",
    );
    assert_eq!(off, "0");
    // Served: the site in maintenance answers 503, the other serves its front page.
    let _server = f.serve();
    let (status, page) = f.get(a, "/");
    assert_eq!(status, 503, "{page}");
    let (status, page) = f.get(b, "/login/index.php");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&f.host(b)), "{page}");

    // --match selects both deployed sites (not the two source sites), two at a time.
    let r = vm.json(&[
        "run",
        "maintenance.php",
        "--match",
        "f[01]*",
        "--parallel",
        "2",
        "--json",
        "--",
        "--disable",
    ]);
    let sites: Vec<&str> = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance"].as_str().unwrap())
        .collect();
    assert_eq!(sites.len(), 2, "{r}");
    assert!(
        sites.contains(&a.as_str()) && sites.contains(&b.as_str()),
        "{r}"
    );
    assert!(
        r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "ok"),
        "{r}"
    );
    let job = r["job"].as_i64().unwrap();
    let j = vm.json(&["jobs", "show", &job.to_string(), "--json"]);
    assert_eq!(j["state"], "done", "{j}");

    // A script that fails on one site: exit 3, the other still ran. An instance disabled is
    // left out and said so.
    vm.ok(&["instance", "disable", b]);
    let out = vm.run(&[
        "run",
        "cfg.php",
        "--all",
        "--exclude",
        "srcpg",
        "--",
        "--name=no_such_setting_x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left out (disabled"), "{err}");
    vm.ok(&["instance", "enable", b]);

    // Bad input names what is wrong.
    let e = vm.fails(&["run", "../../etc/passwd", "--all"], 1);
    assert!(
        e.contains("is not one of Moodle's admin/cli scripts"),
        "{e}"
    );
    let e = vm.fails(&["run", "purge_caches.php", "nosuchsite"], 1);
    assert!(e.contains("`nosuchsite`"), "{e}");
    let e = vm.fails(&["run", "purge_caches.php"], 1);
    assert!(e.contains("no instances selected"), "{e}");
    let e = vm.fails(
        &["run", "purge_caches.php", "--all", "--dbserver", "nope"],
        1,
    );
    assert!(e.contains("--dbserver `nope`"), "{e}");

    // A time limit kills a script and reports it (cron.php keeps polling without --keep-alive=0).
    let out = vm.run(&[
        "run",
        "cron.php",
        a,
        "--timeout",
        "2s",
        "--json",
        "--",
        "--keep-alive=60",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sites"][0]["status"], "timeout", "{r}");
}
