//! The upgrade record of each site (the `upgrades` table): where its last upgrade is (state and
//! step), the versions it went from and to, its pre-upgrade snapshot, its log, its error, and the
//! process that runs it (a `running` row whose owner is gone was interrupted).

use super::{q, Registry, Result};
use serde::Serialize;
use sqlx::Row;

/// One site's last upgrade.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeRow {
    pub instance_id: i64,
    /// `running`, `ok`, `failed`, `rolled_back`.
    pub state: String,
    /// The step it is at or failed at (`lock`, `maintenance on`, `snapshot`, `upgrade`...).
    pub step: String,
    pub from_version: String,
    pub to_version: String,
    /// The pre-upgrade snapshot (a template's name).
    pub snapshot: Option<String>,
    pub log_path: String,
    pub error: Option<String>,
    pub owner: String,
    pub job_id: Option<i64>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str = "instance_id, state, step, from_version, to_version, snapshot, log_path, \
    error, owner, job_id, started_at, finished_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<UpgradeRow> {
    let e = || q("reading an upgrade record");
    Ok(UpgradeRow {
        instance_id: r.try_get("instance_id").map_err(e())?,
        state: r.try_get("state").map_err(e())?,
        step: r.try_get("step").map_err(e())?,
        from_version: r.try_get("from_version").map_err(e())?,
        to_version: r.try_get("to_version").map_err(e())?,
        snapshot: r.try_get("snapshot").map_err(e())?,
        log_path: r.try_get("log_path").map_err(e())?,
        error: r.try_get("error").map_err(e())?,
        owner: r.try_get("owner").map_err(e())?,
        job_id: r.try_get("job_id").map_err(e())?,
        started_at: r.try_get("started_at").map_err(e())?,
        finished_at: r.try_get("finished_at").map_err(e())?,
    })
}

/// What a new upgrade record starts with.
#[derive(Debug, Clone)]
pub struct NewUpgrade<'a> {
    pub instance_id: i64,
    pub from_version: &'a str,
    pub to_version: &'a str,
    pub log_path: &'a str,
    pub owner: &'a str,
    pub job_id: Option<i64>,
    pub now: i64,
}

impl Registry {
    /// Starts (or restarts) a site's upgrade record: state `running`, step `lock`. A previous
    /// record's snapshot is kept when this run makes none (a resumed upgrade still rolls back to
    /// the state before the first attempt).
    pub async fn start_upgrade(&self, u: &NewUpgrade<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO upgrades (instance_id, state, step, from_version, to_version, log_path, \
             error, owner, job_id, started_at, finished_at) \
             VALUES ($1, 'running', 'lock', $2, $3, $4, NULL, $5, $6, $7, NULL) \
             ON CONFLICT (instance_id) DO UPDATE SET state = 'running', step = 'lock', \
             from_version = excluded.from_version, to_version = excluded.to_version, \
             log_path = excluded.log_path, error = NULL, owner = excluded.owner, \
             job_id = excluded.job_id, started_at = excluded.started_at, finished_at = NULL",
        )
        .bind(u.instance_id)
        .bind(u.from_version)
        .bind(u.to_version)
        .bind(u.log_path)
        .bind(u.owner)
        .bind(u.job_id)
        .bind(u.now)
        .execute(&self.pool)
        .await
        .map_err(q("recording the start of an upgrade"))?;
        Ok(())
    }

    /// Records the step a site's upgrade is at.
    pub async fn set_upgrade_step(&self, instance_id: i64, step: &str) -> Result<()> {
        sqlx::query("UPDATE upgrades SET step = $1 WHERE instance_id = $2")
            .bind(step)
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(q("recording an upgrade's step"))?;
        Ok(())
    }

    /// Records the pre-upgrade snapshot of a site (a template's name), or forgets it.
    pub async fn set_upgrade_snapshot(
        &self,
        instance_id: i64,
        snapshot: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE upgrades SET snapshot = $1 WHERE instance_id = $2")
            .bind(snapshot)
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(q("recording an upgrade's snapshot"))?;
        Ok(())
    }

    /// Ends a site's upgrade record: `ok`, `failed` (with its error) or `rolled_back`.
    pub async fn finish_upgrade(
        &self,
        instance_id: i64,
        state: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE upgrades SET state = $1, error = $2, finished_at = $3 WHERE instance_id = $4",
        )
        .bind(state)
        .bind(error)
        .bind(now)
        .bind(instance_id)
        .execute(&self.pool)
        .await
        .map_err(q("recording the end of an upgrade"))?;
        Ok(())
    }

    /// Every site's last upgrade.
    pub async fn upgrades(&self) -> Result<Vec<UpgradeRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM upgrades ORDER BY instance_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading upgrade records"))?;
        rows.iter().map(from_row).collect()
    }

    /// One site's last upgrade.
    pub async fn upgrade_of(&self, instance_id: i64) -> Result<Option<UpgradeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM upgrades WHERE instance_id = $1"
        ))
        .bind(instance_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading an upgrade record"))?;
        row.as_ref().map(from_row).transpose()
    }
}
