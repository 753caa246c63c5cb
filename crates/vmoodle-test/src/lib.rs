//! Test support: each test gets its own temporary home and its own uniquely named databases on
//! the real MariaDB and PostgreSQL servers, all removed when the test ends (set
//! `VMOODLE_TEST_KEEP=1` to keep them for inspection). The servers are reached as the machine's
//! administrators (`VMOODLE_TEST_MARIADB_USER`, default root; `VMOODLE_TEST_PG_USER`, default
//! postgres) on 127.0.0.1. Setup uses the servers' own client tools, as an administrator would.

pub mod lab;

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

fn password_from(var: &str) -> String {
    std::env::var_os(var)
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .unwrap_or_default()
}

/// The MariaDB test administrator's password (`VMOODLE_TEST_MARIADB_PASSWORD_FILE`; empty if unset).
pub fn mariadb_password() -> String {
    password_from("VMOODLE_TEST_MARIADB_PASSWORD_FILE")
}

/// The PostgreSQL test administrator's password (`VMOODLE_TEST_PG_PASSWORD_FILE`; empty if unset).
pub fn pg_password() -> String {
    password_from("VMOODLE_TEST_PG_PASSWORD_FILE")
}

/// 0600 client files holding the test passwords, made once per test process, so that no
/// password reaches a command line or an environment variable.
struct ClientFiles {
    _dir: tempfile::TempDir,
    my_cnf: PathBuf,
    pgpass: PathBuf,
}

fn client_files() -> &'static ClientFiles {
    static FILES: std::sync::OnceLock<ClientFiles> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("vmt-client-")
            .tempdir()
            .expect("tempdir");
        let my_cnf = dir.path().join("my.cnf");
        let pgpass = dir.path().join("pgpass");
        let pw = mariadb_password();
        std::fs::write(
            &my_cnf,
            if pw.is_empty() {
                "[client]\n".to_string()
            } else {
                format!("[client]\npassword=\"{pw}\"\n")
            },
        )
        .unwrap();
        std::fs::write(
            &pgpass,
            format!(
                "*:*:*:{}:{}\n",
                pg_user(),
                pg_password().replace('\\', "\\\\").replace(':', "\\:")
            ),
        )
        .unwrap();
        for f in [&my_cnf, &pgpass] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        ClientFiles {
            _dir: dir,
            my_cnf,
            pgpass,
        }
    })
}

/// The 0600 client option file (`--defaults-extra-file`) with the MariaDB test password.
pub fn my_cnf() -> PathBuf {
    client_files().my_cnf.clone()
}

/// The 0600 PGPASSFILE with the PostgreSQL test password.
pub fn pgpass() -> PathBuf {
    client_files().pgpass.clone()
}

/// The mariadb client as the test administrator over 127.0.0.1.
pub fn mariadb_client() -> Command {
    let mut c = Command::new("mariadb");
    c.arg(format!(
        "--defaults-extra-file={}",
        client_files().my_cnf.display()
    ));
    c.args(["-h", "127.0.0.1", "-u", &mariadb_user()]);
    c
}

/// psql as the test administrator over 127.0.0.1.
pub fn psql_client(db: &str) -> Command {
    let mut c = Command::new("psql");
    c.env("PGPASSFILE", &client_files().pgpass);
    c.args(["-h", "127.0.0.1", "-U", &pg_user(), "-d", db, "-X", "-q"]);
    c
}

/// Runs a command and panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    run_ok_stdin(cmd, None)
}

/// Runs a command with `input` on stdin and panics with its output when it fails.
pub fn run_ok_stdin(cmd: &mut Command, input: Option<&str>) -> Output {
    use std::io::Write;
    let shown = vmoodle_core::validate::printable(&format!("{cmd:?}"));
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped");
        let text = text.to_string();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{shown} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// SQL (any length, several statements) through the mariadb client as the administrator.
pub fn mariadb_sql(db: Option<&str>, sql: &str) -> String {
    let mut c = mariadb_client();
    c.args(["--batch", "--raw", "--skip-column-names"]);
    if let Some(db) = db {
        c.arg(db);
    }
    String::from_utf8_lossy(&run_ok_stdin(&mut c, Some(sql)).stdout).into_owned()
}

/// SQL (any length, several statements) through psql as the administrator.
pub fn pg_sql(db: &str, sql: &str) -> String {
    let mut c = psql_client(db);
    c.args(["-t", "-A", "-v", "ON_ERROR_STOP=1"]);
    String::from_utf8_lossy(&run_ok_stdin(&mut c, Some(sql)).stdout).into_owned()
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
        mariadb_sql(
            None,
            &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"),
        );
        Self { name, user: None }
    }

    /// Loads a gzipped dump from the fixtures.
    pub fn load_fixture(&self, file: &str) {
        let path = fixtures_dir().join(file);
        let mut c = mariadb_client();
        c.arg(&self.name);
        load_gz(&path, c);
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
        let _ = mariadb_client().args(["-e", &sql]).output();
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
        pg_sql(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"),
        );
        Self { name, user: None }
    }

    pub fn load_fixture(&self, file: &str) {
        let path = fixtures_dir().join(file);
        let mut c = psql_client(&self.name);
        c.args(["-v", "ON_ERROR_STOP=1"]);
        load_gz(&path, c);
    }

    /// Creates a login role owning this database, with rights on every table already in it
    /// (call after loading a fixture, as the fixture's tables belong to the administrator).
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
        pg_sql(
            &self.name,
            &format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO \"{user}\"; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO \"{user}\";"),
        );
        self.user = Some(user);
        self
    }

    /// The URL of this database for the administrator (as a register location).
    pub fn url(&self) -> String {
        let pw = pg_password();
        let auth = if pw.is_empty() {
            pg_user()
        } else {
            format!("{}:{}", pg_user(), pct(&pw))
        };
        format!("postgres://{auth}@127.0.0.1:5432/{}", self.name)
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
            let _ = psql_client("postgres").args(["-c", stmt]).output();
        }
    }
}

/// A temporary directory, removed on drop unless `VMOODLE_TEST_KEEP=1`.
#[derive(Debug)]
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        Self(Some(
            tempfile::Builder::new()
                .prefix(&format!("vmt-{tag}-"))
                .tempdir()
                .expect("tempdir"),
        ))
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

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Pipes a gzipped SQL file into a client command.
fn load_gz(path: &Path, mut client: Command) {
    let mut gz = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let out = client
        .stdin(gz.stdout.take().expect("piped"))
        .stdout(Stdio::null())
        .output()
        .expect("client");
    assert!(
        gz.wait().expect("gzip").success(),
        "cannot read {}",
        path.display()
    );
    assert!(
        out.status.success(),
        "loading {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The arguments of `vmoodle dbserver add` for the local servers (named `maria` and `pg`) as
/// the test administrators, each with the password to give on stdin.
pub fn local_server_args() -> [(Vec<String>, String); 2] {
    let args = |name: &str, kind: &str, user: String| -> Vec<String> {
        [
            "dbserver",
            "add",
            name,
            "--type",
            kind,
            "--host",
            "127.0.0.1",
            "--user",
            &user,
            "--password-stdin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    [
        (args("maria", "mariadb", mariadb_user()), mariadb_password()),
        (args("pg", "pgsql", pg_user()), pg_password()),
    ]
}

/// The real Moodle 5.1 code (../shared/moodle/moodle-5.1.tar.zst), unpacked once per test run
/// into the workspace's target/moodle/ and shared by every test: a lock file serializes the
/// unpack and a marker (named after the tarball's size and time) says it is complete. Returns the
/// `moodle51` directory (config.php goes at its top, the web root is its public/). Treat it as
/// read-only: a test that needs its own config.php uses [`moodle_copy`].
pub fn moodle_code() -> PathBuf {
    let tarball =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/moodle/moodle-5.1.tar.zst");
    let tarball = tarball
        .canonicalize()
        .unwrap_or_else(|e| panic!("the Moodle code {} is missing: {e}", tarball.display()));
    let meta = std::fs::metadata(&tarball).expect("tarball metadata");
    let stamp = format!(
        ".unpacked-{}-{}",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/moodle");
    std::fs::create_dir_all(&target).expect("target/moodle");
    let target = target.canonicalize().expect("target/moodle");
    let code = target.join("moodle51");
    let marker = target.join(&stamp);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target.join(".lock"))
        .expect("target/moodle/.lock");
    lock.lock().expect("locking target/moodle/.lock");
    if !marker.is_file() {
        // A partial or older unpack goes first.
        if code.exists() {
            std::fs::remove_dir_all(&code).expect("removing an old target/moodle/moodle51");
        }
        for e in std::fs::read_dir(&target).expect("target/moodle").flatten() {
            if e.file_name().to_string_lossy().starts_with(".unpacked-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // zstd -dc moodle-5.1.tar.zst | tar -x -C target/moodle
        let mut zstd = Command::new("zstd")
            .arg("-dc")
            .arg(&tarball)
            .stdout(Stdio::piped())
            .spawn()
            .expect("zstd (apt-get install zstd)");
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&target)
            .stdin(zstd.stdout.take().expect("piped"))
            .status()
            .expect("tar");
        assert!(
            zstd.wait().expect("zstd").success() && tar.success(),
            "unpacking {} failed",
            tarball.display()
        );
        assert!(
            code.join("public/lib/setup.php").is_file() || code.join("lib/setup.php").is_file(),
            "{} has no Moodle code",
            code.display()
        );
        std::fs::write(&marker, b"").expect("marker");
    }
    drop(lock);
    code
}

/// A private copy of the Moodle code for one test (hard links into [`moodle_code`], made in a
/// second or two), so the test can write its own config.php; removed with `dir`. Files Moodle
/// reads are shared; a test must replace a file (write a new one), never modify it in place.
pub fn moodle_copy(dir: &Path) -> PathBuf {
    let code = moodle_code();
    let dest = dir.join("moodle");
    // cp -al moodle51 DIR/moodle
    let ok = Command::new("cp")
        .arg("-al")
        .arg(&code)
        .arg(&dest)
        .status()
        .expect("cp");
    assert!(ok.success(), "copying {} failed", code.display());
    dest
}
