//! Fleet upgrade: N live Moodle 5.1 instances (deployed from a snapshot of the fresh MariaDB
//! fixture, the real Moodle code with the vmoodle hook) upgraded after a local plugin's version
//! bump, `vmoodle upgrade --parallel 4` beside `--parallel 1` (one site after another, the way
//! VMoodle's bulk upgrade went), measured in the same run on the same sites: the plugin goes to
//! version 2 with `--parallel 1`, then to version 3 with `--parallel 4` (the same upgrade step).
//!
//! Run: ./scripts/bench-upgrade [INSTANCES]   (default 20)

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use vmoodle_test::{mariadb_sql, MariaDb, TempDir};

mod runner;

/// The local plugin `local_vmbench` at `version`: its upgrade step records the version it
/// reached in a setting.
fn write_plugin(moodle: &Path, version: u32) -> Result<()> {
    let dir = moodle.join("public/local/vmbench");
    std::fs::create_dir_all(dir.join("db"))?;
    std::fs::create_dir_all(dir.join("lang/en"))?;
    let put = |rel: &str, text: String| -> Result<()> {
        let p = dir.join(rel);
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text)?;
        Ok(())
    };
    put(
        "version.php",
        format!(
            "<?php\ndefined('MOODLE_INTERNAL') || die();\n$plugin->component = 'local_vmbench';\n\
             $plugin->version = {version};\n$plugin->requires = 2025100600;\n"
        ),
    )?;
    put(
        "lang/en/local_vmbench.php",
        "<?php\n$string['pluginname'] = 'vmoodle bench plugin';\n".into(),
    )?;
    put(
        "db/upgrade.php",
        format!(
            "<?php\ndefined('MOODLE_INTERNAL') || die();\n\
             function xmldb_local_vmbench_upgrade($oldversion) {{\n\
                 if ($oldversion < {version}) {{\n\
                     set_config('reached', {version}, 'local_vmbench');\n\
                     upgrade_plugin_savepoint(true, {version}, 'local', 'vmbench');\n\
                 }}\n    return true;\n}}\n"
        ),
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("upgradebench");
    let home = dir.path().join("home");
    let base = dir.path().join("instances");
    std::fs::create_dir_all(&base)?;
    let vm = |args: &[&str]| runner::vmoodle(&home, args, "");
    let vm_in = |args: &[&str], input: &str| runner::vmoodle(&home, args, input);
    vm(&["init"])?;
    for (args, password) in vmoodle_test::local_server_args() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vm_in(&args, &password)?;
    }
    let dr = format!("{}/<%%INSTANCE%%>", base.display());
    vm(&["settings", "set", "schema.dataroot", &dr])?;
    vm(&["settings", "set", "schema.db_name", "vmu_<%%INSTANCE%%>"])?;
    vm(&["settings", "set", "schema.db_login", "vmu_<%%INSTANCE%%>"])?;
    vm(&[
        "settings",
        "set",
        "schema.wwwroot",
        "http://<%%INSTANCE%%>.bench.example.org",
    ])?;
    let me = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?;
    vm(&["settings", "set", "web.user", me.trim()])?;
    vm(&["settings", "set", "web.group", me.trim()])?;
    eprintln!("loading the fixture and the Moodle code ...");
    let src = MariaDb::create("ubsrc");
    src.load_fixture("fresh-mariadb.sql.gz");
    let src = src.with_user("src-pw");
    let src_data = dir.path().join("src-data");
    std::fs::create_dir_all(&src_data)?;
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(vmoodle_test::fixtures_dir().join("fresh-dataroot.tar.gz"))
        .arg("-C")
        .arg(&src_data)
        .status()?;
    if !ok.success() {
        bail!("extracting the dataroot failed");
    }
    let moodle = vmoodle_test::moodle_copy(dir.path());
    std::fs::write(
        moodle.join("config.php"),
        format!(
            "<?php  // Moodle configuration file\n\nunset($CFG);\nglobal $CFG;\n$CFG = new stdClass();\n\n\
             $CFG->dbtype = 'mariadb';\n$CFG->dblibrary = 'native';\n$CFG->dbhost = '127.0.0.1';\n\
             $CFG->dbname = '{db}';\n$CFG->dbuser = '{db}';\n$CFG->dbpass = 'src-pw';\n$CFG->prefix = 'mdl_';\n\
             $CFG->dboptions = ['dbpersist' => 0, 'dbport' => '', 'dbsocket' => ''];\n\
             $CFG->wwwroot = 'http://master.moodle.test';\n$CFG->dataroot = '{data}';\n\
             $CFG->admin = 'admin';\n$CFG->directorypermissions = 02777;\n\n\
             require_once(__DIR__ . '/lib/setup.php');\n",
            db = src.name,
            data = src_data.display()
        ),
    )?;
    let mdir = moodle.to_str().unwrap();
    vm(&["hook", "install", "--moodle-dir", mdir])?;
    vm(&["settings", "set", "moodle.dir", mdir])?;
    vm_in(
        &[
            "instance",
            "add",
            "--wwwroot",
            "http://master.moodle.test",
            "--shortname",
            "ubsrc",
            "--dbserver",
            "maria",
            "--dbname",
            &src.name,
            "--dbuser",
            &src.name,
            "--dataroot",
            src_data.to_str().unwrap(),
            "--password-stdin",
        ],
        "src-pw",
    )?;
    let tpl = format!("ubench_{}", std::process::id());
    vm(&["snapshot", "ubsrc", "--template", &tpl])?;
    let pattern = format!("ub{{n}}x{}", std::process::id() % 10000);
    let tokens: Vec<String> = (1..=n)
        .map(|i| pattern.replace("{n}", &i.to_string()))
        .collect();
    eprintln!("deploying {n} instances ...");
    let result = (|| -> Result<(f64, f64, f64)> {
        vm(&[
            "deploy",
            "--template",
            &tpl,
            "--count",
            &n.to_string(),
            "--token-pattern",
            &pattern,
            "--parallel",
            "2",
            "--dbserver",
            "maria",
        ])?;
        let sel = format!("ub*x{}", std::process::id() % 10000);
        let upgrade = |parallel: &str| -> Result<f64> {
            let t = Instant::now();
            let out = vm(&["upgrade", "--match", &sel, "--parallel", parallel, "--json"])?;
            let secs = t.elapsed().as_secs_f64();
            let r: serde_json::Value = serde_json::from_str(&out)?;
            let ok = r["sites"]
                .as_array()
                .context("no sites")?
                .iter()
                .filter(|s| s["status"] == "ok")
                .count();
            if ok != n {
                bail!("{ok} of {n} sites upgraded: {r}");
            }
            Ok(secs)
        };
        eprintln!("installing the plugin (version 1, --parallel 4) ...");
        write_plugin(&moodle, 1)?;
        let install = upgrade("4")?;
        eprintln!("version 2, --parallel 1 ...");
        write_plugin(&moodle, 2)?;
        let p1 = upgrade("1")?;
        eprintln!("version 3, --parallel 4 ...");
        write_plugin(&moodle, 3)?;
        let p4 = upgrade("4")?;
        for t in &tokens {
            let v = mariadb_sql(
                Some(&format!("vmu_{t}")),
                "SELECT value FROM mdl_config_plugins WHERE plugin = 'local_vmbench' AND name = 'reached'",
            );
            if v.trim() != "3" {
                bail!("{t}: the plugin reached `{}`, not 3", v.trim());
            }
        }
        Ok((install, p1, p4))
    })();
    eprintln!("cleaning up ...");
    for t in &tokens {
        let _ = std::panic::catch_unwind(|| {
            mariadb_sql(
                None,
                &format!("DROP DATABASE IF EXISTS `vmu_{t}`; DROP USER IF EXISTS 'vmu_{t}'@'%';"),
            )
        });
    }
    let _ = vm(&["template", "delete", &tpl, "--yes"]);
    let (install, p1, p4) = result?;
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    println!("Fleet upgrade of {n} live Moodle 5.1 instances (MariaDB) after a local plugin's version bump");
    println!("(each site: locks, maintenance on, upgrade.php --non-interactive, purge_caches.php, maintenance off; {cores} cores)\n");
    println!("| run | seconds | sites / min |\n|---|---:|---:|");
    println!(
        "| install of the plugin, --parallel 4 | {install:.1} | {:.0} |",
        n as f64 * 60.0 / install
    );
    println!(
        "| bump, --parallel 1 (one after another, VMoodle's bulk upgrade way) | {p1:.1} | {:.0} |",
        n as f64 * 60.0 / p1
    );
    println!(
        "| bump, --parallel 4 | {p4:.1} | {:.0} |",
        n as f64 * 60.0 / p4
    );
    println!(
        "\nspeed-up of --parallel 4 over --parallel 1: {:.2}x",
        p1 / p4
    );
    Ok(())
}
