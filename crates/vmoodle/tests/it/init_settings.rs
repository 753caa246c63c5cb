//! `vmoodle init`, settings and the naming schema.

use crate::common::{Backend, Vm};
use std::os::unix::fs::PermissionsExt;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn init_is_complete_and_idempotent(backend: Backend) {
    let vm = Vm::new(backend);
    let key = std::fs::read_to_string(vm.home.join("secret.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert_eq!(mode(&vm.home.join("secret.key")), 0o600);
    assert_eq!(mode(&vm.home.join("vmoodle.toml")), 0o600);
    assert_eq!(mode(&vm.hook()), 0o640);
    assert!(vm.hosts_dir().is_dir());
    let toml = std::fs::read_to_string(vm.home.join("vmoodle.toml")).unwrap();
    assert!(
        toml.contains("# The naming schema"),
        "settings are documented"
    );
    assert_eq!(
        backend == Backend::Sqlite,
        vm.home.join("registry.sqlite").exists()
    );
    // Twice is harmless: the key and settings are kept.
    let again = vm.json(&["init", "--json"]);
    assert!(again["created"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(
        std::fs::read_to_string(vm.home.join("secret.key")).unwrap(),
        key
    );
}

#[test]
fn init_sqlite() {
    init_is_complete_and_idempotent(Backend::Sqlite);
}

#[test]
fn init_postgres_register() {
    init_is_complete_and_idempotent(Backend::Postgres);
}

#[test]
fn not_a_home_is_explained() {
    let dir = vmoodle_test::TempDir::new("nohome");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmoodle"))
        .args(["instance", "list", "--home"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a vmoodle home") && err.contains("vmoodle init --home"),
        "{err}"
    );
}

#[test]
fn settings_show_get_set_validate() {
    let vm = Vm::new(Backend::Sqlite);
    let all = vm.json(&["settings", "show", "--json"]);
    for key in [
        "schema.automate",
        "schema.wwwroot",
        "schema.db_type",
        "schema.db_host",
        "schema.db_port",
        "schema.db_login",
        "schema.db_password",
        "schema.db_name",
        "schema.prefix",
        "schema.db_persist",
        "schema.dataroot",
        "executables.mariadb",
        "executables.mariadb_dump",
        "executables.psql",
        "executables.pg_dump",
        "executables.pg_restore",
        "executables.mariabackup",
        "executables.php",
        "web.user",
        "web.group",
    ] {
        assert!(all.get(key).is_some(), "{key} missing from settings show");
    }
    vm.set(
        "schema.wwwroot",
        "https://<%%INSTANCE%%>.campus.example.edu",
    );
    assert_eq!(
        vm.ok(&["settings", "get", "schema.wwwroot"]).trim(),
        "https://<%%INSTANCE%%>.campus.example.edu"
    );
    let before = std::fs::read_to_string(vm.home.join("vmoodle.toml")).unwrap();
    // Bad values are refused, named, and the file is left as it was.
    let err = vm.fails(&["settings", "set", "schema.db_name", "vm-fixed"], 1);
    assert!(
        err.contains("schema.db_name") && err.contains("vm-fixed") && err.contains("exactly once"),
        "{err}"
    );
    let err = vm.fails(
        &[
            "settings",
            "set",
            "schema.dataroot",
            "/srv/../etc/<%%INSTANCE%%>",
        ],
        1,
    );
    assert!(err.contains("schema.dataroot"), "{err}");
    let err = vm.fails(&["settings", "set", "schema.db_type", "oracle"], 1);
    assert!(err.contains("oracle"), "{err}");
    let err = vm.fails(&["settings", "set", "schema.automat", "true"], 1);
    assert!(err.contains("unknown setting `schema.automat`"), "{err}");
    let err = vm.fails(&["settings", "set", "executables.php", "php"], 1);
    assert!(err.contains("executables.php"), "{err}");
    assert_eq!(
        std::fs::read_to_string(vm.home.join("vmoodle.toml")).unwrap(),
        before
    );
    // Secrets: never from argv, sealed at rest, never shown.
    let err = vm.fails(&["settings", "set", "schema.db_password", "hunter2"], 1);
    assert!(
        err.contains("standard input") && !err.contains("hunter2"),
        "{err}"
    );
    vm.ok_stdin(
        &["settings", "set", "schema.db_password", "--stdin"],
        "S3cret-Preset\n",
    );
    let toml = std::fs::read_to_string(vm.home.join("vmoodle.toml")).unwrap();
    assert!(toml.contains("db_password = \"v2:") && !toml.contains("S3cret-Preset"));
    assert_eq!(
        vm.ok(&["settings", "get", "schema.db_password"]).trim(),
        "****"
    );
    // Hand edits with a typo are caught with the key named.
    std::fs::write(
        vm.home.join("vmoodle.toml"),
        toml.replace("[web]", "[web]\ngruop = \"x\""),
    )
    .unwrap();
    let err = vm.fails(&["settings", "show"], 1);
    assert!(err.contains("gruop"), "{err}");
}

#[test]
fn schema_expand_and_tokens() {
    let vm = Vm::new(Backend::Sqlite);
    vm.set(
        "schema.wwwroot",
        "https://<%%INSTANCE%%>.moodle.example.org",
    );
    vm.set("schema.dataroot", "/srv/moodledata/<%%INSTANCE%%>");
    let e = vm.json(&["schema", "expand", "school42", "--json"]);
    assert_eq!(e["wwwroot"], "https://school42.moodle.example.org");
    assert_eq!(e["host"], "school42.moodle.example.org");
    assert_eq!(e["db_name"], "vm_school42");
    assert_eq!(e["db_user"], "vm_school42");
    assert_eq!(e["dataroot"], "/srv/moodledata/school42");
    for bad in [
        "School1",
        "1school",
        "a-b",
        "a_b",
        "../x",
        "x;drop",
        "a b",
        "é",
        "",
        "abcdefghijklmnopqrstu",
    ] {
        let err = vm.fails(&["schema", "expand", bad], 1);
        assert!(
            err.contains("invalid token") && err.contains("lowercase letters"),
            "{bad:?}: {err}"
        );
    }
}
