//! Seeding a replica from a backup stream, and undoing it.
//!
//! Nothing is deleted: the data directory a seed replaces is renamed into
//! `STATE/seed-prev/datadir` (or, on another file system, beside itself as
//! `DATADIR.vmoodle-seed-prev-TIME`), and `STATE/seed-prev/record.json` says where it went, where
//! the previous managed configuration is kept and whether the server was running. `undo_seed`
//! reads that record and puts everything back; the seeded data directory is in turn renamed
//! aside (`seed-undone-TIME`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt};
use vmoodle_exec::Tool;

use super::{now, parse, probe, run_sql, sql_step, state_dir, wait_for};
use crate::config::{AgentHome, DatabaseConfig};
use crate::protocol::{ReplicaPlan, Role};

/// One seed or undo at a time in this agent.
static SEED_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the server may take to answer after it was started, and replication to run.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a replication error may persist before the seed gives up waiting for it to clear.
const FAIL_AFTER: Duration = Duration::from_secs(5);
const LONG: Duration = Duration::from_secs(3600);

/// What a seed replaced, so that `undo_seed` can put it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeedRecord {
    datadir: PathBuf,
    /// Where the previous data directory went (none: there was none).
    moved_to: Option<PathBuf>,
    managed_config: PathBuf,
    /// A copy of the previous managed configuration (none: there was none).
    managed_prev: Option<PathBuf>,
    was_running: bool,
    at: i64,
}

fn prev_dir(state: &Path) -> PathBuf {
    state.join("seed-prev")
}

fn record_path(state: &Path) -> PathBuf {
    prev_dir(state).join("record.json")
}

/// Whether this node's server was seeded by the agent (and not undone).
pub(super) fn is_seeded(state: &Path) -> Result<bool> {
    Ok(read_record(state)?.is_some())
}

fn read_record(state: &Path) -> Result<Option<SeedRecord>> {
    let p = record_path(state);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| {
            format!(
                "the seed record {} is damaged; fix or remove it",
                p.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Renames `src` to `dst`, or (on another file system) beside itself with `suffix`; never
/// copies, never follows a symbolic link (a link is renamed as a link). Returns where it went.
fn move_aside(src: &Path, dst: &Path, suffix: &str) -> Result<PathBuf> {
    match std::fs::rename(src, dst) {
        Ok(()) => Ok(dst.to_path_buf()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let mut name = src.as_os_str().to_owned();
            name.push(suffix);
            let beside = PathBuf::from(name);
            std::fs::rename(src, &beside).with_context(|| {
                format!("moving {} aside to {}", src.display(), beside.display())
            })?;
            Ok(beside)
        }
        Err(e) => {
            Err(e).with_context(|| format!("moving {} aside to {}", src.display(), dst.display()))
        }
    }
}

/// Changes the owner of everything under `dir` (and `dir`) without following symbolic links.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    if lines.is_empty() {
        "(it printed nothing)".into()
    } else {
        lines[start..].join("\n")
    }
}

fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear();
    for key in ["PATH", "LANG", "LC_ALL", "TZ", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd
}

/// Runs a start or stop command (argv from the agent's settings) with its output appended to
/// `log`, not piped: a daemon that inherits a pipe would keep the agent waiting.
async fn run_service(what: &str, argv: &[String], log: &Path, timeout: Duration) -> Result<()> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("database.{what} is empty"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = clean_command(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("could not run database.{what} ({})", argv.join(" ")))?;
    let status =
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                bail!(
            "database.{what} ({}) did not return within {} s; it must return once the server \
             is {}; its output is in {}",
            argv.join(" "),
            timeout.as_secs(),
            if what == "start" { "started" } else { "stopped" },
            log.display()
        )
            }
        };
    if !status.success() {
        bail!(
            "database.{what} ({}) failed ({status}):\n{}",
            argv.join(" "),
            tail_of(log)
        );
    }
    Ok(())
}

/// `STOP SLAVE; RESET SLAVE ALL` on a running seeded server: it forgets its source, whose
/// password MariaDB keeps in master.info, and its relay logs.
async fn forget_source(cfg: &DatabaseConfig) {
    let sql = "STOP SLAVE;\nRESET SLAVE ALL;\n";
    if let Err(e) = run_sql(cfg, &[], sql, Duration::from_secs(30)).await {
        tracing::warn!("RESET SLAVE ALL on the seeded server failed: {e}");
    }
}

/// Removes the replication source files (master.info holds the replication password) from a
/// seeded data directory that was put aside; its data stays.
fn scrub_source(dir: &Path) -> Result<()> {
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    for f in ["master.info", "relay-log.info"] {
        let p = dir.join(f);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Stops the server (when it answers) and waits until it no longer does.
async fn stop_server(cfg: &DatabaseConfig, log: &Path) -> Result<()> {
    if probe(cfg).await.role == Some(Role::Down) {
        return Ok(());
    }
    run_service("stop", &cfg.stop, log, Duration::from_secs(600)).await?;
    let (down, _) = wait_for(cfg, Duration::from_secs(60), |s| s.role == Some(Role::Down)).await;
    if !down {
        bail!(
            "the MariaDB server still answers on {} after database.stop; stop it and retry",
            cfg.socket.display()
        );
    }
    Ok(())
}

/// Starts the server and waits (30 s) until it answers.
async fn start_server(cfg: &DatabaseConfig, log: &Path) -> Result<()> {
    run_service("start", &cfg.start, log, Duration::from_secs(120)).await?;
    let (up, _) = wait_for(cfg, READY_WAIT, |s| s.role != Some(Role::Down)).await;
    if !up {
        bail!(
            "the MariaDB server did not answer on {} within {} s of database.start; see its \
             error log (and {})",
            cfg.socket.display(),
            READY_WAIT.as_secs(),
            log.display()
        );
    }
    Ok(())
}

/// Extracts an xbstream into `dir` with `mbstream -x`, fed from `stream`.
async fn extract(
    stream: &mut (impl AsyncRead + Unpin + Send),
    dir: &Path,
    log: &Path,
) -> Result<()> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = clean_command("mbstream")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .context("could not start mbstream; install the mariadb-backup package")?;
    let mut stdin = child.stdin.take().context("mbstream's stdin")?;
    let copied = tokio::io::copy(stream, &mut stdin).await;
    let _ = stdin.shutdown().await;
    drop(stdin);
    let status = child.wait().await.context("waiting for mbstream")?;
    if !status.success() {
        bail!(
            "mbstream could not extract the backup stream ({status}):\n{}",
            tail_of(log)
        );
    }
    let bytes = copied.context("the backup stream broke off while it was being extracted")?;
    let info = ["xtrabackup_checkpoints", "mariadb_backup_checkpoints"];
    if !info.iter().any(|f| dir.join(f).exists()) {
        bail!("the backup stream ({bytes} bytes) is not a whole mariabackup backup: no checkpoints file in it");
    }
    Ok(())
}

fn read_backup_gtid(staging: &Path) -> Result<String> {
    for name in ["xtrabackup_binlog_info", "mariadb_backup_binlog_info"] {
        if let Ok(text) = std::fs::read_to_string(staging.join(name)) {
            return parse::backup_gtid(&text).ok_or_else(|| {
                anyhow!(
                    "the backup's {name} names no GTID ({:?}); is log_bin on at the primary?",
                    text.trim()
                )
            });
        }
    }
    bail!(
        "the backup has no xtrabackup_binlog_info: the primary writes no binary log (set log_bin)"
    )
}

pub(super) async fn seed(
    cfg: &DatabaseConfig,
    home: &AgentHome,
    plan: &ReplicaPlan,
    mut stream: impl AsyncRead + Unpin + Send,
) -> Result<()> {
    let server_id = plan
        .server_id
        .context("the replica plan has no server_id (MariaDB needs one per server)")?;
    let _one = SEED_LOCK.lock().await;
    let state = state_dir(home)?;
    let staging = state.join("seed-staging");
    if exists(&staging) {
        // A staging area left by an interrupted seed holds only a copy of the backup.
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the old staging area {}", staging.display()))?;
    }
    std::fs::create_dir(&staging)
        .with_context(|| format!("creating the staging area {}", staging.display()))?;
    let result = seed_with_staging(cfg, &state, &staging, plan, server_id, &mut stream).await;
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        tracing::warn!(
            "could not remove the staging area {}: {e}",
            staging.display()
        );
    }
    result
}

async fn seed_with_staging(
    cfg: &DatabaseConfig,
    state: &Path,
    staging: &Path,
    plan: &ReplicaPlan,
    server_id: u32,
    stream: &mut (impl AsyncRead + Unpin + Send),
) -> Result<()> {
    let t0 = std::time::Instant::now();
    extract(stream, staging, &state.join("seed-mbstream.log")).await?;
    Tool::new("mariabackup")
        .arg("--prepare")
        .arg(OsString::from(format!(
            "--target-dir={}",
            staging.display()
        )))
        .current_dir(state)
        .timeout(LONG)
        .run()
        .await
        .context("mariabackup --prepare of the received backup failed")?;
    let gtid = read_backup_gtid(staging)?;
    let prepared = t0.elapsed();
    tracing::info!(
        "backup received and prepared in {:?}; at GTID {gtid}",
        t0.elapsed()
    );

    let user = nix::unistd::User::from_name(&cfg.os_user)
        .ok()
        .flatten()
        .with_context(|| format!("database.os_user {:?} is not an account here", cfg.os_user))?;
    if std::fs::symlink_metadata(&cfg.datadir).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "the data directory {} is a symbolic link; set database.datadir to the directory it \
             points to",
            cfg.datadir.display()
        );
    }

    let log = state.join("service.log");
    let was_running = probe(cfg).await.role != Some(Role::Down);
    let record = read_record(state)?;
    if was_running && record.is_some() {
        // The server being replaced was seeded: it forgets its source (and password) first.
        forget_source(cfg).await;
    }
    stop_server(cfg, &log).await?;
    let stopped = t0.elapsed();

    // Put what is there now aside, and write down where it went.
    let prev = prev_dir(state);
    let ts = now();
    match record {
        Some(_) => {
            // A seed that was not undone: the record keeps the state from before the first
            // one; this seed's predecessor (a seeded directory) is kept aside too.
            if exists(&cfg.datadir) {
                let to = move_aside(
                    &cfg.datadir,
                    &state.join(format!("seed-replaced-{ts}")),
                    &format!(".vmoodle-seed-replaced-{ts}"),
                )?;
                scrub_source(&to)?;
                tracing::info!(
                    "the previously seeded data directory is now {}",
                    to.display()
                );
            }
        }
        None => {
            std::fs::create_dir_all(&prev)
                .with_context(|| format!("creating {}", prev.display()))?;
            let managed_prev = if exists(&cfg.managed_config) {
                let keep = prev.join("managed_config");
                std::fs::copy(&cfg.managed_config, &keep).with_context(|| {
                    format!("keeping a copy of {}", cfg.managed_config.display())
                })?;
                Some(keep)
            } else {
                None
            };
            let moved_to = if exists(&cfg.datadir) {
                Some(move_aside(
                    &cfg.datadir,
                    &prev.join("datadir"),
                    &format!(".vmoodle-seed-prev-{ts}"),
                )?)
            } else {
                None
            };
            let rec = SeedRecord {
                datadir: cfg.datadir.clone(),
                moved_to,
                managed_config: cfg.managed_config.clone(),
                managed_prev,
                was_running,
                at: ts,
            };
            crate::fsutil::write_atomic(
                &record_path(state),
                serde_json::to_string_pretty(&rec)?.as_bytes(),
                0o600,
            )?;
        }
    }
    let undo_hint = "the previous data directory is kept; undo the seed to put it back";

    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(&cfg.datadir)
            .with_context(|| {
                format!(
                    "creating the empty data directory {}",
                    cfg.datadir.display()
                )
            })?;
    }
    let mut copy_back = Tool::new("mariabackup");
    if let Some(f) = &cfg.defaults_file {
        copy_back = copy_back.arg(OsString::from(format!("--defaults-file={}", f.display())));
    }
    copy_back
        .arg("--copy-back")
        .arg(OsString::from(format!(
            "--target-dir={}",
            staging.display()
        )))
        .arg(OsString::from(format!(
            "--datadir={}",
            cfg.datadir.display()
        )))
        .current_dir(state)
        .timeout(LONG)
        .run()
        .await
        .with_context(|| format!("mariabackup --copy-back failed ({undo_hint})"))?;
    let (dir, uid, gid) = (cfg.datadir.clone(), user.uid.as_raw(), user.gid.as_raw());
    tokio::task::spawn_blocking(move || chown_tree(&dir, uid, gid))
        .await?
        .with_context(|| format!("giving {} to {}", cfg.datadir.display(), cfg.os_user))?;
    crate::fsutil::write_atomic(
        &cfg.managed_config,
        parse::replica_config(server_id).as_bytes(),
        0o644,
    )?;
    let copied = t0.elapsed();
    start_server(cfg, &log)
        .await
        .with_context(|| format!("starting the seeded server ({undo_hint})"))?;
    let started = t0.elapsed();

    let sql = parse::replication_sql(
        &gtid,
        &plan.primary_host,
        plan.primary_port,
        &plan.repl_user,
        plan.repl_password.expose(),
    );
    sql_step(
        cfg,
        "pointing the replica at its primary",
        &sql,
        Duration::from_secs(30),
    )
    .await?;
    // Wait until both threads run; an error that stays for FAIL_AFTER (access denied, host
    // unreachable) ends the wait early.
    let since = std::time::Instant::now();
    let (_, st) = wait_for(cfg, READY_WAIT, |s| {
        (s.io_running == Some(true) && s.sql_running == Some(true))
            || (s.error.is_some() && since.elapsed() >= FAIL_AFTER)
    })
    .await;
    if !(st.io_running == Some(true) && st.sql_running == Some(true)) {
        bail!(
            "replication from {}:{} did not start (waited {:.1} s; io running: {:?}, sql running: \
             {:?}): {}\nhint: check that the primary is reachable from here and that {} may \
             replicate from this host with that password ({undo_hint})",
            plan.primary_host,
            plan.primary_port,
            since.elapsed().as_secs_f64(),
            st.io_running,
            st.sql_running,
            st.error.as_deref().unwrap_or("no error reported"),
            plan.repl_user
        );
    }
    tracing::info!(
        "replica seeded and replicating in {:?} (received and prepared at {prepared:?}, server \
         stopped at {stopped:?}, copied back at {copied:?}, started at {started:?})",
        t0.elapsed()
    );
    Ok(())
}

pub(super) async fn undo_seed(cfg: &DatabaseConfig, home: &AgentHome) -> Result<()> {
    let _one = SEED_LOCK.lock().await;
    let state = state_dir(home)?;
    let Some(rec) = read_record(&state)? else {
        return Ok(());
    };
    let log = state.join("service.log");
    if probe(cfg).await.role != Some(Role::Down) {
        // Forget the replication source (and its password, kept in master.info) first.
        forget_source(cfg).await;
    }
    stop_server(cfg, &log).await?;

    let ts = now();
    let prev_waiting = rec.moved_to.as_ref().map(|m| exists(m));
    if prev_waiting != Some(false) {
        if exists(&rec.datadir) {
            let to = move_aside(
                &rec.datadir,
                &state.join(format!("seed-undone-{ts}")),
                &format!(".vmoodle-seed-undone-{ts}"),
            )?;
            scrub_source(&to)?;
            tracing::info!("the seeded data directory is now {}", to.display());
        }
        if let Some(m) = &rec.moved_to {
            std::fs::rename(m, &rec.datadir).with_context(|| {
                format!(
                    "putting the previous data directory {} back to {}",
                    m.display(),
                    rec.datadir.display()
                )
            })?;
        }
    }
    match &rec.managed_prev {
        Some(p) if exists(p) => std::fs::rename(p, &rec.managed_config).with_context(|| {
            format!("putting back the previous {}", rec.managed_config.display())
        })?,
        Some(_) => {}
        None => {
            if exists(&rec.managed_config) {
                std::fs::remove_file(&rec.managed_config)
                    .with_context(|| format!("removing {}", rec.managed_config.display()))?;
            }
        }
    }
    if rec.was_running {
        start_server(cfg, &log)
            .await
            .context("starting the server on its previous data directory")?;
    }
    std::fs::remove_file(record_path(&state)).context("removing the seed record")?;
    let _ = std::fs::remove_dir(prev_dir(&state));
    Ok(())
}
