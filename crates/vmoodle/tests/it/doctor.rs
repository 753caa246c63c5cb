//! `vmoodle doctor` on a real home: what is healthy is reported ok, a host file the web user
//! cannot read and a dataroot it cannot write are reported with their fixes, and exit code 3.

use crate::common::{fake_moodle, Backend, Vm};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use vmoodle_test::TempDir;

const WEB_UID: u32 = 33; // www-data, the default web.user and web.group

fn doctor(vm: &Vm, ini: &Path) -> (i32, serde_json::Value) {
    let out = vm.run(&["doctor", "--json", "--php-ini", ini.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check `{name}` in {report:#}"))
}

fn web_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::os::unix::fs::chown(p, Some(WEB_UID), Some(WEB_UID)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o2770)).unwrap();
}

#[test]
fn doctor_reports_a_healthy_fleet_and_each_failure() {
    let vm = Vm::new(Backend::Sqlite);
    // The web user must be able to traverse the test's directory to reach the home.
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    vm.add_local_servers();
    let data = TempDir::new("doctor");
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let master_dr = data.path().join("master");
    let alpha_dr = data.path().join("alpha");
    web_dir(&master_dr);
    web_dir(&alpha_dr);
    let moodle = fake_moodle(
        vm.dir.path(),
        true,
        &[
            ("dbtype", "mariadb"),
            ("dbhost", "127.0.0.1"),
            ("dbname", "master_db"),
            ("dbuser", "master_user"),
            ("dbpass", "master-pass"),
            ("prefix", "mdl_"),
            ("wwwroot", "http://master.moodle.test"),
            ("dataroot", master_dr.to_str().unwrap()),
        ],
    );
    vm.ok(&["master", "set", "--moodle-dir", moodle.to_str().unwrap()]);
    vm.ok_stdin(
        &[
            "instance",
            "add",
            "--token",
            "alpha",
            "--dataroot",
            alpha_dr.to_str().unwrap(),
            "--password-stdin",
        ],
        "alpha-pw",
    );
    vm.ok(&[
        "hook",
        "install",
        "--moodle-dir",
        moodle.join("public").to_str().unwrap(),
    ]);
    // php-fpm's php.ini stand-in, with what Moodle needs.
    let ini = data.path().join("php.ini");
    std::fs::write(&ini, "max_input_vars = 5000\n").unwrap();

    let (code, r) = doctor(&vm, &ini);
    let loaded = String::from_utf8(
        std::process::Command::new("php")
            .args(["-m"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .to_lowercase();
    let mut ok = vec![
        "php".to_string(),
        "php max_input_vars".into(),
        "web user".into(),
        "hook installed".into(),
        "hook.php readable".into(),
        "host file alpha.moodle.example.org".into(),
        "dataroot alpha".into(),
        "dataroot master".into(),
        "database server maria".into(),
        "database server pg".into(),
    ];
    for ext in [
        "mysqli", "pgsql", "xml", "mbstring", "curl", "zip", "gd", "intl", "soap", "sodium",
    ] {
        if loaded.lines().any(|l| l.trim() == ext) {
            ok.push(format!("php extension {ext}"));
        }
    }
    for name in &ok {
        assert_eq!(check(&r, name)["status"], "ok", "{name}: {r:#}");
    }
    // RC4 depends on this machine's openssl.cnf: whichever it is, the report says so, and a
    // failure carries the exact fix.
    let rc4 = check(&r, "php rc4 (MNET)");
    if rc4["status"] == "fail" {
        let fix = rc4["fix"].as_str().unwrap();
        assert!(
            fix.contains("providers = provider_sect") && fix.contains("legacy = legacy_sect"),
            "{fix}"
        );
    }
    let failed = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "fail");
    assert_eq!(code, if failed { 3 } else { 0 }, "{r:#}");
    assert_eq!(r["ok"], !failed);

    // A host file the web user cannot read, a dataroot it cannot write.
    let hf = vm.hosts_dir().join("alpha.moodle.example.org.php");
    std::fs::set_permissions(&hf, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&alpha_dr, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&alpha_dr, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, r) = doctor(&vm, &ini);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(r["ok"], false);
    let c = check(&r, "host file alpha.moodle.example.org");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("cannot read"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("vmoodle hook publish"),
        "{c}"
    );
    let c = check(&r, "dataroot alpha");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("cannot write into"),
        "{c}"
    );
    assert_eq!(
        c["fix"],
        format!(
            "chown -R www-data:www-data {0} && chmod 2770 {0}",
            alpha_dr.display()
        )
    );
    assert_eq!(check(&r, "dataroot master")["status"], "ok");
    // The fix given works.
    vm.ok(&["hook", "publish"]);
    let (_, r) = doctor(&vm, &ini);
    assert_eq!(
        check(&r, "host file alpha.moodle.example.org")["status"],
        "ok"
    );
    // A plain-text report for people, same exit code.
    let out = vm.run(&["doctor", "--php-ini", ini.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FAIL  dataroot alpha"), "{text}");
    assert!(text.contains("fix: chown -R www-data:www-data"), "{text}");
}
