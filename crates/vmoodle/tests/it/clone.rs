//! A deployed site is a Moodle of its own: its settings name its own host, it shares no secrets
//! or queued work with its template, and the admin password reaches the site administrators.

use crate::deploy::{my_value, pg_value, setup, token, Setup};
use std::path::Path;
use std::process::Command;
use vmoodle_test::{mariadb_sql, pg_sql};

/// Rows that a clone must not inherit, one per table (MariaDB and PostgreSQL alike).
const PLANT: &str = "INSERT INTO mdl_external_tokens (token, tokentype, userid, externalserviceid, contextid, timecreated) VALUES ('tpl-ws-token', 0, 2, 1, 1, 1); \
    INSERT INTO mdl_user_private_key (script, value, userid) VALUES ('rss', 'tpl-private-key', 2); \
    INSERT INTO mdl_oauth2_access_token (timecreated, timemodified, usermodified, issuerid, token, expires, scope) VALUES (1, 1, 2, 1, 'tpl-access', 9999999999, 'x'); \
    INSERT INTO mdl_oauth2_refresh_token (timecreated, timemodified, userid, issuerid, token, scopehash) VALUES (1, 1, 2, 1, 'tpl-refresh', 'h'); \
    INSERT INTO mdl_task_adhoc (component, classname, nextruntime) VALUES ('core', 'tpl_task', 1); \
    INSERT INTO mdl_config (name, value) VALUES ('vmt_other_host', 'noreply@sub.TEMPLATEHOST and TEMPLATEHOST.org'); \
    UPDATE mdl_user SET username = 'boss' WHERE username = 'admin';";

const CLEARED: &[&str] = &[
    "external_tokens",
    "user_private_key",
    "oauth2_access_token",
    "oauth2_refresh_token",
    "task_adhoc",
];

fn verify_password(hash: &str, password: &str) -> bool {
    let out = Command::new("php")
        .args([
            "-n",
            "-r",
            "echo password_verify($argv[2], $argv[1]) ? 'ok' : 'no';",
            "--",
            hash,
            password,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout) == "ok"
}

/// Deploys from a template whose source got secrets, queued work and a renamed admin planted;
/// `value` reads one value from the new database.
fn check_clone(
    server: &str,
    source: &str,
    template_host: &str,
    plant: &dyn Fn(&Setup, &str) -> String,
    value: &dyn Fn(&str, &str) -> String,
) {
    let mut s = setup();
    plant(&s, &PLANT.replace("TEMPLATEHOST", template_host));
    let src_dataroot = s._data.path().join(if server == "maria" {
        "maria-src"
    } else {
        "pg-src"
    });
    assert!(
        src_dataroot.join("muc/config.php").is_file(),
        "the fixture's dataroot has a MUC config"
    );
    let tpl = token("tc");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", source, "--template", &tpl]);
    let tdir = s.vm.home.join("templates").join(&tpl).join("dataroot");
    assert!(
        !tdir.join("muc/config.php").exists(),
        "the template keeps no MUC config"
    );
    let one = token("c");
    s.clean.tokens.push(one.clone());
    let out = s.vm.ok_stdin(
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &one,
            "--dbserver",
            server,
            "--admin-password-stdin",
            "--json",
        ],
        "Cl0ne-Admin!pass",
    );
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["ok"], true, "{r}");
    let fx = &r[0]["outcome"]["fixups"];
    let host = format!("{one}.moodle.example.org");
    let db = format!("vmt_{one}");

    // 1. Settings name the new host; other hosts are left alone; the report says what changed.
    assert_eq!(
        value(
            &db,
            "SELECT value FROM mdl_config WHERE name = 'noreplyaddress'"
        ),
        format!("noreply@{host}")
    );
    let instr = value(&db, "SELECT value FROM mdl_config_plugins WHERE plugin = 'auth_shibboleth' AND name = 'auth_instructions'");
    assert!(
        instr.contains(&format!("href=\"http://{host}/auth/shibboleth/index.php\"")),
        "{instr}"
    );
    assert!(!instr.contains(template_host), "{instr}");
    assert_eq!(
        value(
            &db,
            "SELECT value FROM mdl_config WHERE name = 'vmt_other_host'"
        ),
        format!("noreply@sub.{template_host} and {template_host}.org")
    );
    let rewritten: Vec<&str> = fx["settings_rewritten"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        rewritten.contains(&"noreplyaddress")
            && rewritten.contains(&"auth_shibboleth/auth_instructions"),
        "{fx}"
    );
    assert!(!rewritten.contains(&"vmt_other_host"), "{fx}");

    // 2. No secrets, no queued work, no MUC config.
    for t in CLEARED {
        assert_eq!(
            value(&db, &format!("SELECT COUNT(*) FROM mdl_{t}")),
            "0",
            "{t} is emptied"
        );
        assert!(
            fx["purged"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == &format!("mdl_{t}")),
            "{t}: {fx}"
        );
    }
    let dataroot = Path::new(r[0]["outcome"]["dataroot"].as_str().unwrap()).to_path_buf();
    assert!(dataroot.join("filedir").is_dir());
    assert!(!dataroot.join("muc/config.php").exists());

    // The site administrator (no longer called admin) got the password.
    assert_eq!(
        value(
            &db,
            "SELECT value FROM mdl_config WHERE name = 'siteadmins'"
        ),
        "2"
    );
    assert_eq!(
        value(&db, "SELECT username FROM mdl_user WHERE id = 2"),
        "boss"
    );
    assert!(verify_password(
        &value(&db, "SELECT password FROM mdl_user WHERE id = 2"),
        "Cl0ne-Admin!pass"
    ));
    assert_eq!(fx["site_admins"], serde_json::json!([2]));
}

#[test]
fn deployed_site_is_independent_mariadb() {
    check_clone(
        "maria",
        "srcmaria",
        "master.moodle.test",
        &|s, sql| mariadb_sql(Some(&s._maria.name), sql),
        &my_value,
    );
}

#[test]
fn deployed_site_is_independent_postgres() {
    check_clone(
        "pg",
        "srcpg",
        "masterpg.moodle.test",
        &|s, sql| pg_sql(&s._pg.name, sql),
        &pg_value,
    );
}
