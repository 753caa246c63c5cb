//! HAProxy and keepalived on a proxy node: configuration rendered from a `ProxySpec` and the
//! node's own paths, checked (`haproxy -c`), written atomically, started or reloaded without
//! dropping listeners; status from HAProxy's admin socket and the interface's addresses.
//!
//! What the agent keeps in its state directory (`home.state()`):
//! - `proxy-prev/`: the configuration files as they were before the first `apply` (`NAME`, or
//!   `NAME.absent` when there was none), put back by `remove`;
//! - `proxy-spec.json`: the spec last applied (status reads the VIP and interface from it);
//! - `chk_haproxy.sh`: keepalived's HAProxy check (root-owned, 0755);
//! - `proxy-ca/`: the backends' pinned agent certificates HAProxy's checks verify against
//!   (`NAME-SHA256PREFIX.pem`, 0644; those the applied spec no longer names are deleted);
//! - `proxy-*.log`: the output of the last start, reload and stop commands.
//!
//! HAProxy must be allowed to bind the VIP before it holds it: set
//! `net.ipv4.ip_nonlocal_bind=1` on proxy nodes (in the node's network namespace).
//!
//! Right before each reload the agent saves `show servers state` into HAProxy's server-state
//! file (`ProxyConfig::server_state_file`), which the new process loads; before a start it
//! deletes the file (no process ran to vouch for it).

pub mod control;
pub mod render;
pub mod stat;

use anyhow::{bail, Context, Result};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{AgentHome, ProxyConfig};
use crate::fsutil::write_atomic;
use crate::protocol::{ProxySpec, ProxyStatus};
use control::{pidfile_pid, run_argv, uses_pid, wait_exit};

const PREV_DIR: &str = "proxy-prev";
const SPEC_FILE: &str = "proxy-spec.json";
const CHECK_SCRIPT: &str = "chk_haproxy.sh";
const CA_DIR: &str = "proxy-ca";
/// How long `apply` waits for HAProxy's first checks, and `remove` for a service to exit.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a started or reloaded service may take to show up in its pid file.
const START_WAIT: Duration = Duration::from_secs(5);

/// The two services, for messages and state file names.
#[derive(Clone, Copy)]
enum Svc {
    Haproxy,
    Keepalived,
}

impl Svc {
    fn name(self) -> &'static str {
        match self {
            Svc::Haproxy => "haproxy",
            Svc::Keepalived => "keepalived",
        }
    }
    fn config(self, cfg: &ProxyConfig) -> &Path {
        match self {
            Svc::Haproxy => &cfg.haproxy_config,
            Svc::Keepalived => &cfg.keepalived_config,
        }
    }
    /// The live process of the service.
    fn pid(self, cfg: &ProxyConfig) -> Option<i32> {
        match self {
            Svc::Haproxy => pidfile_pid(&cfg.haproxy_pidfile),
            Svc::Keepalived => match &cfg.keepalived_pidfile {
                Some(p) => pidfile_pid(p),
                None => control::find_process("keepalived"),
            },
        }
    }
    fn argv(self, cfg: &ProxyConfig, op: &str) -> Vec<String> {
        match (self, op) {
            (Svc::Haproxy, "start") => cfg.haproxy_start.clone(),
            (Svc::Haproxy, "reload") => cfg.haproxy_reload.clone(),
            (Svc::Haproxy, _) => cfg.haproxy_stop.clone(),
            (Svc::Keepalived, "start") => cfg.keepalived_start.clone(),
            (Svc::Keepalived, "reload") => cfg.keepalived_reload.clone(),
            (Svc::Keepalived, _) => cfg.keepalived_stop.clone(),
        }
    }
}

fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn node_name() -> String {
    let h = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let h: String = h
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .take(64)
        .collect();
    if h.is_empty() {
        "node".into()
    } else {
        h
    }
}

/// Keeps a copy of `path` (or a marker that it did not exist) the first time only.
fn keep_previous(state: &Path, svc: Svc, path: &Path) -> Result<()> {
    let prev = state.join(PREV_DIR);
    let copy = prev.join(svc.name());
    let absent = prev.join(format!("{}.absent", svc.name()));
    if copy.exists() || absent.exists() {
        return Ok(());
    }
    ensure_dir(&prev, 0o700)?;
    match std::fs::read(path) {
        Ok(bytes) => write_atomic(&copy, &bytes, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(&absent, b"", 0o600),
        Err(e) => Err(e).with_context(|| format!("reading the current {}", path.display())),
    }
}

/// Puts back what `keep_previous` kept, and forgets it.
fn restore_previous(state: &Path, svc: Svc, path: &Path) -> Result<()> {
    let prev = state.join(PREV_DIR);
    let copy = prev.join(svc.name());
    let absent = prev.join(format!("{}.absent", svc.name()));
    if copy.exists() {
        let bytes = std::fs::read(&copy).with_context(|| format!("reading {}", copy.display()))?;
        write_atomic(path, &bytes, 0o644)?;
        std::fs::remove_file(&copy)?;
    } else if absent.exists() {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => {}
        }
        std::fs::remove_file(&absent)?;
    }
    Ok(())
}

/// `haproxy -c` on the rendered text, before it replaces the live file.
async fn check_haproxy(cfg: &ProxyConfig, text: &str) -> Result<()> {
    if let Some(dir) = cfg.haproxy_config.parent() {
        ensure_dir(dir, 0o755)?;
    }
    let tmp = control::sibling(&cfg.haproxy_config, ".vmoodle-check");
    write_atomic(&tmp, text.as_bytes(), 0o600)?;
    let haproxy = vmoodle_exec::find_on_path(&["haproxy"])
        .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.exists()))
        .context("haproxy was not found on PATH: install HAProxy (apt-get install haproxy)");
    let res = match haproxy {
        Ok(h) => vmoodle_exec::Tool::new(h)
            .arg("-c")
            .arg("-f")
            .arg(&tmp)
            .timeout(Duration::from_secs(30))
            .run()
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("HAProxy rejects the configuration for this spec: {e}")),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&tmp);
    res
}

/// Saves HAProxy's server states where the process a reload (to `spec`) starts loads them:
/// those of the servers `spec` keeps as they were. When they cannot be read, the file goes
/// instead (an older state is worse than none); the reload goes on either way.
async fn save_server_state(cfg: &ProxyConfig, spec: &ProxySpec) {
    let file = cfg.server_state_file();
    let saved = match stat::servers_state(&cfg.haproxy_socket).await {
        Ok(text) => {
            let (text, dropped) = stat::keep_unchanged(&text, &render::servers(spec));
            if dropped > 0 {
                tracing::info!("{dropped} HAProxy server(s) change or go in this reload: they start without a saved state");
            }
            write_atomic(&file, text.as_bytes(), 0o644)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = saved {
        tracing::warn!(
            "HAProxy's server states were not saved before the reload (its servers start UP until their first checks): {e:#}"
        );
        forget_server_state(cfg);
    }
}

fn forget_server_state(cfg: &ProxyConfig) {
    let file = cfg.server_state_file();
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {e}", file.display())
        }
        _ => {}
    }
}

/// Writes the backends' pinned certificates into `dir` (before `haproxy -c`, which loads them).
fn write_certificates(dir: &Path, spec: &ProxySpec) -> Result<()> {
    ensure_dir(dir, 0o755)?;
    for b in std::iter::once(&spec.primary).chain(&spec.replicas) {
        if let Some((file, pem)) = render::backend_ca(b)? {
            let path = dir.join(file);
            if std::fs::read(&path).ok().as_deref() != Some(pem.as_slice()) {
                write_atomic(&path, &pem, 0o644)?;
            }
        }
    }
    Ok(())
}

/// Deletes the certificates in `dir` that `spec` no longer names (once the HAProxy that used
/// them has been replaced).
fn prune_certificates(dir: &Path, spec: &ProxySpec) -> Result<()> {
    let keep: std::collections::BTreeSet<String> = std::iter::once(&spec.primary)
        .chain(&spec.replicas)
        .filter_map(|b| render::backend_ca(b).ok().flatten().map(|(f, _)| f))
        .collect();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Starts the service, or reloads it when it runs and its configuration changed; then waits
/// until its pid file names a live process (for a `{pid}` reload: a new one). HAProxy's server
/// states are saved right before a reload and forgotten before a start.
async fn start_or_reload(
    cfg: &ProxyConfig,
    state: &Path,
    svc: Svc,
    changed: bool,
    spec: &ProxySpec,
) -> Result<()> {
    let old = svc.pid(cfg);
    let (op, argv) = match old {
        Some(_) if !changed => return Ok(()),
        Some(_) => ("reload", svc.argv(cfg, "reload")),
        None => ("start", svc.argv(cfg, "start")),
    };
    if matches!(svc, Svc::Haproxy) {
        if op == "reload" {
            save_server_state(cfg, spec).await;
        } else {
            forget_server_state(cfg);
        }
    }
    let log = state.join(format!("proxy-{}-{op}.log", svc.name()));
    let what = format!("{} {op}", svc.name());
    run_argv(&what, &argv, old, &log).await?;
    let replaced = matches!(svc, Svc::Haproxy) && op == "reload" && uses_pid(&argv);
    let until = Instant::now() + START_WAIT;
    loop {
        match svc.pid(cfg) {
            Some(p) if !(replaced && Some(p) == old) => return Ok(()),
            _ if Instant::now() > until => bail!(
                "{what}: the command succeeded but no {} process is running {} s later (its output: {}); check the proxy settings' pid files and commands",
                svc.name(),
                START_WAIT.as_secs(),
                control::log_tail(&log)
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Stops the service (when it runs, or always when its command does not need the pid) and
/// waits for it to exit.
async fn stop(cfg: &ProxyConfig, state: &Path, svc: Svc) -> Result<()> {
    let argv = svc.argv(cfg, "stop");
    let pid = svc.pid(cfg);
    if pid.is_none() && uses_pid(&argv) {
        return Ok(());
    }
    let log = state.join(format!("proxy-{}-stop.log", svc.name()));
    run_argv(&format!("{} stop", svc.name()), &argv, pid, &log).await?;
    if let Some(p) = pid {
        if !wait_exit(p, SETTLE).await {
            bail!(
                "{} stop: process {p} is still running {} s after the stop command; stop it by hand and retry",
                svc.name(),
                SETTLE.as_secs()
            );
        }
    }
    Ok(())
}

/// Writes, checks and (re)starts HAProxy and keepalived for `spec`; answers once no HAProxy
/// check is still initialising.
pub async fn apply(cfg: &ProxyConfig, home: &AgentHome, spec: &ProxySpec) -> Result<ProxyStatus> {
    render::validate(spec)?;
    let state = home.state();
    ensure_dir(&state, 0o700)?;
    let script = state.join(CHECK_SCRIPT);
    write_atomic(&script, render::check_script().as_bytes(), 0o755)?;
    let ca_dir = state.join(CA_DIR);
    write_certificates(&ca_dir, spec)?;
    let texts = [
        (Svc::Haproxy, render::haproxy_cfg(cfg, spec, &ca_dir)?),
        (
            Svc::Keepalived,
            render::keepalived_conf(cfg, spec, &node_name(), &script)?,
        ),
    ];
    check_haproxy(cfg, &texts[0].1).await?;
    for (svc, text) in &texts {
        let path = svc.config(cfg);
        keep_previous(&state, *svc, path)?;
        if let Some(dir) = path.parent() {
            ensure_dir(dir, 0o755)?;
        }
        let changed = std::fs::read(path).ok().as_deref() != Some(text.as_bytes());
        if changed {
            write_atomic(path, text.as_bytes(), 0o644)?;
        }
        start_or_reload(cfg, &state, *svc, changed, spec).await?;
    }
    prune_certificates(&ca_dir, spec)?;
    write_atomic(
        &state.join(SPEC_FILE),
        &serde_json::to_vec_pretty(spec)?,
        0o600,
    )?;
    // HAProxy's first checks: every server starts "UP 1/2" with check status INI.
    let until = Instant::now() + SETTLE;
    loop {
        match stat::show_stat(&cfg.haproxy_socket).await {
            Ok(rows) if !rows.is_empty() && rows.iter().all(|r| r.check_status != "INI") => break,
            _ if Instant::now() > until => {
                tracing::warn!(
                    "HAProxy's checks are still initialising after {} s",
                    SETTLE.as_secs()
                );
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    status(cfg, home).await
}

/// Stops keepalived (the VIP goes) and HAProxy, and puts back the configuration files they had
/// before the first `apply`.
pub async fn remove(cfg: &ProxyConfig, home: &AgentHome) -> Result<()> {
    let state = home.state();
    ensure_dir(&state, 0o700)?;
    stop(cfg, &state, Svc::Keepalived).await?;
    stop(cfg, &state, Svc::Haproxy).await?;
    for svc in [Svc::Haproxy, Svc::Keepalived] {
        restore_previous(&state, svc, svc.config(cfg))?;
    }
    for f in [SPEC_FILE, CHECK_SCRIPT] {
        let _ = std::fs::remove_file(state.join(f));
    }
    let _ = std::fs::remove_dir(state.join(PREV_DIR));
    let _ = std::fs::remove_dir_all(state.join(CA_DIR));
    forget_server_state(cfg);
    Ok(())
}

/// The spec last applied, if any.
pub fn applied_spec(home: &AgentHome) -> Result<Option<ProxySpec>> {
    let path = home.state().join(SPEC_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Whether `ip -o addr show dev IF` lists the VIP.
async fn holds_vip(cfg: &ProxyConfig, spec: &ProxySpec) -> Result<bool> {
    let (vip, _) = render::split_vip(&spec.vip)?;
    let (prog, pre) = cfg
        .ip_command
        .split_first()
        .context("proxy.ip_command is empty")?;
    let out = vmoodle_exec::Tool::new(prog)
        .args(pre)
        .args(["-o", "addr", "show", "dev", &spec.interface])
        .timeout(Duration::from_secs(5))
        .run()
        .await
        .with_context(|| format!("listing the addresses of {}", spec.interface))?;
    Ok(parse_addrs(&String::from_utf8_lossy(&out.stdout)).contains(&vip))
}

/// The addresses of `ip -o addr` lines ("2: eth0    inet 10.0.0.1/24 brd ... scope global eth0").
fn parse_addrs(text: &str) -> Vec<std::net::IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet" || *x == "inet6")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

pub async fn status(cfg: &ProxyConfig, home: &AgentHome) -> Result<ProxyStatus> {
    let haproxy_running = Svc::Haproxy.pid(cfg).is_some();
    let keepalived_running = Svc::Keepalived.pid(cfg).is_some();
    let holds_vip = match applied_spec(home)? {
        Some(spec) => holds_vip(cfg, &spec).await.unwrap_or_else(|e| {
            tracing::warn!("{e:#}");
            false
        }),
        None => false,
    };
    let backends = if haproxy_running {
        stat::show_stat(&cfg.haproxy_socket)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!("{e:#}");
                Vec::new()
            })
    } else {
        Vec::new()
    };
    Ok(ProxyStatus {
        haproxy_running,
        keepalived_running,
        holds_vip,
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_ip_o_addr() {
        let text = "2: eth0    inet 10.251.0.21/24 brd 10.251.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
2: eth0    inet 10.251.0.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever\n\
2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n";
        let a = parse_addrs(text);
        assert_eq!(a.len(), 3);
        assert!(a.contains(&"10.251.0.100".parse().unwrap()));
    }

    #[test]
    fn pinned_certificates_written_and_pruned() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("proxy-ca");
        let cert = |n: &str| {
            let (pem, _) = crate::identity::self_signed(n, &[n.into()]).unwrap();
            Some(String::from_utf8(pem).unwrap())
        };
        let mut spec = render::tests::spec();
        spec.primary.cert_pem = cert("db1");
        spec.replicas[0].cert_pem = cert("db2");
        write_certificates(&dir, &spec).unwrap();
        let files = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let first = files(&dir);
        assert_eq!(first.len(), 2, "{first:?}");
        let (f1, pem1) = render::backend_ca(&spec.primary).unwrap().unwrap();
        assert_eq!(std::fs::read(dir.join(&f1)).unwrap(), pem1);
        let mode = std::fs::metadata(dir.join(&f1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // db2 gets a new certificate and db1 loses its own (an older control node): the new
        // file appears beside the old ones until the HAProxy using them has been replaced.
        spec.replicas[0].cert_pem = cert("db2");
        spec.primary.cert_pem = None;
        write_certificates(&dir, &spec).unwrap();
        assert_eq!(files(&dir).len(), 3);
        prune_certificates(&dir, &spec).unwrap();
        let (f2, _) = render::backend_ca(&spec.replicas[0]).unwrap().unwrap();
        assert_eq!(files(&dir), vec![f2]);
    }

    #[test]
    fn previous_files_kept_once_and_restored() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        ensure_dir(&state, 0o700).unwrap();
        let had = d.path().join("haproxy.cfg");
        let new = d.path().join("keepalived.conf");
        std::fs::write(&had, "original").unwrap();
        for _ in 0..2 {
            keep_previous(&state, Svc::Haproxy, &had).unwrap();
            keep_previous(&state, Svc::Keepalived, &new).unwrap();
            std::fs::write(&had, "ours").unwrap();
            std::fs::write(&new, "ours").unwrap();
        }
        for _ in 0..2 {
            restore_previous(&state, Svc::Haproxy, &had).unwrap();
            restore_previous(&state, Svc::Keepalived, &new).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&had).unwrap(), "original");
        assert!(!new.exists());
    }
}
