//! What the cluster benchmarks (cluster-bench, switchover-bench) share: running commands and
//! vmoodle in the lab, durations, and an instance's database as its host file names it.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vmoodle_test::lab::{Engine, Lab};

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .current_dir("/")
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `vmoodle ARGS` in the lab's app namespace (the control node); stdout, or an error.
pub fn vm(lab: &Lab, home: &Path, args: &[&str], stdin: &str) -> Result<String> {
    let out = lab.vmoodle(home, args, stdin);
    if !out.status.success() {
        bail!(
            "vmoodle {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Mariadb => "MariaDB",
        Engine::Postgresql => "PostgreSQL",
    }
}

/// The value of the first `'key' => VALUE` line (a PHP single-quoted string or a bare value).
pub fn php_value(text: &str, key: &str) -> Option<String> {
    let pat = format!("'{key}' => ");
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&pat))?;
    if let Some(rest) = line.strip_prefix('\'') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n @ ('\\' | '\'')) => out.push(n),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => return None,
                },
                '\'' => return Some(out),
                c => out.push(c),
            }
        }
        None
    } else {
        Some(line.trim_end().trim_end_matches(',').trim().to_string())
    }
}

pub fn read_host_file(path: &Path) -> Result<DbTarget> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let get =
        |k: &str| php_value(&text, k).with_context(|| format!("no '{k}' in {}", path.display()));
    Ok(DbTarget {
        host: get("dbhost")?,
        port: get("dbport")?
            .parse()
            .with_context(|| format!("dbport in {}", path.display()))?,
        name: get("dbname")?,
        user: get("dbuser")?,
        pass: get("dbpass")?,
    })
}

/// A database host's server directory (socket, logs), beside its data directory.
pub fn server_dir(lab: &Lab, host: &str) -> Result<PathBuf> {
    lab.datadir(host)
        .parent()
        .map(Path::to_path_buf)
        .context("the server's directory")
}

#[derive(Debug, Clone, PartialEq)]
pub struct DbTarget {
    pub host: String,
    pub port: u16,
    pub name: String,
    pub user: String,
    pub pass: String,
}
