//! `vmoodle sql "SELECT ... FROM {user}"`: one read-only query on every selected instance's
//! database, with the instance's own account.
//!
//! Safety is the server's, never a parser's: the query runs as ONE prepared statement (a second
//! statement after `;` is refused by the server's prepare), inside a read-only transaction that
//! is rolled back at the end, with a statement time limit set on the server:
//! - MariaDB/MySQL: `SET SESSION TRANSACTION READ ONLY` (so DDL, which commits implicitly, still
//!   runs read-only), `SET SESSION max_statement_time` (MySQL: `max_execution_time`),
//!   `START TRANSACTION READ ONLY`;
//! - PostgreSQL: `BEGIN READ ONLY`, `SET LOCAL statement_timeout`, and a first `SELECT 1` (the
//!   transaction's snapshot is taken, so it cannot be switched to read-write any more).
//!
//! `{name}` is Moodle's table syntax: each becomes the instance's prefixed table, quoted.

use anyhow::{anyhow, bail, Result};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::time::{Duration, Instant};
use vmoodle_core::DbKind;
use vmoodle_dbserver::{quote_ident, Conn, Param};
use vmoodle_registry::Instance;

use super::sitedb::SiteDb;
use super::{sql_text, Selection, SiteStatus};
use crate::Home;

/// How a query is run.
#[derive(Debug, Clone)]
pub struct SqlOptions {
    pub parallel: usize,
    /// The statement's time limit on each server.
    pub timeout: Duration,
    /// Rows kept per instance (the rest are not read).
    pub max_rows: usize,
}

/// One instance's answer.
#[derive(Debug, Clone, Serialize)]
pub struct SqlSite {
    pub instance: String,
    pub host: String,
    /// `ok`, `failed` or `timeout`.
    pub status: SiteStatus,
    pub duration_ms: u64,
    /// The server's error when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// More rows than `--max-rows` were there.
    pub truncated: bool,
}

/// Every instance's answer.
#[derive(Debug, Clone, Serialize)]
pub struct SqlReport {
    pub sql: String,
    pub sites: Vec<SqlSite>,
    pub disabled_left_out: Vec<String>,
}

impl SqlReport {
    pub fn failures(&self) -> usize {
        self.sites.iter().filter(|s| s.status.is_failure()).count()
    }
    pub fn exit_code(&self) -> i32 {
        if self.failures() > 0 {
            3
        } else {
            0
        }
    }
}

/// `{user}` -> the instance's `"mdl_user"` (quoted for its server), as Moodle's own
/// `fix_table_names` does (`{` lowercase letter, letters/digits/underscores, `}`).
pub fn expand_tables(sql: &str, prefix: &str, kind: DbKind) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        let valid = name_len > 0
            && after.as_bytes()[0].is_ascii_lowercase()
            && after.as_bytes().get(name_len) == Some(&b'}');
        if valid {
            out.push_str(&quote_ident(
                kind,
                &format!("{prefix}{}", &after[..name_len]),
            ));
            rest = &after[name_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Runs `sql` on every selected instance.
pub async fn run_sql(
    home: &Home,
    selection: &Selection,
    sql: &str,
    opts: &SqlOptions,
) -> Result<SqlReport> {
    if sql.trim().is_empty() {
        bail!("the query is empty; e.g. vmoodle sql \"SELECT COUNT(*) FROM {{user}}\" --all");
    }
    if opts.max_rows == 0 {
        bail!("--max-rows must be at least 1");
    }
    let selected = selection.resolve(home).await?;
    let sites = futures::stream::iter(selected.instances.iter())
        .map(|inst| one_site(home, inst, sql, opts))
        .buffered(opts.parallel.max(1))
        .collect()
        .await;
    Ok(SqlReport {
        sql: sql.to_string(),
        sites,
        disabled_left_out: selected.disabled_left_out,
    })
}

async fn one_site(home: &Home, inst: &Instance, sql: &str, opts: &SqlOptions) -> SqlSite {
    let started = Instant::now();
    let mut site = SqlSite {
        instance: inst.shortname.clone(),
        host: inst.host.clone(),
        status: SiteStatus::Ok,
        duration_ms: 0,
        error: None,
        columns: Vec::new(),
        rows: Vec::new(),
        truncated: false,
    };
    match query_site(home, inst, sql, opts).await {
        Ok((columns, rows, truncated)) => {
            site.columns = columns;
            site.rows = rows;
            site.truncated = truncated;
        }
        Err(e) => {
            let msg = format!("{e:#}");
            site.status = if is_timeout_error(&msg) {
                SiteStatus::Timeout
            } else {
                SiteStatus::Failed
            };
            site.error = Some(msg);
        }
    }
    site.duration_ms = started.elapsed().as_millis() as u64;
    site
}

/// The servers' words for a statement killed at its time limit.
fn is_timeout_error(msg: &str) -> bool {
    msg.contains("max_statement_time")
        || msg.contains("statement timeout")
        || msg.contains("maximum statement execution time")
}

type Answer = (Vec<String>, Vec<Vec<Option<String>>>, bool);

async fn query_site(home: &Home, inst: &Instance, sql: &str, opts: &SqlOptions) -> Result<Answer> {
    let db = SiteDb::new(home, inst).await?;
    let expanded = expand_tables(sql, &inst.prefix, db.kind);
    let mut conn = db.conn().await?;
    let backend = conn
        .column(
            if db.kind.is_mysql_family() {
                "SELECT CAST(CONNECTION_ID() AS CHAR)"
            } else {
                "SELECT pg_backend_pid()::text"
            },
            &[],
        )
        .await?
        .pop()
        .unwrap_or_default();
    // The server's limit stops the statement; this one catches a statement that lifted it
    // (`SET STATEMENT max_statement_time = 0 FOR ...`) or a server that does not answer: the
    // statement is cancelled from a second connection (an account may cancel its own).
    let guard = opts.timeout + Duration::from_secs(5);
    match tokio::time::timeout(guard, read_only_query(&mut conn, db.kind, &expanded, opts)).await {
        Ok(r) => {
            vmoodle_dbserver::close(conn).await;
            r
        }
        Err(_) => {
            drop(conn);
            let cancelled = cancel(&db, &backend).await;
            bail!(
                "statement timeout: no answer within {} s; {}",
                guard.as_secs(),
                match cancelled {
                    Ok(()) => "the statement was cancelled on the server".to_string(),
                    Err(e) => format!("cancelling it on the server failed: {e:#}"),
                }
            )
        }
    }
}

/// Cancels the statement running on connection `backend` (its id on the server).
async fn cancel(db: &SiteDb, backend: &str) -> Result<()> {
    let id: i64 = backend
        .trim()
        .parse()
        .map_err(|_| anyhow!("no connection id ({backend:?})"))?;
    let mut c = db.conn().await?;
    let r = if db.kind.is_mysql_family() {
        c.exec(&format!("KILL QUERY {id}"), &[]).await.map(|_| ())
    } else {
        c.rows("SELECT pg_cancel_backend(?::int)::text", &[Param::I64(id)])
            .await
            .map(|_| ())
    };
    vmoodle_dbserver::close(c).await;
    Ok(r?)
}

/// The statement, alone, in a read-only transaction rolled back at the end.
async fn read_only_query(
    conn: &mut Conn,
    kind: DbKind,
    sql: &str,
    opts: &SqlOptions,
) -> Result<Answer> {
    use sqlx::{Column, Executor};
    let max = opts.max_rows;
    let server_err = |e: sqlx::Error| match e {
        sqlx::Error::Database(d) => anyhow!("{}", d.message()),
        other => anyhow!("{other}"),
    };
    // The statement alone (sqlx::query prepares: one statement only, by the server's rule), at
    // most `max` rows, then ROLLBACK; the column names of a query that returned no rows are
    // described inside the read-only transaction and its time limit, like the query.
    macro_rules! fetch_then_roll_back {
        ($c:expr, $to_row:path) => {{
            let mut columns = Vec::new();
            let mut rows = Vec::new();
            let mut truncated = false;
            let r: Result<()> = async {
                let mut s = sqlx::query(sql).fetch(&mut *$c);
                while let Some(row) = s.try_next().await.map_err(server_err)? {
                    if columns.is_empty() {
                        columns = sql_text::names(&row);
                    }
                    if rows.len() == max {
                        truncated = true;
                        break;
                    }
                    rows.push($to_row(&row));
                }
                Ok(())
            }
            .await;
            if r.is_ok() && columns.is_empty() {
                columns = $c
                    .describe(sql)
                    .await
                    .map(|d| d.columns().iter().map(|c| c.name().to_string()).collect())
                    .unwrap_or_default();
            }
            let _ = $c.execute("ROLLBACK").await;
            r?;
            Ok((columns, rows, truncated))
        }};
    }
    match conn {
        Conn::My(c) => {
            c.execute("SET SESSION TRANSACTION READ ONLY").await?;
            // MariaDB: max_statement_time (seconds, any statement); MySQL: max_execution_time
            // (milliseconds, SELECT only; MySQL has no limit for other statements).
            let limit = if kind == DbKind::Mysql {
                format!(
                    "SET SESSION max_execution_time = {}",
                    opts.timeout.as_millis().max(1)
                )
            } else {
                format!(
                    "SET SESSION max_statement_time = {:.3}",
                    opts.timeout.as_secs_f64().max(0.001)
                )
            };
            c.execute(limit.as_str()).await?;
            c.execute("START TRANSACTION READ ONLY").await?;
            fetch_then_roll_back!(c, sql_text::my_row)
        }
        Conn::Pg(c) => {
            let ms = opts.timeout.as_millis().max(1);
            c.execute("BEGIN READ ONLY").await?;
            c.execute(format!("SET LOCAL statement_timeout = {ms}").as_str())
                .await?;
            c.execute("SELECT 1").await?;
            fetch_then_roll_back!(c, sql_text::pg_row)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_expand_like_moodles() {
        assert_eq!(
            expand_tables(
                "SELECT * FROM {user} u JOIN {role_assignments} ra",
                "mdl_",
                DbKind::Pgsql
            ),
            "SELECT * FROM \"mdl_user\" u JOIN \"mdl_role_assignments\" ra"
        );
        assert_eq!(
            expand_tables(
                "SELECT '{x' , {Bad}, {a-b}, {}, {ok1}",
                "p_",
                DbKind::Mariadb
            ),
            "SELECT '{x' , {Bad}, {a-b}, {}, `p_ok1`"
        );
    }
}
