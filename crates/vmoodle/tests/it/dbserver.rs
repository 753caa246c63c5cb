//! Database servers against the real local MariaDB and PostgreSQL.

use crate::common::{Backend, Vm};

fn servers(backend: Backend) {
    let vm = Vm::new(backend);
    vm.add_local_servers();
    let list = vm.json(&["dbserver", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["maria", "pg"]);
    for name in ["maria", "pg"] {
        let c = vm.json(&["dbserver", "check", name, "--json"]);
        assert!(!c["version"].as_str().unwrap().is_empty());
        assert_eq!(c["can_create_databases"], true, "{c}");
        assert_eq!(c["can_create_users"], true, "{c}");
        let shown = vm.ok(&["dbserver", "show", name]);
        assert!(shown.contains("****"));
    }
    assert!(vm
        .json(&["dbserver", "show", "pg", "--json"])
        .get("admin_password_sealed")
        .is_none());
    // A wrong password is refused and nothing is registered; the password is never echoed.
    let err = vm.fails_stdin(
        &[
            "dbserver",
            "add",
            "bad",
            "--type",
            "mariadb",
            "--host",
            "127.0.0.1",
            "--user",
            "nobody_vmt",
            "--password-stdin",
        ],
        "Wr0ngPassw0rd",
        1,
    );
    assert!(
        err.contains("cannot connect to database server `bad`") && !err.contains("Wr0ngPassw0rd"),
        "{err}"
    );
    // A server that is down.
    let err = vm.fails_stdin(
        &[
            "dbserver",
            "add",
            "down",
            "--type",
            "pgsql",
            "--host",
            "127.0.0.1",
            "--port",
            "1",
            "--user",
            "x",
            "--password-stdin",
        ],
        "",
        1,
    );
    assert!(err.contains("`down`"), "{err}");
    assert_eq!(
        vm.json(&["dbserver", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Duplicates, bad names and hosts.
    let err = vm.fails_stdin(
        &[
            "dbserver",
            "add",
            "pg",
            "--type",
            "pgsql",
            "--host",
            "127.0.0.1",
            "--user",
            "postgres",
            "--password-stdin",
        ],
        "",
        1,
    );
    assert!(err.contains("already registered"), "{err}");
    let err = vm.fails_stdin(
        &[
            "dbserver",
            "add",
            "x;y",
            "--type",
            "pgsql",
            "--host",
            "127.0.0.1",
            "--user",
            "postgres",
            "--password-stdin",
        ],
        "",
        1,
    );
    assert!(err.contains("x;y"), "{err}");
    let err = vm.fails_stdin(
        &[
            "dbserver",
            "add",
            "h",
            "--type",
            "pgsql",
            "--host",
            "db/../x",
            "--user",
            "postgres",
            "--password-stdin",
        ],
        "",
        1,
    );
    assert!(err.contains("db/../x"), "{err}");
    // A password is required, and never taken from argv.
    let err = vm.fails(
        &[
            "dbserver",
            "add",
            "np",
            "--type",
            "pgsql",
            "--host",
            "127.0.0.1",
            "--user",
            "postgres",
        ],
        1,
    );
    assert!(err.contains("--password-stdin"), "{err}");
    // Removal is refused while an instance uses the server.
    vm.ok_stdin(
        &[
            "instance",
            "add",
            "--wwwroot",
            "http://a.example.org",
            "--shortname",
            "a",
            "--dbserver",
            "pg",
            "--dbname",
            "vm_a",
            "--dbuser",
            "vm_a",
            "--dataroot",
            "/srv/moodledata/a",
            "--password-stdin",
        ],
        "pw",
    );
    let err = vm.fails(&["dbserver", "remove", "pg"], 1);
    assert!(
        err.contains("used by 1 instance") && err.contains('a'),
        "{err}"
    );
    vm.ok(&["instance", "forget", "a"]);
    vm.ok(&["dbserver", "remove", "pg"]);
    assert_eq!(
        vm.json(&["dbserver", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn dbservers_sqlite() {
    servers(Backend::Sqlite);
}

#[test]
fn dbservers_postgres_register() {
    servers(Backend::Postgres);
}

#[test]
fn passwords_are_encrypted_at_rest() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    vm.ok_stdin(
        &[
            "instance",
            "add",
            "--wwwroot",
            "http://a.example.org",
            "--shortname",
            "a",
            "--dbserver",
            "maria",
            "--dbname",
            "vm_a",
            "--dbuser",
            "vm_a",
            "--dataroot",
            "/srv/moodledata/a",
            "--password-stdin",
        ],
        "Pl41nText-Marker\n",
    );
    // Flush SQLite's WAL into the main file, then look at every byte vmoodle keeps.
    let reg = vm.home.join("registry.sqlite");
    let mut seen = Vec::new();
    for f in [reg.clone(), reg.with_extension("sqlite-wal")] {
        if let Ok(b) = std::fs::read(&f) {
            seen.extend(b);
        }
    }
    assert!(
        !seen.windows(16).any(|w| w == b"Pl41nText-Marker"),
        "a password is stored in clear"
    );
    let list = vm.ok(&["instance", "list", "--json"]) + &vm.ok(&["instance", "show", "a"]);
    assert!(!list.contains("Pl41nText-Marker"));
    // The host file (for the web server) is the one place that holds it, 0640.
    let hf = std::fs::read_to_string(vm.hosts_dir().join("a.example.org.php")).unwrap();
    assert!(hf.contains("'dbpass' => 'Pl41nText-Marker'"));
}
