//! Services by pid file: is it running (zombie-aware), run a start/reload/stop argv with `{pid}`
//! substituted, wait for a process to exit; files written atomically.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long a start, reload or stop command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A process is alive when /proc has it and it is not a zombie (PID 1 may reap late).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// The live process a pid file names, if any.
pub fn pidfile_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (pid > 0 && pid_alive(pid)).then_some(pid)
}

/// A live process whose command name is `name` (when there is no pid file to read).
pub fn find_process(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name && pid_alive(pid)).then_some(pid)
    })
}

/// Waits until `pid` has exited (or is a zombie).
pub async fn wait_exit(pid: i32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while pid_alive(pid) {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Whether an argv names the running process (`{pid}`).
pub fn uses_pid(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "{pid}")
}

/// Runs a service command (`what` names it in errors), `{pid}` replaced by `pid`. Its output
/// goes to `log` (a daemon it starts may keep its stdout and stderr open); on failure the error
/// shows the log's tail.
pub async fn run_argv(what: &str, argv: &[String], pid: Option<i32>, log: &Path) -> Result<()> {
    let Some((prog, args)) = argv.split_first() else {
        bail!("{what}: the command is empty");
    };
    let args: Vec<String> = args
        .iter()
        .map(|a| match (a.as_str(), pid) {
            ("{pid}", Some(p)) => Ok(p.to_string()),
            ("{pid}", None) => bail!("{what}: the command uses {{pid}} but no process is running"),
            _ => Ok(a.clone()),
        })
        .collect::<Result<_>>()?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("{what}: creating its log {}", log.display()))?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(&args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true);
    for key in ["PATH", "LANG", "LC_ALL", "TZ", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    tracing::info!(what, argv = ?argv, "running");
    let mut child = cmd.spawn().with_context(|| {
        format!("{what}: could not start `{prog}`; check the agent's proxy settings")
    })?;
    let status = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(s) => s.with_context(|| format!("{what}: waiting for `{prog}`"))?,
        Err(_) => bail!(
            "{what}: `{prog}` did not finish within {} s (its output: {}): {}",
            COMMAND_TIMEOUT.as_secs(),
            log.display(),
            log_tail(log)
        ),
    };
    if !status.success() {
        bail!(
            "{what}: `{} {}` failed ({status}): {}",
            prog,
            args.join(" "),
            log_tail(log)
        );
    }
    Ok(())
}

/// The last lines of a log, for errors.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let t = lines[lines.len().saturating_sub(12)..].join("\n");
    if t.is_empty() {
        "(it printed nothing)".into()
    } else {
        t
    }
}

/// `path` with `suffix` appended to its file name.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::write_atomic;

    #[test]
    fn pid_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pid");
        assert_eq!(pidfile_pid(&p), None);
        std::fs::write(&p, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(pidfile_pid(&p), Some(std::process::id() as i32));
        std::fs::write(&p, "junk").unwrap();
        assert_eq!(pidfile_pid(&p), None);
    }

    #[tokio::test]
    async fn commands_substitute_the_pid_and_report_output() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("cmd.log");
        let argv: Vec<String> = ["sh", "-c", "echo got $0; exit 3", "{pid}"]
            .map(String::from)
            .into();
        let e = run_argv("test stop", &argv, Some(42), &log)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("got 42") && e.contains("test stop"), "{e}");
        let e = run_argv("test stop", &argv, None, &log).await.unwrap_err();
        assert!(e.to_string().contains("no process"), "{e}");
        let f = d.path().join("f.cfg");
        write_atomic(&f, b"a", 0o644).unwrap();
        write_atomic(&f, b"b", 0o644).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"b");
        assert!(!sibling(&f, ".vmoodle-new").exists());
    }
}
