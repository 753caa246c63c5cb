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
    // No Moodle code is known here (moodle.dir): vmoodle cannot invalidate the sites' caches, so
    // it says what to run for each renewed site and exits 3 (mnet_live shows the real thing).
    let err = s.vm.fails(&["mnet", "renew", "--all"], 3);
    assert!(err.contains("moodle.dir"), "{err}");
    assert_eq!(
        err.matches("admin/cli/purge_caches.php --muc").count(),
        in1 + in2,
        "{err}"
    );
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

fn out_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A peer row a site's administrator deleted stays deleted through renewal and repair; one
/// unreachable instance does not stop renewal, status or repair for the others (reported, exit
/// 3); `instance forget` removes the peer rows vmoodle made in the other instances.
#[test]
fn mnet_deleted_peers_unreachable_instances_and_forget() {
    let mut s = setup();
    let tpl = token("td");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    let (a, b, c) = (token("da"), token("db"), token("dc"));
    s.clean.tokens.extend([a.clone(), b.clone(), c.clone()]);
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--tokens",
            &format!("{a},{b},{c}"),
            "--mnet",
            "1",
            "--dbserver",
            "maria",
        ],
    );
    assert!(r.as_array().unwrap().iter().all(|i| i["ok"] == true), "{r}");
    let www = |t: &str| format!("http://{t}.moodle.example.org");
    let db = |t: &str| format!("vmt_{t}");
    let key_of = |t: &str| {
        value(
            "maria",
            &db(t),
            "SELECT h.public_key FROM mdl_mnet_host h JOIN mdl_config c ON c.name = 'mnet_localhost_id' AND h.id = c.value",
        )
    };
    let row = |in_: &str, of: &str, col: &str| {
        value(
            "maria",
            &db(in_),
            &format!(
                "SELECT {col} FROM mdl_mnet_host WHERE wwwroot = '{}'",
                www(of)
            ),
        )
    };

    // a's administrator deletes the peer b in Moodle (Moodle marks the row deleted).
    exec(
        "maria",
        &db(&a),
        &format!(
            "UPDATE mdl_mnet_host SET deleted = 1 WHERE wwwroot = '{}'",
            www(&b)
        ),
    );
    let b_old = key_of(&b);
    let st = s.vm.json(&["mnet", "status", "--json"]);
    assert!(
        st["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["a_deleted_b"] == true || p["b_deleted_a"] == true),
        "{st}"
    );
    // Renewal renews every key and leaves the deleted row deleted (exit 3 only because no Moodle
    // code is known to invalidate caches with).
    let out = s.vm.run(&["mnet", "renew", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let r = out_json(&out);
    assert_eq!(r["renewed"].as_array().unwrap().len(), 3, "{r}");
    assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["left_deleted"].as_array().unwrap().len(), 1, "{r}");
    assert_ne!(key_of(&b), b_old);
    assert_eq!(
        row(&a, &b, "deleted"),
        "1",
        "renewal revived a deleted peer"
    );
    assert_eq!(row(&a, &b, "public_key"), b_old);
    assert_eq!(
        row(&c, &b, "public_key"),
        key_of(&b),
        "c learnt b's new key"
    );
    let r = s.vm.json(&["mnet", "repair", "--json"]);
    assert!(r["mended"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(row(&a, &b, "deleted"), "1", "repair revived a deleted peer");
    s.vm.ok(&["mnet", "status"]);

    // c becomes unreachable (its database is gone): a and b are still renewed and mended.
    vmoodle_test::mariadb_sql(None, &format!("DROP DATABASE `{}`", db(&c)));
    let a_old = key_of(&a);
    let out = s.vm.run(&["mnet", "renew", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let r = out_json(&out);
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{r}");
    assert_eq!(errors[0]["instance"], c.as_str(), "{r}");
    let mut renewed: Vec<String> = r["renewed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    renewed.sort();
    let mut ab = vec![a.clone(), b.clone()];
    ab.sort();
    assert_eq!(renewed, ab, "{r}");
    assert_ne!(key_of(&a), a_old);
    assert_eq!(
        row(&b, &a, "public_key"),
        key_of(&a),
        "b learnt a's new key"
    );
    let err = s.vm.fails(&["mnet", "status"], 3);
    assert!(err.contains(&c), "{err}");
    let err = s.vm.fails(&["mnet", "repair"], 3);
    assert!(err.contains(&c), "{err}");

    // Forgetting b: its peer c cannot be reached, so nothing is forgotten and the error says why.
    let err = s.vm.fails(&["instance", "forget", &b], 1);
    assert!(err.contains(&c), "{err}");
    s.vm.ok(&["instance", "show", &b]);
    // Forgetting c (its own database is gone) removes its rows from a and b; then b goes too.
    s.vm.ok(&["instance", "forget", &c]);
    assert_eq!(row(&a, &c, "COUNT(*)"), "0");
    assert_eq!(row(&b, &c, "COUNT(*)"), "0");
    s.vm.ok(&["instance", "forget", &b]);
    assert_eq!(
        row(&a, &b, "COUNT(*)"),
        "0",
        "the row vmoodle made in a for b"
    );
    let st = s.vm.json(&["mnet", "status", "--json"]);
    assert!(st["pairs"].as_array().unwrap().is_empty(), "{st}");
    // b's own database is left as it was (forget does not touch it).
    assert_eq!(row(&b, &a, "COUNT(*)"), "1");
}
