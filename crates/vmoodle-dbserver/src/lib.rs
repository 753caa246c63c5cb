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

pub mod tools;

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
    #[error("{0}")]
    Invalid(String),
    #[error("table `{table}` was not found in database `{database}` on server `{server}`")]
    NoTable {
        server: String,
        database: String,
        table: String,
    },
}

impl DbError {
    /// Whether the statement failed because what it creates already exists (a database or a
    /// user): MariaDB/MySQL errors 1007 (database) and 1396 (CREATE USER), PostgreSQL SQLSTATE
    /// 42P04 (duplicate database) and 42710 (duplicate object, a role).
    pub fn already_exists(&self) -> bool {
        let DbError::Query {
            source: sqlx::Error::Database(d),
            ..
        } = self
        else {
            return false;
        };
        if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return matches!(my.number(), 1007 | 1396);
        }
        matches!(d.code().as_deref(), Some("42P04" | "42710"))
    }
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
    /// Whether the account can read other accounts and their privileges (MariaDB/MySQL:
    /// SELECT on mysql.user; PostgreSQL's pg_roles is readable by every role). Deploys check
    /// that a user name is free, and `instance add` that an account has no server-wide powers.
    pub can_read_accounts: bool,
    pub superuser: bool,
    /// MariaDB/MySQL: the database name patterns (`vm%`) on which the account may create
    /// databases and grant rights, when it may not everywhere. Empty otherwise.
    pub only_databases: Vec<String>,
}

impl CheckReport {
    /// Whether the account can do what deploys need (create databases and dedicated users).
    pub fn can_deploy(&self) -> bool {
        self.can_create_databases
            && self.can_create_users
            && self.can_grant
            && self.can_read_accounts
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
        can_read_accounts: false,
        superuser: false,
        only_databases: Vec::new(),
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
            // Rights on database name patterns (`GRANT ALL ON `vm%`.* ... WITH GRANT OPTION`).
            if !r.can_create_databases || !r.can_grant {
                let rows = sqlx::query(
                    "SELECT CAST(TABLE_SCHEMA AS CHAR), CAST(PRIVILEGE_TYPE AS CHAR), CAST(IS_GRANTABLE AS CHAR) FROM information_schema.SCHEMA_PRIVILEGES \
                     WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                     SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
                )
                .fetch_all(&mut *c)
                .await
                .map_err(qerr("reading the account's database privileges"))?;
                let mut create = Vec::new();
                let mut grant = Vec::new();
                for row in rows {
                    let db: String = row
                        .try_get(0)
                        .map_err(qerr("reading the account's database privileges"))?;
                    let p: String = row
                        .try_get(1)
                        .map_err(qerr("reading the account's database privileges"))?;
                    let g: String = row
                        .try_get(2)
                        .map_err(qerr("reading the account's database privileges"))?;
                    if p == "CREATE" {
                        create.push(db.clone());
                    }
                    if g == "YES" {
                        grant.push(db);
                    }
                }
                let both: Vec<String> = create
                    .iter()
                    .filter(|d| grant.contains(d))
                    .cloned()
                    .collect();
                if !r.can_create_databases && !both.is_empty() {
                    r.can_create_databases = true;
                    r.can_grant = true;
                    r.only_databases = both;
                }
            }
            r.can_read_accounts = sqlx::query("SELECT User FROM mysql.user LIMIT 1")
                .fetch_optional(&mut *c)
                .await
                .is_ok();
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
            r.can_read_accounts = true;
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

/// A value bound to a query.
#[derive(Debug, Clone)]
pub enum Param {
    Str(String),
    I64(i64),
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Str(s.to_string())
    }
}
impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Str(s)
    }
}
impl From<i64> for Param {
    fn from(n: i64) -> Self {
        Param::I64(n)
    }
}

/// `?` placeholders as PostgreSQL's `$1, $2...` (vmoodle's own SQL never holds a literal `?`).
fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

impl Conn {
    pub fn kind_is_mysql(&self) -> bool {
        matches!(self, Conn::My(_))
    }

    /// Runs one statement with `?` placeholders; returns the number of rows it touched.
    pub async fn exec(&mut self, sql: &str, params: &[Param]) -> Result<u64, sqlx::Error> {
        macro_rules! bind_all {
            ($q:expr) => {{
                let mut q = $q;
                for p in params {
                    q = match p {
                        Param::Str(s) => q.bind(s.clone()),
                        Param::I64(n) => q.bind(*n),
                    };
                }
                q
            }};
        }
        match self {
            Conn::My(c) => {
                if params.is_empty() {
                    // Statements MariaDB cannot prepare (DDL, RENAME ...) go through the text protocol.
                    use sqlx::Executor;
                    Ok(c.execute(sql).await?.rows_affected())
                } else {
                    Ok(bind_all!(sqlx::query(sql))
                        .execute(&mut *c)
                        .await?
                        .rows_affected())
                }
            }
            Conn::Pg(c) => {
                if params.is_empty() {
                    use sqlx::Executor;
                    Ok(c.execute(sql).await?.rows_affected())
                } else {
                    let sql = pg_placeholders(sql);
                    Ok(bind_all!(sqlx::query(&sql))
                        .execute(&mut *c)
                        .await?
                        .rows_affected())
                }
            }
        }
    }

    /// Runs several statements (no bound values) in one round trip; returns the rows touched.
    pub async fn batch(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        match self {
            Conn::My(c) => Ok(sqlx::raw_sql(sql).execute(&mut *c).await?.rows_affected()),
            Conn::Pg(c) => Ok(sqlx::raw_sql(sql).execute(&mut *c).await?.rows_affected()),
        }
    }

    /// Runs a query whose columns are all text (cast them in SQL), `?` placeholders.
    pub async fn rows(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
        macro_rules! go {
            ($c:expr, $sql:expr) => {{
                let mut q = sqlx::query($sql);
                for p in params {
                    q = match p {
                        Param::Str(s) => q.bind(s.clone()),
                        Param::I64(n) => q.bind(*n),
                    };
                }
                let rows = q.fetch_all(&mut *$c).await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let mut v = Vec::with_capacity(r.len());
                    for i in 0..r.len() {
                        v.push(r.try_get::<Option<String>, _>(i)?);
                    }
                    out.push(v);
                }
                Ok(out)
            }};
        }
        match self {
            Conn::My(c) => go!(c, sql),
            Conn::Pg(c) => {
                let sql = pg_placeholders(sql);
                go!(c, &sql)
            }
        }
    }

    /// The first column of every row.
    pub async fn column(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<String>, sqlx::Error> {
        Ok(self
            .rows(sql, params)
            .await?
            .into_iter()
            .filter_map(|mut r| r.swap_remove(0))
            .collect())
    }
}

/// A string literal for DDL that cannot take bound values (CREATE USER ... IDENTIFIED BY).
pub fn quote_literal(kind: DbKind, s: &str) -> String {
    if kind.is_mysql_family() {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// A MariaDB/MySQL `GRANT ... ON db.*` database name: `_` and `%` are wildcards there (a grant
/// on `school_1` would also cover `school11`), so they and the escape character are escaped.
pub fn grant_database(db: &str) -> String {
    let mut escaped = String::with_capacity(db.len() + 4);
    for c in db.chars() {
        if matches!(c, '\\' | '_' | '%') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    quote_ident(DbKind::Mariadb, &escaped)
}

/// MariaDB/MySQL `mysql_native_password` hash: `*` + upper hex SHA1(SHA1(password)).
pub fn mysql_native_hash(password: &Secret) -> String {
    use openssl::sha::sha1;
    let h = sha1(&sha1(password.expose().as_bytes()));
    let mut out = String::with_capacity(41);
    out.push('*');
    for b in h {
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// PostgreSQL SCRAM-SHA-256 verifier computed here (RFC 5802/7677, PostgreSQL's
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), so the password itself never
/// reaches the server, its logs or `pg_stat_activity`. PostgreSQL SASLprep-normalises passwords;
/// for printable ASCII that is the identity, and other passwords are refused here.
pub fn scram_sha256_verifier(
    password: &Secret,
    salt: &[u8],
    iterations: usize,
) -> Result<String, String> {
    use openssl::base64::encode_block;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;
    if !password.expose().bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("a PostgreSQL password vmoodle sets must be printable ASCII (the SCRAM verifier is computed by vmoodle, and PostgreSQL normalises other characters with SASLprep)".into());
    }
    let err = |e: openssl::error::ErrorStack| format!("computing a SCRAM verifier: {e}");
    let mut salted = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        password.expose().as_bytes(),
        salt,
        iterations,
        MessageDigest::sha256(),
        &mut salted,
    )
    .map_err(err)?;
    let key = PKey::hmac(&salted).map_err(err)?;
    let hmac = |msg: &[u8]| -> Result<Vec<u8>, String> {
        let mut s = Signer::new(MessageDigest::sha256(), &key).map_err(err)?;
        s.update(msg).map_err(err)?;
        s.sign_to_vec().map_err(err)
    };
    let client_key = hmac(b"Client Key")?;
    let stored_key = openssl::sha::sha256(&client_key);
    let server_key = hmac(b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        encode_block(salt),
        encode_block(&stored_key),
        encode_block(&server_key)
    ))
}

/// The statements that create a login `user` (with all rights on `database` if given, and
/// nothing else). The password is sent only as a hash: MariaDB's mysql_native_password hash,
/// PostgreSQL's SCRAM-SHA-256 verifier, so statement logs never hold it in clear.
pub fn create_user_statements(
    kind: DbKind,
    user: &str,
    password: &Secret,
    database: Option<&str>,
) -> Result<Vec<String>, String> {
    if kind.is_mysql_family() {
        let u = format!("{}@'%'", quote_literal(kind, user));
        let mut v = vec![format!(
            "CREATE USER {u} IDENTIFIED WITH mysql_native_password AS {}",
            quote_literal(kind, &mysql_native_hash(password))
        )];
        if let Some(db) = database {
            v.push(format!(
                "GRANT ALL PRIVILEGES ON {}.* TO {u}",
                grant_database(db)
            ));
        }
        Ok(v)
    } else {
        let mut salt = [0u8; 16];
        openssl::rand::rand_bytes(&mut salt).map_err(|e| format!("random salt: {e}"))?;
        let verifier = scram_sha256_verifier(password, &salt, 4096)?;
        let u = quote_ident(kind, user);
        let mut v = vec![format!(
            "CREATE ROLE {u} LOGIN PASSWORD {}",
            quote_literal(kind, &verifier)
        )];
        if let Some(db) = database {
            let d = quote_ident(kind, db);
            v.push(format!("REVOKE ALL ON DATABASE {d} FROM PUBLIC"));
            v.push(format!("GRANT ALL ON DATABASE {d} TO {u}"));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_database_escapes_wildcards() {
        assert_eq!(grant_database("vmt_x_1"), "`vmt\\_x\\_1`");
        assert_eq!(grant_database("a%b\\c"), "`a\\%b\\\\c`");
        assert_eq!(grant_database("plain"), "`plain`");
    }

    #[test]
    fn native_hash_matches_mariadb() {
        // SELECT PASSWORD('secret') on MariaDB.
        assert_eq!(
            mysql_native_hash(&Secret::new("secret")),
            "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
        );
    }

    #[test]
    fn scram_verifier_rfc7677_vector() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, i=4096.
        let salt = openssl::base64::decode_block("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_sha256_verifier(&Secret::new("pencil"), &salt, 4096).unwrap();
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        assert!(scram_sha256_verifier(&Secret::new("pâss"), &salt, 4096).is_err());
    }

    #[test]
    fn create_user_statements_hold_no_clear_password() {
        let pw = Secret::new("Sup3rSecretPw0rd");
        for kind in [DbKind::Mariadb, DbKind::Pgsql] {
            let stmts = create_user_statements(kind, "vmt_a_1", &pw, Some("vmt_a_1")).unwrap();
            assert!(stmts.len() >= 2, "{stmts:?}");
            for s in &stmts {
                assert!(!s.contains(pw.expose()), "{kind}: {s}");
            }
        }
        let my = create_user_statements(DbKind::Mariadb, "u", &pw, Some("vmt_a_1")).unwrap();
        assert!(my[1].contains("`vmt\\_a\\_1`.*"), "{}", my[1]);
    }
}

/// Administrative operations on a server with its administrator account.
pub mod admin {
    use super::*;

    fn qerr(spec: &ConnSpec, context: String) -> impl FnOnce(sqlx::Error) -> DbError + '_ {
        move |source| DbError::Query {
            server: spec.server.clone(),
            context,
            source,
        }
    }

    pub async fn database_exists(spec: &ConnSpec, name: &str) -> Result<bool, DbError> {
        let mut c = connect(spec, None).await?;
        let sql = if spec.kind.is_mysql_family() {
            "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?"
        } else {
            "SELECT datname::text FROM pg_database WHERE datname = ?"
        };
        let r = c
            .column(sql, &[name.into()])
            .await
            .map_err(qerr(spec, format!("looking for database `{name}`")))?;
        close(c).await;
        Ok(!r.is_empty())
    }

    pub async fn user_exists(spec: &ConnSpec, user: &str) -> Result<bool, DbError> {
        let mut c = connect(spec, None).await?;
        let sql = if spec.kind.is_mysql_family() {
            "SELECT CAST(User AS CHAR) FROM mysql.user WHERE User = ?"
        } else {
            "SELECT rolname::text FROM pg_roles WHERE rolname = ?"
        };
        let r = c
            .column(sql, &[user.into()])
            .await
            .map_err(qerr(spec, format!("looking for user `{user}`")))?;
        close(c).await;
        Ok(!r.is_empty())
    }

    /// Runs statements (no bound values) on the server, in order, on one connection.
    pub async fn run(
        spec: &ConnSpec,
        database: Option<&str>,
        context: &str,
        statements: &[String],
    ) -> Result<(), DbError> {
        let mut c = connect(spec, database).await?;
        for s in statements {
            if let Err(e) = c.exec(s, &[]).await {
                close(c).await;
                return Err(DbError::Query {
                    server: spec.server.clone(),
                    context: context.to_string(),
                    source: e,
                });
            }
        }
        close(c).await;
        Ok(())
    }

    pub async fn create_database(spec: &ConnSpec, name: &str) -> Result<(), DbError> {
        let q = quote_ident(spec.kind, name);
        let sql = if spec.kind.is_mysql_family() {
            format!("CREATE DATABASE {q} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        } else {
            format!("CREATE DATABASE {q} ENCODING 'UTF8' TEMPLATE template0")
        };
        run(spec, None, &format!("creating database `{name}`"), &[sql]).await
    }

    pub async fn drop_database(spec: &ConnSpec, name: &str) -> Result<(), DbError> {
        let q = quote_ident(spec.kind, name);
        let sql = if spec.kind.is_mysql_family() {
            format!("DROP DATABASE IF EXISTS {q}")
        } else {
            format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)")
        };
        run(spec, None, &format!("dropping database `{name}`"), &[sql]).await
    }

    /// A login with all rights on `database` and nothing else. No statement holds the password
    /// in clear (see [`create_user_statements`]).
    pub async fn create_user(
        spec: &ConnSpec,
        user: &str,
        password: &Secret,
        database: &str,
    ) -> Result<(), DbError> {
        let stmts = create_user_statements(spec.kind, user, password, Some(database))
            .map_err(|e| DbError::Invalid(e.to_string()))?;
        run(
            spec,
            None,
            &format!("creating database user `{user}`"),
            &stmts,
        )
        .await
    }

    /// A PostgreSQL login role with no rights yet (deploys hand it its database afterwards).
    pub async fn create_role(
        spec: &ConnSpec,
        user: &str,
        password: &Secret,
    ) -> Result<(), DbError> {
        let stmts = create_user_statements(spec.kind, user, password, None)
            .map_err(|e| DbError::Invalid(e.to_string()))?;
        run(
            spec,
            None,
            &format!("creating database user `{user}`"),
            &stmts,
        )
        .await
    }

    pub async fn drop_user(spec: &ConnSpec, user: &str) -> Result<(), DbError> {
        let sql = if spec.kind.is_mysql_family() {
            format!("DROP USER IF EXISTS {}@'%'", quote_literal(spec.kind, user))
        } else {
            format!("DROP ROLE IF EXISTS {}", quote_ident(spec.kind, user))
        };
        run(
            spec,
            None,
            &format!("dropping database user `{user}`"),
            &[sql],
        )
        .await
    }

    /// What makes `user` more than a one-database account, read with the administrator
    /// account: on MariaDB/MySQL its global privileges (anything beyond USAGE) and GRANT OPTION,
    /// on any of its hosts; on PostgreSQL superuser, CREATEROLE, CREATEDB, REPLICATION and
    /// BYPASSRLS. Empty for an account that does not exist (yet).
    pub async fn account_powers(spec: &ConnSpec, user: &str) -> Result<Vec<String>, DbError> {
        let mut c = connect(spec, None).await?;
        let ctx = || format!("reading the privileges of `{user}`");
        let mut powers = Vec::new();
        if spec.kind.is_mysql_family() {
            let rows = c
                .rows(
                    "SELECT CAST(GRANTEE AS CHAR), CAST(PRIVILEGE_TYPE AS CHAR), CAST(IS_GRANTABLE AS CHAR) FROM information_schema.USER_PRIVILEGES",
                    &[],
                )
                .await
                .map_err(qerr(spec, ctx()));
            let exists = c
                .column(
                    "SELECT CAST(User AS CHAR) FROM mysql.user WHERE User = ?",
                    &[user.into()],
                )
                .await
                .map_err(qerr(spec, ctx()));
            close(c).await;
            let (rows, exists) = (rows?, !exists?.is_empty());
            let visible = rows.iter().any(|r| {
                r[0].as_deref()
                    .and_then(|g| g.strip_prefix('\''))
                    .and_then(|g| g.rsplit_once("'@'"))
                    .is_some_and(|(u, _)| u.replace("''", "'") == user)
            });
            // Every account has at least a USAGE row; none means the administrator may not see
            // other accounts' privileges, and nothing could be concluded.
            if exists && !visible {
                return Err(DbError::Invalid(format!(
                    "the administrator account `{}` of server `{}` cannot see the privileges of `{user}`\nhint: grant it SELECT ON mysql.* (see the README, least privileges)",
                    spec.user, spec.server
                )));
            }
            for r in rows {
                let grantee = r[0].clone().unwrap_or_default();
                // GRANTEE is 'user'@'host' (a quote in the name is doubled).
                let name = grantee
                    .strip_prefix('\'')
                    .and_then(|g| g.rsplit_once("'@'"))
                    .map(|(u, _)| u.replace("''", "'"));
                if name.as_deref() != Some(user) {
                    continue;
                }
                let p = r[1].clone().unwrap_or_default();
                if p != "USAGE" && !powers.contains(&p) {
                    powers.push(p);
                }
                if r[2].as_deref() == Some("YES") && !powers.iter().any(|p| p == "GRANT OPTION") {
                    powers.push("GRANT OPTION".into());
                }
            }
        } else {
            let rows = c
                .rows(
                    "SELECT rolsuper::text, rolcreaterole::text, rolcreatedb::text, rolreplication::text, rolbypassrls::text FROM pg_roles WHERE rolname = ?",
                    &[user.into()],
                )
                .await
                .map_err(qerr(spec, ctx()));
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    close(c).await;
                    return Err(e);
                }
            };
            if let Some(r) = rows.into_iter().next() {
                for (v, name) in r.iter().zip([
                    "SUPERUSER",
                    "CREATEROLE",
                    "CREATEDB",
                    "REPLICATION",
                    "BYPASSRLS",
                ]) {
                    if v.as_deref() == Some("true") {
                        powers.push(name.to_string());
                    }
                }
                // Powers inherited from roles it is a member of, and the predefined roles that
                // reach the server's files and programs or every database's data.
                let member_of = c
                    .rows(
                        "SELECT r.rolname::text, (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls)::text \
                         FROM pg_roles r WHERE r.rolname <> ? AND pg_has_role(?, r.oid, 'MEMBER')",
                        &[user.into(), user.into()],
                    )
                    .await
                    .map_err(qerr(spec, ctx()));
                close(c).await;
                for m in member_of? {
                    let role = m[0].clone().unwrap_or_default();
                    let strong = m[1].as_deref() == Some("true");
                    if strong
                        || matches!(
                            role.as_str(),
                            "pg_execute_server_program"
                                | "pg_write_server_files"
                                | "pg_read_server_files"
                                | "pg_read_all_data"
                                | "pg_write_all_data"
                        )
                    {
                        powers.push(format!("member of {role}"));
                    }
                }
            } else {
                close(c).await;
            }
        }
        Ok(powers)
    }

    /// Tables of `database` whose names start with `prefix`.
    pub async fn tables(
        spec: &ConnSpec,
        database: &str,
        prefix: &str,
    ) -> Result<Vec<String>, DbError> {
        let mut c = connect(spec, Some(database)).await?;
        let sql = if spec.kind.is_mysql_family() {
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"
        } else {
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        };
        let all = c
            .column(sql, &[])
            .await
            .map_err(qerr(spec, format!("listing tables of `{database}`")))?;
        close(c).await;
        Ok(all.into_iter().filter(|t| t.starts_with(prefix)).collect())
    }
}
