//! Moodle Network on the real fixtures: keys in Moodle's format (checked with PHP's own openssl
//! and unserialize, as Moodle's get_keypair reads them), subnetworks fully meshed with no
//! cross-subnetwork rows, renewal that rotates keys, keeps history and updates every peer, an
//! interrupted renewal finished by the next run, and status/repair of a planted stale key.

use crate::deploy::{deploy_json, setup, token};
use std::process::Command;

/// Reads a value from an instance's database (MariaDB or PostgreSQL).
fn value(server: &str, db: &str, sql: &str) -> String {
    if server == "maria" {
        crate::deploy::my_value(db, sql)
    } else {
        crate::deploy::pg_value(db, sql)
    }
}

fn exec(server: &str, db: &str, sql: &str) {
    if server == "maria" {
        vmoodle_test::mariadb_sql(Some(db), sql);
    } else {
        vmoodle_test::pg_sql(db, sql);
    }
}

/// PHP's view of the stored key, as Moodle's get_keypair() and replace_keys() read it.
fn php_check(server: &str, db: &str, wwwroot: &str) -> String {
    let kp = value(
        server,
        db,
        "SELECT value FROM mdl_config_plugins WHERE plugin = 'mnet' AND name = 'openssl'",
    );
    let hist = value(
        server,
        db,
        "SELECT value FROM mdl_config_plugins WHERE plugin = 'mnet' AND name = 'openssl_history'",
    );
    let script = r#"
        [$c, $k] = explode('@@@@@@@@', base64_decode($argv[1]));
        $x = openssl_x509_parse($c);
        $h = unserialize(base64_decode($argv[2]));
        $ok = openssl_x509_check_private_key($c, $k)
            && $x['subject']['CN'] === substr($argv[3], 0, 64)
            && $x['subject']['subjectAltName'] === $argv[3]
            && $x['validTo_time_t'] > time() + 27 * 86400
            && is_array($h);
        foreach ($h as $e) { $ok = $ok && isset($e['certificate'], $e['keypair_PEM'], $e['expires']); }
        echo $ok ? 'ok ' . count($h) : 'bad';
    "#;
    let out = Command::new("php")
        .args(["-n", "-r", script, "--"])
        .arg(vmoodle_test::base64(kp.as_bytes()))
        .arg(vmoodle_test::base64(hist.as_bytes()))
        .arg(wwwroot)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn network(server: &str, in1: usize, in2: usize) {
    let mut s = setup();
    let tpl = token("tn");
    s.clean.templates.push(tpl.clone());
    let src = if server == "maria" {
        "srcmaria"
    } else {
        "srcpg"
    };
    s.vm.ok(&["snapshot", src, "--template", &tpl]);
    let one: Vec<String> = (0..in1).map(|_| token("n")).collect();
    let two: Vec<String> = (0..in2).map(|_| token("n")).collect();
    s.clean.tokens.extend(one.iter().chain(&two).cloned());
    for (group, n) in [(&one, "1"), (&two, "2")] {
        let r = deploy_json(
            &s.vm,
            &[
                "--template",
                &tpl,
                "--tokens",
                &group.join(","),
                "--mnet",
                n,
                "--dbserver",
                server,
                "--parallel",
                "2",
            ],
        );
        assert!(r.as_array().unwrap().iter().all(|i| i["ok"] == true), "{r}");
    }
    let www = |t: &str| format!("http://{t}.moodle.example.org");
    let db = |t: &str| format!("vmt_{t}");
    // Each instance: its own key, in Moodle's format; MNET on.
    for t in one.iter().chain(&two) {
        assert_eq!(php_check(server, &db(t), &www(t)), "ok 0", "{t}");
        assert_eq!(
            value(
                server,
                &db(t),
                "SELECT value FROM mdl_config WHERE name = 'mnet_dispatcher_mode'"
            ),
            "strict"
        );
    }
    // Fully meshed inside each subnetwork, nothing across.
    let st = s.vm.json(&["mnet", "status", "--json"]);
    let pairs = st["pairs"].as_array().unwrap();
    assert_eq!(
        pairs.len(),
        in1 * (in1 - 1) / 2 + in2 * (in2 - 1) / 2,
        "{st}"
    );
    assert!(
        pairs
            .iter()
            .all(|p| p["a_holds_b"] == true && p["b_holds_a"] == true),
        "{st}"
    );
    for t in &one {
        let rows = value(
            server,
            &db(t),
            "SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot LIKE 'http://%' AND deleted = 0",
        );
        assert_eq!(
            rows,
            in1.to_string(),
            "{t}: itself and its {} peers",
            in1 - 1
        );
        for u in &two {
            assert_eq!(
                value(
                    server,
                    &db(t),
                    &format!(
                        "SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot = '{}'",
                        www(u)
                    )
                ),
                "0"
            );
        }
    }
    // Renew everything: new keys, old ones in the history, every peer updated.
    let before = value(
        server,
        &db(&one[0]),
        "SELECT public_key FROM mdl_mnet_host WHERE id = 1",
    );
    s.vm.ok(&["mnet", "renew", "--all"]);
    let after = value(
        server,
        &db(&one[0]),
        "SELECT public_key FROM mdl_mnet_host WHERE id = 1",
    );
    assert_ne!(before, after);
    assert_eq!(php_check(server, &db(&one[0]), &www(&one[0])), "ok 1");
    for t in &one[1..] {
        assert_eq!(
            value(
                server,
                &db(t),
                &format!(
                    "SELECT public_key FROM mdl_mnet_host WHERE wwwroot = '{}'",
                    www(&one[0])
                )
            ),
            after
        );
    }
    let k = s.vm.json(&["mnet", "keys", &one[0], "--json"]);
    assert_eq!(k["history"].as_array().unwrap().len(), 1);
    assert_eq!(k["private_key_matches"], true);
    assert_eq!(k["local_row_current"], true);

    // An interrupted renewal: one instance has its new key, a peer still holds the old one.
    exec(
        server,
        &db(&one[1]),
        &format!(
            "UPDATE mdl_mnet_host SET public_key = '{}' WHERE wwwroot = '{}'",
            before.replace('\'', "''"),
            www(&one[0])
        ),
    );
    let out = s.vm.run(&["mnet", "status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "status reports the stale key");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stale: Vec<_> = st["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !(p["a_holds_b"] == true && p["b_holds_a"] == true))
        .collect();
    assert_eq!(stale.len(), 1, "{st}");
    // The next cron run finishes the job, whatever is due; a second run changes nothing more.
    let r = s.vm.json(&["mnet", "renew", "--due", "--json"]);
    assert_eq!(r["mended"].as_array().unwrap().len(), 1, "{r}");
    let r = s.vm.json(&["mnet", "renew", "--due", "--json"]);
    assert!(
        r["mended"].as_array().unwrap().is_empty() && r["renewed"].as_array().unwrap().is_empty(),
        "{r}"
    );
    s.vm.ok(&["mnet", "status"]);
    // A planted stale key is found by status and mended by repair.
    exec(
        server,
        &db(&two[0]),
        &format!(
            "UPDATE mdl_mnet_host SET public_key = 'planted' WHERE wwwroot = '{}'",
            www(&two[1])
        ),
    );
    assert_eq!(s.vm.run(&["mnet", "status"]).status.code(), Some(3));
    let r = s.vm.json(&["mnet", "repair", "--json"]);
    assert_eq!(r["mended"].as_array().unwrap().len(), 1, "{r}");
    s.vm.ok(&["mnet", "status"]);

    // Unbinding removes the rows vmoodle made, and nothing else.
    exec(server, &db(&one[0]), "INSERT INTO mdl_mnet_host (deleted, wwwroot, ip_address, name, public_key, public_key_expires, transport, portno, last_connect_time, last_log_id, force_theme, applicationid, sslverification) VALUES (0, 'http://admin-made.example.org', '', 'x', '', 0, 0, 0, 0, 0, 0, 1, 0)");
    s.vm.ok(&["mnet", "unbind", &one[0]]);
    assert_eq!(
        value(
            server,
            &db(&one[0]),
            "SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot LIKE 'http://%' AND deleted = 0"
        ),
        "2",
        "itself and the admin's own peer"
    );
    for t in &one[1..] {
        assert_eq!(
            value(
                server,
                &db(t),
                &format!(
                    "SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot = '{}'",
                    www(&one[0])
                )
            ),
            "0"
        );
    }
    assert_eq!(
        s.vm.json(&["instance", "show", &one[0], "--json"])["mnet"],
        0
    );
    // One instance made a peer of every other MNET instance (as one would do with the master).
    s.vm.ok(&["mnet", "peer", &two[0], "--all"]);
    let st = s.vm.json(&["mnet", "status", "--json"]);
    let with_two0 = st["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["a"] == two[0].as_str() || p["b"] == two[0].as_str())
        .count();
    assert_eq!(with_two0, in1 + in2 - 1, "{st}");
    s.vm.ok(&["mnet", "status"]);
}

#[test]
fn mnet_network_postgres() {
    network("pg", 4, 2);
}

#[test]
fn mnet_network_mariadb() {
    network("maria", 3, 2);
}
