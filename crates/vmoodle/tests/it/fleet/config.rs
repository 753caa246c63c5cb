//! `vmoodle config get|set|unset` through Moodle's cfg.php, and `vmoodle compare`, on live sites.

use super::sql::{db_value, Db};
use super::LiveFleet;

fn config_across_sites(server: &str) {
    let f = LiveFleet::new(server, 3);
    let (a, b, c) = (&f.tokens[0], &f.tokens[1], &f.tokens[2]);
    let vm = &f.s.vm;
    let (da, db) = (Db::of(&f, a), Db::of(&f, b));

    // The same value everywhere at first: nothing differs.
    let r = vm.json(&["config", "get", "forcelogin", a, b, c, "--json"]);
    let sites = r["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 3, "{r}");
    assert!(
        sites
            .iter()
            .all(|s| s["status"] == "ok" && s["differs"] == false),
        "{r}"
    );
    let before = sites[0]["value"].clone();
    assert_ne!(before, "1", "{r}");

    // A dry run shows current -> new and changes nothing.
    let r = vm.json(&["config", "set", "forcelogin", "1", a, "--dry-run", "--json"]);
    assert_eq!(r["sites"][0]["status"], "ok", "{r}");
    assert_eq!(r["sites"][0]["data"]["new"], "1", "{r}");
    assert_eq!(r["sites"][0]["data"]["old"], before, "{r}");
    assert!(r["job"].is_null(), "{r}");
    assert_ne!(
        db_value(
            &da,
            "SELECT COALESCE((SELECT value FROM mdl_config WHERE name = 'forcelogin'), 'none')"
        ),
        "1"
    );

    // Set on one site through cfg.php: the database, Moodle's config log, the job.
    let r = vm.json(&["config", "set", "forcelogin", "1", a, "--json"]);
    assert_eq!(r["sites"][0]["status"], "ok", "{r}");
    assert_eq!(r["operation"], "config-set", "{r}");
    let job = r["job"].as_i64().unwrap().to_string();
    assert_eq!(vm.json(&["jobs", "show", &job, "--json"])["state"], "done");
    assert_eq!(
        db_value(
            &da,
            "SELECT value FROM mdl_config WHERE name = 'forcelogin'"
        ),
        "1"
    );
    assert_eq!(
        db_value(
            &da,
            "SELECT COUNT(*) FROM mdl_config_log WHERE name = 'forcelogin' AND value = '1'"
        ),
        "1"
    );
    assert_ne!(
        db_value(
            &db,
            "SELECT COALESCE((SELECT value FROM mdl_config WHERE name = 'forcelogin'), 'none')"
        ),
        "1"
    );
    // Setting it again is a no-op, reported as skipped.
    let r = vm.json(&["config", "set", "forcelogin", "1", a, "--json"]);
    assert_eq!(r["sites"][0]["status"], "skipped", "{r}");

    // `config get` sees it and flags the odd site (two of three keep the norm).
    let r = vm.json(&["config", "get", "forcelogin", a, b, c, "--json"]);
    assert_eq!(r["norm"], before, "{r}");
    let s = r["sites"].as_array().unwrap();
    assert_eq!(
        (s[0]["value"].clone(), s[0]["differs"].clone()),
        ("1".into(), true.into()),
        "{r}"
    );
    assert_eq!(s[1]["differs"], false, "{r}");
    let table = vm.ok(&["config", "get", "forcelogin", a, b, c]);
    assert!(table.contains('*'), "{table}");

    // The running site: forced login sends the front page to the login page; the others serve it.
    let server_guard = f.serve();
    let (status, page) = f.get(a, "/");
    assert!((300..400).contains(&status), "{status} {page}");
    assert!(page.contains("/login/index.php"), "{page}");
    let (status, page) = f.get(b, "/");
    assert_eq!(status, 200, "{page}");
    drop(server_guard);

    // A value from stdin: set, never on a command line, never in the logs.
    let secret = "s3cr3t words; 'quoted' \"too\"";
    let out = vm.run_with_stdin(
        &[
            "config",
            "set",
            "recaptchaprivatekey",
            "--value-stdin",
            a,
            "--json",
        ],
        &format!("{secret}\n"),
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sites"][0]["status"], "ok", "{r}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        db_value(
            &da,
            "SELECT value FROM mdl_config WHERE name = 'recaptchaprivatekey'"
        ),
        secret
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cr3t"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cr3t"));
    assert_eq!(r["sites"][0]["data"]["new"], "(hidden)", "{r}");
    let job = r["job"].as_i64().unwrap().to_string();
    let shown = vm.ok(&["jobs", "show", &job, "--json"]);
    assert!(
        !shown.contains("s3cr3t") && shown.contains("(hidden)"),
        "{shown}"
    );
    for e in std::fs::read_dir(r["log_dir"].as_str().unwrap()).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    // compare config: the changed setting differs; the secret one is compared, not shown.
    let out = vm.run(&["compare", "config", a, b, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("s3cr3t"), "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = |key: &str| {
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["key"] == key)
            .cloned()
    };
    let fl = row("forcelogin").unwrap_or_else(|| panic!("{r}"));
    assert_eq!(fl["values"][0], "1", "{r}");
    assert_eq!(fl["differs"], true, "{r}");
    let key = row("recaptchaprivatekey").unwrap_or_else(|| panic!("{r}"));
    assert_eq!(key["values"][0], "(hidden)", "{r}");
    assert!(row("siteidentifier").is_none(), "{r}");
    // Only differing rows unless --all-rows.
    assert!(
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["differs"] == true),
        "{r}"
    );
    let all = vm.json(&["compare", "config", a, b, "--all-rows", "--json"]);
    assert!(all["rows"].as_array().unwrap().len() > r["rows"].as_array().unwrap().len());

    // unset: (not set) is not an empty value.
    let r = vm.json(&["config", "unset", "recaptchaprivatekey", a, "--json"]);
    assert_eq!(r["sites"][0]["status"], "ok", "{r}");
    let r = vm.json(&["config", "get", "recaptchaprivatekey", a, "--json"]);
    assert!(r["sites"][0]["value"].is_null(), "{r}");
    let table = vm.ok(&["config", "get", "recaptchaprivatekey", a]);
    assert!(table.contains("(not set)"), "{table}");

    // A plugin's setting.
    let r = vm.json(&[
        "config",
        "get",
        "version",
        "--plugin",
        "mod_forum",
        a,
        "--json",
    ]);
    let v = r["sites"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        v,
        db_value(
            &da,
            "SELECT value FROM mdl_config_plugins WHERE plugin = 'mod_forum' AND name = 'version'"
        )
    );

    // compare plugins: a version changed and a plugin missing on one site.
    db_value(&da, "UPDATE mdl_config_plugins SET value = '2000010100' WHERE plugin = 'mod_forum' AND name = 'version'");
    db_value(
        &da,
        "DELETE FROM mdl_config_plugins WHERE plugin = 'block_rss_client' AND name = 'version'",
    );
    let r = vm.json(&["compare", "plugins", a, b, "--json"]);
    let rows = r["rows"].as_array().unwrap();
    let forum = rows
        .iter()
        .find(|x| x["key"] == "mod_forum")
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(forum["values"][0], "2000010100", "{r}");
    assert_ne!(forum["values"][1], "2000010100", "{r}");
    let rss = rows
        .iter()
        .find(|x| x["key"] == "block_rss_client")
        .unwrap_or_else(|| panic!("{r}"));
    assert!(
        rss["values"][0].is_null() && rss["values"][1].is_string(),
        "{r}"
    );
    assert_eq!(r["differing"], 2, "{r}");
    let table = vm.ok(&["compare", "plugins", a, b]);
    assert!(table.contains("(missing)"), "{table}");

    // Bad input names what is wrong.
    let e = vm.fails(&["config", "get", "x;drop", a], 1);
    assert!(e.contains("`x;drop` is not a Moodle setting name"), "{e}");
    let e = vm.fails(&["config", "get", "theme", "--plugin", "../x", a], 1);
    assert!(e.contains("--plugin `../x`"), "{e}");
    let e = vm.fails(&["compare", "plugins", a], 1);
    assert!(e.contains("at least two instances"), "{e}");
}

#[test]
fn config_on_mariadb() {
    config_across_sites("maria");
}

#[test]
fn config_on_postgresql() {
    config_across_sites("pg");
}
