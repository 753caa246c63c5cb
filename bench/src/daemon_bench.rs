//! The daemon at fleet scale: 10,000 instances in a SQLite register (inserted with one SQL
//! transaction, their database passwords sealed with the home's key as `instance add` does),
//! a daemon started on it, and the latency of its pages and API (measured at the client over
//! loopback, so it is the server's time plus a loopback round trip) beside the CLI's
//! `vmoodle instance list --json`. Also reported: how long the daemon's first host-file sync
//! (10,000 host files) takes. A path this build does not serve (404) is reported as absent.
//!
//! Run: ./scripts/bench-daemon [INSTANCES] [REQUESTS]   (defaults 10000 and 50)

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmoodle_core::{Binding, Secret};
use vmoodle_test::TempDir;

mod runner;

const PASSWORD: &str = "bench horse battery staple";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let reqs: usize = args.next().map_or(Ok(50), |a| a.parse())?;
    let dir = TempDir::new("daemon-bench");
    let home = dir.path().join("home");
    runner::vmoodle(&home, &["init"], "")?;
    let t = Instant::now();
    register(&home, n)?;
    println!(
        "registered {n} instances in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    runner::vmoodle(
        &home,
        &["admin", "add", "bench", "--password-stdin"],
        PASSWORD,
    )?;
    let token = runner::vmoodle(
        &home,
        &[
            "admin", "token", "create", "bench", "--admin", "bench", "--scope", "read",
        ],
        "",
    )?
    .trim()
    .to_string();

    let started = Instant::now();
    let mut daemon = Command::new(runner::bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("VMOODLE_HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let url = served_url(&mut daemon)?;
    let r = measure_all(&home, &url, &token, n, reqs, started);
    let _ = daemon.kill();
    let _ = daemon.wait();
    r
}

/// Inserts a database server and `n` instances (b00000, b00001, ...) in one transaction.
fn register(home: &Path, n: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let secrets = rt.block_on(vmoodle_ops::Home::open(home))?.secrets;
    let now = vmoodle_core::now_unix();
    let mut sql = String::from("BEGIN;\n");
    let admin = secrets.seal(&Secret::new("x"), &Binding::dbserver_admin("db1"))?;
    sql += &format!(
        "INSERT INTO db_servers (name, kind, host, port, admin_user, admin_password, created_at, updated_at) \
         VALUES ('db1', 'mariadb', '127.0.0.1', 3306, 'root', '{admin}', {now}, {now});\n"
    );
    for i in 0..n {
        let s = format!("b{i:05}");
        let pass = secrets.seal(
            &Secret::new(format!("pw-{s}")),
            &Binding::instance_dbpass(&s),
        )?;
        sql += &format!(
            "INSERT INTO instances (shortname, host, wwwroot, name, dbserver_id, dbtype, dbname, dbuser, dbpass, prefix, dataroot, created_at, updated_at) \
             VALUES ('{s}', '{s}.moodle.test', 'http://{s}.moodle.test', 'School {i}', 1, 'mariadb', 'vm_{s}', 'vm_{s}', '{pass}', 'mdl_', '/srv/moodledata/{s}', {now}, {now});\n"
        );
    }
    sql += "COMMIT;\n";
    let mut child = Command::new("sqlite3")
        .arg(home.join("registry.sqlite"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("sqlite3 (apt-get install sqlite3)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(sql.as_bytes())?;
    if !child.wait()?.success() {
        bail!("sqlite3 failed");
    }
    Ok(())
}

/// The URL the daemon prints once it listens.
fn served_url(daemon: &mut std::process::Child) -> Result<String> {
    let mut err = BufReader::new(daemon.stderr.take().expect("piped"));
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("vmoodle serve ended before serving");
        }
        if let Some(rest) = line.trim().strip_prefix("vmoodle serving on ") {
            let url = rest.split_whitespace().next().unwrap_or_default();
            std::thread::spawn(move || for _ in err.lines() {});
            return Ok(url.trim_end_matches('/').to_string());
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn measure_all(
    home: &Path,
    url: &str,
    token: &str,
    n: usize,
    reqs: usize,
    started: Instant,
) -> Result<()> {
    // The first sync writes every host file; wait for the last one.
    let last = home
        .join("hosts")
        .join(format!("b{:05}.moodle.test.php", n - 1));
    while !last.exists() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "the daemon did not publish {} within 10 minutes",
                last.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sync = started.elapsed();
    let browser = login(url)?;
    let api = reqwest::blocking::Client::new();
    println!();
    println!("{n} instances, {reqs} requests each (ms, client-side over loopback)");
    println!("{:<34} {:>9} {:>9} {:>9}", "what", "p50", "p99", "bytes");
    let pages = [
        ("page /", "/", false),
        ("page / search (?q=b04242)", "/?q=b04242", false),
        ("page /jobs", "/jobs", false),
        ("GET /api/v1/instances", "/api/v1/instances", true),
        ("GET /metrics", "/metrics", true),
    ];
    for (what, path, bearer) in pages {
        let mut times = Vec::with_capacity(reqs);
        let mut bytes = 0;
        let mut absent = false;
        for _ in 0..reqs {
            let req = if bearer {
                api.get(format!("{url}{path}")).bearer_auth(token)
            } else {
                browser.get(format!("{url}{path}"))
            };
            let t = Instant::now();
            let r = req.send()?;
            let status = r.status();
            let body = r.bytes()?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if status == 404 {
                absent = true;
                break;
            }
            if !status.is_success() {
                bail!("{path}: {status}");
            }
            bytes = body.len();
        }
        if absent {
            println!("{what:<34} {:>9} {:>9} {:>9}", "absent", "-", "-");
            continue;
        }
        println!(
            "{what:<34} {:>9.1} {:>9.1} {:>9}",
            percentile(&mut times, 0.5),
            percentile(&mut times, 0.99),
            bytes
        );
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..reqs.clamp(1, 10) {
        let t = Instant::now();
        bytes = runner::vmoodle(home, &["instance", "list", "--json"], "")?.len();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "{:<34} {:>9.1} {:>9.1} {:>9}",
        "CLI instance list --json",
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.99),
        bytes
    );
    println!(
        "\nfirst host-file sync after start: {:.1} s for {n} host files",
        sync.as_secs_f64()
    );
    // One change made elsewhere (straight into the register, as another node would): how long
    // until this daemon's host file shows it.
    let file = home.join("hosts").join("b00042.moodle.test.php");
    let t = Instant::now();
    let ok = Command::new("sqlite3")
        .arg(home.join("registry.sqlite"))
        .arg("UPDATE instances SET enabled = 0 WHERE shortname = 'b00042'")
        .status()?;
    if !ok.success() {
        bail!("sqlite3 failed");
    }
    while !std::fs::read_to_string(&file)?.contains("'enabled' => false") {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the host file of b00042 did not change within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "one instance disabled in the register: its host file changed after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A client logged in through the login form (cookie jar, CSRF field of the page).
fn login(url: &str) -> Result<reqwest::blocking::Client> {
    let c = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let page = c.get(format!("{url}/login")).send()?.text()?;
    let key = "name=\"csrf\" value=\"";
    let at = page.find(key).context("no CSRF field on the login page")? + key.len();
    let csrf = &page[at..at + page[at..].find('"').context("CSRF field")?];
    let r = c
        .post(format!("{url}/login"))
        .form(&[
            ("csrf", csrf),
            ("name", "bench"),
            ("password", PASSWORD),
            ("next", "/"),
        ])
        .send()?;
    if r.status() != 303 {
        bail!("login failed: {}", r.status());
    }
    Ok(c)
}
