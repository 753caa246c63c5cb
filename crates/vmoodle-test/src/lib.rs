//! Test support: each test gets its own temporary home and its own uniquely named databases on
//! the real MariaDB and PostgreSQL servers, all removed when the test ends (set
//! `VMOODLE_TEST_KEEP=1` to keep them for inspection). The servers are reached as the machine's
//! administrators (`VMOODLE_TEST_MARIADB_USER`, default root; `VMOODLE_TEST_PG_USER`, default
//! postgres) on 127.0.0.1. Setup uses the servers' own client tools, as an administrator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set to keep temporary homes and databases after a test.
pub const KEEP_ENV: &str = "VMOODLE_TEST_KEEP";

fn keep() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1")
}

/// A name no other test (or run) uses: `vmt_<pid>_<counter>_<random>`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut r = [0u8; 3];
    openssl::rand::rand_bytes(&mut r).expect("random");
    format!(
        "vmt_{tag}_{}_{}_{:02x}{:02x}{:02x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        r[0],
        r[1],
        r[2]
    )
}

/// The workspace's shared fixtures (../shared/fixtures/moodle-5.1 from the project root).
pub fn fixtures_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("../shared/fixtures/moodle-5.1");
    p.canonicalize().unwrap_or(p)
}

pub fn mariadb_user() -> String {
    std::env::var("VMOODLE_TEST_MARIADB_USER").unwrap_or_else(|_| "root".into())
}

pub fn pg_user() -> String {
    std::env::var("VMOODLE_TEST_PG_USER").unwrap_or_else(|_| "postgres".into())
}

/// Runs a command and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// SQL through the mariadb client as the administrator.
pub fn mariadb_sql(db: Option<&str>, sql: &str) -> String {
    let mut c = Command::new("mariadb");
    c.args(["-h", "127.0.0.1", "-u", &mariadb_user(), "--batch", "--skip-column-names"]);
    if let Some(db) = db {
        c.arg(db);
    }
    c.args(["-e", sql]);
    String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
}

/// SQL through psql as the administrator.
pub fn pg_sql(db: &str, sql: &str) -> String {
    let mut c = Command::new("psql");
    c.args(["-h", "127.0.0.1", "-U", &pg_user(), "-d", db, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
}

/// A database (and optionally a user of the same name) on the local MariaDB, dropped on drop.
#[derive(Debug)]
pub struct MariaDb {
    pub name: String,
    pub user: Option<String>,
}

impl MariaDb {
    pub fn create(tag: &str) -> Self {
        let name = unique_name(tag);
        mariadb_sql(None, &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"));
        Self { name, user: None }
    }

    /// Loads a gzipped dump from the fixtures.
    pub fn load_fixture(&self, file: &str) {
        let path = fixtures_dir().join(file);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "gzip -dc '{}' | mariadb -h 127.0.0.1 -u '{}' '{}'",
                path.display(),
                mariadb_user(),
                self.name
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("load fixture");
        assert!(child.wait().expect("load fixture").success(), "loading {} failed", path.display());
    }

    /// Creates a user with rights on this database only.
    pub fn with_user(mut self, password: &str) -> Self {
        let user = self.name.clone();
        mariadb_sql(
            None,
            &format!(
                "CREATE USER '{user}'@'%' IDENTIFIED BY '{}'; GRANT ALL ON `{}`.* TO '{user}'@'%';",
                password.replace('\'', "''"),
                self.name
            ),
        );
        self.user = Some(user);
        self
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if keep() {
            eprintln!("kept MariaDB database {}", self.name);
            return;
        }
        let mut sql = format!("DROP DATABASE IF EXISTS `{}`;", self.name);
        if let Some(u) = &self.user {
            sql.push_str(&format!("DROP USER IF EXISTS '{u}'@'%';"));
        }
        let _ = Command::new("mariadb").args(["-h", "127.0.0.1", "-u", &mariadb_user(), "-e", &sql]).output();
    }
}

/// A database (and optionally a role of the same name) on the local PostgreSQL, dropped on drop.
#[derive(Debug)]
pub struct PgDb {
    pub name: String,
    pub user: Option<String>,
}

impl PgDb {
    pub fn create(tag: &str) -> Self {
        let name = unique_name(tag);
        pg_sql("postgres", &format!("CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"));
        Self { name, user: None }
    }

    pub fn load_fixture(&self, file: &str) {
        let path = fixtures_dir().join(file);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "gzip -dc '{}' | psql -h 127.0.0.1 -U '{}' -d '{}' -X -q -v ON_ERROR_STOP=1",
                path.display(),
                pg_user(),
                self.name
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("load fixture");
        assert!(child.wait().expect("load fixture").success(), "loading {} failed", path.display());
    }

    pub fn with_user(mut self, password: &str) -> Self {
        let user = self.name.clone();
        pg_sql(
            "postgres",
            &format!(
                "CREATE ROLE \"{user}\" LOGIN PASSWORD '{}'; ALTER DATABASE \"{}\" OWNER TO \"{user}\";",
                password.replace('\'', "''"),
                self.name
            ),
        );
        self.user = Some(user);
        self
    }

    /// The URL of this database for the administrator (as a register location).
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:5432/{}", pg_user(), self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        if keep() {
            eprintln!("kept PostgreSQL database {}", self.name);
            return;
        }
        let mut sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE);", self.name);
        if let Some(u) = &self.user {
            sql.push_str(&format!("DROP ROLE IF EXISTS \"{u}\";"));
        }
        for stmt in sql.split_inclusive(';') {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", &pg_user(), "-d", "postgres", "-X", "-q", "-c", stmt])
                .output();
        }
    }
}

/// A temporary directory, removed on drop unless `VMOODLE_TEST_KEEP=1`.
#[derive(Debug)]
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        Self(Some(tempfile::Builder::new().prefix(&format!("vmt-{tag}-")).tempdir().expect("tempdir")))
    }
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present").path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if keep() {
            if let Some(d) = self.0.take() {
                eprintln!("kept {}", d.keep().display());
            }
        }
    }
}

/// Base64 of bytes (to hand arbitrary bytes, NUL included, to a PHP script's argv).
pub fn base64(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
}
