//! The one place where vmoodle starts external programs. Every child gets a cleared
//! environment (only PATH, LANG and what the caller passes), closed stdin unless input is given,
//! stdout and stderr read at the same time, a timeout after which it is killed, and on failure
//! an error carrying the exit status and the tail of its stderr. Secrets never go in argv: the
//! callers pass them through 0600 files (`--defaults-extra-file`, `PGPASSFILE`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("`{tool}` was not found{}\nhint: install it, or set its path with `vmoodle settings set executables.{setting} /path/to/{tool}`", if .searched.is_empty() { String::new() } else { format!(" (looked for {} on PATH)", .searched) })]
    NotFound {
        tool: String,
        setting: String,
        searched: String,
    },
    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` did not finish within {secs} s and was stopped")]
    Timeout { program: String, secs: u64 },
    #[error("`{program}` failed ({status}): {stderr_tail}")]
    Failed {
        program: String,
        status: String,
        stderr_tail: String,
        stdout: Vec<u8>,
    },
}

/// Finds the first of `names` on PATH.
pub fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if is_executable(&p) {
                return Some(p);
            }
        }
    }
    None
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What a tool printed when it succeeded.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A program to run.
#[derive(Debug)]
pub struct Tool {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    cwd: Option<PathBuf>,
    timeout: Duration,
    stdin_file: Option<PathBuf>,
    stdout_file: Option<PathBuf>,
    user: Option<(u32, u32)>,
}

impl Tool {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            cwd: None,
            timeout: Duration::from_secs(600),
            stdin_file: None,
            stdout_file: None,
            user: None,
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Passes one variable to the child (the environment is otherwise cleared).
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }
    /// Feeds this file to the child's stdin.
    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin_file = Some(path.into());
        self
    }
    /// Writes the child's stdout to this file (created 0600) instead of capturing it.
    pub fn stdout_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdout_file = Some(path.into());
        self
    }
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    /// Runs the child as this user and group (needs root; root's supplementary groups are dropped).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    fn display_name(&self) -> String {
        self.program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Runs to completion; a non-zero exit is an error carrying stderr's tail.
    pub async fn run(self) -> Result<Output, ExecError> {
        let name = self.display_name();
        let span = tracing::debug_span!("tool", program = %name);
        let _g = span.enter();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env_clear().kill_on_drop(true);
        for key in ["PATH", "LANG", "LC_ALL", "TZ", "HOME"] {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        if let Some((uid, gid)) = self.user {
            // std's uid() also clears root's supplementary groups (setgroups(0)).
            cmd.gid(gid).uid(uid);
        }
        let io_err = |p: &PathBuf, source| ExecError::Spawn {
            program: format!("{} ({})", name, p.display()),
            source,
        };
        match &self.stdin_file {
            Some(p) => cmd.stdin(Stdio::from(
                std::fs::File::open(p).map_err(|e| io_err(p, e))?,
            )),
            None => cmd.stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            }),
        };
        match &self.stdout_file {
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .map_err(|e| io_err(p, e))?;
                cmd.stdout(Stdio::from(f))
            }
            None => cmd.stdout(Stdio::piped()),
        };
        cmd.stderr(Stdio::piped());
        tracing::debug!(args = ?self.args, "starting");
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        if let Some(input) = self.stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            });
        }
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| ExecError::Spawn {
                program: name.clone(),
                source,
            })?,
            Err(_) => {
                return Err(ExecError::Timeout {
                    program: name,
                    secs: self.timeout.as_secs(),
                })
            }
        };
        for line in String::from_utf8_lossy(&out.stderr).lines().take(50) {
            tracing::debug!(target: "tool.stderr", "{line}");
        }
        if out.status.success() {
            Ok(Output {
                stdout: out.stdout,
                stderr: out.stderr,
            })
        } else {
            let status = match out.status.code() {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_string(),
            };
            Err(ExecError::Failed {
                program: name,
                status,
                stderr_tail: tail(&out.stderr, &out.stdout),
                stdout: out.stdout,
            })
        }
    }
}

/// The last lines of stderr (or stdout when stderr is empty), for error messages.
fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    };
    let s = String::from_utf8_lossy(text);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(8);
    let t = lines[start..].join("\n");
    if t.is_empty() {
        "(it printed nothing)".into()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root, `user` runs the child as that account, without root's groups; anyone else
    /// cannot switch and gets an error, not a child running as themselves.
    #[tokio::test]
    async fn runs_as_another_user() {
        let id = find_on_path(&["id"]).unwrap();
        let me = Tool::new(&id).arg("-u").run().await.unwrap();
        if String::from_utf8_lossy(&me.stdout).trim() != "0" {
            let r = Tool::new(&id).user(65534, 65534).run().await;
            assert!(matches!(r, Err(ExecError::Spawn { .. })), "{r:?}");
            return;
        }
        let out = Tool::new(&id).user(65534, 65534).run().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("uid=65534") && text.contains("gid=65534"),
            "{text}"
        );
        assert!(!text.contains("(root)"), "root's groups stayed: {text}");
    }

    #[tokio::test]
    async fn runs_and_reports_failures() {
        let sh = find_on_path(&["sh"]).unwrap();
        let out = Tool::new(&sh)
            .args(["-c", "cat; echo $SECRET_LEAK"])
            .stdin("hi\n")
            .run()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hi\n\n",
            "environment must be cleared"
        );
        let e = Tool::new(&sh)
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("exit code 3") && e.to_string().contains("boom"),
            "{e}"
        );
        let e = Tool::new(&sh)
            .args(["-c", "sleep 5"])
            .timeout(Duration::from_millis(100))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }));
    }
}
