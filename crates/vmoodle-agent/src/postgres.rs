//! PostgreSQL on a database node: the probe behind the health checks, the facts `cluster create`
//! checks, and the seeding of a standby with pg_basebackup run here against the primary.
//!
//! The agent runs as root; every PostgreSQL tool runs as `database.os_user`, psql through the
//! socket directory (`-h socket -p port -U postgres`, peer authentication). The replication
//! password only ever goes into a 0600 password file owned by the OS user, beside the data
//! directory (`<datadir>.replication.pgpass`), which the standby's `primary_conninfo` names.
//!
//! `seed` keeps what it replaces in `state/seed-prev/` (`postgres.json` says where the previous
//! data directory went, whether the server ran, and the managed configuration's previous text) so
//! that `undo_seed` can put it all back. Nothing is deleted: replaced data directories are moved
//! aside (renamed; beside the data directory when the agent's state is on another file system).

mod conf;
mod files;
pub mod switch;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmoodle_exec::Tool;

use crate::config::{AgentHome, DatabaseConfig, Engine};
use crate::protocol::{DbState, ReplicaPlan, Role, ServerFacts};
use conf::SEP;
pub use conf::{conninfo_parse, conninfo_render, passfile_line};
use files::{move_aside, Prev};

/// How long the agent waits for the standby to answer and then to stream.
const STREAM_WAIT: Duration = Duration::from_secs(30);
/// How long a base backup may take.
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How long start and stop commands may take.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(300);

/// The settings `facts` reports.
const FACT_SETTINGS: &[&str] = &[
    "wal_level",
    "max_wal_senders",
    "max_replication_slots",
    "wal_log_hints",
    "data_checksums",
    "listen_addresses",
    "port",
    "hot_standby",
    "wal_keep_size",
];

/// The uid and gid of the server's OS account.
fn os_user(cfg: &DatabaseConfig) -> Result<(u32, u32)> {
    let u = nix::unistd::User::from_name(&cfg.os_user)
        .with_context(|| format!("looking up the OS user {:?}", cfg.os_user))?
        .with_context(|| {
            format!(
                "the OS user {:?} (database.os_user) does not exist: name the account PostgreSQL runs as",
                cfg.os_user
            )
        })?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

fn tool(cfg: &DatabaseConfig, name: &str) -> Result<Tool> {
    let dir = cfg.bindir.as_deref().context(
        "database.bindir is not set: name PostgreSQL's bin directory (e.g. /usr/lib/postgresql/15/bin)",
    )?;
    let (uid, gid) = os_user(cfg)?;
    // A directory every account can enter, so tools that change back to their cwd do not fail.
    Ok(Tool::new(dir.join(name)).user(uid, gid).current_dir("/"))
}

/// Runs one SQL text through psql as `postgres` over the socket; the rows, fields separated by
/// [`SEP`].
async fn psql(cfg: &DatabaseConfig, sql: &str, timeout: Duration) -> Result<String> {
    let out = tool(cfg, "psql")?
        .arg("-h")
        .arg(&cfg.socket)
        .args([
            "-p",
            &cfg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-F", &SEP.to_string()])
        .args(["-c", sql])
        .timeout(timeout)
        .run()
        .await
        .with_context(|| {
            format!(
                "psql on the local server (socket {}, port {})",
                cfg.socket.display(),
                cfg.port
            )
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Probes the local server once (pg_is_in_recovery, pg_stat_wal_receiver, replay LSN and lag). A server that
/// does not answer gives `role: Some(Role::Down)`.
pub async fn probe(cfg: &DatabaseConfig) -> DbState {
    let down = |error: String| DbState {
        role: Some(Role::Down),
        error: Some(error),
        probed_at: vmoodle_core::now_unix(),
        ..DbState::default()
    };
    match psql(cfg, conf::PROBE_SQL, Duration::from_secs(2)).await {
        Ok(out) => conf::parse_probe(&out)
            .unwrap_or_else(|| down(format!("unexpected answer to the probe: {out:?}"))),
        Err(e) => down(format!("{e:#}")),
    }
}

/// What `cluster create` checks: version, the replication settings, pg_hba's replication lines,
/// the data's size and the free space beside it. A server that does not answer gives `up: false`
/// with only the sizes.
pub async fn facts(cfg: &DatabaseConfig) -> Result<ServerFacts> {
    let names = FACT_SETTINGS
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT 's', name, setting FROM pg_settings WHERE name IN ({names}) \
         UNION ALL SELECT 's', 'server_version', current_setting('server_version') \
         UNION ALL SELECT 'h', concat_ws(' ', type, array_to_string(database, ','), \
           array_to_string(user_name, ','), address, netmask, auth_method), '' \
           FROM pg_hba_file_rules WHERE 'replication' = ANY(database) AND error IS NULL"
    );
    let answer = psql(cfg, &sql, Duration::from_secs(10)).await;
    let datadir = cfg.datadir.clone();
    let (data_bytes, free_bytes) = tokio::task::spawn_blocking(move || {
        let used = files::tree_bytes(&datadir)?;
        let st = nix::sys::statvfs::statvfs(&datadir)
            .with_context(|| format!("statvfs {}", datadir.display()))?;
        anyhow::Ok((
            used,
            st.blocks_available() as u64 * st.fragment_size() as u64,
        ))
    })
    .await??;
    let mut settings = BTreeMap::new();
    let mut hba_replication = Vec::new();
    let up = answer.is_ok();
    if let Ok(out) = answer {
        for line in out.lines() {
            let f: Vec<&str> = line.split(SEP).collect();
            match f.as_slice() {
                ["s", k, v] => {
                    settings.insert(k.to_string(), v.to_string());
                }
                ["h", rule, _] => hba_replication.push(rule.to_string()),
                _ => {}
            }
        }
    }
    Ok(ServerFacts {
        engine: Engine::Postgresql,
        version: settings.remove("server_version").unwrap_or_default(),
        settings,
        hba_replication,
        data_bytes,
        free_bytes,
        up,
    })
}

/// Runs one of the configured service commands (start, stop) as given (as root).
async fn service(argv: &[String], what: &str) -> Result<()> {
    let (prog, args) = argv
        .split_first()
        .with_context(|| format!("database.{what} is empty"))?;
    Tool::new(prog)
        .args(args)
        .timeout(SERVICE_TIMEOUT)
        .run()
        .await
        .with_context(|| format!("database.{what} ({})", argv.join(" ")))?;
    Ok(())
}

/// Whether the server runs: it answers, or its data directory holds a postmaster.pid.
async fn running(cfg: &DatabaseConfig) -> bool {
    probe(cfg).await.role != Some(Role::Down) || cfg.datadir.join("postmaster.pid").exists()
}

async fn stop(cfg: &DatabaseConfig) -> Result<()> {
    service(&cfg.stop, "stop").await?;
    let until = Instant::now() + SERVICE_TIMEOUT;
    while cfg.datadir.join("postmaster.pid").exists() {
        if Instant::now() > until {
            bail!(
                "database.stop returned but {} still has a postmaster.pid: stop PostgreSQL by hand",
                cfg.datadir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Starts the server and waits until it answers.
async fn start(cfg: &DatabaseConfig) -> Result<DbState> {
    service(&cfg.start, "start")
        .await
        .map_err(|e| e.context(files::log_tail(cfg)))?;
    let until = Instant::now() + STREAM_WAIT;
    loop {
        let st = probe(cfg).await;
        if st.role != Some(Role::Down) {
            return Ok(st);
        }
        if Instant::now() > until {
            bail!(
                "PostgreSQL was started but did not answer within {} s ({}).\n{}",
                STREAM_WAIT.as_secs(),
                st.error.unwrap_or_default(),
                files::log_tail(cfg)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the agent seeded this node's server (its previous data is kept for an undo).
pub fn is_seeded(home: &AgentHome) -> Result<bool> {
    Ok(Prev::load(home)?.is_some())
}

/// The standby's password file: beside the data directory, where the OS user can read it.
pub fn passfile_path(cfg: &DatabaseConfig) -> PathBuf {
    let name = cfg
        .datadir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    cfg.datadir
        .with_file_name(format!(".{name}.replication.pgpass"))
}

/// Seeds this node with `pg_basebackup -X stream -R -C -S SLOT` from the primary and starts it
/// as a standby.
///
/// Steps: stop the server; move its data directory aside (recorded for `undo_seed`); write the
/// password file (0600, the OS user's); run pg_basebackup as the OS user; put the node's own
/// postgresql.conf, pg_hba.conf, pg_ident.conf and postgresql.auto.conf back when they lived in
/// the data directory (the backup brought the primary's); write `primary_conninfo` (with
/// `application_name`, the permanent password file), `primary_slot_name` and `hot_standby = on`
/// into the managed configuration, which the server's configuration must include; start; wait
/// until the WAL receiver streams (30 s), else fail with the server log's tail.
pub async fn seed(cfg: &DatabaseConfig, home: &AgentHome, plan: &ReplicaPlan) -> Result<()> {
    if let Some(slot) = &plan.slot {
        if !conf::valid_slot(slot) {
            bail!("the replication slot name {slot:?} is not valid: use lower-case letters, digits and _ (at most 63)");
        }
    }
    if plan.repl_user.is_empty() || plan.primary_host.is_empty() {
        bail!("the replica plan names no primary host or replication user");
    }
    let (uid, gid) = os_user(cfg)?;
    let was_running = running(cfg).await;
    if was_running {
        stop(cfg)
            .await
            .context("stopping the local PostgreSQL before seeding it")?;
    }

    // Move the data directory aside and record it (an unfinished earlier seed keeps its record:
    // undo must return to the data from before the first one).
    let mut prev = match Prev::load(home)? {
        Some(p) => p,
        None => Prev {
            datadir: cfg.datadir.clone(),
            moved_to: None,
            was_running,
            managed_config: files::read_opt(&cfg.managed_config)?,
            at: vmoodle_core::now_unix(),
        },
    };
    if std::fs::symlink_metadata(&cfg.datadir).is_ok() {
        let to = move_aside(home, &cfg.datadir, "prev")?;
        if prev.moved_to.is_none() {
            prev.moved_to = Some(to);
        }
    }
    prev.save(home)?;
    files::make_datadir(&cfg.datadir, uid, gid)?;

    let passfile = passfile_path(cfg);
    let line = passfile_line(
        &plan.primary_host,
        plan.primary_port,
        &plan.repl_user,
        plan.repl_password.expose(),
    );
    files::write_private(&passfile, line.as_bytes(), uid, gid)?;

    let started = Instant::now();
    let mut bb = tool(cfg, "pg_basebackup")?
        .args([
            "-h",
            &plan.primary_host,
            "-p",
            &plan.primary_port.to_string(),
        ])
        .args(["-U", &plan.repl_user, "-D"])
        .arg(&cfg.datadir)
        .args(["-X", "stream", "-R", "-c", "fast", "-w"])
        .env("PGPASSFILE", &passfile)
        .timeout(BASEBACKUP_TIMEOUT);
    if let Some(slot) = &plan.slot {
        bb = bb.args(["-C", "-S", slot]);
    }
    bb.run().await.with_context(|| {
        format!(
            "pg_basebackup from {}:{} as {} failed; check that the primary allows replication \
             connections from this node for that user (pg_hba.conf), the password, and that \
             the slot does not exist yet. `undo` puts the previous data directory back",
            plan.primary_host, plan.primary_port, plan.repl_user
        )
    })?;
    tracing::info!(secs = started.elapsed().as_secs_f64(), "pg_basebackup done");

    // The node's own configuration files, when they lived in its data directory.
    let auto = cfg.datadir.join("postgresql.auto.conf");
    let backup_auto = files::read_opt(&auto)?.unwrap_or_default();
    if let Some(old) = &prev.moved_to {
        for f in [
            "postgresql.conf",
            "pg_hba.conf",
            "pg_ident.conf",
            "postgresql.auto.conf",
        ] {
            let src = old.join(f);
            if std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                let text = std::fs::read(&src)
                    .with_context(|| format!("reading the node's previous {}", src.display()))?;
                files::write_private(&cfg.datadir.join(f), &text, uid, gid)?;
            }
        }
    }
    // The replication settings go into the managed configuration only.
    let conninfo = standby_conninfo(&backup_auto, plan, &passfile);
    let node_auto = files::read_opt(&auto)?.unwrap_or_default();
    let stripped = conf::conf_without(&node_auto, &["primary_conninfo", "primary_slot_name"]);
    files::write_private(&auto, stripped.as_bytes(), uid, gid)?;
    files::write_private(&cfg.datadir.join("standby.signal"), b"", uid, gid)?;
    files::write_private(
        &cfg.managed_config,
        standby_managed(plan, &conninfo).as_bytes(),
        uid,
        gid,
    )?;

    start(cfg).await.context("starting the seeded standby")?;
    wait_streaming(cfg).await
}

/// The managed configuration of a standby of the plan's primary.
fn standby_managed(plan: &ReplicaPlan, conninfo: &str) -> String {
    let mut managed = format!(
        "# Written by vmoodle-agent: this server is a standby of {}:{}.\n\
         primary_conninfo = {}\nhot_standby = on\n",
        plan.primary_host,
        plan.primary_port,
        conf::conf_quote(conninfo)
    );
    if let Some(slot) = &plan.slot {
        managed.push_str(&format!("primary_slot_name = {}\n", conf::conf_quote(slot)));
    }
    managed
}

/// `primary_conninfo` for the standby: what `pg_basebackup -R` wrote (its TLS and other
/// choices), with the permanent password file and the application name; built from the plan
/// when -R wrote nothing readable.
fn standby_conninfo(backup_auto: &str, plan: &ReplicaPlan, passfile: &Path) -> String {
    let mut pairs = conf::conf_get(backup_auto, "primary_conninfo")
        .and_then(|c| conninfo_parse(&c))
        .unwrap_or_default();
    for (k, v) in [
        ("user", plan.repl_user.clone()),
        ("passfile", passfile.display().to_string()),
        ("host", plan.primary_host.clone()),
        ("port", plan.primary_port.to_string()),
        ("application_name", plan.application_name.clone()),
    ] {
        conf::conninfo_set(&mut pairs, k, &v);
    }
    pairs.retain(|(k, _)| k != "password");
    conninfo_render(&pairs)
}

async fn wait_streaming(cfg: &DatabaseConfig) -> Result<()> {
    let until = Instant::now() + STREAM_WAIT;
    loop {
        let st = probe(cfg).await;
        if st.io_running == Some(true) {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "the standby started but its WAL receiver did not stream within {} s (role {}, \
                 {}). Check primary_conninfo in {} and the primary's pg_hba.conf.\n{}",
                STREAM_WAIT.as_secs(),
                st.role.map(Role::as_str).unwrap_or("unknown"),
                st.error.as_deref().unwrap_or("no error"),
                cfg.managed_config.display(),
                files::log_tail(cfg)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the server and puts back the data directory and managed configuration it had before
/// the last seed (nothing to do when there was none). Idempotent: a second call, or one after
/// an interrupted undo, finishes what is left.
///
/// The replication slot the seed created on the primary stays there: dropping it
/// (`pg_drop_replication_slot`) is the control node's job, since only the primary can.
pub async fn undo_seed(cfg: &DatabaseConfig, home: &AgentHome) -> Result<()> {
    let Some(prev) = Prev::load(home)? else {
        return Ok(());
    };
    if prev.datadir != cfg.datadir {
        bail!(
            "the recorded seed was of {} but database.datadir is {}: put the previous data \
             back by hand (see {})",
            prev.datadir.display(),
            cfg.datadir.display(),
            Prev::path(home).display()
        );
    }
    if running(cfg).await {
        stop(cfg)
            .await
            .context("stopping the seeded standby before undoing the seed")?;
    }
    if let Some(old) = &prev.moved_to {
        if std::fs::symlink_metadata(old).is_ok() {
            if std::fs::symlink_metadata(&cfg.datadir).is_ok() {
                move_aside(home, &cfg.datadir, "seeded")?;
            }
            std::fs::rename(old, &cfg.datadir).with_context(|| {
                format!(
                    "putting the previous data directory {} back to {}",
                    old.display(),
                    cfg.datadir.display()
                )
            })?;
        } else if std::fs::symlink_metadata(&cfg.datadir).is_err() {
            bail!(
                "the previous data directory {} is gone and {} is empty: nothing to put back",
                old.display(),
                cfg.datadir.display()
            );
        }
    } else if std::fs::symlink_metadata(&cfg.datadir).is_ok() {
        // There was no data directory before the seed: the seeded one goes aside.
        move_aside(home, &cfg.datadir, "seeded")?;
    }
    match &prev.managed_config {
        Some(text) => {
            let (uid, gid) = os_user(cfg)?;
            files::write_private(&cfg.managed_config, text.as_bytes(), uid, gid)?;
        }
        None => files::remove_if_exists(&cfg.managed_config)?,
    }
    files::remove_if_exists(&passfile_path(cfg))?;
    if prev.was_running {
        start(cfg)
            .await
            .context("starting the server on its previous data directory")?;
    }
    Prev::clear(home)
}
