//! Registering, editing, enabling/disabling and forgetting instances, at fleet scale.

use crate::common::{Backend, Vm};

fn add_token(vm: &Vm, token: &str, extra: &[&str]) {
    let mut args = vec!["instance", "add", "--token", token, "--password-stdin"];
    args.extend_from_slice(extra);
    vm.ok_stdin(&args, &format!("pw-{token}"));
}

fn lifecycle(backend: Backend) {
    let vm = Vm::new(backend);
    vm.add_local_servers();
    vm.set(
        "schema.wwwroot",
        "https://<%%INSTANCE%%>.moodle.example.org",
    );
    add_token(
        &vm,
        "school1",
        &["--name", "École Un", "--description", "first"],
    );
    add_token(&vm, "school2", &["--dbserver", "pg", "--mnet", "1"]);
    vm.ok_stdin(
        &[
            "instance",
            "add",
            "--wwwroot",
            "http://Legacy.Example.org:8080/",
            "--shortname",
            "legacy",
            "--dbserver",
            "maria",
            "--dbname",
            "legacy_db",
            "--dbuser",
            "legacy",
            "--prefix",
            "lg_",
            "--dataroot",
            "/srv/legacy/data/",
            "--password-file",
            "/dev/stdin",
            "--cfg",
            "theme=classic",
        ],
        "legacy-pw\n",
    );
    let list = vm.json(&["instance", "list", "--json"]);
    let arr = list.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    let legacy = arr.iter().find(|i| i["shortname"] == "legacy").unwrap();
    assert_eq!(legacy["host"], "legacy.example.org:8080");
    assert_eq!(legacy["wwwroot"], "http://legacy.example.org:8080");
    assert_eq!(legacy["dataroot"], "/srv/legacy/data");
    assert_eq!(legacy["dbtype"], "mariadb");
    assert_eq!(legacy["config"]["theme"], "classic");
    let s2 = vm.json(&["instance", "show", "school2", "--json"]);
    assert_eq!(s2["dbtype"], "pgsql");
    assert_eq!(s2["mnet"], 1);
    assert_eq!(s2["dbname"], "vm_school2");
    // Named by host or wwwroot too.
    assert_eq!(
        vm.json(&["instance", "show", "school1.moodle.example.org", "--json"])["shortname"],
        "school1"
    );
    assert_eq!(
        vm.json(&[
            "instance",
            "show",
            "https://school1.moodle.example.org",
            "--json"
        ])["name"],
        "École Un"
    );
    for f in [
        "school1.moodle.example.org.php",
        "school2.moodle.example.org.php",
        "legacy.example.org_8080.php",
    ] {
        assert!(vm.hosts_dir().join(f).is_file(), "{f} not published");
    }

    // Conflicts name the other instance and change nothing.
    let err = vm.fails_stdin(
        &[
            "instance",
            "add",
            "--token",
            "school1",
            "--shortname",
            "other",
            "--password-stdin",
        ],
        "x",
        1,
    );
    assert!(
        err.contains("school1.moodle.example.org") && err.contains("`school1`"),
        "{err}"
    );
    let err = vm.fails_stdin(
        &[
            "instance",
            "add",
            "--wwwroot",
            "http://x.example.org",
            "--shortname",
            "x",
            "--dbserver",
            "maria",
            "--dbname",
            "legacy_db",
            "--dbuser",
            "u",
            "--prefix",
            "lg_",
            "--dataroot",
            "/srv/x",
            "--password-stdin",
        ],
        "x",
        1,
    );
    assert!(
        err.contains("legacy_db") && err.contains("`legacy`"),
        "{err}"
    );
    // Bad input is refused before anything is stored, naming the value.
    for (flag, bad) in [
        ("--wwwroot", "ftp://x.example.org"),
        ("--dataroot", "relative/dir"),
        ("--dataroot", "/srv/../etc"),
        ("--prefix", "mdl"),
        ("--dbname", "a`b"),
        ("--shortname", "a b"),
        ("--wwwroot", "http://x.example.org/?a=1"),
    ] {
        let mut args = vec![
            "instance",
            "add",
            "--wwwroot",
            "http://ok.example.org",
            "--shortname",
            "ok",
            "--dbserver",
            "maria",
            "--dbname",
            "okdb",
            "--dbuser",
            "ok",
            "--dataroot",
            "/srv/ok",
            "--password-stdin",
        ];
        let pos = args.iter().position(|a| *a == flag).map(|p| p + 1);
        match pos {
            Some(p) => args[p] = bad,
            None => {
                args.push(flag);
                args.push(bad);
            }
        }
        let err = vm.fails_stdin(&args, "x", 1);
        assert!(err.contains(bad), "{flag} {bad}: {err}");
    }
    let err = vm.fails_stdin(
        &["instance", "add", "--token", "School3", "--password-stdin"],
        "x",
        1,
    );
    assert!(err.contains("School3"), "{err}");
    assert_eq!(
        vm.json(&["instance", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Edit: a new host moves the host file.
    vm.ok(&[
        "instance",
        "edit",
        "legacy",
        "--wwwroot",
        "https://new.example.org",
        "--name",
        "Renamed",
        "--unset-cfg",
        "theme",
    ]);
    assert!(!vm.hosts_dir().join("legacy.example.org_8080.php").exists());
    let hf = std::fs::read_to_string(vm.hosts_dir().join("new.example.org.php")).unwrap();
    assert!(
        hf.contains("'wwwroot' => 'https://new.example.org'") && !hf.contains("theme"),
        "{hf}"
    );
    let err = vm.fails(
        &[
            "instance",
            "edit",
            "legacy",
            "--wwwroot",
            "https://school1.moodle.example.org",
        ],
        1,
    );
    assert!(err.contains("already used by instance `school1`"), "{err}");
    vm.ok_stdin(
        &["instance", "edit", "legacy", "--password-stdin"],
        "rotated-pw",
    );
    let hf = std::fs::read_to_string(vm.hosts_dir().join("new.example.org.php")).unwrap();
    assert!(hf.contains("'dbpass' => 'rotated-pw'"));
    let err = vm.fails(&["instance", "edit", "legacy"], 1);
    assert!(err.contains("nothing to change"), "{err}");

    // Disable / enable / forget.
    vm.ok(&["instance", "disable", "school1"]);
    let hf =
        std::fs::read_to_string(vm.hosts_dir().join("school1.moodle.example.org.php")).unwrap();
    assert!(
        hf.contains("'enabled' => false") && !hf.contains("dbpass"),
        "a disabled host file holds no credentials: {hf}"
    );
    assert_eq!(
        vm.json(&["instance", "show", "school1", "--json"])["enabled"],
        false
    );
    vm.ok(&["instance", "enable", "school1"]);
    assert!(
        std::fs::read_to_string(vm.hosts_dir().join("school1.moodle.example.org.php"))
            .unwrap()
            .contains("pw-school1")
    );
    vm.ok(&["instance", "forget", "school2"]);
    assert!(!vm
        .hosts_dir()
        .join("school2.moodle.example.org.php")
        .exists());
    let err = vm.fails(&["instance", "show", "school2"], 1);
    assert!(err.contains("`school2` is not in the register"), "{err}");
}

#[test]
fn lifecycle_sqlite() {
    lifecycle(Backend::Sqlite);
}

#[test]
fn lifecycle_postgres_register() {
    lifecycle(Backend::Postgres);
}

/// Tens of instances: every one registered, listed and published; publish removes stale files
/// and nothing else.
#[test]
fn fleet_of_80() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    for n in 0..80 {
        add_token(&vm, &format!("s{n}"), &[]);
    }
    let list = vm.json(&["instance", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 80);
    std::fs::write(
        vm.hosts_dir().join("stale.example.org.php"),
        "<?php return [];",
    )
    .unwrap();
    std::fs::write(vm.hosts_dir().join("README"), "not ours").unwrap();
    let r = vm.json(&["hook", "publish", "--json"]);
    assert_eq!(r["written"].as_array().unwrap().len(), 80);
    assert_eq!(r["removed"], serde_json::json!(["stale.example.org.php"]));
    assert!(vm.hosts_dir().join("README").exists());
    let files = std::fs::read_dir(vm.hosts_dir()).unwrap().count();
    assert_eq!(files, 81);
    let table = vm.ok(&["instance", "list"]);
    assert!(table.contains("s79") && table.contains("shortname"));
}
