//! MNET at fleet scale: `mnet renew --all` and `mnet repair` on fully meshed subnetworks of 10
//! and 30 instances (90 and 870 peer rows), PostgreSQL fixture. The cost should grow with the
//! number of peer rows, not faster.
//!
//! Run: ./scripts/bench-mnet [SIZES...]   (default 10 30)

use anyhow::{bail, Result};
use std::process::Command;
use std::time::Instant;
use vmoodle_test::{pg_sql, PgDb, TempDir};

mod runner;

fn vm(home: &std::path::Path, args: &[&str], input: &str) -> Result<String> {
    runner::vmoodle(home, args, input)
}

fn timed(home: &std::path::Path, args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    vm(home, args, "")?;
    Ok(t.elapsed().as_secs_f64())
}

/// `mnet renew --all`, timed. No Moodle code is set up here (moodle.dir), so renewal cannot
/// invalidate the sites' caches and exits 3 saying so; anything else is a failure.
fn timed_renew(home: &std::path::Path) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new(runner::bin())
        .args(["mnet", "renew", "--all", "--json"])
        .env("VMOODLE_HOME", home)
        .stdin(std::process::Stdio::null())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let only_caches = r["errors"].as_array().is_some_and(|e| e.is_empty());
    if !(out.status.success() || (out.status.code() == Some(3) && only_caches)) {
        bail!(
            "vmoodle mnet renew --all: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(secs)
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 30]
    } else {
        sizes
    };
    let src = PgDb::create("mnetsrc");
    src.load_fixture("fresh-pgsql.sql.gz");
    let mut rows = Vec::new();
    let mut made: Vec<String> = Vec::new();
    let mut templates = Vec::new();
    let result: Result<()> = (|| {
        for &n in &sizes {
            let dir = TempDir::new("mnetbench");
            let home = dir.path().join("home");
            let data = dir.path().join("src");
            std::fs::create_dir_all(&data)?;
            let ok = Command::new("tar")
                .arg("-xzf")
                .arg(vmoodle_test::fixtures_dir().join("fresh-pgsql-dataroot.tar.gz"))
                .arg("-C")
                .arg(&data)
                .status()?;
            if !ok.success() {
                bail!("tar failed");
            }
            vm(&home, &["init"], "")?;
            let [_, (pg_args, pg_password)] = vmoodle_test::local_server_args();
            vm(
                &home,
                &pg_args.iter().map(String::as_str).collect::<Vec<_>>(),
                &pg_password,
            )?;
            vm(
                &home,
                &[
                    "settings",
                    "set",
                    "schema.dataroot",
                    &format!("{}/i/<%%INSTANCE%%>", dir.path().display()),
                ],
                "",
            )?;
            vm(
                &home,
                &["settings", "set", "schema.db_name", "vmb_<%%INSTANCE%%>"],
                "",
            )?;
            vm(
                &home,
                &["settings", "set", "schema.db_login", "vmb_<%%INSTANCE%%>"],
                "",
            )?;
            vm(
                &home,
                &[
                    "instance",
                    "add",
                    "--wwwroot",
                    "http://masterpg.moodle.test",
                    "--shortname",
                    "src",
                    "--dbserver",
                    "pg",
                    "--dbname",
                    &src.name,
                    "--dbuser",
                    &vmoodle_test::pg_user(),
                    "--dataroot",
                    data.to_str().unwrap(),
                    "--password-stdin",
                    // The bench's own source database, reached as the administrator.
                    "--force-admin-account",
                ],
                &vmoodle_test::pg_password(),
            )?;
            let tpl = format!("vmbmnet{n}_{}", std::process::id());
            templates.push(tpl.clone());
            vm(&home, &["snapshot", "src", "--template", &tpl], "")?;
            let pattern = format!("mn{n}x{}i{{n}}", std::process::id() % 10000);
            made.extend((1..=n).map(|i| pattern.replace("{n}", &i.to_string())));
            eprintln!("deploying {n} instances into subnetwork 1 ...");
            let t = Instant::now();
            vm(
                &home,
                &[
                    "deploy",
                    "--template",
                    &tpl,
                    "--count",
                    &n.to_string(),
                    "--token-pattern",
                    &pattern,
                    "--mnet",
                    "1",
                    "--parallel",
                    "2",
                    "--dbserver",
                    "pg",
                ],
                "",
            )?;
            let deploy_s = t.elapsed().as_secs_f64();
            let peer_rows = n * (n - 1);
            let status: serde_json::Value =
                serde_json::from_str(&vm(&home, &["mnet", "status", "--json"], "")?)?;
            let pairs = status["pairs"].as_array().map(|a| a.len()).unwrap_or(0);
            if pairs * 2 != peer_rows {
                bail!("expected {} pairs, found {pairs}", peer_rows / 2);
            }
            eprintln!("measuring ...");
            let renew = timed_renew(&home)?;
            let repair_clean = timed(&home, &["mnet", "repair"])?;
            let status_s = timed(&home, &["mnet", "status"])?;
            for i in 1..=n {
                pg_sql(
                    &format!("vmb_{}", pattern.replace("{n}", &i.to_string())),
                    "UPDATE mdl_mnet_host SET public_key = 'stale' WHERE id > 2",
                );
            }
            let repair_all = timed(&home, &["mnet", "repair"])?;
            rows.push(format!(
                "| {n} | {peer_rows} | {renew:.2} | {:.2} | {repair_clean:.2} | {repair_all:.2} | {:.2} | {status_s:.2} | {deploy_s:.1} |",
                renew * 1000.0 / peer_rows as f64,
                repair_all * 1000.0 / peer_rows as f64
            ));
            for t in &templates {
                let _ = vm(&home, &["template", "delete", t, "--yes"], "");
            }
        }
        Ok(())
    })();
    for t in &templates {
        let _ = std::panic::catch_unwind(|| {
            pg_sql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"vmtpl_{t}\" WITH (FORCE)"),
            )
        });
    }
    for t in &made {
        let _ = std::panic::catch_unwind(|| {
            pg_sql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"vmb_{t}\" WITH (FORCE)"),
            )
        });
        let _ = std::panic::catch_unwind(|| {
            pg_sql("postgres", &format!("DROP ROLE IF EXISTS \"vmb_{t}\""))
        });
    }
    result?;
    println!("MNET on fully meshed subnetworks (PostgreSQL, seconds; ms/row = per peer row)\n");
    println!("| instances | peer rows | renew --all | ms/row | repair (nothing stale) | repair (all stale) | ms/row | status | deploy with meshing |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
