//! Snapshots, deploys, spares, delete and restore on the real Moodle 5.1 fixtures, MariaDB and
//! PostgreSQL. Every database, user and directory a test makes has a name of its own and is
//! removed at the end, whatever happened.

use crate::common::{Backend, Vm};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmoodle_test::{mariadb_sql, pg_sql, MariaDb, PgDb, TempDir};

/// A lowercase token no other test uses.
pub(crate) fn token(tag: &str) -> String {
    let mut r = [0u8; 4];
    openssl::rand::rand_bytes(&mut r).unwrap();
    format!(
        "{tag}{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Drops, at the end of a test, every database and user the deploys of these tokens and
/// templates made (vmt_TOKEN, vmtpl_TEMPLATE, vmspare_TEMPLATE_*).
pub(crate) struct Cleanup {
    pub(crate) tokens: Vec<String>,
    pub(crate) templates: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os(vmoodle_test::KEEP_ENV).is_some() {
            return;
        }
        let mut my = String::new();
        for t in &self.tokens {
            my.push_str(&format!(
                "DROP DATABASE IF EXISTS `vmt_{t}`; DROP USER IF EXISTS 'vmt_{t}'@'%';"
            ));
        }
        for t in &self.templates {
            my.push_str(&format!("DROP DATABASE IF EXISTS `vmtpl_{t}`;"));
        }
        let _ = std::panic::catch_unwind(|| mariadb_sql(None, &my));
        let spares = std::panic::catch_unwind(|| {
            self.templates
                .iter()
                .flat_map(|t| {
                    mariadb_sql(None, &format!("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'vmspare\\\\_{t}\\\\_%'"))
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
        for s in spares {
            let _ = std::panic::catch_unwind(|| {
                mariadb_sql(None, &format!("DROP DATABASE IF EXISTS `{s}`"))
            });
        }
        for t in &self.tokens {
            let _ = std::panic::catch_unwind(|| {
                pg_sql(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS \"vmt_{t}\" WITH (FORCE)"),
                )
            });
            let _ = std::panic::catch_unwind(|| {
                pg_sql("postgres", &format!("DROP ROLE IF EXISTS \"vmt_{t}\""))
            });
        }
        for t in &self.templates {
            let _ = std::panic::catch_unwind(|| {
                pg_sql(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS \"vmtpl_{t}\" WITH (FORCE)"),
                )
            });
        }
    }
}

/// A home with the local servers, a schema whose names all start with vmt_, dataroots under the
/// test's directory, and a source Moodle loaded from the fixtures (MariaDB and PostgreSQL).
pub(crate) struct Setup {
    pub(crate) vm: Vm,
    pub(crate) base: PathBuf,
    pub(crate) _maria: MariaDb,
    pub(crate) _pg: PgDb,
    pub(crate) _data: TempDir,
    pub(crate) clean: Cleanup,
}

fn extract(tar: &str, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(vmoodle_test::fixtures_dir().join(tar))
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(ok.success());
}

pub(crate) fn setup() -> Setup {
    setup_on(Backend::Sqlite)
}

/// `setup` with the register in SQLite or in a PostgreSQL database of its own.
pub(crate) fn setup_on(backend: Backend) -> Setup {
    let vm = Vm::new(backend);
    vm.add_local_servers();
    let data = TempDir::new("data");
    let base = data.path().join("instances");
    vm.set(
        "schema.dataroot",
        &format!("{}/<%%INSTANCE%%>", base.display()),
    );
    vm.set("schema.db_name", "vmt_<%%INSTANCE%%>");
    vm.set("schema.db_login", "vmt_<%%INSTANCE%%>");
    let maria = MariaDb::create("src");
    maria.load_fixture("fresh-mariadb.sql.gz");
    let maria = maria.with_user("src-pw");
    extract("fresh-dataroot.tar.gz", &data.path().join("maria-src"));
    let pg = PgDb::create("srcpg");
    pg.load_fixture("fresh-pgsql.sql.gz");
    let pg = pg.with_user("src-pw");
    extract("fresh-pgsql-dataroot.tar.gz", &data.path().join("pg-src"));
    for (short, www, server, db, dr) in [
        (
            "srcmaria",
            "http://master.moodle.test",
            "maria",
            &maria.name,
            data.path().join("maria-src"),
        ),
        (
            "srcpg",
            "http://masterpg.moodle.test",
            "pg",
            &pg.name,
            data.path().join("pg-src"),
        ),
    ] {
        vm.ok_stdin(
            &[
                "instance",
                "add",
                "--wwwroot",
                www,
                "--shortname",
                short,
                "--dbserver",
                server,
                "--dbname",
                db,
                "--dbuser",
                db,
                "--dataroot",
                dr.to_str().unwrap(),
                "--password-stdin",
            ],
            "src-pw",
        );
    }
    Setup {
        vm,
        base,
        _maria: maria,
        _pg: pg,
        _data: data,
        clean: Cleanup {
            tokens: vec![],
            templates: vec![],
        },
    }
}

pub(crate) fn deploy_json(vm: &Vm, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["deploy"];
    a.extend_from_slice(args);
    a.push("--json");
    vm.json(&a)
}

pub(crate) fn my_value(db: &str, sql: &str) -> String {
    mariadb_sql(Some(db), sql).trim().to_string()
}

pub(crate) fn pg_value(db: &str, sql: &str) -> String {
    pg_sql(db, sql).trim().to_string()
}

/// The password vmoodle gave an instance, read from its host file (as Moodle would).
fn host_file_password(vm: &Vm, host: &str) -> String {
    let text = std::fs::read_to_string(vm.hosts_dir().join(format!("{host}.php"))).unwrap();
    let line = text.lines().find(|l| l.contains("'dbpass' =>")).unwrap();
    line.split('\'').nth(3).unwrap().to_string()
}

#[test]
fn snapshot_deploy_delete_restore_mariadb() {
    let mut s = setup();
    let tpl = token("tm");
    s.clean.templates.push(tpl.clone());
    // Content that the fix-ups must change, and content db_replace() leaves alone.
    mariadb_sql(
        Some(&s._maria.name),
        "UPDATE mdl_course SET summary = 'See http://master.moodle.test/mod/page/view.php?id=1' WHERE id = 1; \
         INSERT INTO mdl_config (name, value) VALUES ('vmt_probe_url', 'http://master.moodle.test/x'); \
         INSERT INTO mdl_logstore_standard_log (eventname, component, action, target, crud, edulevel, contextid, contextlevel, contextinstanceid, userid, anonymous, timecreated) \
           VALUES ('vmt_event', 'core', 'viewed', 'x', 'r', 0, 1, 10, 0, 2, 0, 1); \
         INSERT INTO mdl_mnet_host (deleted, wwwroot, ip_address, name, public_key, public_key_expires, transport, portno, last_connect_time, last_log_id, force_theme, theme, applicationid, sslverification) \
           VALUES (0, 'http://peer.example.org', '', 'Peer', 'KEY', 0, 0, 0, 0, 0, 0, NULL, 1, 0); \
         INSERT INTO mdl_config_plugins (plugin, name, value) VALUES ('mnet', 'openssl', 'TEMPLATE-KEY');",
    );
    let m =
        s.vm.json(&["snapshot", "srcmaria", "--template", &tpl, "--json"]);
    assert_eq!(m["tables"], 489);
    assert_eq!(m["moodle"]["version"], "2025100600.02");
    assert_eq!(m["source"]["wwwroot"], "http://master.moodle.test");
    // The source is a tenant's: copied, never linked (its owner could rewrite a shared
    // inode); deploys hard-link the template's own read-only copy.
    assert_eq!(m["dataroot"]["linked"], 0, "{m}");
    let tdir = s.vm.home.join("templates").join(&tpl);
    assert!(
        tdir.join("database.sql.zst").is_file()
            && !tdir.join("dataroot/cache").exists()
            && !tdir.join("dataroot/sessions").exists()
    );
    assert!(s.vm.ok(&["template", "verify", &tpl]).contains("matches"));

    let toks: Vec<String> = (0..3).map(|_| token("m")).collect();
    s.clean.tokens.extend(toks.clone());
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--tokens",
            &toks.join(","),
            "--parallel",
            "2",
            "--dbserver",
            "maria",
        ],
    );
    let mut idents = std::collections::HashSet::new();
    for t in &toks {
        let item = r
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["token"] == t.as_str())
            .unwrap();
        assert_eq!(item["ok"], true, "{item}");
        let db = format!("vmt_{t}");
        assert_eq!(
            my_value(
                &db,
                "SELECT shortname FROM mdl_course WHERE format = 'site'"
            ),
            *t
        );
        assert_eq!(
            my_value(&db, "SELECT wwwroot FROM mdl_mnet_host WHERE id = 1"),
            format!("http://{t}.moodle.example.org")
        );
        assert_eq!(
            my_value(&db, "SELECT public_key FROM mdl_mnet_host WHERE id = 1"),
            ""
        );
        assert_eq!(
            my_value(
                &db,
                "SELECT value FROM mdl_config WHERE name = 'sessioncookie'"
            ),
            *t
        );
        let ident = my_value(
            &db,
            "SELECT value FROM mdl_config WHERE name = 'siteidentifier'",
        );
        assert!(
            ident.ends_with(&format!("{t}.moodle.example.org")),
            "{ident}"
        );
        assert!(idents.insert(ident));
        assert!(
            my_value(&db, "SELECT value FROM mdl_config WHERE name = 'themerev'")
                .parse::<i64>()
                .unwrap()
                > 1795297870
        );
        assert_eq!(my_value(&db, "SELECT COUNT(*) FROM mdl_sessions"), "0");
        assert_eq!(
            my_value(
                &db,
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            ),
            "489"
        );
        // Its own user, rights on its own database only.
        let grants = mariadb_sql(None, &format!("SHOW GRANTS FOR 'vmt_{t}'@'%'"));
        // The database name is escaped in the grant (`_` is a wildcard there).
        let escaped = format!("vmt_{t}").replace('_', "\\_");
        assert!(
            grants.contains(&format!("ALL PRIVILEGES ON `{escaped}`.*"))
                && !grants.contains("ALL PRIVILEGES ON *.*"),
            "{grants}"
        );
        let pw = host_file_password(&s.vm, &format!("{t}.moodle.example.org"));
        let cnf = s.base.parent().unwrap().join(format!("{t}.cnf"));
        std::fs::write(&cnf, format!("[client]\npassword=\"{pw}\"\n")).unwrap();
        let as_instance = |sql: &str| {
            Command::new("mariadb")
                .arg(format!("--defaults-extra-file={}", cnf.display()))
                .args(["-h", "127.0.0.1", "-u", &format!("vmt_{t}"), "-e", sql])
                .output()
                .unwrap()
        };
        let own = as_instance(&format!("SELECT COUNT(*) FROM `{db}`.mdl_course"));
        assert!(
            own.status.success(),
            "the instance's own account works: {}",
            String::from_utf8_lossy(&own.stderr)
        );
        let other = as_instance(&format!(
            "SELECT COUNT(*) FROM `{}`.mdl_course",
            s._maria.name
        ));
        assert!(!other.status.success(), "and reaches no other database");
        // The dataroot: filedir shares inodes with the template, owned by the web server.
        let dr = s.base.join(t);
        let f = walk_first_file(&dr.join("filedir")).unwrap();
        let rel = f.strip_prefix(&dr).unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().ino(),
            std::fs::metadata(tdir.join("dataroot").join(rel))
                .unwrap()
                .ino()
        );
        assert!(!dr.join("cache").exists());
        assert!(s
            .vm
            .hosts_dir()
            .join(format!("{t}.moodle.example.org.php"))
            .is_file());
        // db_replace() rules for text columns; settings naming the template's wwwroot too.
        assert_eq!(
            my_value(&db, "SELECT summary FROM mdl_course WHERE id = 1"),
            format!("See http://{t}.moodle.example.org/mod/page/view.php?id=1")
        );
        assert_eq!(
            my_value(
                &db,
                "SELECT value FROM mdl_config WHERE name = 'vmt_probe_url'"
            ),
            format!("http://{t}.moodle.example.org/x")
        );
        assert_eq!(
            my_value(&db, "SELECT COUNT(*) FROM mdl_logstore_standard_log"),
            "0"
        );
        assert_eq!(
            my_value(
                &db,
                "SELECT COUNT(*) FROM mdl_mnet_host WHERE wwwroot = 'http://peer.example.org'"
            ),
            "0"
        );
        assert_eq!(my_value(&db, "SELECT COUNT(*) FROM mdl_config_plugins WHERE plugin = 'mnet' AND name = 'openssl'"), "0");
        for rev in ["jsrev", "langrev", "templaterev"] {
            assert!(
                my_value(
                    &db,
                    &format!("SELECT value FROM mdl_config WHERE name = '{rev}'")
                )
                .parse::<i64>()
                .unwrap()
                    > 1795297870
            );
        }
    }

    // Delete (archived) and restore.
    let victim = &toks[0];
    let d = s.vm.json(&["delete", victim, "--yes", "--json"]);
    let archive = d["archive"].as_str().unwrap().to_string();
    assert_eq!(d["dropped_database"], true);
    assert_eq!(d["dropped_user"], true);
    assert_eq!(d["removed_dataroot"], true);
    assert!(!s.base.join(victim).exists());
    assert_eq!(my_value("mysql", &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'vmt_{victim}'")), "0");
    assert!(Path::new(&archive).join("instance.json").is_file());
    s.vm.fails(&["instance", "show", victim], 1);
    let r = s.vm.json(&["restore", &archive, "--json"]);
    assert_eq!(r["shortname"], victim.as_str());
    assert_eq!(
        my_value(
            &format!("vmt_{victim}"),
            "SELECT shortname FROM mdl_course WHERE format = 'site'"
        ),
        *victim
    );
    assert!(s.base.join(victim).join("filedir").is_dir());
    // Deleting needs --yes without a terminal.
    let err = s.vm.fails(&["delete", &toks[1]], 1);
    assert!(err.contains("--yes"), "{err}");
}

fn walk_first_file(dir: &Path) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_file() && p.file_name()? != "warning.txt" {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(f) = walk_first_file(&p) {
                return Some(f);
            }
        }
    }
    None
}

#[test]
fn deploy_postgres_with_prefix_and_bulk() {
    let mut s = setup();
    let tpl = token("tp");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcpg", "--template", &tpl]);
    let one = token("p");
    s.clean.tokens.push(one.clone());
    let r: serde_json::Value = serde_json::from_str(&s.vm.ok_stdin(
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &one,
            "--dbserver",
            "pg",
            "--prefix",
            "vm_",
            "--name",
            "PG One",
            "--admin-email",
            "admin@example.org",
            "--admin-password-stdin",
            "--json",
        ],
        "N3w-Admin!pass",
    ))
    .unwrap();
    assert_eq!(r[0]["ok"], true, "{r}");
    assert_eq!(r[0]["outcome"]["method"], "database template");
    let db = format!("vmt_{one}");
    assert_eq!(
        pg_value(&db, "SELECT fullname FROM vm_course WHERE format = 'site'"),
        "PG One"
    );
    assert_eq!(pg_value(&db, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'mdl\\_%'"), "0");
    assert_eq!(pg_value(&db, &format!("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = 'vmt_{one}'")), "489");
    assert_eq!(
        pg_value(&db, "SELECT email FROM vm_user WHERE username = 'admin'"),
        "admin@example.org"
    );
    assert_eq!(
        pg_value(&db, "SELECT wwwroot FROM vm_mnet_host WHERE id = 1"),
        format!("http://{one}.moodle.example.org")
    );
    let hash = pg_value(&db, "SELECT password FROM vm_user WHERE username = 'admin'");
    let check = Command::new("php")
        .args([
            "-n",
            "-r",
            "echo password_verify('N3w-Admin!pass', $argv[1]) ? 'ok' : 'no';",
            "--",
            &hash,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "ok",
        "Moodle's admin password is the new one"
    );
    // A new row gets an id from the renamed sequence.
    pg_sql(
        &db,
        "INSERT INTO vm_config (name, value) VALUES ('vmt_probe', 'x')",
    );
    let hf = std::fs::read_to_string(
        s.vm.hosts_dir()
            .join(format!("{one}.moodle.example.org.php")),
    )
    .unwrap();
    assert!(hf.contains("'prefix' => 'vm_'") && hf.contains("'dbtype' => 'pgsql'"));
    // The dump path (no live template) gives the same result.
    let dumped = token("d");
    s.clean.tokens.push(dumped.clone());
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--token",
            &dumped,
            "--dbserver",
            "pg",
            "--from-dump",
        ],
    );
    assert_eq!(r[0]["outcome"]["method"], "dump load", "{r}");
    let ddb = format!("vmt_{dumped}");
    assert_eq!(
        pg_value(
            &ddb,
            "SELECT shortname FROM mdl_course WHERE format = 'site'"
        ),
        dumped
    );
    assert_eq!(pg_value(&ddb, &format!("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = 'vmt_{dumped}'")), "489");
    // The live template carries its manifest's checksum; one stamped by another version of the
    // template is rebuilt before the next clone (a new database, stamped right again).
    let live = format!("vmtpl_{tpl}");
    let stamp_sql = format!(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '{live}'"
    );
    let oid_sql = format!("SELECT oid FROM pg_database WHERE datname = '{live}'");
    let good = pg_value("postgres", &stamp_sql);
    assert!(good.starts_with("vmoodle live template sha256:"), "{good}");
    let old_oid = pg_value("postgres", &oid_sql);
    pg_sql(
        "postgres",
        &format!(
            "COMMENT ON DATABASE \"{live}\" IS 'vmoodle live template sha256:another-version'"
        ),
    );
    // Bulk: a pattern, several at once.
    let before: Vec<String> = (1..=6).map(|n| format!("{one}b{n}")).collect();
    s.clean.tokens.extend(before.clone());
    let pattern = format!("{one}b{{n}}");
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--count",
            "6",
            "--token-pattern",
            &pattern,
            "--parallel",
            "3",
            "--dbserver",
            "pg",
        ],
    );
    assert_eq!(
        r.as_array()
            .unwrap()
            .iter()
            .filter(|i| i["ok"] == true)
            .count(),
        6,
        "{r}"
    );
    for t in &before {
        assert_eq!(
            pg_value(
                &format!("vmt_{t}"),
                "SELECT shortname FROM mdl_course WHERE format = 'site'"
            ),
            *t
        );
    }
    assert_eq!(pg_value("postgres", &stamp_sql), good);
    assert_ne!(
        pg_value("postgres", &oid_sql),
        old_oid,
        "the stale live template was rebuilt"
    );
}

#[test]
fn warm_spares_mariadb() {
    let mut s = setup();
    let tpl = token("ts");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    s.vm.ok(&[
        "spares",
        "fill",
        "--template",
        &tpl,
        "--dbserver",
        "maria",
        "--count",
        "2",
    ]);
    assert_eq!(
        s.vm.json(&["spares", "list", "--dbserver", "maria", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["template"] == tpl.as_str())
            .count(),
        2
    );
    let t = token("w");
    s.clean.tokens.push(t.clone());
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--token",
            &t,
            "--dbserver",
            "maria",
            "--prefix",
            "wp_",
        ],
    );
    assert_eq!(r[0]["outcome"]["method"], "warm spare", "{r}");
    assert_eq!(
        my_value(
            &format!("vmt_{t}"),
            "SELECT shortname FROM wp_course WHERE format = 'site'"
        ),
        t
    );
    assert_eq!(
        s.vm.json(&["spares", "list", "--dbserver", "maria", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["template"] == tpl.as_str())
            .count(),
        1
    );
    // VMoodle's node list: config_NAME sets a core setting, plugin|setting a plugin setting.
    let c = token("c");
    s.clean.tokens.push(c.clone());
    let csv = s.base.parent().unwrap().join("nodes.csv");
    std::fs::write(
        &csv,
        format!(
            "# node list\nvhostname;name;shortname;description;config_theme;tool_dataprivacy|contactdataprotectionofficer\n\
             http://{c}.csv.example.org;CSV School;{c};From a node list;classic;1\n"
        ),
    )
    .unwrap();
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--csv",
            csv.to_str().unwrap(),
            "--dbserver",
            "maria",
        ],
    );
    assert_eq!(r[0]["ok"], true, "{r}");
    let db = format!("vmt_{c}");
    assert_eq!(
        my_value(&db, "SELECT fullname FROM mdl_course WHERE format = 'site'"),
        "CSV School"
    );
    assert_eq!(
        my_value(&db, "SELECT value FROM mdl_config WHERE name = 'theme'"),
        "classic"
    );
    assert_eq!(
        my_value(&db, "SELECT value FROM mdl_config_plugins WHERE plugin = 'tool_dataprivacy' AND name = 'contactdataprotectionofficer'"),
        "1"
    );
    assert_eq!(
        s.vm.json(&["instance", "show", &c, "--json"])["wwwroot"],
        format!("http://{c}.csv.example.org")
    );
    // Deleting the template drops its live database and spares.
    s.vm.ok(&["template", "delete", &tpl, "--yes"]);
    assert_eq!(my_value("mysql", &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'vm%\\_{tpl}%'")), "0");
}

#[test]
fn failed_deploy_leaves_nothing_behind() {
    let mut s = setup();
    let tpl = token("tf");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    // The dataroot's parent is a file: everything up to the dataroot step succeeds, then fails.
    let blocker = s.base.parent().unwrap().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    s.vm.set(
        "schema.dataroot",
        &format!("{}/<%%INSTANCE%%>", blocker.display()),
    );
    for server in ["maria", "pg"] {
        let t = token("f");
        s.clean.tokens.push(t.clone());
        let tplx = if server == "maria" {
            tpl.clone()
        } else {
            let p = token("tg");
            s.clean.templates.push(p.clone());
            s.vm.ok(&["snapshot", "srcpg", "--template", &p]);
            p
        };
        let out = s.vm.run(&[
            "deploy",
            "--template",
            &tplx,
            "--token",
            &t,
            "--dbserver",
            server,
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("dataroot") && err.contains("undone"), "{err}");
        if server == "maria" {
            assert_eq!(my_value("mysql", &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'vmt_{t}'")), "0");
            assert_eq!(
                my_value(
                    "mysql",
                    &format!("SELECT COUNT(*) FROM mysql.user WHERE User = 'vmt_{t}'")
                ),
                "0"
            );
        } else {
            assert_eq!(
                pg_value(
                    "postgres",
                    &format!("SELECT COUNT(*) FROM pg_database WHERE datname = 'vmt_{t}'")
                ),
                "0"
            );
            assert_eq!(
                pg_value(
                    "postgres",
                    &format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = 'vmt_{t}'")
                ),
                "0"
            );
        }
        s.vm.fails(&["instance", "show", &t], 1);
        assert!(!s
            .vm
            .hosts_dir()
            .join(format!("{t}.moodle.example.org.php"))
            .exists());
    }
}

#[test]
fn deploy_refuses_bad_input_before_creating_anything() {
    let mut s = setup();
    let tpl = token("tb");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    let t = token("b");
    s.clean.tokens.push(t.clone());
    for (args, needle) in [
        (
            vec!["--template", &tpl, "--token", "Bad-Token"],
            "Bad-Token",
        ),
        (
            vec!["--template", &tpl, "--token", "x'; DROP DATABASE mysql; --"],
            "invalid token",
        ),
        (
            vec!["--template", "nosuchtpl", "--token", &t],
            "`nosuchtpl` is not in the register",
        ),
        (
            vec!["--template", &tpl, "--token", &t, "--dataroot", "/etc/vmt"],
            "outside the dataroot base",
        ),
        (
            vec!["--template", &tpl, "--token", &t, "--dbserver", "pg"],
            "same family",
        ),
    ] {
        let mut a = vec!["deploy"];
        a.extend(args.iter().copied());
        let err = s.vm.fails(&a, 1);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A database server that is down.
    s.vm.ok_stdin(
        &[
            "dbserver",
            "add",
            "down",
            "--type",
            "mariadb",
            "--host",
            "127.0.0.1",
            "--port",
            "1",
            "--user",
            "x",
            "--password-stdin",
            "--no-check",
        ],
        "",
    );
    let err = s.vm.fails(
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &t,
            "--dbserver",
            "down",
        ],
        1,
    );
    assert!(err.contains("`down`"), "{err}");
    // The database already exists.
    mariadb_sql(None, &format!("CREATE DATABASE `vmt_{t}`"));
    let err = s.vm.fails(
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &t,
            "--dbserver",
            "maria",
        ],
        1,
    );
    assert!(err.contains(&format!("`vmt_{t}` already exists")), "{err}");
    mariadb_sql(None, &format!("DROP DATABASE `vmt_{t}`"));
    // A template whose dump was altered.
    let dump =
        s.vm.home
            .join("templates")
            .join(&tpl)
            .join("database.sql.zst");
    let mut bytes = std::fs::read(&dump).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&dump, bytes).unwrap();
    let err = s.vm.fails(
        &[
            "deploy",
            "--template",
            &tpl,
            "--token",
            &t,
            "--dbserver",
            "maria",
        ],
        1,
    );
    assert!(err.contains("no longer matches its manifest"), "{err}");
    assert_eq!(
        s.vm.run(&["template", "verify", &tpl]).status.code(),
        Some(3)
    );
    assert_eq!(
        my_value(
            "mysql",
            &format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'vmt_{t}'"
            )
        ),
        "0"
    );
    assert!(!s.base.join(&t).exists());
}

/// Names of the warm spares of exactly `template` on the local MariaDB.
pub(crate) fn spares_of(vm: &Vm, template: &str) -> Vec<String> {
    vm.json(&["spares", "list", "--dbserver", "maria", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["template"] == template)
        .map(|x| x["database"].as_str().unwrap().to_string())
        .collect()
}

fn schema_exists(db: &str) -> bool {
    my_value(
        "mysql",
        &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'"),
    ) == "1"
}

/// Templates `T` and `T_x` side by side: a deploy of `T` never takes a spare of `T_x` (the old
/// LIKE pattern matched them), a spare or live template stamped by another version of the
/// template is passed over (spare dropped, live database rebuilt), and deleting `T` leaves
/// every database of `T_x`.
#[test]
fn spares_and_live_templates_are_matched_exactly() {
    let mut s = setup();
    let tpl = token("tb");
    let tplx = format!("{tpl}_x");
    s.clean.templates.push(tpl.clone());
    s.clean.templates.push(tplx.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tplx]);
    s.vm.ok(&[
        "spares",
        "fill",
        "--template",
        &tplx,
        "--dbserver",
        "maria",
        "--count",
        "2",
    ]);
    let xs = spares_of(&s.vm, &tplx);
    assert_eq!(xs.len(), 2, "{xs:?}");
    assert!(spares_of(&s.vm, &tpl).is_empty());
    // A deploy of `T` has no spare of its own: it copies from its live template.
    let t = token("e");
    s.clean.tokens.push(t.clone());
    let r = deploy_json(
        &s.vm,
        &["--template", &tpl, "--token", &t, "--dbserver", "maria"],
    );
    assert_eq!(r[0]["outcome"]["method"], "server-side copy", "{r}");
    assert_eq!(spares_of(&s.vm, &tplx), xs);
    // A spare of `T` stamped by another version of `T` is dropped, not taken; the live template
    // stamped by another version is rebuilt (its stamp is the template's again afterwards).
    s.vm.ok(&[
        "spares",
        "fill",
        "--template",
        &tpl,
        "--dbserver",
        "maria",
        "--count",
        "1",
    ]);
    let stale = spares_of(&s.vm, &tpl).remove(0);
    let live = format!("vmtpl_{tpl}");
    let good_stamp = my_value(&live, "SELECT checksum FROM vmoodle_stamp");
    assert!(good_stamp.starts_with("sha256:"), "{good_stamp}");
    assert_eq!(
        my_value(&stale, "SELECT checksum FROM vmoodle_stamp"),
        good_stamp
    );
    for db in [&stale, &live] {
        mariadb_sql(
            Some(db),
            "UPDATE vmoodle_stamp SET checksum = 'sha256:another-version'",
        );
    }
    let t2 = token("e");
    s.clean.tokens.push(t2.clone());
    let r = deploy_json(
        &s.vm,
        &["--template", &tpl, "--token", &t2, "--dbserver", "maria"],
    );
    assert_eq!(r[0]["outcome"]["method"], "server-side copy", "{r}");
    assert!(!schema_exists(&stale), "the stale spare {stale} was kept");
    assert_eq!(
        my_value(&live, "SELECT checksum FROM vmoodle_stamp"),
        good_stamp
    );
    assert_eq!(
        my_value(
            &format!("vmt_{t2}"),
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'vmoodle_stamp'"
        ),
        "0"
    );
    // A spare of `T_x` is taken by a deploy of `T_x`.
    let t3 = token("e");
    s.clean.tokens.push(t3.clone());
    let r = deploy_json(
        &s.vm,
        &["--template", &tplx, "--token", &t3, "--dbserver", "maria"],
    );
    assert_eq!(r[0]["outcome"]["method"], "warm spare", "{r}");
    let xs = spares_of(&s.vm, &tplx);
    assert_eq!(xs.len(), 1, "{xs:?}");
    // Deleting `T` leaves `T_x`'s live database and spare.
    for t in [&t, &t2, &t3] {
        s.vm.ok(&["delete", t, "--yes", "--no-archive"]);
    }
    s.vm.ok(&["template", "delete", &tpl, "--yes"]);
    assert!(!schema_exists(&live));
    assert!(schema_exists(&format!("vmtpl_{tplx}")));
    assert_eq!(spares_of(&s.vm, &tplx), xs);
    s.vm.ok(&["template", "delete", &tplx, "--yes"]);
    assert!(!schema_exists(&format!("vmtpl_{tplx}")));
    assert!(!schema_exists(&xs[0]));
}
