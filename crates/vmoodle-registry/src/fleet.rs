//! What fleet operations keep in the register: per-site locks with a lease (one cron or upgrade
//! of a site at a time, across processes and nodes), the cron runs of each site, and what vmoodle
//! last read of each site's Moodle (version and release).

use super::{q, Registry, Result};
use serde::Serialize;
use sqlx::Row;

/// A lock on one site for one purpose.
#[derive(Debug, Clone, Serialize)]
pub struct SiteLock {
    pub instance_id: i64,
    pub purpose: String,
    pub owner: String,
    pub acquired_at: i64,
    pub expires_at: i64,
}

/// One cron run of one site.
#[derive(Debug, Clone, Serialize)]
pub struct CronRun {
    pub id: i64,
    pub instance_id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `running`, `ok`, `failed`, `timeout`, `interrupted`.
    pub status: String,
    pub exit_code: Option<i64>,
    pub output_tail: String,
    pub owner: String,
    pub started_by: String,
    pub log_path: String,
}

/// The cron record of one instance: its last run, its last successful run, and how many runs in
/// a row failed.
#[derive(Debug, Clone, Serialize)]
pub struct CronState {
    pub instance_id: i64,
    pub last: Option<CronRun>,
    pub last_ok_at: Option<i64>,
    pub failures_in_a_row: i64,
}

/// What vmoodle last read of a site's Moodle.
#[derive(Debug, Clone, Serialize)]
pub struct SiteFacts {
    pub instance_id: i64,
    /// `config.version`, e.g. `2025100600.02`.
    pub moodle_version: String,
    /// `config.release`, e.g. `5.1+ (Build: 20251017)`.
    pub moodle_release: String,
    pub checked_at: i64,
}

/// How many cron runs of each site the register keeps.
pub const CRON_HISTORY: i64 = 50;

const CRON_COLUMNS: &str = "id, instance_id, started_at, finished_at, duration_ms, status, \
    exit_code, output_tail, owner, started_by, log_path";

fn cron_from_row(r: &sqlx::any::AnyRow) -> Result<CronRun> {
    let e = || q("reading a cron run");
    Ok(CronRun {
        id: r.try_get("id").map_err(e())?,
        instance_id: r.try_get("instance_id").map_err(e())?,
        started_at: r.try_get("started_at").map_err(e())?,
        finished_at: r.try_get("finished_at").map_err(e())?,
        duration_ms: r.try_get("duration_ms").map_err(e())?,
        status: r.try_get("status").map_err(e())?,
        exit_code: r.try_get("exit_code").map_err(e())?,
        output_tail: r.try_get("output_tail").map_err(e())?,
        owner: r.try_get("owner").map_err(e())?,
        started_by: r.try_get("started_by").map_err(e())?,
        log_path: r.try_get("log_path").map_err(e())?,
    })
}

impl Registry {
    // ---- site locks ----------------------------------------------------------------------------

    /// Takes the `purpose` lock of a site for `owner` until `expires_at`, unless it is held and
    /// its lease has not run out (by anyone: a holder does not take its own lock twice). One statement, so two nodes racing for the same
    /// site cannot both win. Returns whether this owner now holds it.
    pub async fn try_lock_site(
        &self,
        instance_id: i64,
        purpose: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO site_locks (instance_id, purpose, owner, acquired_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (instance_id, purpose) DO UPDATE SET owner = excluded.owner, \
             acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
             WHERE site_locks.expires_at < $6",
        )
        .bind(instance_id)
        .bind(purpose)
        .bind(owner)
        .bind(now)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("taking a site's lock"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Extends a lock this owner holds; false when it is no longer this owner's.
    pub async fn renew_site_lock(
        &self,
        instance_id: i64,
        purpose: &str,
        owner: &str,
        expires_at: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE site_locks SET expires_at = $1 \
             WHERE instance_id = $2 AND purpose = $3 AND owner = $4",
        )
        .bind(expires_at)
        .bind(instance_id)
        .bind(purpose)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("renewing a site's lock"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Releases a lock if this owner holds it.
    pub async fn unlock_site(&self, instance_id: i64, purpose: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM site_locks WHERE instance_id = $1 AND purpose = $2 AND owner = $3",
        )
        .bind(instance_id)
        .bind(purpose)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("releasing a site's lock"))?;
        Ok(())
    }

    /// Every lock whose lease has not run out at `now`.
    pub async fn site_locks(&self, purpose: &str, now: i64) -> Result<Vec<SiteLock>> {
        let rows = sqlx::query(
            "SELECT instance_id, purpose, owner, acquired_at, expires_at FROM site_locks \
             WHERE purpose = $1 AND expires_at >= $2 ORDER BY instance_id",
        )
        .bind(purpose)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing site locks"))?;
        let e = || q("reading a site lock");
        rows.iter()
            .map(|r| {
                Ok(SiteLock {
                    instance_id: r.try_get("instance_id").map_err(e())?,
                    purpose: r.try_get("purpose").map_err(e())?,
                    owner: r.try_get("owner").map_err(e())?,
                    acquired_at: r.try_get("acquired_at").map_err(e())?,
                    expires_at: r.try_get("expires_at").map_err(e())?,
                })
            })
            .collect()
    }

    // ---- cron runs -----------------------------------------------------------------------------

    /// Records the start of a cron run; returns its id.
    pub async fn start_cron_run(
        &self,
        instance_id: i64,
        owner: &str,
        started_by: &str,
        started_at: i64,
        log_path: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO cron_runs (instance_id, started_at, status, owner, started_by, log_path) \
             VALUES ($1, $2, 'running', $3, $4, $5) RETURNING id",
        )
        .bind(instance_id)
        .bind(started_at)
        .bind(owner)
        .bind(started_by)
        .bind(log_path)
        .fetch_one(&self.pool)
        .await
        .map_err(q("recording a cron run"))?;
        row.try_get("id").map_err(q("recording a cron run"))
    }

    /// Records how a cron run ended, and keeps only the newest [`CRON_HISTORY`] runs of its site.
    pub async fn finish_cron_run(
        &self,
        id: i64,
        status: &str,
        exit_code: Option<i64>,
        finished_at: i64,
        duration_ms: i64,
        output_tail: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cron_runs SET status = $1, exit_code = $2, finished_at = $3, duration_ms = $4, \
             output_tail = $5 WHERE id = $6",
        )
        .bind(status)
        .bind(exit_code)
        .bind(finished_at)
        .bind(duration_ms)
        .bind(output_tail)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("recording the end of a cron run"))?;
        sqlx::query(
            "DELETE FROM cron_runs WHERE instance_id = (SELECT instance_id FROM cron_runs WHERE id = $1) \
             AND id <= (SELECT id FROM cron_runs WHERE instance_id = \
             (SELECT instance_id FROM cron_runs WHERE id = $2) ORDER BY id DESC LIMIT 1 OFFSET $3)",
        )
        .bind(id)
        .bind(id)
        .bind(CRON_HISTORY)
        .execute(&self.pool)
        .await
        .map_err(q("pruning old cron runs"))?;
        Ok(())
    }

    /// Marks the `running` cron runs of `owner` interrupted (its process is gone).
    pub async fn interrupt_cron_runs(&self, owner: &str, now: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE cron_runs SET status = 'interrupted', finished_at = $1 \
             WHERE status = 'running' AND owner = $2",
        )
        .bind(now)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("marking interrupted cron runs"))?;
        Ok(r.rows_affected())
    }

    /// The owners of `running` cron runs (to find those whose process is gone).
    pub async fn cron_run_owners(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT owner FROM cron_runs WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing running cron runs"))?;
        rows.iter()
            .map(|r| r.try_get("owner").map_err(q("listing running cron runs")))
            .collect()
    }

    /// The newest cron runs of one site, newest first.
    pub async fn cron_runs(&self, instance_id: i64, limit: i64) -> Result<Vec<CronRun>> {
        let sql = format!(
            "SELECT {CRON_COLUMNS} FROM cron_runs WHERE instance_id = $1 ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(instance_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing cron runs"))?;
        rows.iter().map(cron_from_row).collect()
    }

    /// The cron record of every site that has one: last run, last success, failures in a row.
    pub async fn cron_states(&self) -> Result<Vec<CronState>> {
        let sql = format!(
            "SELECT {CRON_COLUMNS} FROM cron_runs r WHERE r.id IN \
             (SELECT MAX(id) FROM cron_runs GROUP BY instance_id)"
        );
        let last = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading cron runs"))?;
        let ok = sqlx::query(
            "SELECT instance_id, MAX(started_at) AS ok_at, MAX(id) AS ok_id FROM cron_runs \
             WHERE status = 'ok' GROUP BY instance_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading cron runs"))?;
        let e = || q("reading cron runs");
        let mut last_ok = std::collections::HashMap::new();
        for r in &ok {
            let id: i64 = r.try_get("instance_id").map_err(e())?;
            let at: i64 = r.try_get("ok_at").map_err(e())?;
            let run: i64 = r.try_get("ok_id").map_err(e())?;
            last_ok.insert(id, (at, run));
        }
        // Failures in a row: finished runs after the last successful one.
        let fails = sqlx::query(
            "SELECT r.instance_id, COUNT(*) AS n FROM cron_runs r \
             WHERE r.status IN ('failed', 'timeout', 'interrupted') AND r.id > COALESCE( \
             (SELECT MAX(o.id) FROM cron_runs o WHERE o.instance_id = r.instance_id \
              AND o.status = 'ok'), 0) GROUP BY r.instance_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading cron runs"))?;
        let mut in_a_row = std::collections::HashMap::new();
        for r in &fails {
            let id: i64 = r.try_get("instance_id").map_err(e())?;
            let n: i64 = r.try_get("n").map_err(e())?;
            in_a_row.insert(id, n);
        }
        last.iter()
            .map(|r| {
                let run = cron_from_row(r)?;
                Ok(CronState {
                    instance_id: run.instance_id,
                    last_ok_at: last_ok.get(&run.instance_id).map(|(at, _)| *at),
                    failures_in_a_row: in_a_row.get(&run.instance_id).copied().unwrap_or(0),
                    last: Some(run),
                })
            })
            .collect()
    }

    // ---- site facts ----------------------------------------------------------------------------

    /// Records what was read of a site's Moodle.
    pub async fn set_site_facts(
        &self,
        instance_id: i64,
        moodle_version: &str,
        moodle_release: &str,
        checked_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO site_facts (instance_id, moodle_version, moodle_release, checked_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (instance_id) DO UPDATE SET \
             moodle_version = excluded.moodle_version, moodle_release = excluded.moodle_release, \
             checked_at = excluded.checked_at",
        )
        .bind(instance_id)
        .bind(moodle_version)
        .bind(moodle_release)
        .bind(checked_at)
        .execute(&self.pool)
        .await
        .map_err(q("recording a site's Moodle version"))?;
        Ok(())
    }

    /// What was last read of every site's Moodle.
    pub async fn site_facts(&self) -> Result<Vec<SiteFacts>> {
        let rows = sqlx::query(
            "SELECT instance_id, moodle_version, moodle_release, checked_at FROM site_facts",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading site facts"))?;
        let e = || q("reading site facts");
        rows.iter()
            .map(|r| {
                Ok(SiteFacts {
                    instance_id: r.try_get("instance_id").map_err(e())?,
                    moodle_version: r.try_get("moodle_version").map_err(e())?,
                    moodle_release: r.try_get("moodle_release").map_err(e())?,
                    checked_at: r.try_get("checked_at").map_err(e())?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::{InstanceFields, NewDbServer, Registry};
    use vmoodle_core::DbKind;

    /// One holder at a time, even two holders of one process (the owner strings differ by
    /// their token); a lapsed lease is taken over; only the holder renews or releases.
    #[tokio::test]
    async fn site_locks_have_one_holder() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open_sqlite(&dir.path().join("r.sqlite"))
            .await
            .unwrap();
        let s = reg
            .add_dbserver(&NewDbServer {
                name: "db".into(),
                kind: DbKind::Mariadb,
                host: "127.0.0.1".into(),
                port: 3306,
                socket: None,
                admin_user: "root".into(),
                admin_password_sealed: String::new(),
            })
            .await
            .unwrap();
        let i = reg
            .add_instance(&InstanceFields {
                shortname: "a".into(),
                host: "a.example.org".into(),
                wwwroot: "http://a.example.org".into(),
                name: "a".into(),
                description: String::new(),
                is_master: false,
                enabled: true,
                dbserver_id: s.id,
                dbtype: "mariadb".into(),
                dbname: "a".into(),
                dbuser: "a".into(),
                dbpass_sealed: String::new(),
                prefix: "mdl_".into(),
                dbpersist: false,
                dataroot: "/srv/a".into(),
                mnet: -1,
                template: None,
                config: Default::default(),
            })
            .await
            .unwrap();
        let (one, two) = ("n/1/1#aa", "n/1/1#bb");
        assert!(reg
            .try_lock_site(i.id, "cron", one, 100, 200)
            .await
            .unwrap());
        assert!(!reg
            .try_lock_site(i.id, "cron", two, 150, 250)
            .await
            .unwrap());
        assert!(
            !reg.try_lock_site(i.id, "cron", one, 150, 250)
                .await
                .unwrap(),
            "a holder does not take its own lock twice"
        );
        assert!(reg
            .try_lock_site(i.id, "upgrade", two, 150, 250)
            .await
            .unwrap());
        assert!(!reg.renew_site_lock(i.id, "cron", two, 400).await.unwrap());
        assert!(reg.renew_site_lock(i.id, "cron", one, 400).await.unwrap());
        assert!(!reg
            .try_lock_site(i.id, "cron", two, 300, 500)
            .await
            .unwrap());
        reg.unlock_site(i.id, "cron", two).await.unwrap();
        assert_eq!(reg.site_locks("cron", 300).await.unwrap()[0].owner, one);
        // The lease ran out: the next holder takes it over.
        assert!(reg
            .try_lock_site(i.id, "cron", two, 401, 600)
            .await
            .unwrap());
        assert_eq!(reg.site_locks("cron", 401).await.unwrap()[0].owner, two);
    }
}
