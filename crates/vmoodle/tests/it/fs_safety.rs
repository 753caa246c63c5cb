//! Hostile tenants at the filesystem layer: dataroot copies that never follow a link, archives
//! that are restored only when this home made them, dumps that cannot run commands, and a
//! master config.php that nobody but root may change before vmoodle runs it.

use crate::common::{fake_moodle, Backend, Vm};
use crate::deploy::{deploy_json, setup, token};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use vmoodle_test::TempDir;

/// Owner, group, mode and content: what must not change for a file outside the dataroot.
fn state(p: &Path) -> (u32, u32, u32, Vec<u8>) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode(), std::fs::read(p).unwrap())
}

/// Every regular file under `dir` (links not followed).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Nothing planted (by name) is in `dir`, and no file of it holds a secret's bytes.
fn assert_clean(dir: &Path, planted: &[&str], secrets: &[&[u8]]) {
    for p in planted {
        assert!(
            std::fs::symlink_metadata(dir.join(p)).is_err(),
            "{p} was copied into {}",
            dir.display()
        );
    }
    for f in files(dir) {
        let b = std::fs::read(&f).unwrap();
        for s in secrets {
            assert!(!contains(&b, s), "{} holds a secret", f.display());
        }
    }
}

fn www_data() -> (u32, u32) {
    let u = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    (u.uid.as_raw(), u.gid.as_raw())
}

#[test]
fn dataroot_copies_never_follow_links_or_hand_out_outside_files() {
    let mut s = setup();
    let src = s._data.path().join("maria-src");
    let outside = TempDir::new("outside");
    // A file standing for /etc/shadow, and the home's own key.
    let shadow = outside.path().join("shadow");
    std::fs::write(&shadow, b"SHADOW-SECRET-7f3a\n").unwrap();
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = s.vm.home.join("secret.key");
    let key_bytes = std::fs::read(&key).unwrap();
    let key_hex = String::from_utf8(key_bytes.clone()).unwrap();
    let shadow_before = state(&shadow);
    let key_before = state(&key);
    // The tenant's dataroot belongs to the web server, as a live one does; its code plants
    // links to files outside.
    let (wu, wg) = www_data();
    std::os::unix::fs::chown(&src, Some(wu), Some(wg)).unwrap();
    std::os::unix::fs::symlink(&shadow, src.join("shadow-link")).unwrap();
    std::os::unix::fs::symlink(&key, src.join("filedir/key-link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), src.join("filedir/outside-dir")).unwrap();
    std::os::unix::fs::symlink(s.vm.home.as_path(), src.join("home-link")).unwrap();
    std::fs::hard_link(&shadow, src.join("filedir/shadow-hardlink")).unwrap();
    let planted = [
        "shadow-link",
        "filedir/key-link",
        "filedir/outside-dir",
        "home-link",
        "filedir/shadow-hardlink",
    ];
    let secrets: [&[u8]; 2] = [b"SHADOW-SECRET-7f3a", key_hex.trim().as_bytes()];

    // Snapshot: the links are left out and reported; nothing outside reaches the template.
    let tpl = token("tfs");
    s.clean.templates.push(tpl.clone());
    let m =
        s.vm.json(&["snapshot", "srcmaria", "--template", &tpl, "--json"]);
    let skipped: Vec<String> = m["dataroot"]["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("the manifest reports what was left out: {m}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for p in planted {
        assert!(
            skipped.iter().any(|x| x.starts_with(&format!("{p}: "))),
            "{p} is reported as left out: {skipped:?}"
        );
    }
    assert_eq!(
        m["dataroot"]["linked"], 0,
        "a tenant's files are copied, never linked"
    );
    let tdata = s.vm.home.join("templates").join(&tpl).join("dataroot");
    assert_clean(&tdata, &planted, &secrets);
    // The template's files are root's and read-only to everyone else.
    let f = files(&tdata.join("filedir"))[0].clone();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (md.uid(), md.mode() & 0o7777),
        (0, 0o644),
        "{}",
        f.display()
    );
    assert_eq!(state(&shadow), shadow_before);
    assert_eq!(state(&key), key_before);

    // A link planted into the template itself is not followed by a deploy either.
    std::os::unix::fs::symlink(&shadow, tdata.join("filedir/late-link")).unwrap();
    let t = token("fs");
    s.clean.tokens.push(t.clone());
    assert!(!s.base.exists());
    let r = deploy_json(
        &s.vm,
        &["--template", &tpl, "--token", &t, "--dbserver", "maria"],
    );
    assert_eq!(r[0]["ok"], true, "{r}");
    let dr = s.base.join(&t);
    assert_clean(&dr, &planted, &secrets);
    assert!(std::fs::symlink_metadata(dr.join("filedir/late-link")).is_err());
    assert_eq!(
        state(&shadow),
        shadow_before,
        "nothing outside was chowned or chmodded"
    );
    assert_eq!(state(&key), key_before);
    // filedir shares the template's read-only inodes: the web server reads them and cannot
    // rewrite what other instances share.
    let rel = f.strip_prefix(&tdata).unwrap();
    let g = std::fs::metadata(dr.join(rel)).unwrap();
    assert_eq!(g.ino(), md.ino());
    assert_eq!((g.uid(), g.mode() & 0o7777), (0, 0o644));
    // The dataroot is the web server's; the parent vmoodle made lets it through (0711); no
    // staging directory is left behind.
    let d = std::fs::metadata(&dr).unwrap();
    assert_eq!((d.uid(), d.gid()), (wu, wg));
    assert_eq!(
        std::fs::metadata(&s.base).unwrap().mode() & 0o7777,
        0o711,
        "the dataroot base vmoodle created is traversable by the web server"
    );
    let names: Vec<String> = std::fs::read_dir(&s.base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![t.clone()]);

    // A dataroot that is itself a symbolic link (here to the real one; it could as well name
    // the home) is refused, and the error says so.
    let real = s._data.path().join("maria-real");
    std::fs::rename(&src, &real).unwrap();
    std::os::unix::fs::symlink(&real, &src).unwrap();
    let tpl2 = token("tfs");
    s.clean.templates.push(tpl2.clone());
    let err =
        s.vm.fails(&["snapshot", "srcmaria", "--template", &tpl2], 1);
    assert!(
        err.contains("is a symbolic link") && err.contains(src.to_str().unwrap()),
        "{err}"
    );
    assert!(!s.vm.home.join("templates").join(&tpl2).exists());
}

#[test]
fn restore_takes_only_archives_this_home_made() {
    let mut s = setup();
    let tpl = token("tar");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    let t = token("ar");
    s.clean.tokens.push(t.clone());
    let r = deploy_json(
        &s.vm,
        &["--template", &tpl, "--token", &t, "--dbserver", "maria"],
    );
    assert_eq!(r[0]["ok"], true, "{r}");
    let d = s.vm.json(&["delete", &t, "--yes", "--json"]);
    let archive = PathBuf::from(d["archive"].as_str().unwrap());
    assert!(
        archive.join("archive.mac").is_file(),
        "delete seals its archive"
    );

    // Copied outside archives/ without its MAC: refused.
    let elsewhere = TempDir::new("elsewhere");
    let copy = elsewhere.path().join("a");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&archive)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::remove_file(copy.join("archive.mac")).unwrap();
    let err = s.vm.fails(&["restore", copy.to_str().unwrap()], 1);
    assert!(
        err.contains("carries no archive.mac") && err.contains("archives"),
        "{err}"
    );
    // With a MAC that is not this home's: refused.
    std::fs::write(copy.join("archive.mac"), "00".repeat(32)).unwrap();
    let err = s.vm.fails(&["restore", copy.to_str().unwrap()], 1);
    assert!(err.contains("does not match"), "{err}");

    // A tampered instance.json: refused by its MAC, even inside archives/ ...
    let entry_path = archive.join("instance.json");
    let original = std::fs::read_to_string(&entry_path).unwrap();
    let mut e: serde_json::Value = serde_json::from_str(&original).unwrap();
    e["dataroot"] = "/etc/vmoodle-evil".into();
    std::fs::write(&entry_path, serde_json::to_string_pretty(&e).unwrap()).unwrap();
    let err = s.vm.fails(&["restore", archive.to_str().unwrap()], 1);
    assert!(err.contains("does not match"), "{err}");
    // ... and by its values when there is no MAC (an older archive in archives/).
    std::fs::rename(archive.join("archive.mac"), elsewhere.path().join("mac")).unwrap();
    let err = s.vm.fails(&["restore", archive.to_str().unwrap()], 1);
    assert!(
        err.contains("/etc/vmoodle-evil") && err.contains("outside the dataroot base"),
        "{err}"
    );
    e["dataroot"] = original_dataroot(&original).into();
    e["config"] = serde_json::json!({"dbpass": "x"});
    std::fs::write(&entry_path, serde_json::to_string_pretty(&e).unwrap()).unwrap();
    let err = s.vm.fails(&["restore", archive.to_str().unwrap()], 1);
    assert!(err.contains("invalid $CFG name `dbpass`"), "{err}");
    e["config"] = serde_json::json!({});
    e["wwwroot"] = "http://evil.example.org/'; system('id'); //".into();
    std::fs::write(&entry_path, serde_json::to_string_pretty(&e).unwrap()).unwrap();
    let err = s.vm.fails(&["restore", archive.to_str().unwrap()], 1);
    assert!(err.contains("wwwroot"), "{err}");
    assert!(!s.base.join(&t).exists(), "nothing was restored");

    // The untouched archive, sealed, restores from anywhere (under a new token here).
    std::fs::write(&entry_path, &original).unwrap();
    std::fs::rename(elsewhere.path().join("mac"), archive.join("archive.mac")).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&archive)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let t2 = token("ar");
    s.clean.tokens.push(t2.clone());
    let r =
        s.vm.json(&["restore", copy.to_str().unwrap(), "--token", &t2, "--json"]);
    assert_eq!(r["shortname"], t2.as_str(), "{r}");
}

fn original_dataroot(entry: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(entry).unwrap();
    v["dataroot"].as_str().unwrap().to_string()
}

#[test]
fn mariadb_dump_load_runs_no_client_commands() {
    use vmoodle_dbserver::{tools, ConnSpec};
    let db = vmoodle_test::MariaDb::create("sandbox");
    let dir = TempDir::new("sandbox");
    let marker = dir.path().join("pwned");
    let sql = dir.path().join("dump.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE t1 (id INT);\n\\! touch {}\nCREATE TABLE t2 (id INT);\n",
            marker.display()
        ),
    )
    .unwrap();
    let dump = dir.path().join("database.sql.zst");
    tools::compress(&sql, &dump).unwrap();
    let clients = tools::Clients {
        mariadb: "/usr/bin/mariadb".into(),
        mariadb_dump: "/usr/bin/mariadb-dump".into(),
        psql: "/usr/bin/psql".into(),
        pg_dump: "/usr/bin/pg_dump".into(),
        pg_restore: "/usr/bin/pg_restore".into(),
    };
    let spec = ConnSpec {
        server: "maria".into(),
        kind: vmoodle_core::DbKind::Mariadb,
        host: "127.0.0.1".into(),
        port: 3306,
        socket: None,
        user: vmoodle_test::mariadb_user(),
        password: vmoodle_core::Secret::new(vmoodle_test::mariadb_password()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(tools::load(&clients, &spec, &db.name, &dump));
    let err = r
        .expect_err("a dump with a client shell command is refused")
        .to_string();
    assert!(err.contains("sandbox"), "{err}");
    assert!(!marker.exists(), "the shell command did not run");
}

#[test]
fn master_set_refuses_a_config_php_others_can_write() {
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
    let config = moodle.join("config.php");
    let marker = vm.dir.path().join("ran-as-root");
    // The web server's user adds a line that would run as root.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replacen(
        "unset($CFG);",
        &format!("unset($CFG); @touch('{}');", marker.display()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let (wu, wg) = www_data();
    let args = ["master", "set", "--moodle-dir", moodle.to_str().unwrap()];
    std::os::unix::fs::chown(&config, Some(wu), Some(wg)).unwrap();
    let err = vm.fails(&args, 1);
    assert!(
        err.contains("refusing to run") && err.contains("belongs to user `www-data`"),
        "{err}"
    );
    assert!(!marker.exists(), "config.php was not run");
    // Root's file in a directory the web server's group can write: refused too.
    std::os::unix::fs::chown(&config, Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(&moodle, Some(0), Some(wg)).unwrap();
    std::fs::set_permissions(&moodle, std::fs::Permissions::from_mode(0o775)).unwrap();
    let err = vm.fails(&args, 1);
    assert!(
        err.contains("group `www-data` can write its directory"),
        "{err}"
    );
    // World-writable file: refused.
    std::fs::set_permissions(&moodle, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = vm.fails(&args, 1);
    assert!(err.contains("every user can write it"), "{err}");
    assert!(!marker.exists());
    // Root's only: it is read (and fails later, on the unregistered server).
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = vm.fails(&args, 1);
    assert!(
        err.contains("no registered database server matches"),
        "{err}"
    );
}
