//! What the daemon keeps in the register: administrators, their sessions and API tokens (hashes
//! only), queued and parent jobs, cancel requests and log lines, the daemons of each node with
//! their heartbeat, scheduled work claimed by one node at a time, and the generation number that
//! every change of instances or database servers bumps.

use super::{job_from_row, q, Registry, RegistryError, Result, JOB_COLUMNS};
use serde::Serialize;
use sqlx::Row;
use vmoodle_core::now_unix;

/// An administrator of the web admin and the API.
#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub password_hash: String,
    pub created_at: i64,
    pub last_login: Option<i64>,
}

/// An API token (its hash only is stored; the token itself is shown once).
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub admin_id: i64,
    pub admin: String,
    /// `read` or `write`.
    pub scope: String,
    pub created_at: i64,
    pub last_used: Option<i64>,
}

/// A live login session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub admin_id: i64,
    pub admin: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// A daemon on some node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub owner: String,
    pub node: String,
    pub listen: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// A piece of scheduled work.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub next_run: i64,
    pub last_run: Option<i64>,
    pub last_owner: Option<String>,
    pub last_result: Option<String>,
}

fn admin_from_row(r: &sqlx::any::AnyRow) -> Result<Admin> {
    let e = || q("reading an administrator");
    Ok(Admin {
        id: r.try_get("id").map_err(e())?,
        name: r.try_get("name").map_err(e())?,
        password_hash: r.try_get("password_hash").map_err(e())?,
        created_at: r.try_get("created_at").map_err(e())?,
        last_login: r.try_get("last_login").map_err(e())?,
    })
}

fn token_from_row(r: &sqlx::any::AnyRow) -> Result<ApiToken> {
    let e = || q("reading an API token");
    Ok(ApiToken {
        id: r.try_get("id").map_err(e())?,
        name: r.try_get("name").map_err(e())?,
        admin_id: r.try_get("admin_id").map_err(e())?,
        admin: r.try_get("admin").map_err(e())?,
        scope: r.try_get("scope").map_err(e())?,
        created_at: r.try_get("created_at").map_err(e())?,
        last_used: r.try_get("last_used").map_err(e())?,
    })
}

const TOKEN_COLUMNS: &str =
    "t.id, t.name, t.admin_id, a.name AS admin, t.scope, t.created_at, t.last_used";

impl Registry {
    // ---- administrators ---------------------------------------------------------------------

    pub async fn add_admin(&self, name: &str, password_hash: &str) -> Result<Admin> {
        sqlx::query("INSERT INTO admins (name, password_hash, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(password_hash)
            .bind(now_unix())
            .execute(&self.pool)
            .await
            .map_err(|e| match q("adding an administrator")(e) {
                RegistryError::Conflict(_) => RegistryError::Conflict(format!(
                    "an administrator named `{name}` already exists\nhint: `vmoodle admin password {name} --password-stdin` replaces its password"
                )),
                other => other,
            })?;
        self.admin(name).await
    }

    pub async fn find_admin(&self, name: &str) -> Result<Option<Admin>> {
        let row = sqlx::query(
            "SELECT id, name, password_hash, created_at, last_login FROM admins WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading an administrator"))?;
        row.as_ref().map(admin_from_row).transpose()
    }

    pub async fn admin(&self, name: &str) -> Result<Admin> {
        self.find_admin(name)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                what: "administrator",
                name: name.into(),
                hint: "\nhint: `vmoodle admin list` shows them".into(),
            })
    }

    pub async fn admins(&self) -> Result<Vec<Admin>> {
        let rows = sqlx::query(
            "SELECT id, name, password_hash, created_at, last_login FROM admins ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading administrators"))?;
        rows.iter().map(admin_from_row).collect()
    }

    /// Replaces an administrator's password and ends all of their sessions.
    pub async fn set_admin_password(&self, name: &str, password_hash: &str) -> Result<()> {
        let a = self.admin(name).await?;
        sqlx::query("UPDATE admins SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(a.id)
            .execute(&self.pool)
            .await
            .map_err(q("changing a password"))?;
        sqlx::query("DELETE FROM sessions WHERE admin_id = $1")
            .bind(a.id)
            .execute(&self.pool)
            .await
            .map_err(q("ending sessions"))?;
        Ok(())
    }

    /// Removes an administrator with their sessions and tokens.
    pub async fn remove_admin(&self, name: &str) -> Result<()> {
        let a = self.admin(name).await?;
        for sql in [
            "DELETE FROM sessions WHERE admin_id = $1",
            "DELETE FROM api_tokens WHERE admin_id = $1",
            "DELETE FROM admins WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(a.id)
                .execute(&self.pool)
                .await
                .map_err(q("removing an administrator"))?;
        }
        Ok(())
    }

    pub async fn touch_login(&self, admin_id: i64) -> Result<()> {
        sqlx::query("UPDATE admins SET last_login = $1 WHERE id = $2")
            .bind(now_unix())
            .bind(admin_id)
            .execute(&self.pool)
            .await
            .map_err(q("recording a login"))?;
        Ok(())
    }

    // ---- API tokens -------------------------------------------------------------------------

    pub async fn add_token(
        &self,
        name: &str,
        admin_id: i64,
        token_hash: &str,
        scope: &str,
    ) -> Result<ApiToken> {
        sqlx::query(
            "INSERT INTO api_tokens (name, admin_id, token_hash, scope, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(admin_id)
        .bind(token_hash)
        .bind(scope)
        .bind(now_unix())
        .execute(&self.pool)
        .await
        .map_err(|e| match q("adding an API token")(e) {
            RegistryError::Conflict(_) => RegistryError::Conflict(format!(
                "an API token named `{name}` already exists\nhint: `vmoodle admin token revoke {name}` removes it"
            )),
            other => other,
        })?;
        self.tokens()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| RegistryError::NotFound {
                what: "API token",
                name: name.into(),
                hint: String::new(),
            })
    }

    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN admins a ON a.id = t.admin_id ORDER BY t.name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading API tokens"))?;
        rows.iter().map(token_from_row).collect()
    }

    /// The token with this hash, if any (and records its use).
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens t JOIN admins a ON a.id = t.admin_id WHERE t.token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading an API token"))?;
        let Some(row) = row else { return Ok(None) };
        let t = token_from_row(&row)?;
        sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
            .bind(now_unix())
            .bind(t.id)
            .execute(&self.pool)
            .await
            .map_err(q("recording a token's use"))?;
        Ok(Some(t))
    }

    pub async fn remove_token(&self, name: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(q("revoking an API token"))?;
        if r.rows_affected() == 0 {
            return Err(RegistryError::NotFound {
                what: "API token",
                name: name.into(),
                hint: "\nhint: `vmoodle admin token list` shows them".into(),
            });
        }
        Ok(())
    }

    // ---- sessions ---------------------------------------------------------------------------

    pub async fn add_session(
        &self,
        id_hash: &str,
        admin_id: i64,
        csrf: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_unix();
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(q("purging sessions"))?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, admin_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(admin_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(q("starting a session"))?;
        Ok(())
    }

    /// A session that has not expired.
    pub async fn session(&self, id_hash: &str) -> Result<Option<SessionRow>> {
        let row = sqlx::query(
            "SELECT s.admin_id, a.name AS admin, s.csrf, s.expires_at FROM sessions s \
             JOIN admins a ON a.id = s.admin_id WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_unix())
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a session"))?;
        let Some(r) = row else { return Ok(None) };
        let e = || q("reading a session");
        Ok(Some(SessionRow {
            admin_id: r.try_get("admin_id").map_err(e())?,
            admin: r.try_get("admin").map_err(e())?,
            csrf: r.try_get("csrf").map_err(e())?,
            expires_at: r.try_get("expires_at").map_err(e())?,
        }))
    }

    pub async fn remove_session(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await
            .map_err(q("ending a session"))?;
        Ok(())
    }

    // ---- jobs started by the daemon -----------------------------------------------------------

    /// Records a job the daemon will run (state `queued`) with the request behind it.
    pub async fn queue_job(
        &self,
        kind: &str,
        target: &str,
        owner: &str,
        started_by: &str,
        parent: Option<i64>,
        params: Option<&str>,
    ) -> Result<i64> {
        let now = now_unix();
        let row = sqlx::query(
            "INSERT INTO jobs (kind, target, state, started_at, owner, updated_at, started_by, parent, params) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(kind)
        .bind(target)
        .bind(now)
        .bind(owner)
        .bind(now)
        .bind(started_by)
        .bind(parent)
        .bind(params)
        .fetch_one(&self.pool)
        .await
        .map_err(q("queueing a job"))?;
        row.try_get(0).map_err(q("queueing a job"))
    }

    /// A queued job starts running under `owner` (with the kind and target its journal names);
    /// false when it is no longer queued (cancelled).
    pub async fn adopt_job(&self, id: i64, kind: &str, target: &str, owner: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'running', kind = $1, target = $2, owner = $3, updated_at = $4 \
             WHERE id = $5 AND (state = 'queued' OR (state = 'running' AND owner = $3))",
        )
        .bind(kind)
        .bind(target)
        .bind(owner)
        .bind(now_unix())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("starting a queued job"))?;
        Ok(r.rows_affected() == 1)
    }

    /// A queued job starts under `owner` (the daemon that queued it); false when it was
    /// cancelled meanwhile.
    pub async fn start_queued_job(&self, id: i64, owner: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'running', updated_at = $1 WHERE id = $2 AND state = 'queued' AND owner = $3",
        )
        .bind(now_unix())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("starting a job"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets the state (and error) of a job that has no journal of its own: a queued job that
    /// never started, or a bulk run. A job that already ended (cancelled meanwhile) keeps its
    /// state.
    pub async fn set_job_state(&self, id: i64, state: &str, error: Option<&str>) -> Result<()> {
        let now = now_unix();
        let finished = match state {
            "queued" | "running" | "recovering" => None,
            _ => Some(now),
        };
        sqlx::query(
            "UPDATE jobs SET state = $1, error = $2, finished_at = $3, updated_at = $4 \
             WHERE id = $5 AND state IN ('queued', 'running', 'recovering')",
        )
        .bind(state)
        .bind(error)
        .bind(finished)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("updating a job"))?;
        Ok(())
    }

    /// Cancels a job that is still queued; true if it was.
    pub async fn cancel_queued_job(&self, id: i64, why: &str) -> Result<bool> {
        let now = now_unix();
        let r = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', error = $1, finished_at = $2, updated_at = $3, \
             cancel_requested = 1 WHERE id = $4 AND state = 'queued'",
        )
        .bind(why)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("cancelling a job"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Asks a running job (and the jobs of a bulk run) to stop at its next step boundary.
    pub async fn request_cancel(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1 OR parent = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("cancelling a job"))?;
        Ok(())
    }

    /// Ids of the running jobs of `owner` that somebody asked to stop.
    pub async fn cancel_requests(&self, owner: &str) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM jobs WHERE owner = $1 AND cancel_requested = 1 \
             AND state IN ('queued', 'running')",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading cancel requests"))?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0).map_err(q("reading cancel requests")))
            .collect()
    }

    /// Adds a line to a job's log.
    pub async fn append_job_log(&self, id: i64, line: &str) -> Result<()> {
        let line = format!("{}\n", line.replace('\n', " "));
        sqlx::query("UPDATE jobs SET log = log || $1, updated_at = $2 WHERE id = $3")
            .bind(line)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("writing a job's log"))?;
        Ok(())
    }

    /// Keeps the jobs of a live daemon from looking abandoned.
    pub async fn touch_jobs(&self, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET updated_at = $1 WHERE owner = $2 AND state IN ('queued', 'running', 'recovering')",
        )
        .bind(now_unix())
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(q("touching jobs"))?;
        Ok(())
    }

    /// Jobs of a bulk run, oldest first.
    pub async fn children(&self, parent: i64) -> Result<Vec<super::Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE parent = $1 ORDER BY id"
        ))
        .bind(parent)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading a bulk run's jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    // ---- nodes ------------------------------------------------------------------------------

    /// Records that the daemon `owner` on `node` is alive.
    pub async fn heartbeat(&self, owner: &str, node: &str, listen: &str) -> Result<()> {
        let now = now_unix();
        sqlx::query(
            "INSERT INTO nodes (owner, node, listen, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, listen = excluded.listen",
        )
        .bind(owner)
        .bind(node)
        .bind(listen)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("recording a heartbeat"))?;
        Ok(())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query(
            "SELECT owner, node, listen, started_at, heartbeat_at FROM nodes ORDER BY node, owner",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading nodes"))?;
        let e = || q("reading nodes");
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    owner: r.try_get("owner").map_err(e())?,
                    node: r.try_get("node").map_err(e())?,
                    listen: r.try_get("listen").map_err(e())?,
                    started_at: r.try_get("started_at").map_err(e())?,
                    heartbeat_at: r.try_get("heartbeat_at").map_err(e())?,
                })
            })
            .collect()
    }

    /// The daemon `owner` stopped cleanly.
    pub async fn remove_node(&self, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE owner = $1")
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(q("removing a node"))?;
        Ok(())
    }

    // ---- schedule ---------------------------------------------------------------------------

    /// Claims the scheduled work `name` if it is due at `now`: succeeds on one node only, which
    /// sets its next run to `next`.
    pub async fn claim_schedule(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        next: i64,
    ) -> Result<bool> {
        sqlx::query(
            "INSERT INTO schedule (name, next_run) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("reading the schedule"))?;
        let r = sqlx::query(
            "UPDATE schedule SET next_run = $1, last_run = $2, last_owner = $3 \
             WHERE name = $4 AND next_run <= $5",
        )
        .bind(next)
        .bind(now)
        .bind(owner)
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("claiming scheduled work"))?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn schedule_result(&self, name: &str, result: &str) -> Result<()> {
        sqlx::query("UPDATE schedule SET last_result = $1 WHERE name = $2")
            .bind(result)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(q("recording scheduled work"))?;
        Ok(())
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleRow>> {
        let rows = sqlx::query(
            "SELECT name, next_run, last_run, last_owner, last_result FROM schedule ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading the schedule"))?;
        let e = || q("reading the schedule");
        rows.iter()
            .map(|r| {
                Ok(ScheduleRow {
                    name: r.try_get("name").map_err(e())?,
                    next_run: r.try_get("next_run").map_err(e())?,
                    last_run: r.try_get("last_run").map_err(e())?,
                    last_owner: r.try_get("last_owner").map_err(e())?,
                    last_result: r.try_get("last_result").map_err(e())?,
                })
            })
            .collect()
    }

    // ---- generation -------------------------------------------------------------------------

    /// A number bumped by every change of instances or database servers.
    pub async fn generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT n FROM generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(q("reading the generation"))?;
        row.try_get::<i64, _>(0)
            .map_err(q("reading the generation"))
    }

    /// Whether the register is reachable (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map_err(q("checking the register"))?;
        Ok(())
    }
}
