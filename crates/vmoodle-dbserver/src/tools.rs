//! The database servers' own client tools: dumps and loads. Passwords reach them through a 0600
//! file (`--defaults-extra-file` for mariadb/mariadb-dump, `PGPASSFILE` for psql/pg_dump/
//! pg_restore) that lives only as long as the command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use vmoodle_exec::{ExecError, Tool};

use crate::ConnSpec;

#[derive(Debug, Error)]
pub enum ToolError {
    #[error("{what} failed: {source}")]
    Exec { what: String, source: ExecError },
    #[error("{what}: the client `{program}` has no --sandbox option, and vmoodle loads a dump only in the client's sandbox (so that the dump cannot run client commands such as `\\!`)\nhint: install MariaDB's client (10.5.25, 10.6.18, 10.11.8, 11.0.6 or later) and point `executables.mariadb` at it")]
    NoSandbox { what: String, program: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Paths of the client tools (resolved from the settings by the caller).
#[derive(Debug, Clone)]
pub struct Clients {
    pub mariadb: PathBuf,
    pub mariadb_dump: PathBuf,
    pub psql: PathBuf,
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
}

/// A 0600 credentials file for one command.
struct Credentials {
    file: tempfile::NamedTempFile,
}

impl Credentials {
    fn new(spec: &ConnSpec) -> std::io::Result<Self> {
        let mut file = tempfile::Builder::new()
            .prefix(".vmoodle-cred-")
            .tempfile()?;
        // tempfile creates it 0600.
        if spec.kind.is_mysql_family() {
            let pw = spec
                .password
                .expose()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            writeln!(file, "[client]\nuser=\"{}\"\npassword=\"{pw}\"", spec.user)?;
            match &spec.socket {
                Some(s) => writeln!(file, "socket=\"{s}\"")?,
                None => writeln!(
                    file,
                    "host=\"{}\"\nport={}\nprotocol=tcp",
                    spec.host, spec.port
                )?,
            }
        } else {
            let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
            let host = spec.socket.clone().unwrap_or_else(|| spec.host.clone());
            writeln!(
                file,
                "{}:{}:*:{}:{}",
                esc(&host),
                spec.port,
                esc(&spec.user),
                esc(spec.password.expose())
            )?;
        }
        file.flush()?;
        Ok(Self { file })
    }

    fn path(&self) -> &Path {
        self.file.path()
    }
}

fn pg_conn_args(spec: &ConnSpec) -> Vec<String> {
    let host = spec.socket.clone().unwrap_or_else(|| spec.host.clone());
    vec![
        "-h".into(),
        host,
        "-p".into(),
        spec.port.to_string(),
        "-U".into(),
        spec.user.clone(),
    ]
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        what: what.to_string(),
        source,
    }
}

/// Dumps `database` into `out`: MariaDB as zstd-compressed SQL from a consistent snapshot
/// (`--single-transaction`), PostgreSQL in pg_dump's compressed custom format.
pub async fn dump(
    clients: &Clients,
    spec: &ConnSpec,
    database: &str,
    out: &Path,
) -> Result<(), ToolError> {
    let what = format!("dumping database `{database}` from `{}`", spec.server);
    let cred = Credentials::new(spec).map_err(io(&what))?;
    if spec.kind.is_mysql_family() {
        let raw = out.with_extension("raw");
        tracing::debug!(raw = %raw.display(), "dump target");
        // mariadb-dump --defaults-extra-file=CRED --single-transaction --quick ... DB > raw
        let r = Tool::new(&clients.mariadb_dump)
            .arg(format!("--defaults-extra-file={}", cred.path().display()))
            .args([
                "--single-transaction",
                "--quick",
                "--hex-blob",
                "--routines",
                "--triggers",
                "--no-tablespaces",
                "--skip-comments",
                "--default-character-set=utf8mb4",
            ])
            .arg(database)
            .stdout_file(&raw)
            .timeout(Duration::from_secs(3600))
            .run()
            .await;
        if let Err(source) = r {
            let _ = std::fs::remove_file(&raw);
            return Err(ToolError::Exec { what, source });
        }
        let res = compress(&raw, out).map_err(io(&what));
        let _ = std::fs::remove_file(&raw);
        res
    } else {
        // pg_dump -Fc --no-owner --no-privileges -h H -p P -U U -d DB -f OUT   (PGPASSFILE=CRED)
        Tool::new(&clients.pg_dump)
            .env("PGPASSFILE", cred.path())
            .args(["-Fc", "--no-owner", "--no-privileges", "-Z", "3"])
            .args(pg_conn_args(spec))
            .arg("-d")
            .arg(database)
            .arg("-f")
            .arg(out)
            .timeout(Duration::from_secs(3600))
            .run()
            .await
            .map(|_| ())
            .map_err(|source| ToolError::Exec { what, source })
    }
}

/// Loads a dump made by `dump` into the existing, empty `database`.
pub async fn load(
    clients: &Clients,
    spec: &ConnSpec,
    database: &str,
    dump_file: &Path,
) -> Result<(), ToolError> {
    let what = format!(
        "loading the dump into database `{database}` on `{}`",
        spec.server
    );
    let cred = Credentials::new(spec).map_err(io(&what))?;
    if spec.kind.is_mysql_family() {
        let raw = tempfile::Builder::new()
            .prefix(".vmoodle-load-")
            .tempfile()
            .map_err(io(&what))?;
        decompress(dump_file, raw.path()).map_err(io(&what))?;
        // A dump is data, not a script: --sandbox makes the client refuse its own commands
        // that reach the system or the filesystem (`\!` shell, `source`, `tee`, `pager`), so a
        // crafted dump cannot run anything as the user running vmoodle (MariaDB >= 10.5.25).
        // mariadb --defaults-extra-file=CRED --sandbox DB < dump.sql
        Tool::new(&clients.mariadb)
            .arg(format!("--defaults-extra-file={}", cred.path().display()))
            .args([
                "--sandbox",
                "--default-character-set=utf8mb4",
                "--max-allowed-packet=1G",
            ])
            .arg(database)
            .stdin_file(raw.path())
            .timeout(Duration::from_secs(3600))
            .run()
            .await
            .map(|_| ())
            .map_err(|source| match &source {
                ExecError::Failed { stderr_tail, .. }
                    if stderr_tail.contains("unknown option")
                        && stderr_tail.contains("sandbox") =>
                {
                    ToolError::NoSandbox {
                        what,
                        program: clients.mariadb.display().to_string(),
                    }
                }
                _ => ToolError::Exec { what, source },
            })
    } else {
        // pg_restore --no-owner --no-privileges -j 2 -h H -p P -U U -d DB DUMP   (PGPASSFILE=CRED)
        Tool::new(&clients.pg_restore)
            .env("PGPASSFILE", cred.path())
            .args([
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "-j",
                "2",
            ])
            .args(pg_conn_args(spec))
            .arg("-d")
            .arg(database)
            .arg(dump_file)
            .timeout(Duration::from_secs(3600))
            .run()
            .await
            .map(|_| ())
            .map_err(|source| ToolError::Exec { what, source })
    }
}

/// zstd-compresses `from` into `to` (level 3).
pub fn compress(from: &Path, to: &Path) -> std::io::Result<()> {
    let at = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{p}: {e}"))
    };
    let mut input = std::fs::File::open(from).map_err(at(from))?;
    let output = std::fs::File::create(to).map_err(at(to))?;
    let mut enc = zstd::stream::Encoder::new(output, 3)?;
    std::io::copy(&mut input, &mut enc)?;
    enc.finish()?.sync_all()
}

pub fn decompress(from: &Path, to: &Path) -> std::io::Result<()> {
    let input = std::fs::File::open(from)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
    let mut dec = zstd::stream::Decoder::new(input)?;
    let mut output = std::fs::File::create(to)?;
    std::io::copy(&mut dec, &mut output)?;
    Ok(())
}
