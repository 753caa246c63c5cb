//! PostgreSQL's part of a switchover, the way Patroni does a planned one: the old primary is
//! shut down cleanly (its WAL senders stream everything, the shutdown checkpoint included, to
//! the standbys before it exits) and the candidate is promoted only once it has replayed past
//! that checkpoint. Then the old primary's WAL ends where the new timeline begins, so it starts
//! as a standby of the new primary without pg_rewind; the other standbys get the new
//! `primary_conninfo` by a reload and follow the new timeline (`recovery_target_timeline =
//! latest`, the default).

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};

use super::{
    conf, files, os_user, passfile_line, passfile_path, psql, running, standby_conninfo,
    standby_managed, start, stop, tool,
};
use crate::config::{AgentHome, DatabaseConfig};
use crate::protocol::{FollowPlan, Role};

/// An LSN as PostgreSQL writes it (`0/3000280`).
pub fn valid_lsn(s: &str) -> bool {
    s.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() <= 8
            && b.len() <= 8
            && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_hexdigit())
    })
}

/// The state and latest checkpoint of `pg_controldata` (run with LC_ALL=C).
pub fn parse_controldata(text: &str) -> (Option<String>, Option<String>) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    (
        get("Database cluster state:"),
        get("Latest checkpoint location:"),
    )
}

/// Shuts the server down cleanly and answers its shutdown checkpoint's LSN.
pub async fn fence(cfg: &DatabaseConfig) -> Result<String> {
    if running(cfg).await {
        stop(cfg).await.context("stopping the old primary")?;
    }
    let out = tool(cfg, "pg_controldata")?
        .arg("-D")
        .arg(&cfg.datadir)
        .env("LC_ALL", "C")
        .timeout(Duration::from_secs(30))
        .run()
        .await
        .context("pg_controldata of the stopped server")?;
    let (state, lsn) = parse_controldata(&String::from_utf8_lossy(&out.stdout));
    if state.as_deref() != Some("shut down") {
        bail!(
            "the server did not shut down cleanly (pg_controldata says {:?}): its standbys may miss its last WAL; start it again and retry",
            state.unwrap_or_default()
        );
    }
    match lsn {
        Some(l) if valid_lsn(&l) => Ok(l),
        other => bail!("pg_controldata gave no checkpoint location ({other:?})"),
    }
}

/// Starts the fenced server again (a switchover that did not happen).
pub async fn unfence(cfg: &DatabaseConfig) -> Result<()> {
    if !running(cfg).await {
        start(cfg).await?;
    }
    Ok(())
}

/// Waits until this standby has replayed past `lsn` (the old primary's shutdown checkpoint).
pub async fn catch_up(cfg: &DatabaseConfig, lsn: &str, timeout_secs: u32) -> Result<()> {
    if !valid_lsn(lsn) {
        bail!("{lsn:?} is not an LSN (like 0/3000280)");
    }
    let sql = format!("SELECT pg_last_wal_replay_lsn() > '{lsn}'::pg_lsn");
    let until = Instant::now() + Duration::from_secs(u64::from(timeout_secs));
    loop {
        if psql(cfg, &sql, Duration::from_secs(5)).await?.trim() == "t" {
            return Ok(());
        }
        if Instant::now() > until {
            let st = super::probe(cfg).await;
            bail!(
                "the standby did not replay past {lsn} within {timeout_secs} s (it is at {}, streaming {:?})",
                st.position.as_deref().unwrap_or("?"),
                st.io_running
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Promotes this standby (nothing to do on a primary), creates the slots its standbys will
/// use, and gives a node that was not seeded its own managed configuration back.
pub async fn promote(
    cfg: &DatabaseConfig,
    home: &AgentHome,
    seeded: bool,
    slots: &[String],
) -> Result<()> {
    if let Some(bad) = slots.iter().find(|s| !conf::valid_slot(s)) {
        bail!("the replication slot name {bad:?} is not valid");
    }
    if psql(cfg, "SELECT pg_is_in_recovery()", Duration::from_secs(5))
        .await?
        .trim()
        == "t"
    {
        let r = psql(cfg, "SELECT pg_promote(true, 60)", Duration::from_secs(70)).await?;
        if r.trim() != "t" {
            bail!("pg_promote did not finish within 60 s");
        }
    }
    for s in slots {
        psql(
            cfg,
            &format!(
                "SELECT pg_create_physical_replication_slot('{s}') WHERE NOT EXISTS \
                 (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{s}')"
            ),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("creating replication slot {s}"))?;
    }
    if !seeded {
        let (uid, gid) = os_user(cfg)?;
        let write = |b: &[u8]| files::write_private(&cfg.managed_config, b, uid, gid);
        if crate::switch::restore_managed(home, &cfg.managed_config, write)? {
            psql(cfg, "SELECT pg_reload_conf()", Duration::from_secs(5)).await?;
        }
    }
    Ok(())
}

/// Makes this server a standby of the plan's primary: a running standby by a reload, the
/// fenced (stopped) old primary by a start with `standby.signal`.
pub async fn follow(
    cfg: &DatabaseConfig,
    home: &AgentHome,
    seeded: bool,
    f: &FollowPlan,
) -> Result<()> {
    let p = &f.plan;
    if let Some(s) = &p.slot {
        if !conf::valid_slot(s) {
            bail!("the replication slot name {s:?} is not valid");
        }
    }
    let (uid, gid) = os_user(cfg)?;
    let st = super::probe(cfg).await;
    let up = st.role != Some(Role::Down);
    if up && st.read_only != Some(true) {
        bail!("this server is a running primary: fence it before it follows another server");
    }
    if !up && running(cfg).await {
        bail!("the server runs but does not answer: cannot tell what it is");
    }
    if !seeded {
        crate::switch::keep_managed(home, &cfg.managed_config)?;
    }
    let passfile = passfile_path(cfg);
    let line = passfile_line(
        &p.primary_host,
        p.primary_port,
        &p.repl_user,
        p.repl_password.expose(),
    );
    files::write_private(&passfile, line.as_bytes(), uid, gid)?;
    let conninfo = standby_conninfo("", p, &passfile);
    files::write_private(
        &cfg.managed_config,
        standby_managed(p, &conninfo).as_bytes(),
        uid,
        gid,
    )?;
    if up {
        psql(cfg, "SELECT pg_reload_conf()", Duration::from_secs(5)).await?;
    } else {
        files::write_private(&cfg.datadir.join("standby.signal"), b"", uid, gid)?;
        start(cfg)
            .await
            .context("starting the old primary as a standby")?;
    }
    // Streaming from the new primary.
    let want = format!("{}:{}", p.primary_host, p.primary_port);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let st = super::probe(cfg).await;
        if st.io_running == Some(true) && st.source.as_deref() == Some(want.as_str()) {
            break;
        }
        if Instant::now() > until {
            bail!(
                "the server does not stream from {want} after 30 s (role {}, source {:?}).\n{}",
                st.role.map(Role::as_str).unwrap_or("unknown"),
                st.source,
                files::log_tail(cfg)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in f.drop_slots.iter().filter(|s| conf::valid_slot(s)) {
        if let Err(e) = psql(
            cfg,
            &format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{s}' AND NOT active"),
            Duration::from_secs(10),
        )
        .await
        {
            tracing::warn!("dropping the old slot {s}: {e:#}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_controldata() {
        assert!(valid_lsn("0/3000280"));
        assert!(valid_lsn("1A/FF"));
        assert!(!valid_lsn("0/30'; --"));
        assert!(!valid_lsn("0"));
        let text = "pg_control version number:            1300\n\
Database cluster state:               shut down\n\
Latest checkpoint location:           0/3000280\n\
Latest checkpoint's REDO location:    0/3000280\n";
        let (state, lsn) = parse_controldata(text);
        assert_eq!(state.as_deref(), Some("shut down"));
        assert_eq!(lsn.as_deref(), Some("0/3000280"));
    }
}
