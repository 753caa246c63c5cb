//! Counts the daemon's `/metrics` reads from the register: aggregated in SQL, so a scrape costs
//! three small queries however large the fleet is.

use super::{q, Registry, Result};
use sqlx::Row;

/// How many jobs of one kind are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCount {
    pub kind: String,
    pub state: String,
    pub n: i64,
}

impl Registry {
    /// (enabled, disabled) instances, the master left out.
    pub async fn instance_counts(&self) -> Result<(i64, i64)> {
        let rows = sqlx::query(
            "SELECT enabled, COUNT(*) AS n FROM instances WHERE is_master = 0 GROUP BY enabled",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("counting instances"))?;
        let (mut on, mut off) = (0, 0);
        for r in &rows {
            let enabled: i64 = r.try_get("enabled").map_err(q("counting instances"))?;
            let n: i64 = r.try_get("n").map_err(q("counting instances"))?;
            if enabled != 0 {
                on += n;
            } else {
                off += n;
            }
        }
        Ok((on, off))
    }

    /// Jobs by kind and state.
    pub async fn job_counts(&self) -> Result<Vec<JobCount>> {
        let rows = sqlx::query(
            "SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state ORDER BY kind, state",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("counting jobs"))?;
        let e = || q("counting jobs");
        rows.iter()
            .map(|r| {
                Ok(JobCount {
                    kind: r.try_get("kind").map_err(e())?,
                    state: r.try_get("state").map_err(e())?,
                    n: r.try_get("n").map_err(e())?,
                })
            })
            .collect()
    }

    /// (kind, seconds) of the jobs that finished at or after `since` (unix seconds).
    pub async fn job_durations(&self, since: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT kind, finished_at - started_at AS secs FROM jobs \
             WHERE finished_at IS NOT NULL AND finished_at >= $1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading job durations"))?;
        let e = || q("reading job durations");
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kind").map_err(e())?,
                    r.try_get("secs").map_err(e())?,
                ))
            })
            .collect()
    }
}
