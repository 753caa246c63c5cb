//! Running Moodle's own CLI scripts for an instance: php-cli on the master's codebase
//! (`moodle.dir`), with `VMOODLE_HOST` naming the instance (the config hook then loads its host
//! file), as the web server's account when vmoodle runs as root, in a process group of its own
//! (killed whole at the time limit), with a cleared environment, stdout and stderr both written
//! to the site's log file as they come.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Home;

/// The Moodle code every instance runs, and how to run its PHP.
#[derive(Debug, Clone)]
pub struct MoodleCode {
    pub php: PathBuf,
    /// The directory holding config.php (for Moodle 5.x, the parent of public/).
    pub dir: PathBuf,
    /// uid, gid and name of the account scripts run as (None: vmoodle's own).
    pub user: Option<(u32, u32, String)>,
}

/// The version of Moodle in a codebase (its version.php) or a database (its config table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoodleVersion {
    /// e.g. `2025100600.02`.
    pub version: String,
    /// e.g. `5.1+ (Build: 20251017)`.
    pub release: String,
}

/// How one script run ended.
#[derive(Debug, Clone)]
pub struct ScriptRun {
    /// None when it was killed (time limit or signal).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration: Duration,
    /// What it printed on stdout (at most [`CAPTURE_LIMIT`] bytes).
    pub stdout: Vec<u8>,
    /// The last lines it printed (stdout and stderr), for reports.
    pub tail: String,
}

impl ScriptRun {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// stdout kept in memory per run (the log file has all of it).
pub const CAPTURE_LIMIT: usize = 4 << 20;
/// Lines of output kept for reports and the register.
pub const TAIL_LINES: usize = 20;

impl MoodleCode {
    /// The Moodle code of this home (`moodle.dir`), its php and the web server's account.
    pub fn from_home(home: &Home) -> Result<Self> {
        let dir = home.settings.moodle.dir.trim();
        if dir.is_empty() {
            bail!(
                "vmoodle does not know where the Moodle code is\nhint: `vmoodle settings set moodle.dir /path/to/moodle` (the directory holding config.php and admin/cli/)"
            );
        }
        let dir = PathBuf::from(dir);
        if !dir.join("config.php").is_file() || !dir.join("admin/cli").is_dir() {
            bail!(
                "moodle.dir `{}` is not a Moodle codebase with its config.php (no config.php or admin/cli/ there)\nhint: `vmoodle settings set moodle.dir /path/to/moodle`",
                dir.display()
            );
        }
        let php = home
            .executable("php")
            .map_err(|e| anyhow!("{e}\nhint: apt-get install php-cli"))?;
        let user = crate::caches::run_as(home)?;
        Ok(Self { php, dir, user })
    }

    /// An admin/cli script by name (`cron.php`, `cron`, `admin/cli/cron.php`). Only scripts that
    /// exist directly in admin/cli/ as regular files are accepted.
    pub fn cli_script(&self, name: &str) -> Result<PathBuf> {
        let base = name.trim().trim_start_matches("admin/cli/");
        let file = if base.ends_with(".php") {
            base.to_string()
        } else {
            format!("{base}.php")
        };
        let valid = !file.is_empty()
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !file.starts_with('.');
        let dir = self.dir.join("admin/cli");
        let path = dir.join(&file);
        let is_file = std::fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_file())
            .unwrap_or(false);
        if !valid || !is_file {
            bail!(
                "`{name}` is not one of Moodle's admin/cli scripts in {}; available: {}",
                dir.display(),
                self.cli_scripts().join(", ")
            );
        }
        Ok(path)
    }

    /// The names of Moodle's admin/cli scripts (regular files only), sorted.
    pub fn cli_scripts(&self) -> Vec<String> {
        let mut known: Vec<String> = std::fs::read_dir(self.dir.join("admin/cli"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".php"))
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        known
    }

    /// The version of the code (version.php: public/version.php in Moodle 5.x).
    pub fn code_version(&self) -> Result<MoodleVersion> {
        let candidates = [
            self.dir.join("public/version.php"),
            self.dir.join("version.php"),
        ];
        let path = candidates
            .iter()
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("no version.php in {}", self.dir.display()))?;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        parse_version_php(&text)
            .ok_or_else(|| anyhow!("{} has no $version line vmoodle can read", path.display()))
    }

    /// Runs `script` (a path from [`cli_script`] or another file in the codebase) with `args`
    /// under the instance served at `host`. Output is appended to `log` as it comes. A run past
    /// `timeout` has its whole process group killed.
    pub async fn run(
        &self,
        host: &str,
        script: &Path,
        args: &[String],
        timeout: Duration,
        log: &Path,
    ) -> Result<ScriptRun> {
        self.run_with_stdin(host, script, args, timeout, log, None)
            .await
    }

    /// [`run`] with `script` `--` and a PHP program fed on stdin (for vmoodle's own small
    /// scripts that bootstrap Moodle: `require $argv[1]` is the config.php).
    pub async fn run_with_stdin(
        &self,
        host: &str,
        script: &Path,
        args: &[String],
        timeout: Duration,
        log: &Path,
        stdin: Option<&str>,
    ) -> Result<ScriptRun> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut logf = tokio::fs::File::from_std(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(log)
                .with_context(|| format!("opening the log {}", log.display()))?,
        );
        let shown = format!(
            "$ VMOODLE_HOST={host} php {} {}\n",
            script.display(),
            args.join(" ")
        );
        logf.write_all(shown.as_bytes()).await?;
        let mut cmd = std::process::Command::new(&self.php);
        // Moodle's environment check (upgrade.php, install) wants max_input_vars >= 5000, and
        // Debian's php-cli ships 1000; for a CLI script the setting matters for nothing else.
        // The web server's PHP needs it in its own php.ini (`vmoodle doctor --php-ini` checks).
        cmd.args(["-d", "max_input_vars=5000"])
            .arg(script)
            .args(args)
            .env_clear()
            .current_dir(&self.dir)
            .env("VMOODLE_HOST", host)
            .process_group(0);
        for key in ["PATH", "LANG", "LC_ALL", "TZ"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        if let Some((uid, gid, _)) = &self.user {
            cmd.gid(*gid).uid(*uid);
        }
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.php.display()))?;
        let pid = child.id();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            let input = input.to_string();
            tokio::spawn(async move {
                let _ = pipe.write_all(input.as_bytes()).await;
                let _ = pipe.shutdown().await;
            });
        }
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        let mut captured = Vec::new();
        let mut tail = Tail::default();
        let copy = async {
            let (mut ob, mut eb) = ([0u8; 8192], [0u8; 8192]);
            let (mut o_open, mut e_open) = (true, true);
            while o_open || e_open {
                tokio::select! {
                    n = out.read(&mut ob), if o_open => match n {
                        Ok(0) | Err(_) => o_open = false,
                        Ok(n) => {
                            let _ = logf.write_all(&ob[..n]).await;
                            if captured.len() < CAPTURE_LIMIT {
                                let room = CAPTURE_LIMIT - captured.len();
                                captured.extend_from_slice(&ob[..n.min(room)]);
                            }
                            tail.push(&ob[..n]);
                        }
                    },
                    n = err.read(&mut eb), if e_open => match n {
                        Ok(0) | Err(_) => e_open = false,
                        Ok(n) => {
                            let _ = logf.write_all(&eb[..n]).await;
                            tail.push(&eb[..n]);
                        }
                    },
                }
            }
            child.wait().await
        };
        let (status, timed_out) = match tokio::time::timeout(timeout, copy).await {
            Ok(status) => (Some(status.context("waiting for php")?), false),
            Err(_) => {
                if let Some(pid) = pid {
                    kill_group(pid).await;
                }
                (None, true)
            }
        };
        let duration = started.elapsed();
        let exit_code = status.and_then(|s| s.code());
        let end = match (timed_out, exit_code) {
            (true, _) => format!(
                "vmoodle: killed after {} s (time limit)\n",
                timeout.as_secs()
            ),
            (false, Some(c)) => format!(
                "vmoodle: exit code {c} after {:.1} s\n",
                duration.as_secs_f64()
            ),
            (false, None) => "vmoodle: killed by a signal\n".into(),
        };
        let _ = logf.write_all(end.as_bytes()).await;
        let _ = logf.flush().await;
        Ok(ScriptRun {
            exit_code,
            timed_out,
            duration,
            stdout: captured,
            tail: tail.text(),
        })
    }
}

/// SIGTERM to the process group, SIGKILL two seconds later if anything is left.
async fn kill_group(pid: u32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let pg = Pid::from_raw(pid as i32);
    let _ = killpg(pg, Signal::SIGTERM);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = killpg(pg, Signal::SIGKILL);
}

/// The last lines of a stream of output.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        if self.buf.len() > 16 * 1024 {
            let cut = self.buf.len() - 8 * 1024;
            self.buf.drain(..cut);
        }
    }
    fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.buf);
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(TAIL_LINES);
        lines[start..].join("\n")
    }
}

/// `$version = 2025100600.02;` and `$release = '5.1+ (Build: 20251017)';` from a version.php
/// (a plugin's `$plugin->version` works too for the version).
pub fn parse_version_php(text: &str) -> Option<MoodleVersion> {
    let mut version = None;
    let mut release = String::new();
    for line in text.lines() {
        let l = line.trim_start();
        let value = |l: &str| -> Option<String> {
            let (_, rest) = l.split_once('=')?;
            let v = rest.split(';').next()?.trim();
            Some(v.trim_matches(|c| c == '\'' || c == '"').to_string())
        };
        if (l.starts_with("$version ") || l.starts_with("$version=")) && version.is_none() {
            version = value(l).filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'));
        } else if l.starts_with("$release ") || l.starts_with("$release=") {
            release = value(l).unwrap_or_default();
        }
    }
    Some(MoodleVersion {
        version: version?,
        release,
    })
}

/// Compares two Moodle version numbers (`2025100600.02`) numerically.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let num = |s: &str| s.trim().parse::<f64>().unwrap_or(0.0);
    num(a)
        .partial_cmp(&num(b))
        .unwrap_or(std::cmp::Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_php() {
        let v = parse_version_php(
            "<?php\n$version  = 2025100600.02;              // 20251006\n$release  = '5.1+ (Build: 20251017)';    // Human\n",
        )
        .unwrap();
        assert_eq!(v.version, "2025100600.02");
        assert_eq!(v.release, "5.1+ (Build: 20251017)");
        assert!(parse_version_php("<?php\n").is_none());
        assert_eq!(
            version_cmp("2025100600.02", "2025100600.10"),
            std::cmp::Ordering::Less
        );
    }
}
