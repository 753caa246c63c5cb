//! `vmoodle upgrade`: a local plugin added to the shared code and bumped, upgraded across live
//! Moodle 5.1 sites on MariaDB and PostgreSQL, a failing site left in maintenance, rolled back
//! from its pre-upgrade snapshot and upgraded again; a failing canary stops the wave.

use super::LiveFleet;
use crate::deploy::{my_value, pg_value};
use std::path::Path;

/// Writes (as new files, never in place: the copy is hard-linked to the shared unpack) a local
/// plugin `local_vmtest` at `version` into the Moodle code. Its upgrade step to version 2 throws
/// when the site's database has the setting `local_vmtest|failhere`, and otherwise records the
/// marker `local_vmtest|marker`.
pub(crate) fn write_plugin(moodle: &Path, version: u32) {
    let dir = moodle.join("public/local/vmtest");
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("lang/en")).unwrap();
    let put = |rel: &str, text: String| {
        let p = dir.join(rel);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text).unwrap();
    };
    put(
        "version.php",
        format!(
            "<?php\ndefined('MOODLE_INTERNAL') || die();\n$plugin->component = 'local_vmtest';\n\
             $plugin->version = {version};\n$plugin->requires = 2025100600;\n$plugin->maturity = MATURITY_STABLE;\n"
        ),
    );
    put(
        "lang/en/local_vmtest.php",
        "<?php\n$string['pluginname'] = 'vmoodle test plugin';\n".into(),
    );
    put(
        "db/upgrade.php",
        "<?php\ndefined('MOODLE_INTERNAL') || die();\n\
         function xmldb_local_vmtest_upgrade($oldversion) {\n    global $DB;\n\
             if ($oldversion < 2) {\n\
                 if ($DB->record_exists('config_plugins', ['plugin' => 'local_vmtest', 'name' => 'failhere'])) {\n\
                     throw new coding_exception('vmtest: failure asked for by this site');\n\
                 }\n\
                 if ($DB->record_exists('config_plugins', ['plugin' => 'local_vmtest', 'name' => 'slowhere'])) {\n\
                     sleep(10);\n\
                 }\n\
                 set_config('marker', 'upgraded-to-2', 'local_vmtest');\n\
                 upgrade_plugin_savepoint(true, 2, 'local', 'vmtest');\n\
             }\n    return true;\n}\n"
            .into(),
    );
    // The version.php replaced under a running php-cli's opcache would not matter: every
    // script run is a new process.
}

fn upgrade_json(f: &LiveFleet, args: &[&str], code: i32) -> serde_json::Value {
    let mut all = vec!["upgrade"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = f.s.vm.run(&all);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{err}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
}

fn site<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instance"] == name)
        .unwrap_or_else(|| panic!("{name} not in {r}"))
}

/// A value of a site's database on either backend.
fn value(server: &str, token: &str, sql: &str) -> String {
    if server == "maria" {
        my_value(&format!("vmt_{token}"), sql)
    } else {
        pg_value(&format!("vmt_{token}"), sql)
    }
}

fn plugin_version(server: &str, token: &str) -> String {
    value(
        server,
        token,
        "SELECT COALESCE((SELECT value FROM mdl_config_plugins WHERE plugin = 'local_vmtest' AND name = 'version'), 'none')",
    )
}

fn marker(server: &str, token: &str) -> String {
    value(
        server,
        token,
        "SELECT COALESCE((SELECT value FROM mdl_config_plugins WHERE plugin = 'local_vmtest' AND name = 'marker'), 'none')",
    )
}

fn maintenance(server: &str, f: &LiveFleet, token: &str) -> (String, bool) {
    let v = value(
        server,
        token,
        "SELECT COALESCE((SELECT value FROM mdl_config WHERE name = 'maintenance_enabled'), '0')",
    );
    (v, f.s.base.join(token).join("climaintenance.html").exists())
}

fn set_fail_flag(server: &str, token: &str, on: bool) {
    set_flag(server, token, "failhere", on)
}

fn set_flag(server: &str, token: &str, flag: &str, on: bool) {
    let sql = if on {
        format!("INSERT INTO mdl_config_plugins (plugin, name, value) VALUES ('local_vmtest', '{flag}', '1')")
    } else {
        format!("DELETE FROM mdl_config_plugins WHERE plugin = 'local_vmtest' AND name = '{flag}'")
    };
    let sql = sql.as_str();
    if server == "maria" {
        vmoodle_test::mariadb_sql(Some(&format!("vmt_{token}")), sql);
    } else {
        vmoodle_test::pg_sql(&format!("vmt_{token}"), sql);
    }
}

#[test]
fn upgrade_fail_rollback_and_again_on_mariadb() {
    let mut f = LiveFleet::new("maria", 3);
    let t: Vec<&str> = f.tokens.iter().map(|s| s.as_str()).collect();
    let (a, b, c) = (t[0], t[1], t[2]);

    // Nothing pending yet: every site is up to date.
    let r = upgrade_json(&f, &[a, b, c, "--dry-run"], 0);
    assert!(
        r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "skipped"),
        "{r}"
    );

    // The plugin appears in the code: install it everywhere.
    write_plugin(&f.moodle, 1);
    let r = upgrade_json(&f, &[a, b, c, "--dry-run"], 0);
    assert!(
        r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["data"]["pending"] == true),
        "{r}"
    );
    let r = upgrade_json(&f, &[a, b, c], 0);
    for x in [a, b, c] {
        assert_eq!(site(&r, x)["status"], "ok", "{r}");
        assert_eq!(plugin_version("maria", x), "1");
    }

    // Version 2; site c is made to fail.
    write_plugin(&f.moodle, 2);
    set_fail_flag("maria", c, true);
    let r = upgrade_json(&f, &[a, b, c, "--snapshot", "--parallel", "2"], 3);
    for x in [a, b] {
        let s = site(&r, x);
        assert_eq!(s["status"], "ok", "{r}");
        let snap = s["data"]["snapshot"].as_str().unwrap().to_string();
        assert!(snap.starts_with("pre_"), "{r}");
        f.s.clean.templates.push(snap.clone());
        assert_eq!(plugin_version("maria", x), "2");
        assert_eq!(marker("maria", x), "upgraded-to-2");
        assert_eq!(maintenance("maria", &f, x), ("0".into(), false));
    }
    let sc = site(&r, c);
    assert_eq!(sc["status"], "failed", "{r}");
    assert!(
        sc["message"]
            .as_str()
            .unwrap()
            .contains("left in maintenance"),
        "{r}"
    );
    let log = std::fs::read_to_string(sc["log"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("vmtest: failure asked for by this site"),
        "{log}"
    );
    assert_eq!(plugin_version("maria", c), "1");
    assert_eq!(maintenance("maria", &f, c), ("cli mode".into(), true));

    // Served: the upgraded sites answer, the failed one is in maintenance.
    {
        let _server = f.serve();
        let (status, page) = f.get(a, "/login/index.php");
        assert_eq!(status, 200, "{page}");
        let (status, page) = f.get(b, "/login/index.php");
        assert_eq!(status, 200, "{page}");
        let (status, page) = f.get(c, "/login/index.php");
        assert_eq!(status, 503, "{page}");
    }

    // Status: c failed at its upgrade step, with its snapshot and error; nothing else pending.
    let st = f.s.vm.json(&["upgrade", "status", "--json"]);
    let sc = site(&st, c);
    assert_eq!(sc["pending"], true, "{st}");
    assert_eq!(sc["last"]["state"], "failed", "{st}");
    assert_eq!(sc["last"]["step"], "upgrade", "{st}");
    let snap_c = sc["last"]["snapshot"].as_str().unwrap().to_string();
    f.s.clean.templates.push(snap_c.clone());
    assert_eq!(site(&st, a)["pending"], false, "{st}");
    assert_eq!(site(&st, a)["last"]["state"], "ok", "{st}");

    // Rollback of a (upgraded): its database is as before the upgrade (plugin 1, no marker);
    // the code is ahead of it, so it stays in maintenance and says what to do.
    let rb = f.s.vm.json(&["upgrade", "rollback", a, "--yes", "--json"]);
    assert_eq!(rb["maintenance"], true, "{rb}");
    assert!(
        rb["message"].as_str().unwrap().contains("vmoodle upgrade"),
        "{rb}"
    );
    assert_eq!(plugin_version("maria", a), "1");
    assert_eq!(marker("maria", a), "none");
    assert!(maintenance("maria", &f, a).1);
    // The instance's own account still reaches its restored database.
    let st = f.s.vm.json(&["upgrade", "status", "--json"]);
    assert_eq!(site(&st, a)["last"]["state"], "rolled_back", "{st}");
    assert!(site(&st, a)["error"].is_null(), "{st}");

    // Rollback of the failed c, the cause fixed, upgraded again: a and c are done and served.
    let rb = f.s.vm.json(&["upgrade", "rollback", c, "--yes", "--json"]);
    assert_eq!(rb["maintenance"], true, "{rb}");
    set_fail_flag("maria", c, false);
    let r = upgrade_json(&f, &[a, b, c], 0);
    assert_eq!(site(&r, b)["status"], "skipped", "{r}");
    for x in [a, c] {
        assert_eq!(site(&r, x)["status"], "ok", "{r}");
        assert_eq!(plugin_version("maria", x), "2");
        assert_eq!(marker("maria", x), "upgraded-to-2");
        assert_eq!(maintenance("maria", &f, x), ("0".into(), false));
    }
    let _server = f.serve();
    let (status, page) = f.get(c, "/login/index.php");
    assert_eq!(status, 200, "{page}");

    // No snapshot in its last upgrade, no rollback.
    let e = f.s.vm.fails(&["upgrade", "rollback", a, "--yes"], 1);
    assert!(e.contains("no pre-upgrade snapshot"), "{e}");
}

#[test]
fn failing_canary_stops_the_wave_on_postgres() {
    let mut f = LiveFleet::new("pg", 3);
    let mut t: Vec<&str> = f.tokens.iter().map(|s| s.as_str()).collect();
    t.sort();
    let (a, b, c) = (t[0], t[1], t[2]);
    write_plugin(&f.moodle, 1);
    let r = upgrade_json(&f, &[a, b, c, "--canary", "1"], 0);
    for x in [a, b, c] {
        assert_eq!(site(&r, x)["status"], "ok", "{r}");
        assert_eq!(plugin_version("pg", x), "1");
        assert_eq!(maintenance("pg", &f, x), ("0".into(), false));
    }
    write_plugin(&f.moodle, 2);
    set_fail_flag("pg", a, true);
    let r = upgrade_json(
        &f,
        &[a, b, c, "--canary", "1", "--parallel", "2", "--snapshot"],
        3,
    );
    assert_eq!(site(&r, a)["status"], "failed", "{r}");
    for x in [b, c] {
        assert_eq!(site(&r, x)["status"], "not_started", "{r}");
        assert!(
            site(&r, x)["message"].as_str().unwrap().contains("canary"),
            "{r}"
        );
        assert_eq!(plugin_version("pg", x), "1");
        assert_eq!(maintenance("pg", &f, x), ("0".into(), false));
    }
    assert_eq!(maintenance("pg", &f, a), ("cli mode".into(), true));
    let job = r["job"].as_i64().unwrap();
    let j = f.s.vm.json(&["jobs", "show", &job.to_string(), "--json"]);
    assert_eq!(j["state"], "failed", "{j}");

    // Rollback on PostgreSQL: the canary's database back from its snapshot, loaded by the
    // instance's own role (it owns what was restored), still in maintenance as the code is ahead.
    let st = f.s.vm.json(&["upgrade", "status", "--json"]);
    let snap = site(&st, a)["last"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    f.s.clean.templates.push(snap);
    let rb = f.s.vm.json(&["upgrade", "rollback", a, "--yes", "--json"]);
    assert_eq!(rb["maintenance"], true, "{rb}");
    assert_eq!(plugin_version("pg", a), "1");
    assert_eq!(
        crate::deploy::pg_value(
            &format!("vmt_{a}"),
            "SELECT tableowner FROM pg_tables WHERE tablename = 'mdl_config'"
        ),
        format!("vmt_{a}")
    );

    // The cause fixed, the canary and then the rest go through.
    set_fail_flag("pg", a, false);
    let r = upgrade_json(&f, &[a, b, c, "--canary", "1"], 0);
    for x in [a, b, c] {
        assert_eq!(site(&r, x)["status"], "ok", "{r}");
        assert_eq!(plugin_version("pg", x), "2");
        assert_eq!(marker("pg", x), "upgraded-to-2");
        assert_eq!(maintenance("pg", &f, x), ("0".into(), false));
    }
    let st = f.s.vm.json(&["upgrade", "status", "--json"]);
    for x in [a, b, c] {
        assert_eq!(site(&st, x)["pending"], false, "{st}");
        assert_eq!(site(&st, x)["last"]["state"], "ok", "{st}");
    }
}

#[test]
fn deploy_from_a_template_behind_the_code_upgrades_the_new_site() {
    let mut f = LiveFleet::new("maria", 0);
    let listed = |f: &LiveFleet| -> serde_json::Value {
        let all = f.s.vm.json(&["template", "list", "--json"]);
        all.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == f.template.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(listed(&f)["behind_code"], false);

    // A newer core in the code (a new file, never the shared one changed in place).
    let vp = f.moodle.join("public/version.php");
    let text = std::fs::read_to_string(&vp).unwrap();
    let old = text
        .lines()
        .find(|l| l.starts_with("$version"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .trim()
        .to_string();
    let (int, frac) = old.split_once('.').unwrap();
    let new = format!("{int}.{:02}", frac.parse::<u32>().unwrap() + 1);
    std::fs::remove_file(&vp).unwrap();
    std::fs::write(&vp, text.replacen(&old, &new, 1)).unwrap();

    let t = listed(&f);
    assert_eq!(t["behind_code"], true, "{t}");
    assert_eq!(t["code_version"], new.as_str(), "{t}");
    let shown = f.s.vm.ok(&["template", "show", &f.template]);
    assert!(shown.contains("behind the code"), "{shown}");

    // A deploy from it upgrades the new site before it ends: the code's version, out of
    // maintenance, served.
    let tok = crate::deploy::token("fu");
    f.s.clean.tokens.push(tok.clone());
    let r = crate::deploy::deploy_json(
        &f.s.vm,
        &[
            "--template",
            &f.template,
            "--tokens",
            &tok,
            "--dbserver",
            "maria",
        ],
    );
    assert_eq!(r[0]["ok"], true, "{r}");
    let steps = r[0]["outcome"]["steps"].to_string();
    assert!(steps.contains("Moodle upgrade"), "{steps}");
    assert_eq!(
        value(
            "maria",
            &tok,
            "SELECT value FROM mdl_config WHERE name = 'version'"
        ),
        new
    );
    assert_eq!(maintenance("maria", &f, &tok), ("0".into(), false));
    {
        let _server = f.serve();
        let (status, page) = f.get(&tok, "/login/index.php");
        assert_eq!(status, 200, "{page}");
    }

    // An upgrade that fails (a plugin whose install throws) fails the deploy, which is undone:
    // no instance, no database, no dataroot; the log of the upgrade is named.
    let bad = f.moodle.join("public/local/vmbad");
    std::fs::create_dir_all(bad.join("db")).unwrap();
    std::fs::create_dir_all(bad.join("lang/en")).unwrap();
    std::fs::write(
        bad.join("version.php"),
        "<?php\n$plugin->component = 'local_vmbad';\n$plugin->version = 1;\n",
    )
    .unwrap();
    std::fs::write(
        bad.join("lang/en/local_vmbad.php"),
        "<?php\n$string['pluginname'] = 'bad';\n",
    )
    .unwrap();
    std::fs::write(
        bad.join("db/install.php"),
        "<?php\nfunction xmldb_local_vmbad_install() {\n    throw new coding_exception('vmbad: install refused');\n}\n",
    )
    .unwrap();
    let tok2 = crate::deploy::token("fv");
    f.s.clean.tokens.push(tok2.clone());
    let out = f.s.vm.run(&[
        "deploy",
        "--template",
        &f.template,
        "--token",
        &tok2,
        "--dbserver",
        "maria",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("Moodle upgrade") && err.contains("upgrade.php failed"),
        "{err}"
    );
    let log = err
        .split("(log ")
        .nth(1)
        .and_then(|l| l.split(')').next())
        .unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("vmbad: install refused"), "{log}");
    let e = f.s.vm.fails(&["instance", "show", &tok2], 1);
    assert!(e.contains(&tok2), "{e}");
    assert!(!f.s.base.join(&tok2).exists());
    assert_eq!(
        my_value(
            "information_schema",
            &format!("SELECT COUNT(*) FROM SCHEMATA WHERE SCHEMA_NAME = 'vmt_{tok2}'")
        ),
        "0"
    );
}

#[test]
fn an_interrupted_upgrade_is_shown_and_finished_by_the_next_run() {
    let f = LiveFleet::new("maria", 1);
    let a = f.tokens[0].as_str();
    write_plugin(&f.moodle, 1);
    upgrade_json(&f, &[a], 0);
    write_plugin(&f.moodle, 2);
    // Its upgrade step takes a while; vmoodle is killed (-9) in the middle of it.
    set_flag("maria", a, "slowhere", true);
    let mut child =
        f.s.vm
            .cmd(&["upgrade", a])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let row = |f: &LiveFleet| {
        let st = f.s.vm.json(&["upgrade", "status", "--json"]);
        site(&st, a)["last"].clone()
    };
    let mut seen = false;
    for _ in 0..120 {
        let r = row(&f);
        if r["step"] == "upgrade" {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(seen, "the upgrade never reached its upgrade step");
    child.kill().unwrap();
    child.wait().unwrap();
    // Moodle's own upgrade (its own process group) runs to its end; vmoodle's record stays
    // `running` with a dead owner: shown as interrupted, and the site is still in maintenance.
    // ... until Moodle says its upgrade ended (upgrade_finished() unsets `upgraderunning`).
    let running = || {
        crate::deploy::my_value(
            &format!("vmt_{a}"),
            "SELECT COUNT(*) FROM mdl_config WHERE name = 'upgraderunning' AND value <> '0'",
        ) != "0"
    };
    for _ in 0..240 {
        if marker("maria", a) == "upgraded-to-2" && !running() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let r = row(&f);
    assert_eq!(r["state"], "interrupted", "{r}");
    assert_eq!(r["step"], "upgrade", "{r}");
    assert_eq!(maintenance("maria", &f, a).0, "cli mode");
    // The next run finishes it (Moodle has nothing left to do; maintenance goes off).
    set_flag("maria", a, "slowhere", false);
    let out = upgrade_json(&f, &[a], 0);
    let s = site(&out, a);
    assert_eq!(s["status"], "ok", "{out}");
    assert_eq!(s["data"]["resumed"], true, "{out}");
    assert_eq!(plugin_version("maria", a), "2");
    assert_eq!(maintenance("maria", &f, a), ("0".into(), false));
    assert_eq!(row(&f)["state"], "ok");
}
