//! MNET between two live Moodle 5.1 sites: the real Moodle code (shared/moodle) served by PHP's
//! built-in server with the vmoodle config hook in its config.php, two instances deployed with
//! `--mnet 1`, and a real MNET XML-RPC call (Moodle's own mnet_xmlrpc_client, signed and sealed
//! with RC4 from OpenSSL's legacy provider) from one to the other, before and after
//! `vmoodle mnet renew --all`. Renewal invalidates both sites' Moodle caches through Moodle
//! itself; without that (moodle.dir unknown) the call fails until the administrator runs the
//! command vmoodle prints.

use crate::deploy::{deploy_json, setup, token};
use std::io::{BufRead, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PHP's built-in server routes every path that is not a file under public/ to r.php, as nginx's
/// `try_files $uri $uri/ /r.php` does.
pub(crate) const ROUTER: &str = r#"<?php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if (is_string($path) && $path !== '' && file_exists($_SERVER['DOCUMENT_ROOT'] . $path)) {
    return false;
}
require $_SERVER['DOCUMENT_ROOT'] . '/r.php';
"#;

/// From the site it runs under (VMOODLE_HOST), calls system/keyswap on the peer `argv[2]` with
/// Moodle's MNET client (a request signed with the caller's private key and sealed to the peer's
/// public key; the answer signed and sealed back); prints JSON {ok, response|error}. The answer
/// is the peer's public key as the peer's running Moodle sees it.
const CALL: &str = r#"<?php
define('CLI_SCRIPT', true);
require $argv[1];
require_once($CFG->dirroot . '/mnet/xmlrpc/client.php');
require_once($CFG->dirroot . '/mnet/peer.php');
$peer = new mnet_peer();
if (!$peer->set_wwwroot($argv[2])) {
    echo json_encode(['ok' => false, 'error' => ['no mnet_host row for ' . $argv[2]]]);
    exit(0);
}
// system/keyswap is not in the client's own list of system methods a user may call; the check
// is local to the caller (the peer still checks signature, encryption and its own permissions).
class vmoodle_test_client extends mnet_xmlrpc_client {
    public function permission_to_call($mnet_peer) {
        return true;
    }
}
$client = new vmoodle_test_client();
$client->set_method('system/keyswap');
$client->add_param($CFG->wwwroot);
$client->add_param(get_mnet_environment()->public_key);
$client->add_param('moodle');
if ($client->send($peer)) {
    echo json_encode(['ok' => true, 'response' => $client->response]);
} else {
    echo json_encode(['ok' => false, 'error' => $client->error]);
}
"#;

/// PHP's built-in server in a process group of its own (its workers are forked children),
/// stopped with the whole group on drop.
pub(crate) struct PhpServer(Child);

impl Drop for PhpServer {
    fn drop(&mut self) {
        // kill -TERM -- -PGID   (the server and its workers)
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn serve(moodle: &Path, port: u16, openssl_cnf: &Path, router: &Path) -> PhpServer {
    serve_in(None, moodle, port, openssl_cnf, router)
}

/// `serve` inside a network namespace (`ip netns exec NS php ...`) when one is given.
pub(crate) fn serve_in(
    netns: Option<&str>,
    moodle: &Path,
    port: u16,
    openssl_cnf: &Path,
    router: &Path,
) -> PhpServer {
    // OPENSSL_CONF=... PHP_CLI_SERVER_WORKERS=4 php -d max_input_vars=5000 -S 127.0.0.1:PORT -t public router.php
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "php"]);
            c
        }
        None => Command::new("php"),
    };
    let listening = || match netns {
        None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .status()
            .is_ok_and(|s| s.success()),
    };
    let child = cmd
        .args(["-d", "max_input_vars=5000", "-S"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-t")
        .arg(moodle.join("public"))
        .arg(router)
        .env("OPENSSL_CONF", openssl_cnf)
        // Several workers: a call from A to B may make B call A back (key exchange).
        .env("PHP_CLI_SERVER_WORKERS", "4")
        .env_remove("VMOODLE_HOST")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("php -S");
    let mut server = PhpServer(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening() {
        if let Ok(Some(status)) = server.0.try_wait() {
            let mut err = String::new();
            let _ = server.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("php -S exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "php -S did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Keep its log flowing (a full pipe would block it); shown with --nocapture.
    let stderr = server.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !line.contains("Accepted") && !line.contains("Closing") {
                eprintln!("php -S: {line}");
            }
        }
    });
    server
}

/// The MNET call from `from` (host) to `to` (wwwroot), as JSON.
fn call(moodle: &Path, openssl_cnf: &Path, from: &str, to: &str) -> serde_json::Value {
    let out = Command::new("php")
        .arg("--")
        .arg(moodle.join("config.php"))
        .arg(to)
        .env("VMOODLE_HOST", from)
        .env("OPENSSL_CONF", openssl_cnf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(CALL.as_bytes())?;
            c.wait_with_output()
        })
        .expect("php");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.lines().last().unwrap_or("");
    serde_json::from_str(json).unwrap_or_else(|e| {
        panic!(
            "the MNET call from {from} to {to} printed no JSON ({e}; {}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The site's current certificate, from its database.
fn current_key(token: &str) -> String {
    crate::deploy::my_value(
        &format!("vmt_{token}"),
        "SELECT h.public_key FROM mdl_mnet_host h JOIN mdl_config c ON c.name = 'mnet_localhost_id' AND h.id = c.value",
    )
}

/// Calls `to` from `from` and expects `to`'s current key in a verified answer.
fn assert_call_ok(moodle: &Path, cnf: &Path, from: &str, to: (&str, &str), when: &str) {
    let (to_token, to_www) = to;
    let r = call(moodle, cnf, from, to_www);
    assert_eq!(r["ok"], true, "{when}: MNET call {from} -> {to_www}: {r}");
    let key = current_key(to_token);
    assert!(key.starts_with("-----BEGIN CERTIFICATE-----"), "{key}");
    assert_eq!(
        r["response"].as_str().map(str::trim),
        Some(key.trim()),
        "{when}: system/keyswap on {to_www} answered {r}"
    );
}

#[test]
fn mnet_call_between_live_sites_survives_renewal() {
    let mut s = setup();
    let port = free_port();
    s.vm.set(
        "schema.wwwroot",
        &format!("http://<%%INSTANCE%%>.localhost:{port}"),
    );
    // The test runs as root and so does its web server: Moodle's files belong to root.
    s.vm.set("web.user", "root");
    s.vm.set("web.group", "root");
    let dir = s._data.path().to_path_buf();
    let moodle: PathBuf = vmoodle_test::moodle_copy(&dir);
    let cnf = dir.join("openssl.cnf");
    // OpenSSL 3 keeps RC4 (MNET's envelope) in its legacy provider: on for this test's php only.
    std::fs::write(&cnf, vmoodle_site::php_env::LEGACY_OPENSSL_CONF).unwrap();
    let router = dir.join("router.php");
    std::fs::write(&router, ROUTER).unwrap();
    // The master's config.php, as Moodle's installer writes it, then the hook.
    let master_data = dir.join("maria-src");
    crate::fleet::write_master_config(&moodle, "mariadb", &s._maria.name, &master_data);
    let mdir = moodle.to_str().unwrap();
    s.vm.ok(&["hook", "install", "--moodle-dir", mdir]);
    s.vm.ok(&["settings", "set", "moodle.dir", mdir]);

    let tpl = token("tl");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    let (a, b) = (token("la"), token("lb"));
    s.clean.tokens.extend([a.clone(), b.clone()]);
    let r = deploy_json(
        &s.vm,
        &[
            "--template",
            &tpl,
            "--tokens",
            &format!("{a},{b}"),
            "--mnet",
            "1",
            "--dbserver",
            "maria",
        ],
    );
    assert!(r.as_array().unwrap().iter().all(|i| i["ok"] == true), "{r}");
    let host = |t: &str| format!("{t}.localhost:{port}");
    let www = |t: &str| format!("http://{t}.localhost:{port}");

    let _server = serve(&moodle, port, &cnf, &router);
    // Fresh sites: both ways. These calls also fill each site's config cache.
    assert_call_ok(&moodle, &cnf, &host(&a), (&b, &www(&b)), "after deploy");
    assert_call_ok(&moodle, &cnf, &host(&b), (&a, &www(&a)), "after deploy");

    // Renewal rotates both keys in the databases and invalidates both sites' caches.
    let t = Instant::now();
    let r = s.vm.json(&["mnet", "renew", "--all", "--json"]);
    eprintln!(
        "mnet renew --all (2 sites, caches invalidated): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(r["renewed"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(
        r["caches"]["invalidated"].as_array().unwrap().len(),
        2,
        "{r}"
    );
    assert_call_ok(&moodle, &cnf, &host(&a), (&b, &www(&b)), "after renew");
    assert_call_ok(&moodle, &cnf, &host(&b), (&a, &www(&a)), "after renew");

    // Without the Moodle code, vmoodle cannot invalidate: it says so, with the command to run,
    // and exits 3; the sites then still serve their old keys and the call fails ...
    s.vm.ok(&["settings", "set", "moodle.dir", ""]);
    let t = Instant::now();
    let out = s.vm.run(&["mnet", "renew", "--all"]);
    eprintln!(
        "mnet renew --all (2 sites, no invalidation): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    let commands: Vec<String> = err
        .lines()
        .filter_map(|l| l.split_once("until you run: ").map(|(_, c)| c.to_string()))
        .collect();
    assert_eq!(commands.len(), 2, "{err}");
    let stale = call(&moodle, &cnf, &host(&a), &www(&b));
    assert_eq!(stale["ok"], false, "a stale cache cannot work: {stale}");
    // ... until the administrator runs what vmoodle printed (MOODLE_DIR is the placeholder).
    for c in &commands {
        assert!(c.contains("VMOODLE_HOST=") && c.ends_with("--muc"), "{c}");
        let c = c.replace("MOODLE_DIR", mdir);
        vmoodle_test::run_ok(Command::new("sh").args(["-c", &c]));
    }
    assert_call_ok(
        &moodle,
        &cnf,
        &host(&a),
        (&b, &www(&b)),
        "after the printed purge",
    );
    assert_call_ok(
        &moodle,
        &cnf,
        &host(&b),
        (&a, &www(&a)),
        "after the printed purge",
    );
}
