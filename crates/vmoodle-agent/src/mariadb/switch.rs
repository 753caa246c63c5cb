//! MariaDB's part of a switchover (verified in ../shared/cluster-lab.md): the old primary goes
//! read-only and its client sessions are closed; the candidate waits for the old primary's
//! `gtid_binlog_pos` (MASTER_GTID_WAIT), forgets its source and takes writes; every other server
//! replicates from the new primary by GTID (`MASTER_USE_GTID=current_pos`, which refuses a
//! server holding transactions the new primary lacks, in gtid_strict_mode). Each role is also
//! written into the managed configuration, so a restart keeps it.

use anyhow::{bail, Context, Result};
use std::time::Duration;

use super::parse::{replica_config, sql_literal};
use super::{run_sql, sql_step, wait_for};
use crate::config::{AgentHome, DatabaseConfig};
use crate::protocol::{FollowPlan, Role};

/// The managed configuration of a primary that was seeded as a replica.
fn primary_config(server_id: u32) -> String {
    replica_config(server_id).replace("read_only=ON", "read_only=OFF")
}

async fn one(cfg: &DatabaseConfig, sql: &str) -> Result<String> {
    let out = run_sql(cfg, &["-N"], sql, Duration::from_secs(10))
        .await
        .with_context(|| format!("`{sql}` on the local MariaDB server"))?;
    Ok(out.trim().to_string())
}

async fn server_id(cfg: &DatabaseConfig) -> Result<u32> {
    one(cfg, "SELECT @@server_id")
        .await?
        .parse()
        .context("reading @@server_id")
}

/// A GTID position as MariaDB writes it: `domain-server-seq` lists, comma-separated.
pub fn valid_gtid_pos(p: &str) -> bool {
    p.is_empty()
        || p.split(',').all(|g| {
            let parts: Vec<&str> = g.trim().split('-').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Read-only, every client session closed (replication and system threads are left alone);
/// answers `gtid_binlog_pos`, which holds every transaction committed here.
pub async fn fence(cfg: &DatabaseConfig) -> Result<String> {
    sql_step(
        cfg,
        "making the server read-only",
        "SET GLOBAL read_only = ON;\n",
        Duration::from_secs(30),
    )
    .await?;
    let ids = one(
        cfg,
        "SELECT GROUP_CONCAT(id) FROM information_schema.processlist \
         WHERE id <> CONNECTION_ID() AND user NOT IN ('system user', 'event_scheduler') \
         AND command NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker')",
    )
    .await?;
    let kills: String = ids
        .split(',')
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .map(|id| format!("KILL CONNECTION {id};\n"))
        .collect();
    if !kills.is_empty() {
        // A session that ended by itself in between is fine.
        let _ = run_sql(cfg, &["--force"], &kills, Duration::from_secs(10)).await;
    }
    one(cfg, "SELECT @@gtid_binlog_pos").await
}

/// Takes writes again after a fence (only a server that replicates from no one).
pub async fn unfence(cfg: &DatabaseConfig) -> Result<()> {
    let st = super::probe(cfg).await;
    if st.source.is_some() {
        bail!(
            "this server replicates from {}: it stays read-only",
            st.source.unwrap_or_default()
        );
    }
    sql_step(
        cfg,
        "lifting read-only",
        "SET GLOBAL read_only = OFF;\n",
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}

/// The highest sequence number of each replication domain in a GTID position.
fn by_domain(pos: &str) -> std::collections::BTreeMap<u32, u64> {
    let mut m = std::collections::BTreeMap::new();
    for g in pos.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let parts: Vec<&str> = g.split('-').collect();
        if let [d, _, n] = parts[..] {
            if let (Ok(d), Ok(n)) = (d.parse::<u32>(), n.parse::<u64>()) {
                let e = m.entry(d).or_insert(0);
                *e = (*e).max(n);
            }
        }
    }
    m
}

/// Whether a server at GTID position `have` holds everything up to `want` (in gtid_strict_mode a
/// domain's sequence numbers only grow, so a higher number means a later transaction).
pub fn covers(have: &str, want: &str) -> bool {
    let h = by_domain(have);
    by_domain(want)
        .into_iter()
        .all(|(d, n)| h.get(&d).is_some_and(|x| *x >= n))
}

/// Waits until this server holds `position`. It compares `gtid_current_pos`, not only what it
/// replicated (MASTER_GTID_WAIT looks at gtid_slave_pos alone): a former primary holds its own
/// transactions without having replicated them.
pub async fn catch_up(cfg: &DatabaseConfig, position: &str, timeout_secs: u32) -> Result<()> {
    if !valid_gtid_pos(position) {
        bail!("{position:?} is not a GTID position (domain-server-sequence, comma-separated)");
    }
    let until = std::time::Instant::now() + Duration::from_secs(u64::from(timeout_secs));
    loop {
        let have = one(cfg, "SELECT @@gtid_current_pos").await?;
        if covers(&have, position) {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            let st = super::probe(cfg).await;
            bail!(
                "the replica did not apply {position} within {timeout_secs} s (it is at {have}; io {:?}, sql {:?}{})",
                st.io_running,
                st.sql_running,
                st.error.map(|e| format!(", {e}")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Forgets the source, takes writes, and says so in the managed configuration (a node that was
/// not seeded gets back the configuration it had before it first followed another server).
pub async fn promote(cfg: &DatabaseConfig, home: &AgentHome, seeded: bool) -> Result<()> {
    sql_step(
        cfg,
        "promoting the replica",
        "STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL read_only = OFF;\n",
        Duration::from_secs(30),
    )
    .await?;
    let write = |b: &[u8]| crate::fsutil::write_atomic(&cfg.managed_config, b, 0o644);
    if seeded {
        write(primary_config(server_id(cfg).await?).as_bytes())?;
    } else {
        crate::switch::restore_managed(home, &cfg.managed_config, write)?;
    }
    Ok(())
}

/// Replicates from the plan's primary by GTID, read-only (also in the managed configuration).
pub async fn follow(
    cfg: &DatabaseConfig,
    home: &AgentHome,
    seeded: bool,
    f: &FollowPlan,
) -> Result<()> {
    let p = &f.plan;
    if !seeded {
        crate::switch::keep_managed(home, &cfg.managed_config)?;
    }
    let id = server_id(cfg).await?;
    crate::fsutil::write_atomic(&cfg.managed_config, replica_config(id).as_bytes(), 0o644)?;
    let sql = format!(
        "SET SESSION sql_mode='';\nSET GLOBAL read_only = ON;\nSTOP SLAVE;\n\
         CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, \
         MASTER_USE_GTID=current_pos, MASTER_CONNECT_RETRY=1;\nSTART SLAVE;\n",
        sql_literal(&p.primary_host),
        p.primary_port,
        sql_literal(&p.repl_user),
        sql_literal(p.repl_password.expose()),
    );
    sql_step(
        cfg,
        "pointing the server at the new primary",
        &sql,
        Duration::from_secs(30),
    )
    .await?;
    let since = std::time::Instant::now();
    let (ok, st) = wait_for(cfg, Duration::from_secs(30), |s| {
        (s.io_running == Some(true) && s.sql_running == Some(true))
            || (s.error.is_some() && since.elapsed() >= Duration::from_secs(5))
    })
    .await;
    if !ok || st.role != Some(Role::Replica) || st.io_running != Some(true) {
        bail!(
            "replication from {}:{} did not start (io {:?}, sql {:?}): {}",
            p.primary_host,
            p.primary_port,
            st.io_running,
            st.sql_running,
            st.error.as_deref().unwrap_or("no error reported")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_positions_are_checked() {
        assert!(valid_gtid_pos("0-1-8"));
        assert!(valid_gtid_pos("0-1-8,1-2-30"));
        assert!(valid_gtid_pos(""));
        assert!(!valid_gtid_pos("0-1-8'; DROP"));
        assert!(!valid_gtid_pos("0-1"));
    }

    #[test]
    fn positions_cover_by_domain() {
        assert!(covers("0-1-4608", "0-1-4608"));
        assert!(covers("0-2-4700", "0-1-4608"));
        assert!(!covers("0-1-4607", "0-1-4608"));
        assert!(covers("0-1-10,1-3-5", "1-3-5"));
        assert!(!covers("0-1-10", "0-1-9,1-3-5"));
        assert!(covers("0-1-1", ""));
    }

    #[test]
    fn a_promoted_seeded_replica_is_written_writable() {
        let t = primary_config(3);
        assert!(
            t.contains("server_id=3") && t.contains("read_only=OFF"),
            "{t}"
        );
        assert!(!t.contains("read_only=ON"));
    }
}
