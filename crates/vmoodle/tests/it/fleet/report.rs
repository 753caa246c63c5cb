//! `vmoodle report usage` on live sites: the numbers match what the databases and dataroots
//! hold, counted here independently.

use super::sql::{db_value, Db};
use super::LiveFleet;

/// Bytes and files of a directory tree, each inode once, symlinks not followed (find(1)).
fn du(dir: &str) -> (u64, u64) {
    let out = std::process::Command::new("find")
        .args([dir, "-type", "f", "-printf", "%D:%i %s\n"])
        .output()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut files) = (0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (inode, size) = line.split_once(' ').unwrap();
        if seen.insert(inode.to_string()) {
            files += 1;
            bytes += size.parse::<u64>().unwrap();
        }
    }
    (bytes, files)
}

fn usage_report(server: &str) {
    let f = LiveFleet::new(server, 2);
    let (a, b) = (&f.tokens[0], &f.tokens[1]);
    let vm = &f.s.vm;
    let da = Db::of(&f, a);
    let now = vmoodle_core::now_unix();
    // Make the sites differ: one active user on a.
    db_value(
        &da,
        &format!(
            "UPDATE mdl_user SET lastaccess = {now}, currentlogin = {now} WHERE username = 'admin'"
        ),
    );
    // A hard link inside a's dataroot counts once.
    let ia = vm.json(&["instance", "show", a, "--json"]);
    let data_a = ia["dataroot"].as_str().unwrap().to_string();
    std::fs::write(format!("{data_a}/vmoodle-test.bin"), vec![7u8; 4096]).unwrap();
    std::fs::hard_link(
        format!("{data_a}/vmoodle-test.bin"),
        format!("{data_a}/vmoodle-test-link.bin"),
    )
    .unwrap();

    let r = vm.json(&["report", "usage", a, b, "--json"]);
    let sites = r["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 2, "{r}");
    for (t, s) in [a, b].iter().zip(sites) {
        let d = Db::of(&f, t);
        assert_eq!(s["instance"], t.as_str(), "{r}");
        assert!(s["error"].is_null(), "{r}");
        let users = db_value(
            &d,
            "SELECT COUNT(*) FROM mdl_user WHERE deleted = 0 AND username <> 'guest'",
        );
        assert_eq!(s["users"].to_string(), users, "{r}");
        let since = now - 30 * 86_400;
        let active = db_value(
            &d,
            &format!("SELECT COUNT(*) FROM mdl_user WHERE deleted = 0 AND username <> 'guest' AND lastaccess >= {since}"),
        );
        assert_eq!(s["active_users"].to_string(), active, "{r}");
        let courses = db_value(&d, "SELECT COUNT(*) FROM mdl_course WHERE category > 0");
        assert_eq!(s["courses"].to_string(), courses, "{r}");
        assert!(s["db_bytes"].as_i64().unwrap() > 0, "{r}");
        let dir = vm.json(&["instance", "show", t, "--json"])["dataroot"]
            .as_str()
            .unwrap()
            .to_string();
        let (bytes, files) = du(&dir);
        assert_eq!(s["dataroot_bytes"].as_u64(), Some(bytes), "{r}");
        assert_eq!(s["dataroot_files"].as_u64(), Some(files), "{r}");
        let version = db_value(&d, "SELECT value FROM mdl_config WHERE name = 'version'");
        assert_eq!(s["moodle_version"], version.as_str(), "{r}");
    }
    assert_eq!(sites[0]["active_users"], 1, "{r}");
    assert_eq!(sites[0]["last_login"], now, "{r}");
    assert!(sites[0]["shared_bytes"].as_u64().unwrap() >= 4096, "{r}");
    let t = &r["totals"];
    for k in ["users", "courses", "db_bytes", "dataroot_bytes"] {
        assert_eq!(
            t[k].as_i64().unwrap(),
            sites[0][k].as_i64().unwrap() + sites[1][k].as_i64().unwrap(),
            "{k}: {r}"
        );
    }
    let table = vm.ok(&["report", "usage", a, b]);
    assert!(
        table.contains("TOTAL") && table.contains(a.as_str()),
        "{table}"
    );

    // An unreachable site is reported, the others still are; exit 3.
    let user = vm.json(&["instance", "show", b, "--json"])["dbuser"]
        .as_str()
        .unwrap()
        .to_string();
    let db_b = Db::of(&f, b);
    let (lock, unlock) = if server == "pg" {
        (
            format!("ALTER ROLE \"{user}\" NOLOGIN"),
            format!("ALTER ROLE \"{user}\" LOGIN"),
        )
    } else {
        (
            format!("ALTER USER '{user}'@'%' ACCOUNT LOCK"),
            format!("ALTER USER '{user}'@'%' ACCOUNT UNLOCK"),
        )
    };
    db_value(&db_b, &lock);
    let out = vm.run(&["report", "usage", a, b, "--json"]);
    db_value(&db_b, &unlock);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["sites"][0]["error"].is_null(), "{r}");
    assert!(r["sites"][1]["error"].is_string(), "{r}");
    assert_eq!(r["sites"][1]["status"], "failed", "{r}");
}

#[test]
fn usage_on_mariadb() {
    usage_report("maria");
}

#[test]
fn usage_on_postgresql() {
    usage_report("pg");
}
