//! Database servers as vmoodle sees them: a connection spec (kind, address, administrator account
//! with its password kept in a `Secret`), a check that reports the server version and what the
//! account may do, and reading rows from an existing Moodle database (VMoodle's register).
//! Passwords go to the server over the client protocol, never through argv or the environment.

use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;
use vmoodle_core::{DbKind, Secret};

#[derive(Debug, Error)]
pub enum DbError {
    #[error("cannot connect to database server `{server}` ({kind} at {address}) as `{user}`: {source}\nhint: is the server running and reachable, and are the account and password right? `vmoodle dbserver check {server}` tests it")]
    Connect {
        server: String,
        kind: DbKind,
        address: String,
        user: String,
        source: sqlx::Error,
    },
    #[error("database server `{server}` did not answer within {secs} s ({address})")]
    Timeout {
        server: String,
        address: String,
        secs: u64,
    },
    #[error("query on database server `{server}` failed ({context}): {source}")]
    Query {
        server: String,
        context: String,
        source: sqlx::Error,
    },
    #[error("table `{table}` was not found in database `{database}` on server `{server}`")]
    NoTable {
        server: String,
        database: String,
        table: String,
    },
}

/// How to reach a database server with a given account.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// The registered name, for messages.
    pub server: String,
    pub kind: DbKind,
    pub host: String,
    pub port: u16,
    pub socket: Option<String>,
    pub user: String,
    pub password: Secret,
}

impl ConnSpec {
    pub fn address(&self) -> String {
        match &self.socket {
            Some(s) => format!("socket {s}"),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// An open connection of either family.
pub enum Conn {
    My(MySqlConnection),
    Pg(PgConnection),
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, to `database` if given (else the server's default).
pub async fn connect(spec: &ConnSpec, database: Option<&str>) -> Result<Conn, DbError> {
    let err = |source| DbError::Connect {
        server: spec.server.clone(),
        kind: spec.kind,
        address: spec.address(),
        user: spec.user.clone(),
        source,
    };
    let fut = async {
        if spec.kind.is_mysql_family() {
            let mut o = MySqlConnectOptions::new()
                .username(&spec.user)
                .charset("utf8mb4")
                .disable_statement_logging();
            if !spec.password.is_empty() {
                o = o.password(spec.password.expose());
            }
            o = match &spec.socket {
                Some(s) => o.socket(s),
                None => o.host(&spec.host).port(spec.port),
            };
            if let Some(db) = database {
                o = o.database(db);
            }
            MySqlConnection::connect_with(&o)
                .await
                .map(Conn::My)
                .map_err(err)
        } else {
            let mut o = PgConnectOptions::new()
                .username(&spec.user)
                .database(database.unwrap_or("postgres"))
                .application_name("vmoodle")
                .disable_statement_logging();
            if !spec.password.is_empty() {
                o = o.password(spec.password.expose());
            }
            o = match &spec.socket {
                Some(s) => o.socket(s),
                None => o.host(&spec.host).port(spec.port),
            };
            PgConnection::connect_with(&o)
                .await
                .map(Conn::Pg)
                .map_err(err)
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| DbError::Timeout {
            server: spec.server.clone(),
            address: spec.address(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })?
}

/// What `vmoodle dbserver check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub server: String,
    pub kind: DbKind,
    pub address: String,
    pub user: String,
    pub version: String,
    pub can_create_databases: bool,
    pub can_create_users: bool,
    pub can_grant: bool,
    pub superuser: bool,
}

impl CheckReport {
    /// Whether the account can do what deploys need (create databases and dedicated users).
    pub fn can_deploy(&self) -> bool {
        self.can_create_databases && self.can_create_users && self.can_grant
    }
}

pub async fn check(spec: &ConnSpec) -> Result<CheckReport, DbError> {
    let mut conn = connect(spec, None).await?;
    let qerr = |context: &str| {
        let server = spec.server.clone();
        let context = context.to_string();
        move |source| DbError::Query {
            server,
            context,
            source,
        }
    };
    let mut r = CheckReport {
        server: spec.server.clone(),
        kind: spec.kind,
        address: spec.address(),
        user: spec.user.clone(),
        version: String::new(),
        can_create_databases: false,
        can_create_users: false,
        can_grant: false,
        superuser: false,
    };
    match &mut conn {
        Conn::My(c) => {
            r.version = sqlx::query_scalar::<_, String>("SELECT VERSION()")
                .fetch_one(&mut *c)
                .await
                .map_err(qerr("reading the version"))?;
            // Global privileges of the account we logged in as.
            let rows = sqlx::query(
                "SELECT PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.USER_PRIVILEGES \
                 WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                 SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
            )
            .fetch_all(&mut *c)
            .await
            .map_err(qerr("reading the account's privileges"))?;
            for row in rows {
                let p: String = row
                    .try_get(0)
                    .map_err(qerr("reading the account's privileges"))?;
                let g: String = row
                    .try_get(1)
                    .map_err(qerr("reading the account's privileges"))?;
                match p.as_str() {
                    "CREATE" => r.can_create_databases = true,
                    "CREATE USER" => r.can_create_users = true,
                    "SUPER" => r.superuser = true,
                    _ => {}
                }
                if g == "YES" {
                    r.can_grant = true;
                }
            }
        }
        Conn::Pg(c) => {
            r.version = sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&mut *c)
                .await
                .map_err(qerr("reading the version"))?;
            let row = sqlx::query("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut *c)
                .await
                .map_err(qerr("reading the account's attributes"))?;
            r.superuser = row
                .try_get(0)
                .map_err(qerr("reading the account's attributes"))?;
            r.can_create_databases = r.superuser
                || row
                    .try_get::<bool, _>(1)
                    .map_err(qerr("reading the account's attributes"))?;
            r.can_create_users = r.superuser
                || row
                    .try_get::<bool, _>(2)
                    .map_err(qerr("reading the account's attributes"))?;
            // A role that creates roles can grant them rights on databases it owns.
            r.can_grant = r.can_create_users;
        }
    }
    close(conn).await;
    Ok(r)
}

pub async fn close(conn: Conn) {
    let _ = match conn {
        Conn::My(c) => c.close().await,
        Conn::Pg(c) => c.close().await,
    };
}

/// Quotes an identifier for the server's SQL dialect.
pub fn quote_ident(kind: DbKind, ident: &str) -> String {
    if kind.is_mysql_family() {
        format!("`{}`", ident.replace('`', "``"))
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

/// Reads every row of `table` in `database`, the named columns as text (NULL as None). Columns
/// missing from the table come back as None.
pub async fn read_table(
    spec: &ConnSpec,
    database: &str,
    table: &str,
    columns: &[&str],
) -> Result<Vec<BTreeMap<String, Option<String>>>, DbError> {
    let mut conn = connect(spec, Some(database)).await?;
    let qerr = |context: &str| {
        let server = spec.server.clone();
        let context = context.to_string();
        move |source| DbError::Query {
            server,
            context,
            source,
        }
    };
    let present: Vec<String> = match &mut conn {
        Conn::My(c) => sqlx::query_scalar::<_, String>(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        )
        .bind(table)
        .fetch_all(&mut *c)
        .await
        .map_err(qerr("reading the table's columns"))?,
        Conn::Pg(c) => sqlx::query_scalar::<_, String>(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&mut *c)
        .await
        .map_err(qerr("reading the table's columns"))?,
    };
    if present.is_empty() {
        close(conn).await;
        return Err(DbError::NoTable {
            server: spec.server.clone(),
            database: database.into(),
            table: table.into(),
        });
    }
    let wanted: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| present.iter().any(|p| p == c))
        .collect();
    let select: Vec<String> = wanted
        .iter()
        .map(|c| {
            let qc = quote_ident(spec.kind, c);
            if spec.kind.is_mysql_family() {
                format!("CAST({qc} AS CHAR)")
            } else {
                format!("CAST({qc} AS TEXT)")
            }
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        select.join(", "),
        quote_ident(spec.kind, table),
        if present.iter().any(|p| p == "id") {
            quote_ident(spec.kind, "id")
        } else {
            "1".into()
        }
    );
    let mut out = Vec::new();
    macro_rules! collect_rows {
        ($c:expr) => {{
            let rows = sqlx::query(&sql)
                .fetch_all(&mut *$c)
                .await
                .map_err(qerr("reading the table"))?;
            for row in rows {
                let mut m = BTreeMap::new();
                for (i, col) in wanted.iter().enumerate() {
                    let v: Option<String> = row.try_get(i).map_err(qerr("reading the table"))?;
                    m.insert(col.to_string(), v);
                }
                for col in columns {
                    m.entry(col.to_string()).or_insert(None);
                }
                out.push(m);
            }
        }};
    }
    match &mut conn {
        Conn::My(c) => collect_rows!(c),
        Conn::Pg(c) => collect_rows!(c),
    }
    close(conn).await;
    Ok(out)
}
