//! Deploy, bulk deploy and snapshot, side by side with the VMoodle way, on the shared Moodle 5.1
//! fixtures (fresh MariaDB and PostgreSQL, content MariaDB with its 177 MB filedir rebuilt from
//! content-filedir.tsv), on the local servers.
//!
//! The VMoodle way, per instance: dump the template database with the client tool, create the
//! database, load the dump with the client, fix it with SQL (site name, wwwroot), `cp -r` the
//! dataroot. Ours: `vmoodle deploy`.
//!
//! Run: ./scripts/bench-deploy [BULK_COUNT]   (default 50)

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use vmoodle_test::{mariadb_sql, pg_sql, MariaDb, PgDb, TempDir};

mod runner;

struct Env {
    home: PathBuf,
    base: PathBuf,
    work: PathBuf,
}

impl Env {
    fn vm(&self, args: &[&str]) -> Result<String> {
        self.vm_in(args, "")
    }
    fn vm_in(&self, args: &[&str], input: &str) -> Result<String> {
        runner::vmoodle(&self.home, args, input)
    }
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn secs<F: FnMut() -> Result<()>>(mut f: F) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn extract(tar: &str, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into)?;
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(vmoodle_test::fixtures_dir().join(tar))
        .arg("-C")
        .arg(into))
}

/// The content site's filedir, rebuilt from content-filedir.tsv (files of the listed sizes).
fn content_filedir(dataroot: &Path) -> Result<u64> {
    use std::io::Write;
    let tsv = std::fs::read_to_string(vmoodle_test::fixtures_dir().join("content-filedir.tsv"))?;
    let mut bytes = 0;
    let chunk = vec![0x5au8; 1 << 20];
    for line in tsv.lines() {
        let mut it = line.split('\t');
        let (Some(h), Some(size)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(size) = size.trim().parse::<u64>() else {
            continue;
        };
        if h.len() < 4 {
            continue;
        }
        let dir = dataroot.join("filedir").join(&h[0..2]).join(&h[2..4]);
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::File::create(dir.join(h))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        bytes += size;
    }
    Ok(bytes)
}

struct Source {
    label: &'static str,
    shortname: &'static str,
    server: &'static str,
    db: String,
    wwwroot: &'static str,
    dataroot: PathBuf,
}

/// The VMoodle way for one instance.
fn vmoodle_way(env: &Env, src: &Source, token: &str) -> Result<()> {
    let dump = env.work.join(format!("{token}.sql"));
    let target = format!("vmb_{token}");
    let new_www = format!("http://{token}.bench.example.org");
    let fix = format!(
        "UPDATE mdl_course SET fullname = '{token}', shortname = '{token}' WHERE id = 1; \
         UPDATE mdl_mnet_host SET wwwroot = '{new_www}' WHERE wwwroot = '{}'; \
         UPDATE mdl_config SET value = '{token}' WHERE name = 'sessioncookie';",
        src.wwwroot
    );
    if src.server == "maria" {
        let cnf = format!("--defaults-extra-file={}", vmoodle_test::my_cnf().display());
        let user = vmoodle_test::mariadb_user();
        sh(Command::new("mariadb-dump")
            .arg(&cnf)
            .args([
                "-h",
                "127.0.0.1",
                "-u",
                &user,
                "--single-transaction",
                "--quick",
                "--result-file",
            ])
            .arg(&dump)
            .arg(&src.db))?;
        mariadb_sql(
            None,
            &format!("CREATE DATABASE `{target}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        );
        sh(Command::new("mariadb")
            .arg(&cnf)
            .args(["-h", "127.0.0.1", "-u", &user, &target])
            .stdin(std::fs::File::open(&dump)?))?;
        mariadb_sql(Some(&target), &fix);
    } else {
        let user = vmoodle_test::pg_user();
        sh(Command::new("pg_dump")
            .env("PGPASSFILE", vmoodle_test::pgpass())
            .args(["-h", "127.0.0.1", "-U", &user, "--no-owner", "-f"])
            .arg(&dump)
            .arg(&src.db))?;
        pg_sql("postgres", &format!("CREATE DATABASE \"{target}\""));
        sh(Command::new("psql")
            .env("PGPASSFILE", vmoodle_test::pgpass())
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                &user,
                "-q",
                "-X",
                "-d",
                &target,
                "-f",
            ])
            .arg(&dump))?;
        pg_sql(&target, &fix);
    }
    sh(Command::new("cp")
        .arg("-r")
        .arg(&src.dataroot)
        .arg(env.base.join(format!("vmb-{token}"))))?;
    std::fs::remove_file(&dump)?;
    Ok(())
}

fn ours(env: &Env, template: &str, server: &str, token: &str) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = env.vm(&[
        "deploy",
        "--template",
        template,
        "--token",
        token,
        "--dbserver",
        server,
        "--json",
    ])?;
    let secs = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok((
        secs,
        v[0]["outcome"]["method"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
    ))
}

fn main() -> Result<()> {
    let bulk: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = TempDir::new("deploybench");
    let env = Env {
        home: dir.path().join("home"),
        base: dir.path().join("instances"),
        work: dir.path().join("work"),
    };
    std::fs::create_dir_all(&env.work)?;
    std::fs::create_dir_all(&env.base)?;
    env.vm(&["init"])?;
    for (args, password) in vmoodle_test::local_server_args() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.vm_in(&args, &password)?;
    }
    env.vm(&[
        "settings",
        "set",
        "schema.dataroot",
        &format!("{}/<%%INSTANCE%%>", env.base.display()),
    ])?;
    env.vm(&["settings", "set", "schema.db_name", "vmb_<%%INSTANCE%%>"])?;
    env.vm(&["settings", "set", "schema.db_login", "vmb_<%%INSTANCE%%>"])?;
    env.vm(&[
        "settings",
        "set",
        "schema.wwwroot",
        "http://<%%INSTANCE%%>.bench.example.org",
    ])?;

    eprintln!("loading the fixtures ...");
    let fresh_my = MariaDb::create("bfresh");
    fresh_my.load_fixture("fresh-mariadb.sql.gz");
    let content_my = MariaDb::create("bcontent");
    content_my.load_fixture("content-mariadb.sql.gz");
    let fresh_pg = PgDb::create("bfreshpg");
    fresh_pg.load_fixture("fresh-pgsql.sql.gz");
    let srcs_dir = dir.path().join("sources");
    extract("fresh-dataroot.tar.gz", &srcs_dir.join("fresh"))?;
    extract("fresh-pgsql-dataroot.tar.gz", &srcs_dir.join("freshpg"))?;
    extract("fresh-dataroot.tar.gz", &srcs_dir.join("content"))?;
    let content_bytes = content_filedir(&srcs_dir.join("content"))?;
    let sources = [
        Source {
            label: "fresh, MariaDB",
            shortname: "srcfresh",
            server: "maria",
            db: fresh_my.name.clone(),
            wwwroot: "http://master.moodle.test",
            dataroot: srcs_dir.join("fresh"),
        },
        Source {
            label: "fresh, PostgreSQL",
            shortname: "srcfreshpg",
            server: "pg",
            db: fresh_pg.name.clone(),
            wwwroot: "http://masterpg.moodle.test",
            dataroot: srcs_dir.join("freshpg"),
        },
        Source {
            label: "content, MariaDB",
            shortname: "srccontent",
            server: "maria",
            db: content_my.name.clone(),
            wwwroot: "http://content.moodle.test",
            dataroot: srcs_dir.join("content"),
        },
    ];
    let admin_user = |s: &str| {
        if s == "maria" {
            vmoodle_test::mariadb_user()
        } else {
            vmoodle_test::pg_user()
        }
    };
    let admin_pw = |s: &str| {
        if s == "maria" {
            vmoodle_test::mariadb_password()
        } else {
            vmoodle_test::pg_password()
        }
    };
    for s in &sources {
        env.vm_in(
            &[
                "instance",
                "add",
                "--wwwroot",
                s.wwwroot,
                "--shortname",
                s.shortname,
                "--dbserver",
                s.server,
                "--dbname",
                &s.db,
                "--dbuser",
                &admin_user(s.server),
                "--dataroot",
                s.dataroot.to_str().unwrap(),
                "--password-stdin",
                // The bench's own source databases, reached as the administrator.
                "--force-admin-account",
            ],
            &admin_pw(s.server),
        )?;
    }

    let mut tokens_made: Vec<String> = Vec::new();
    let mut templates: Vec<String> = Vec::new();
    let mut snap_rows = Vec::new();
    let mut deploy_rows = Vec::new();
    let result: Result<()> = (|| {
        for (i, s) in sources.iter().enumerate() {
            let tpl = format!("vmbench{i}_{}", std::process::id());
            templates.push(tpl.clone());
            eprintln!("{}: snapshot ...", s.label);
            let ours_snap = secs(|| {
                env.vm(&["snapshot", s.shortname, "--template", &tpl])
                    .map(|_| ())
            })?;
            let base_snap = secs(|| {
                let f = env.work.join("snap.sql");
                if s.server == "maria" {
                    sh(Command::new("mariadb-dump")
                        .arg(format!(
                            "--defaults-extra-file={}",
                            vmoodle_test::my_cnf().display()
                        ))
                        .args([
                            "-h",
                            "127.0.0.1",
                            "-u",
                            &vmoodle_test::mariadb_user(),
                            "--single-transaction",
                            "--result-file",
                        ])
                        .arg(&f)
                        .arg(&s.db))?;
                } else {
                    sh(Command::new("pg_dump")
                        .env("PGPASSFILE", vmoodle_test::pgpass())
                        .args(["-h", "127.0.0.1", "-U", &vmoodle_test::pg_user(), "-f"])
                        .arg(&f)
                        .arg(&s.db))?;
                }
                sh(Command::new("cp")
                    .arg("-r")
                    .arg(&s.dataroot)
                    .arg(env.work.join("snapcopy")))?;
                std::fs::remove_dir_all(env.work.join("snapcopy"))?;
                std::fs::remove_file(&f)?;
                Ok(())
            })?;
            snap_rows.push(format!(
                "| {} | {ours_snap:.2} | {base_snap:.2} | {:.1}x |",
                s.label,
                base_snap / ours_snap
            ));

            eprintln!("{}: deploys ...", s.label);
            // The first deploy also loads the live template on the server: reported apart.
            let first = format!("f{i}x{}", std::process::id() % 10000);
            tokens_made.push(first.clone());
            let (first_s, _) = ours(&env, &tpl, s.server, &first)?;
            let mut our_times = Vec::new();
            let mut method = String::new();
            for n in 0..3 {
                let t = format!("o{i}n{n}x{}", std::process::id() % 10000);
                tokens_made.push(t.clone());
                let (sec, m) = ours(&env, &tpl, s.server, &t)?;
                our_times.push(sec);
                method = m;
            }
            let mut base_times = Vec::new();
            for n in 0..3 {
                let t = format!("v{i}n{n}x{}", std::process::id() % 10000);
                tokens_made.push(t.clone());
                base_times.push(secs(|| vmoodle_way(&env, s, &t))?);
            }
            let (o, b) = (median(our_times), median(base_times));
            deploy_rows.push(format!(
                "| {} | {method} | {o:.2} | {b:.2} | {:.1}x | {first_s:.2} |",
                s.label,
                b / o
            ));
            if s.server == "maria" && i == 0 {
                env.vm(&[
                    "spares",
                    "fill",
                    "--template",
                    &tpl,
                    "--dbserver",
                    "maria",
                    "--count",
                    "3",
                ])?;
                let mut spare_times = Vec::new();
                for n in 0..3 {
                    let t = format!("s{i}n{n}x{}", std::process::id() % 10000);
                    tokens_made.push(t.clone());
                    let (sec, m) = ours(&env, &tpl, s.server, &t)?;
                    if m != "warm spare" {
                        bail!("expected a warm spare, got {m}");
                    }
                    spare_times.push(sec);
                }
                let sp = median(spare_times);
                deploy_rows.push(format!(
                    "| {} | warm spare | {sp:.2} | {b:.2} | {:.1}x | |",
                    s.label,
                    b / sp
                ));
            }
        }
        Ok(())
    })();

    let mut bulk_rows = Vec::new();
    let bulk_result: Result<()> = if result.is_ok() {
        (|| {
            for (i, s) in sources.iter().enumerate().take(2) {
                let tpl = &templates[i];
                eprintln!("{}: bulk of {bulk} ...", s.label);
                let pattern = format!("bk{i}n{{n}}x{}", std::process::id() % 10000);
                let made: Vec<String> = (1..=bulk)
                    .map(|n| pattern.replace("{n}", &n.to_string()))
                    .collect();
                tokens_made.extend(made.clone());
                let ours_s = secs(|| {
                    env.vm(&[
                        "deploy",
                        "--template",
                        tpl,
                        "--count",
                        &bulk.to_string(),
                        "--token-pattern",
                        &pattern,
                        "--parallel",
                        "2",
                        "--dbserver",
                        s.server,
                    ])
                    .map(|_| ())
                })?;
                let base_s = secs(|| {
                    for n in 1..=bulk {
                        let t = format!("bv{i}n{n}x{}", std::process::id() % 10000);
                        tokens_made.push(t.clone());
                        vmoodle_way(&env, s, &t)?;
                    }
                    Ok(())
                })?;
                let (o, b) = (bulk as f64 * 60.0 / ours_s, bulk as f64 * 60.0 / base_s);
                bulk_rows.push(format!(
                    "| {} | {bulk} | {ours_s:.1} | {o:.0} | {base_s:.1} | {b:.0} | {:.1}x |",
                    s.label,
                    o / b
                ));
            }
            Ok(())
        })()
    } else {
        Ok(())
    };

    eprintln!("cleaning up ...");
    for t in &tokens_made {
        let _ = std::panic::catch_unwind(|| {
            mariadb_sql(
                None,
                &format!("DROP DATABASE IF EXISTS `vmb_{t}`; DROP USER IF EXISTS 'vmb_{t}'@'%';"),
            )
        });
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
    for t in &templates {
        let _ = env.vm(&["template", "delete", t, "--yes"]);
    }
    result?;
    bulk_result?;

    println!("Snapshot (seconds; baseline = client dump + cp -r of the dataroot)\n");
    println!("| fixture | vmoodle snapshot | dump + cp -r | ratio |\n|---|---:|---:|---:|");
    for r in &snap_rows {
        println!("{r}");
    }
    println!("\nDeploy of one instance (median of 3, seconds, whole `vmoodle deploy` command)\n");
    println!("| fixture | our method | vmoodle | VMoodle way | speed-up | first deploy (loads the live template) |\n|---|---|---:|---:|---:|---:|");
    for r in &deploy_rows {
        println!("{r}");
    }
    println!("\nBulk deploy (vmoodle --parallel 2 vs the VMoodle way one after another)\n");
    println!("| fixture | instances | vmoodle s | vmoodle / min | VMoodle way s | VMoodle way / min | ratio |\n|---|---:|---:|---:|---:|---:|---:|");
    for r in &bulk_rows {
        println!("{r}");
    }
    println!(
        "\n(content fixture: {} MB of filedir rebuilt from content-filedir.tsv)",
        content_bytes / 1_000_000
    );
    Ok(())
}
