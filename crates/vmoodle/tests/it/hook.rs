//! The config hook, run by real php-cli (as CLI scripts and behind PHP's built-in web server),
//! including hostile hosts; and its installation into Moodle 4.x and 5.x config.php files.

use crate::common::{fake_moodle, php_cli_config, Backend, Vm};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MASTER: &[(&str, &str)] = &[
    ("dbtype", "mariadb"),
    ("dblibrary", "native"),
    ("dbhost", "127.0.0.1"),
    ("dbname", "master_db"),
    ("dbuser", "master_user"),
    ("dbpass", "master'pass"),
    ("prefix", "mdl_"),
    ("wwwroot", "http://master.moodle.test"),
    ("dataroot", "/srv/moodledata/master"),
];

/// A home with a master, three instances (one https with a port, one disabled) and the hook
/// installed into a Moodle of the given layout.
fn fleet(layout5: bool) -> (Vm, std::path::PathBuf) {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    let moodle = fake_moodle(vm.dir.path(), layout5, MASTER);
    vm.ok(&[
        "master",
        "set",
        "--moodle-dir",
        moodle.to_str().unwrap(),
        "--name",
        "Master",
    ]);
    vm.ok_stdin(
        &["instance", "add", "--token", "alpha", "--password-stdin"],
        "alpha-pw",
    );
    vm.ok_stdin(
        &[
            "instance",
            "add",
            "--wwwroot",
            "https://beta.example.org:8443",
            "--shortname",
            "beta",
            "--dbserver",
            "pg",
            "--dbname",
            "vm_beta",
            "--dbuser",
            "vm_beta",
            "--dataroot",
            "/srv/moodledata/beta",
            "--password-stdin",
        ],
        "beta'pw\\",
    );
    vm.ok_stdin(
        &[
            "instance",
            "add",
            "--token",
            "gamma",
            "--password-stdin",
            "--disabled",
        ],
        "gamma-pw",
    );
    let dir = if layout5 {
        moodle.join("public")
    } else {
        moodle.clone()
    };
    vm.ok(&["hook", "install", "--moodle-dir", dir.to_str().unwrap()]);
    (vm, moodle)
}

fn cfg_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "php failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn picks_the_right_cfg(layout5: bool) {
    let (_vm, moodle) = fleet(layout5);
    let alpha = cfg_of(&php_cli_config(&moodle, Some("alpha.moodle.example.org")));
    assert_eq!(alpha["wwwroot"], "http://alpha.moodle.example.org");
    assert_eq!(alpha["dbname"], "vm_alpha");
    assert_eq!(alpha["dbpass"], "alpha-pw");
    assert_eq!(alpha["dataroot"], "/srv/moodledata/alpha");
    assert_eq!(alpha["dboptions"]["dbport"], 3306);
    assert_eq!(
        alpha["directorypermissions"], 511,
        "the master's other settings stand"
    );
    let beta = cfg_of(&php_cli_config(&moodle, Some("BETA.example.org:8443")));
    assert_eq!(
        beta["wwwroot"], "https://beta.example.org:8443",
        "https and the port are kept"
    );
    assert_eq!(beta["dbtype"], "pgsql");
    assert_eq!(beta["dbpass"], "beta'pw\\");
    // The master: its own host, or a CLI script without VMOODLE_HOST.
    for host in [Some("master.moodle.test"), None] {
        let m = cfg_of(&php_cli_config(&moodle, host));
        assert_eq!(m["dbname"], "master_db");
        assert_eq!(m["dbpass"], "master'pass");
    }
    // Unknown, disabled and malformed hosts stop CLI scripts with distinct exit codes.
    let out = php_cli_config(&moodle, Some("nowhere.example.org"));
    assert_eq!(out.status.code(), Some(68));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No Moodle is served at nowhere.example.org")
    );
    let out = php_cli_config(&moodle, Some("gamma.moodle.example.org"));
    assert_eq!(out.status.code(), Some(75));
    let out = php_cli_config(&moodle, Some("../../etc/passwd"));
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn php_cli_picks_cfg_moodle4_layout() {
    picks_the_right_cfg(false);
}

#[test]
fn php_cli_picks_cfg_moodle5_layout() {
    picks_the_right_cfg(true);
}

#[test]
fn install_is_idempotent_with_backup() {
    for layout5 in [false, true] {
        let (vm, moodle) = fleet(layout5);
        let config = moodle.join("config.php");
        let text = std::fs::read_to_string(&config).unwrap();
        assert_eq!(text.matches("BEGIN vmoodle config hook").count(), 1);
        let hook_at = text.find("BEGIN vmoodle").unwrap();
        assert!(
            text.find("$CFG->wwwroot").unwrap() < hook_at
                && hook_at
                    < text
                        .find("require_once(__DIR__ . '/lib/setup.php')")
                        .unwrap()
        );
        let backups: Vec<_> = std::fs::read_dir(&moodle)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("config.php.vmoodle-backup-")
            })
            .collect();
        assert_eq!(backups.len(), 1);
        assert!(!std::fs::read_to_string(backups[0].path())
            .unwrap()
            .contains("vmoodle"));
        if layout5 {
            assert!(
                !std::fs::read_to_string(moodle.join("public/config.php"))
                    .unwrap()
                    .contains("vmoodle"),
                "the 5.x shim is untouched"
            );
        }
        let out = vm.run(&["hook", "install", "--moodle-dir", moodle.to_str().unwrap()]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("already"));
        assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
        let snippet = vm.ok(&["hook", "snippet"]);
        assert!(
            text.contains(&snippet),
            "the installed lines are the snippet"
        );
    }
    let vm = Vm::new(Backend::Sqlite);
    let err = vm.fails(
        &["hook", "install", "--moodle-dir", "/nonexistent/moodle"],
        1,
    );
    assert!(err.contains("no Moodle config.php found"), "{err}");
}

/// Hostile hosts never include a file outside hosts/, whatever they hold.
#[test]
fn hostile_hosts_include_nothing_outside_hosts() {
    let (vm, moodle) = fleet(false);
    // Plant PHP files that print a marker if they are ever included.
    let trap =
        "<?php echo 'TRAP-INCLUDED'; return ['enabled' => true, 'cfg' => ['wwwroot' => 'trap']];";
    for p in [
        vm.home.join("trap.php"),
        vm.home.join("hook.php.php"),
        vm.dir.path().join("evil.php"),
        Path::new("/tmp").join(format!("vmt-trap-{}.php", std::process::id())),
    ] {
        std::fs::write(&p, trap).unwrap();
    }
    std::fs::create_dir_all(vm.hosts_dir().join("sub")).unwrap();
    std::fs::write(vm.hosts_dir().join("sub/x.php"), trap).unwrap();
    let long = format!("{}.example.org", "a".repeat(300));
    let label64 = format!("{}.example.org", "b".repeat(64));
    let hostile: Vec<String> = vec![
        "../trap".into(),
        "..".into(),
        "../../../../tmp/vmt-trap".into(),
        "alpha.moodle.example.org/../../trap".into(),
        "alpha.moodle.example.org\0.php".into(),
        "alpha.moodle.example.org%00".into(),
        long,
        label64,
        "ünïcødé.example.org".into(),
        "ALPHA.MOODLE.EXAMPLE.ORG".into(),
        "alpha.moodle.example.org:443".into(),
        "alpha.moodle.example.org:99999".into(),
        "".into(),
        " ".into(),
        "alpha.moodle.example.org/path".into(),
        "sub/x".into(),
        "hook.php".into(),
        "trap".into(),
        "evil".into(),
        "alpha.moodle.example.org.".into(),
        "-bad.example.org".into(),
        "a..b".into(),
        "alpha.moodle.example.org\n".into(),
        "php://filter/resource=trap".into(),
        "/etc/passwd".into(),
        "[::1]:80".into(),
        "127.0.0.1".into(),
    ];
    let probe = r#"<?php
$_SERVER['HTTP_HOST'] = base64_decode($argv[2]);
ob_start();
register_shutdown_function(static function () {
    global $CFG;
    $body = ob_get_clean();
    echo json_encode(['status' => http_response_code() ?: 200, 'body' => $body, 'wwwroot' => $CFG->wwwroot ?? null, 'included' => get_included_files()], JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
});
require $argv[1];
"#;
    let probe_file = vm.dir.path().join("probe.php");
    std::fs::write(&probe_file, probe).unwrap();
    let hosts = vm.hosts_dir().canonicalize().unwrap();
    let allowed = [
        probe_file.canonicalize().unwrap(),
        moodle.join("config.php"),
        moodle.join("lib/setup.php"),
        vm.hook(),
    ];
    for h in &hostile {
        let out = Command::new("php")
            .args(["-n"])
            .arg(&probe_file)
            .arg(moodle.join("config.php"))
            .arg(vmoodle_test::base64(h.as_bytes()))
            .env_remove("VMOODLE_HOST")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !stdout.contains("TRAP-INCLUDED"),
            "{h:?} included a planted file: {stdout}"
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{h:?}: {e}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        for f in v["included"].as_array().unwrap() {
            let f = Path::new(f.as_str().unwrap());
            assert!(
                allowed.iter().any(|a| a == f) || f.parent() == Some(hosts.as_path()),
                "{h:?} included {}",
                f.display()
            );
        }
        let status = v["status"].as_u64().unwrap();
        let served = status == 200 && v["wwwroot"] != "trap";
        match h.as_str() {
            // Normalized forms of a real instance host are served as that instance.
            "ALPHA.MOODLE.EXAMPLE.ORG"
            | "alpha.moodle.example.org:443"
            | "alpha.moodle.example.org." => {
                assert!(
                    served && v["wwwroot"] == "http://alpha.moodle.example.org",
                    "{h:?}: {v}"
                )
            }
            // Well-formed host names that no instance has: 404, and no file but hook.php read.
            "127.0.0.1" | "hook.php" | "trap" | "evil" => assert_eq!(status, 404, "{h:?}: {v}"),
            _ => assert_eq!(status, 400, "{h:?} must be refused as malformed: {v}"),
        }
    }
    let _ = std::fs::remove_file(
        Path::new("/tmp").join(format!("vmt-trap-{}.php", std::process::id())),
    );
}

/// A real web server (PHP's built-in one) in front of the Moodle: status codes and headers as a
/// browser sees them.
struct WebServer(Child, u16);

impl WebServer {
    fn start(docroot: &Path) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("php")
            .args(["-n", "-S", &format!("127.0.0.1:{port}"), "-t"])
            .arg(docroot)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("php -S");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "php -S did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child, port)
    }

    fn get(&self, host: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /index.php HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, resp)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn web_requests_get_200_404_503_400() {
    let (_vm, moodle) = fleet(false);
    std::fs::write(
        moodle.join("index.php"),
        "<?php require __DIR__ . '/config.php';\n",
    )
    .unwrap();
    let web = WebServer::start(&moodle);
    let (st, body) = web.get("alpha.moodle.example.org");
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains(r#""wwwroot":"http://alpha.moodle.example.org""#),
        "{body}"
    );
    let (st, body) = web.get("master.moodle.test");
    assert_eq!(st, 200);
    assert!(body.contains(r#""dbname":"master_db""#), "{body}");
    let (st, body) = web.get("unknown.example.org");
    assert_eq!(st, 404, "{body}");
    assert!(
        body.contains("No Moodle is served at unknown.example.org"),
        "{body}"
    );
    let (st, body) = web.get("gamma.moodle.example.org");
    assert_eq!(st, 503, "{body}");
    assert!(
        body.to_ascii_lowercase().contains("retry-after: 300"),
        "{body}"
    );
    assert!(!body.contains("gamma-pw"));
    let (st, _) = web.get("evil..example.org");
    assert_eq!(st, 400);
}

#[test]
fn hook_check_reports_what_a_host_gets() {
    let (vm, _moodle) = fleet(false);
    let p = vm.json(&["hook", "check", "beta.example.org:8443", "--json"]);
    assert_eq!(p["status"], 200);
    assert_eq!(p["cfg"]["wwwroot"], "https://beta.example.org:8443");
    assert_eq!(p["cfg"]["dbpass"], "****");
    let out = vm.run(&["hook", "check", "gamma.moodle.example.org"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("503"));
}

/// The master's cache, temp and request directories and session prefixes are never shared: an
/// instance gets a directory of its own inside each the master sets, and its own prefixes;
/// what the master leaves to Moodle goes under the instance's dataroot.
#[test]
fn instances_get_their_own_dirs_and_session_prefixes() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    let mut master: Vec<(&str, &str)> = MASTER.to_vec();
    master.extend([
        ("cachedir", "/var/cache/moodle"),
        ("localrequestdir", "/tmp/mdlreq"),
        ("session_redis_prefix", "sess_"),
    ]);
    let moodle = fake_moodle(vm.dir.path(), true, &master);
    vm.ok(&["master", "set", "--moodle-dir", moodle.to_str().unwrap()]);
    vm.ok_stdin(
        &["instance", "add", "--token", "alpha", "--password-stdin"],
        "alpha-pw",
    );
    vm.ok(&[
        "hook",
        "install",
        "--moodle-dir",
        moodle.join("public").to_str().unwrap(),
    ]);
    let a = cfg_of(&php_cli_config(&moodle, Some("alpha.moodle.example.org")));
    let short = "alpha";
    assert_eq!(a["cachedir"], format!("/var/cache/moodle/{short}"));
    assert_eq!(a["localrequestdir"], format!("/tmp/mdlreq/{short}"));
    assert_eq!(a["session_redis_prefix"], format!("sess_{short}_"));
    assert_eq!(
        a["session_memcached_prefix"],
        format!("memc.sess.key.{short}_")
    );
    assert_eq!(a["localcachedir"], "/srv/moodledata/alpha/localcache");
    assert_eq!(a["tempdir"], "/srv/moodledata/alpha/temp");
    assert_eq!(a["backuptempdir"], "/srv/moodledata/alpha/temp/backup");
    // The master keeps its own.
    let m = cfg_of(&php_cli_config(&moodle, Some("master.moodle.test")));
    assert_eq!(m["cachedir"], "/var/cache/moodle");
    assert_eq!(m["session_redis_prefix"], "sess_");
    // An instance's own value wins.
    vm.ok(&["instance", "edit", "alpha", "--cfg", "cachedir=/fast/alpha"]);
    let a = cfg_of(&php_cli_config(&moodle, Some("alpha.moodle.example.org")));
    assert_eq!(a["cachedir"], "/fast/alpha");
}
