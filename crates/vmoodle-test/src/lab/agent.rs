//! The agents of a lab: `vmoodle agent init` run for real, agent.toml rewritten with the lab's
//! paths and commands, then `vmoodle agent serve` inside the host's namespace.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use toml::{Table, Value};
use vmoodle_agent::config::{AgentConfig, DatabaseConfig, Engine};

use super::net::run;

fn s(p: &Path) -> &str {
    p.to_str().expect("lab paths are UTF-8")
}

/// Runs `vmoodle agent init` for a node; returns the certificate's fingerprint.
pub fn init(
    bin: &Path,
    home: &Path,
    listen: &str,
    name: &str,
    database: Option<Engine>,
    proxy: bool,
    token_file: &Path,
) -> Result<String> {
    let mut argv = vec![
        s(bin),
        "agent",
        "--agent-home",
        s(home),
        "init",
        "--listen",
        listen,
        "--name",
        name,
        "--token-file",
        s(token_file),
    ];
    if let Some(e) = database {
        argv.extend(["--database", e.as_str()]);
    }
    if proxy {
        argv.push("--proxy");
    }
    let out = run(&argv).with_context(|| format!("`vmoodle agent init` for {name}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .map(|f| f.trim().to_string())
        .with_context(|| format!("`vmoodle agent init` printed no fingerprint: {text}"))
}

/// The `[proxy]` settings of a lab proxy node whose files live in `dir`. Commands run inside the
/// node's namespace (the agent runs there). `with_pid`: the agent knows `keepalived_pidfile`
/// and `{pid}` placeholders (the proxy worker's config); otherwise shell forms that read the
/// pid files themselves.
pub fn proxy_table(dir: &Path, with_pid: bool) -> Table {
    let p = |f: &str| dir.join(f).to_str().expect("UTF-8").to_string();
    let (hcfg, hpid, hsock) = (p("haproxy.cfg"), p("haproxy.pid"), p("haproxy.sock"));
    let (kcfg, kpid, vpid) = (p("keepalived.conf"), p("keepalived.pid"), p("vrrp.pid"));
    let arr = |v: &[&str]| Value::Array(v.iter().map(|x| Value::String(x.to_string())).collect());
    let mut t = Table::new();
    t.insert("haproxy_config".into(), Value::String(hcfg.clone()));
    t.insert("haproxy_pidfile".into(), Value::String(hpid.clone()));
    t.insert("haproxy_socket".into(), Value::String(hsock.clone()));
    t.insert("keepalived_config".into(), Value::String(kcfg.clone()));
    t.insert(
        "haproxy_start".into(),
        arr(&["haproxy", "-D", "-f", &hcfg, "-p", &hpid]),
    );
    t.insert(
        "keepalived_start".into(),
        arr(&[
            "keepalived",
            "-D",
            "-G",
            "-P",
            "-f",
            &kcfg,
            "-p",
            &kpid,
            "-r",
            &vpid,
        ]),
    );
    if with_pid {
        t.insert(
            "haproxy_reload".into(),
            arr(&[
                "haproxy", "-D", "-f", &hcfg, "-p", &hpid, "-x", &hsock, "-sf", "{pid}",
            ]),
        );
        t.insert("haproxy_stop".into(), arr(&["kill", "-TERM", "{pid}"]));
        t.insert("keepalived_pidfile".into(), Value::String(kpid.clone()));
        t.insert("keepalived_reload".into(), arr(&["kill", "-HUP", "{pid}"]));
        t.insert("keepalived_stop".into(), arr(&["kill", "-TERM", "{pid}"]));
        t.insert("ip_command".into(), arr(&["ip"]));
    } else {
        let sh = |script: String| arr(&["sh", "-c", &script]);
        t.insert(
            "haproxy_reload".into(),
            sh(format!(
                "exec haproxy -D -f '{hcfg}' -p '{hpid}' -x '{hsock}' -sf $(cat '{hpid}')"
            )),
        );
        t.insert(
            "haproxy_stop".into(),
            sh(format!("p=$(cat '{hpid}' 2>/dev/null) && kill $p; true")),
        );
        t.insert(
            "keepalived_reload".into(),
            sh(format!("kill -HUP $(cat '{kpid}')")),
        );
        t.insert(
            "keepalived_stop".into(),
            sh(format!("p=$(cat '{kpid}' 2>/dev/null) && kill $p; true")),
        );
    }
    t
}

/// Rewrites the agent's agent.toml: `[database]` from `db`, `[proxy]` for the files in
/// `proxy_dir`. Checks the result parses as the agent's settings.
pub fn rewrite(home: &Path, db: Option<&DatabaseConfig>, proxy_dir: Option<&Path>) -> Result<()> {
    let path = home.join(vmoodle_agent::config::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut doc: Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    if let Some(db) = db {
        let v = Value::try_from(db).context("the lab's [database] settings")?;
        doc.insert("database".into(), v);
    }
    let mut last_err = None;
    for with_pid in [true, false] {
        if let Some(dir) = proxy_dir {
            doc.insert("proxy".into(), Value::Table(proxy_table(dir, with_pid)));
        }
        let new = toml::to_string_pretty(&doc)?;
        match toml::from_str::<AgentConfig>(&new)
            .map_err(anyhow::Error::from)
            .and_then(|c| c.check())
        {
            Ok(()) => {
                std::fs::write(&path, format!("# vmoodle lab\n{new}"))
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(());
            }
            Err(e) => last_err = Some(e),
        }
        if proxy_dir.is_none() {
            break;
        }
    }
    Err(last_err.expect("an error")).context("the lab's agent.toml does not parse")
}

/// Starts `vmoodle agent serve` inside `ns`, its output appended to `log`.
pub fn serve(bin: &Path, home: &Path, ns: &str, log: &Path) -> Result<Child> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let f2 = f.try_clone()?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(["agent", "--agent-home"])
        .arg(home)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .current_dir("/")
        .spawn()
        .with_context(|| format!("starting the agent in {ns}"))
}

/// Waits until the agent at `ip:port` answers /health (asked from inside `from_ns`); returns
/// the answer's body.
pub fn wait_health(from_ns: &str, ip: &str, port: u16, within: Duration) -> Result<String> {
    let url = format!("https://{ip}:{port}/health");
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < within {
        let out = super::net::output(
            &[
                "ip",
                "netns",
                "exec",
                from_ns,
                "curl",
                "-sk",
                "--fail",
                "--max-time",
                "2",
                &url,
            ],
            None,
        )?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the agent at {url} did not answer within {within:?}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_parse_as_the_agents() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("agent");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(
            home.join(vmoodle_agent::config::CONFIG_FILE),
            "listen = \"10.200.1.21:8008\"\nname = \"lb1\"\n",
        )
        .unwrap();
        let pdir = dir.path().join("proxy");
        rewrite(&home, None, Some(&pdir)).unwrap();
        let cfg = AgentConfig::load(&home).unwrap();
        let p = cfg.proxy.expect("[proxy]");
        assert_eq!(p.haproxy_pidfile, pdir.join("haproxy.pid"));
        assert_eq!(p.haproxy_start[0], "haproxy");
        assert!(p
            .keepalived_start
            .contains(&pdir.join("keepalived.pid").display().to_string()));
        assert!(cfg.database.is_none());
    }

    #[test]
    fn both_proxy_command_forms_name_the_pid_files() {
        let d = Path::new("/lab/lb1/proxy");
        for with_pid in [true, false] {
            let t = proxy_table(d, with_pid);
            let text = toml::to_string(&t).unwrap();
            assert!(text.contains("/lab/lb1/proxy/haproxy.pid"), "{text}");
            assert_eq!(t.contains_key("keepalived_pidfile"), with_pid);
            assert_eq!(text.contains("{pid}"), with_pid, "{text}");
        }
    }
}
