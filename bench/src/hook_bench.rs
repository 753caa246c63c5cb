//! Per-request cost of picking the instance from the host: vmoodle's config hook (a PHP include
//! of the host's file, no database query) beside the VMoodle way (a new connection to the master
//! database and a SELECT on its register table, on every request), for fleets of growing size.
//! Both run in the same php-cli process type, measured with hrtime over many iterations.
//!
//! Run: ./scripts/bench   (or: cargo run --release -p vmoodle-bench --bin hook-bench)

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vmoodle_test::{MariaDb, PgDb, TempDir};

const OURS: &str = r#"<?php
$hook = $argv[1];
$hosts = file($argv[2], FILE_IGNORE_NEW_LINES);
$n = (int)$argv[3];
$count = count($hosts);
$t0 = hrtime(true);
for ($i = 0; $i < $n; $i++) {
    $_SERVER['HTTP_HOST'] = $hosts[($i * 7919) % $count];
    $CFG = new stdClass();
    include $hook;
    if (empty($CFG->dbname)) { fwrite(STDERR, "no dbname for {$_SERVER['HTTP_HOST']}\n"); exit(1); }
}
printf("%.3f\n", (hrtime(true) - $t0) / 1e3 / $n);
"#;

const VMOODLE_MARIADB: &str = r#"<?php
// VMoodle's bootlib.php: mysqli_connect to the master database, SELECT the register row.
[$_, $db, $user, $pwfile, $hostsfile, $n] = $argv;
$pass = trim(file_get_contents($pwfile));
$hosts = file($hostsfile, FILE_IGNORE_NEW_LINES);
$count = count($hosts);
$t0 = hrtime(true);
for ($i = 0; $i < (int)$n; $i++) {
    $vhost = 'http://' . $hosts[($i * 7919) % $count];
    $c = mysqli_connect('127.0.0.1', $user, $pass, $db, 3306);
    $r = mysqli_query($c, "SELECT * FROM mdl_local_vmoodle WHERE vhostname = '" . mysqli_real_escape_string($c, $vhost) . "'");
    $row = mysqli_fetch_object($r);
    if (!$row) { fwrite(STDERR, "no row for $vhost\n"); exit(1); }
    mysqli_close($c);
}
printf("%.3f\n", (hrtime(true) - $t0) / 1e3 / (int)$n);
"#;

const VMOODLE_PGSQL: &str = r#"<?php
// VMoodle's bootlib.php, PostgreSQL branch: pg_connect, SELECT the register row.
[$_, $db, $user, $pwfile, $hostsfile, $n] = $argv;
$pass = trim(file_get_contents($pwfile));
$hosts = file($hostsfile, FILE_IGNORE_NEW_LINES);
$count = count($hosts);
$conninfo = "host=127.0.0.1 port=5432 dbname=$db user=$user" . ($pass === '' ? '' : " password='" . addslashes($pass) . "'");
$t0 = hrtime(true);
for ($i = 0; $i < (int)$n; $i++) {
    $vhost = 'http://' . $hosts[($i * 7919) % $count];
    $c = pg_connect($conninfo, PGSQL_CONNECT_FORCE_NEW);
    $r = pg_query_params($c, 'SELECT * FROM mdl_local_vmoodle WHERE vhostname = $1', [$vhost]);
    $row = pg_fetch_object($r);
    if (!$row) { fwrite(STDERR, "no row for $vhost\n"); exit(1); }
    pg_close($c);
}
printf("%.3f\n", (hrtime(true) - $t0) / 1e3 / (int)$n);
"#;

fn vmoodle_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMOODLE_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for p in ["target/release/vmoodle", "target/debug/vmoodle"] {
        if root.join(p).exists() {
            return root.join(p);
        }
    }
    "vmoodle".into()
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn php(script: &Path, opcache: bool, args: &[&str]) -> Result<f64> {
    let mut c = Command::new("php");
    if opcache {
        // file_update_protection=0: OPcache otherwise refuses to cache files younger than 2 s,
        // and the host files were written just before the measurement.
        c.args([
            "-d",
            "opcache.enable_cli=1",
            "-d",
            "opcache.file_update_protection=0",
        ]);
    } else {
        c.args(["-d", "opcache.enable_cli=0"]);
    }
    c.arg(script).args(args);
    Ok(run(&mut c)?.parse()?)
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    let dir = TempDir::new("bench");
    let scripts = dir.path();
    std::fs::write(scripts.join("ours.php"), OURS)?;
    std::fs::write(scripts.join("vm_maria.php"), VMOODLE_MARIADB)?;
    std::fs::write(scripts.join("vm_pg.php"), VMOODLE_PGSQL)?;
    let mpw = scripts.join("maria.pw");
    let ppw = scripts.join("pg.pw");
    std::fs::write(&mpw, vmoodle_test::mariadb_password())?;
    std::fs::write(&ppw, vmoodle_test::pg_password())?;

    let mut table = String::new();
    writeln!(table, "| fleet | vmoodle hook, opcache (µs) | vmoodle hook, no opcache (µs) | VMoodle lookup, MariaDB (µs) | ratio | VMoodle lookup, PostgreSQL (µs) | ratio |")?;
    writeln!(table, "|---:|---:|---:|---:|---:|---:|---:|")?;
    for &m in &sizes {
        eprintln!("fleet of {m}: registering instances ...");
        let home = dir.path().join(format!("home{m}"));
        let vm = |args: &[&str]| {
            let mut c = Command::new(vmoodle_bin());
            c.args(args).env("VMOODLE_HOME", &home);
            run(&mut c)
        };
        vm(&["init"])?;
        let mut c = Command::new(vmoodle_bin());
        c.args([
            "dbserver",
            "add",
            "maria",
            "--type",
            "mariadb",
            "--host",
            "127.0.0.1",
            "--user",
            &vmoodle_test::mariadb_user(),
            "--password-file",
        ])
        .arg(&mpw)
        .env("VMOODLE_HOME", &home);
        run(&mut c)?;
        let mut csv =
            String::from("vhostname;name;shortname;vdbhost;vdblogin;vdbpass;vdbname;vdatapath\n");
        let mut hosts = String::new();
        let mut rows = Vec::new();
        for i in 0..m {
            let host = format!("site{i}.bench.example.org");
            writeln!(csv, "http://{host};Site {i};site{i};127.0.0.1;vm_site{i};pw{i};vm_site{i};/srv/moodledata/site{i}")?;
            writeln!(hosts, "{host}")?;
            rows.push(format!("('http://{host}','mariadb','127.0.0.1','vm_site{i}','pw{i}','vm_site{i}','mdl_',0,'/srv/moodledata/site{i}',0,1,'Site {i}','site{i}','')"));
        }
        std::fs::write(dir.path().join("nodes.csv"), &csv)?;
        std::fs::write(dir.path().join("hosts.txt"), &hosts)?;
        vm(&[
            "import",
            "csv",
            dir.path().join("nodes.csv").to_str().unwrap(),
        ])?;

        let create = "CREATE TABLE mdl_local_vmoodle (id BIGINT PRIMARY KEY AUTO_INCREMENT, vhostname VARCHAR(255), vdbtype VARCHAR(16), vdbhost VARCHAR(80), vdblogin VARCHAR(16), vdbpass VARCHAR(32), vdbname VARCHAR(64), vdbprefix VARCHAR(10), vdbpersist SMALLINT, vdatapath VARCHAR(255), mnet INT, enabled SMALLINT, name VARCHAR(255), shortname VARCHAR(80), description TEXT)";
        let insert = format!("INSERT INTO mdl_local_vmoodle (vhostname, vdbtype, vdbhost, vdblogin, vdbpass, vdbname, vdbprefix, vdbpersist, vdatapath, mnet, enabled, name, shortname, description) VALUES {}", rows.join(","));
        let maria = MariaDb::create("bench");
        vmoodle_test::mariadb_sql(Some(&maria.name), &format!("{create}; {insert};"));
        let pg = PgDb::create("bench");
        vmoodle_test::pg_sql(
            &pg.name,
            &format!(
                "{}; {insert};",
                create.replace("BIGINT PRIMARY KEY AUTO_INCREMENT", "BIGSERIAL PRIMARY KEY")
            ),
        );

        let hook = home.join("hook.php");
        let hosts_file = dir.path().join("hosts.txt");
        let (h, hf) = (hook.to_str().unwrap(), hosts_file.to_str().unwrap());
        eprintln!("fleet of {m}: measuring ...");
        // Warm the file cache once, then measure.
        php(&scripts.join("ours.php"), true, &[h, hf, "2000"])?;
        let ours_opc = php(&scripts.join("ours.php"), true, &[h, hf, "50000"])?;
        let ours_plain = php(&scripts.join("ours.php"), false, &[h, hf, "50000"])?;
        let vm_maria = php(
            &scripts.join("vm_maria.php"),
            false,
            &[
                &maria.name,
                &vmoodle_test::mariadb_user(),
                mpw.to_str().unwrap(),
                hf,
                "3000",
            ],
        )?;
        let vm_pg = php(
            &scripts.join("vm_pg.php"),
            false,
            &[
                &pg.name,
                &vmoodle_test::pg_user(),
                ppw.to_str().unwrap(),
                hf,
                "1500",
            ],
        )?;
        writeln!(
            table,
            "| {m} | {ours_opc:.1} | {ours_plain:.1} | {vm_maria:.1} | {:.0}x | {vm_pg:.1} | {:.0}x |",
            vm_maria / ours_opc,
            vm_pg / ours_opc
        )?;
    }
    println!("Instance selection per request (lower is better; ratio = VMoodle / vmoodle hook with opcache)\n");
    print!("{table}");
    Ok(())
}
