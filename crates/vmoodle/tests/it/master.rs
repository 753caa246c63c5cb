//! `vmoodle master set` on real Moodle 5.1 databases (the shared fixtures), MariaDB and PostgreSQL.

use crate::common::{fake_moodle, Backend, Vm};
use vmoodle_test::{MariaDb, PgDb};

#[test]
fn master_from_mariadb_fixture() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    let db = MariaDb::create("master").with_user("M4ster'pw");
    db.load_fixture("fresh-mariadb.sql.gz");
    let moodle = fake_moodle(
        vm.dir.path(),
        true,
        &[
            ("dbtype", "mariadb"),
            ("dbhost", "localhost"),
            ("dbname", &db.name),
            ("dbuser", db.user.as_deref().unwrap()),
            ("dbpass", "M4ster'pw"),
            ("prefix", "mdl_"),
            ("wwwroot", "http://master.moodle.test"),
            ("dataroot", "/srv/moodledata/master"),
        ],
    );
    let m = vm.json(&[
        "master",
        "set",
        "--moodle-dir",
        moodle.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(m["is_master"], true);
    assert_eq!(
        m["name"], "Master Moodle",
        "the site name is read from the database"
    );
    assert_eq!(
        m["dbserver"], "maria",
        "localhost matches the server registered at 127.0.0.1"
    );
    assert_eq!(m["host"], "master.moodle.test");
    assert_eq!(m["dbname"], db.name.as_str());
    // Setting it again updates the same record.
    let again = vm.json(&[
        "master",
        "set",
        "--moodle-dir",
        moodle.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(again["id"], m["id"]);
    // The Moodle directory is remembered, for running Moodle's own PHP (cache invalidation).
    assert_eq!(
        vm.ok(&["settings", "get", "moodle.dir"])
            .trim()
            .trim_matches('"'),
        moodle.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(
        vm.json(&["instance", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let hook = std::fs::read_to_string(vm.hook()).unwrap();
    assert!(hook.contains("'master.moodle.test' => true"));
    // The master has no host file: its own config.php serves it.
    assert_eq!(std::fs::read_dir(vm.hosts_dir()).unwrap().count(), 0);
    let err = vm.fails(&["instance", "disable", "master"], 1);
    assert!(err.contains("master"), "{err}");
}

#[test]
fn master_from_pgsql_fixture() {
    let vm = Vm::new(Backend::Postgres);
    vm.add_local_servers();
    let db = PgDb::create("masterpg");
    db.load_fixture("fresh-pgsql.sql.gz");
    let db = db.with_user("pg-master-pw");
    let moodle = fake_moodle(
        vm.dir.path(),
        false,
        &[
            ("dbtype", "pgsql"),
            ("dbhost", "127.0.0.1"),
            ("dbname", &db.name),
            ("dbuser", db.user.as_deref().unwrap()),
            ("dbpass", "pg-master-pw"),
            ("prefix", "mdl_"),
            ("wwwroot", "http://masterpg.moodle.test"),
            ("dataroot", "/srv/moodledata/masterpg"),
        ],
    );
    let m = vm.json(&[
        "master",
        "set",
        "--moodle-dir",
        moodle.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(m["name"], "Master Moodle PG");
    assert_eq!(m["dbserver"], "pg");
    assert_eq!(m["dbtype"], "pgsql");
}

#[test]
fn master_needs_a_registered_server_and_a_real_config() {
    let vm = Vm::new(Backend::Sqlite);
    let moodle = fake_moodle(
        vm.dir.path(),
        false,
        &[
            ("dbtype", "mariadb"),
            ("dbhost", "db.example.org"),
            ("dbname", "m"),
            ("dbuser", "u"),
            ("dbpass", "p"),
            ("prefix", "mdl_"),
            ("wwwroot", "http://m.example.org"),
            ("dataroot", "/srv/m"),
        ],
    );
    let err = vm.fails(
        &["master", "set", "--moodle-dir", moodle.to_str().unwrap()],
        1,
    );
    assert!(
        err.contains("no registered database server matches") && err.contains("db.example.org"),
        "{err}"
    );
    let err = vm.fails(
        &[
            "master",
            "set",
            "--moodle-dir",
            vm.dir.path().to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("no Moodle config.php found"), "{err}");
    let err = vm.fails(&["master", "show"], 1);
    assert!(err.contains("no master"), "{err}");
}
