//! The lab's network (one bridge namespace, one namespace per host, veth pairs into the bridge;
//! no route out), the owner markers that tell a live lab from a leftover, and teardown.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where each lab records its owner (the test process) and its directory, so that `sweep` can
/// tell a live lab of another test process from one a killed run left behind.
pub const MARKER_DIR: &str = "/run/vmoodle-lab";

/// Runs argv (no shell), stdin closed; Err with the tool's stderr when it fails.
pub fn run(argv: &[&str]) -> Result<Output> {
    run_stdin(argv, None)
}

/// Runs argv with `input` on stdin (secrets go this way, never in argv).
pub fn run_stdin(argv: &[&str], input: Option<&str>) -> Result<Output> {
    let out = output(argv, input)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Runs argv and returns its output whatever the exit status.
pub fn output(argv: &[&str], input: Option<&str>) -> Result<Output> {
    use std::io::Write;
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .spawn()
        .with_context(|| format!("could not run `{}`: is it installed?", argv[0]))?;
    if let Some(s) = input {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(s.as_bytes())
            .with_context(|| format!("writing to `{}`", argv[0]))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", argv[0]))
}

/// The names of the network namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    let Ok(out) = output(&["ip", "netns", "list"], None) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The /24 networks ("10.x.y") that existing `vml*` namespaces use.
pub fn used_nets() -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for ns in namespaces().into_iter().filter(|n| n.starts_with("vml")) {
        let Ok(out) = output(&["ip", "-n", &ns, "-o", "-4", "addr", "show"], None) else {
            continue;
        };
        for w in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(a) = w.strip_prefix("10.") {
                let parts: Vec<&str> = a.split(['.', '/']).collect();
                if parts.len() >= 2 {
                    used.insert(format!("10.{}.{}", parts[0], parts[1]));
                }
            }
        }
    }
    used
}

/// Makes the bridge namespace `<p>-sw` and one namespace per host, `(suffix, ip)`, wired into it.
pub fn build(prefix: &str, hosts: &[(String, String)]) -> Result<()> {
    let sw = format!("{prefix}-sw");
    run(&["ip", "netns", "add", &sw])?;
    run(&["ip", "-n", &sw, "link", "set", "lo", "up"])?;
    run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
    for (host, ip) in hosts {
        let ns = format!("{prefix}-{host}");
        let peer = format!("v-{host}");
        run(&["ip", "netns", "add", &ns])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer,
            "netns", &sw,
        ])?;
        run(&["ip", "-n", &sw, "link", "set", &peer, "master", "br0"])?;
        run(&["ip", "-n", &sw, "link", "set", &peer, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// The pids running in a namespace.
pub fn pids(ns: &str) -> Vec<i32> {
    output(&["ip", "netns", "pids", ns], None)
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a pid is gone or a zombie (PID 1 here reaps orphans late).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Stops every process of the namespaces (SIGTERM, then SIGKILL after `grace`), waits until each
/// is gone or a zombie, then deletes the namespaces.
pub fn remove_namespaces(names: &[String], grace: Duration) {
    use nix::sys::signal::Signal;
    let mut all: Vec<i32> = names.iter().flat_map(|n| pids(n)).collect();
    for p in &all {
        signal(*p, Signal::SIGTERM);
    }
    let t = Instant::now();
    let mut killed = false;
    loop {
        all.retain(|p| !gone(*p));
        // Processes that appeared meanwhile (a child of a dying one).
        for n in names {
            for p in pids(n) {
                if !all.contains(&p) && !gone(p) {
                    signal(p, Signal::SIGTERM);
                    all.push(p);
                }
            }
        }
        if all.is_empty() || t.elapsed() > grace * 3 {
            break;
        }
        if !killed && t.elapsed() > grace {
            for p in &all {
                signal(*p, Signal::SIGKILL);
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    for n in names {
        let _ = output(&["ip", "netns", "del", n], None);
    }
}

/// The owner marker of a lab: "PID STARTTIME DIR".
pub fn marker(prefix: &str) -> PathBuf {
    Path::new(MARKER_DIR).join(prefix)
}

/// The start time of a process (field 22 of /proc/PID/stat), to tell a reused pid apart.
pub fn start_time(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_string)
}

pub fn write_marker(prefix: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(MARKER_DIR).with_context(|| format!("creating {MARKER_DIR}"))?;
    let me = std::process::id();
    let text = format!(
        "{me} {} {}\n",
        start_time(me).unwrap_or_default(),
        dir.display()
    );
    std::fs::write(marker(prefix), text)
        .with_context(|| format!("writing {}", marker(prefix).display()))
}

/// Whether the lab of this prefix belongs to a live process (not a leftover), and its directory.
fn owner(prefix: &str) -> (bool, Option<PathBuf>) {
    let Ok(text) = std::fs::read_to_string(marker(prefix)) else {
        return (false, None);
    };
    let mut w = text.split_whitespace();
    let pid: Option<u32> = w.next().and_then(|p| p.parse().ok());
    let start = w.next().map(str::to_string);
    let dir = w.next().map(PathBuf::from);
    let live = pid.is_some_and(|p| start_time(p).is_some() && start_time(p) == start);
    (live, dir)
}

/// Whether a name is a lab prefix: `vml` and 4 hex digits.
pub fn is_prefix(p: &str) -> bool {
    p.len() == 7 && p.starts_with("vml") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes what labs of dead test processes left: their processes, namespaces, directories and
/// markers. Labs whose test process still runs are left alone. Returns the prefixes removed.
pub fn sweep() -> Vec<String> {
    let mut prefixes: BTreeSet<String> = namespaces()
        .into_iter()
        .filter_map(|n| n.split_once('-').map(|(p, _)| p.to_string()))
        .filter(|p| is_prefix(p))
        .collect();
    if let Ok(rd) = std::fs::read_dir(MARKER_DIR) {
        prefixes.extend(
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| is_prefix(n)),
        );
    }
    let mut removed = Vec::new();
    for p in prefixes {
        let (live, dir) = owner(&p);
        if live {
            continue;
        }
        let names: Vec<String> = namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{p}-")))
            .collect();
        remove_namespaces(&names, Duration::from_secs(3));
        if let Some(d) = dir.filter(|d| d.starts_with(std::env::temp_dir())) {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_file(marker(&p));
        removed.push(p);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_prefixes() {
        assert!(is_prefix("vml1a2b"));
        assert!(!is_prefix("vmlab"));
        assert!(!is_prefix("vmlabcde"));
        assert!(!is_prefix("vmlxyz1"));
        assert!(!is_prefix("vmt-1234"));
    }

    #[test]
    fn own_start_time_is_stable_and_marks_this_process_live() {
        let me = std::process::id();
        let a = start_time(me).expect("start time");
        assert_eq!(start_time(me), Some(a));
        assert_eq!(start_time(u32::MAX), None);
    }
}
