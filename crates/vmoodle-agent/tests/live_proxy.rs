//! HAProxy and keepalived for real, in a network namespace this test creates and deletes
//! (`vmt-<random>`): apply starts both, HAProxy reports its (unanswering) servers DOWN with
//! L4CON, keepalived takes the VIP, a changed spec reloads HAProxy without dropping its listener,
//! keepalived's check drops the VIP when HAProxy dies, a spec HAProxy rejects changes nothing, and remove stops both, the VIP goes and the previous
//! files come back. Needs root, haproxy, keepalived and ip; skipped (with a note) otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmoodle_agent::proxy;
use vmoodle_agent::{AgentHome, Backend, ProxyConfig, ProxySpec};

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    t ^ std::process::id().rotate_left(16)
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with lo and a veth pair (vmt0 carries ADDR/24); on drop every process
/// in it is killed and it is deleted.
struct Netns {
    name: String,
}

impl Netns {
    fn new(addr: &str) -> Netns {
        let name = format!("vmt-{:08x}", rand_u32());
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        must(&[
            "ip", "-n", n, "link", "add", "vmt0", "type", "veth", "peer", "name", "vmt1",
        ]);
        must(&["ip", "-n", n, "link", "set", "vmt1", "up"]);
        must(&["ip", "-n", n, "link", "set", "vmt0", "up"]);
        must(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "vmt0",
        ]);
        must(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_nonlocal_bind=1",
        ]);
        ns
    }

    /// Whether a TCP connection to ADDR:PORT from inside the namespace is accepted.
    fn connects(&self, addr: &str, port: u16) -> bool {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{addr}/{port}"),
        ])
        .status
        .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let pids = |n: &str| -> Vec<String> {
            String::from_utf8_lossy(&sh(&["ip", "netns", "pids", n]).stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        for p in pids(&self.name) {
            let _ = sh(&["kill", "-KILL", &p]);
        }
        let until = Instant::now() + Duration::from_secs(5);
        while !pids(&self.name).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

fn usable() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (network namespaces, keepalived)");
        return false;
    }
    for tool in ["haproxy", "keepalived", "ip", "bash"] {
        if vmoodle_exec::find_on_path(&[tool]).is_none() {
            eprintln!("skipped: {tool} is not installed");
            return false;
        }
    }
    true
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn config(ns: &str, dir: &Path) -> ProxyConfig {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let (hcfg, kcfg, kpid) = (p("haproxy.cfg"), p("keepalived.conf"), p("keepalived.pid"));
    let inns = |rest: &[&str]| {
        let mut v = strs(&["ip", "netns", "exec", ns]);
        v.extend(strs(rest));
        v
    };
    ProxyConfig {
        haproxy_config: PathBuf::from(&hcfg),
        haproxy_pidfile: dir.join("haproxy.pid"),
        haproxy_socket: dir.join("haproxy.sock"),
        haproxy_start: inns(&["haproxy", "-D", "-f", &hcfg]),
        // -x: the new process takes the listening sockets over from the old one (expose-fd).
        haproxy_reload: inns(&[
            "haproxy",
            "-D",
            "-f",
            &hcfg,
            "-x",
            &p("haproxy.sock"),
            "-sf",
            "{pid}",
        ]),
        haproxy_stop: strs(&["kill", "-TERM", "{pid}"]),
        keepalived_config: PathBuf::from(&kcfg),
        keepalived_pidfile: Some(PathBuf::from(&kpid)),
        keepalived_start: inns(&[
            "keepalived",
            "-D",
            "-G",
            "-P",
            "-f",
            &kcfg,
            "-p",
            &kpid,
            "-r",
            &p("vrrp.pid"),
        ]),
        keepalived_reload: strs(&["kill", "-HUP", "{pid}"]),
        keepalived_stop: strs(&["kill", "-TERM", "{pid}"]),
        ip_command: strs(&["ip", "-n", ns]),
    }
}

async fn wait_for<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if f().await {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_proxy_apply_reload_remove() {
    if !usable() {
        return;
    }
    let x = 1 + rand_u32() % 250;
    let me = format!("10.252.{x}.1");
    let ns = Netns::new(&me);
    let dir = tempfile::tempdir().unwrap();
    let home = AgentHome::new(dir.path().join("home"));
    let cfg = config(&ns.name, dir.path());
    std::fs::write(&cfg.haproxy_config, "# the previous haproxy.cfg\n").unwrap();
    let port = 20000 + (rand_u32() % 20000) as u16;
    // Nothing listens on the backends' ports at our own address: checks get connection refused.
    let be = |name: &str, n: u16| Backend {
        name: name.into(),
        host: me.clone(),
        port: port + 10 + n,
        agent_port: port + 20 + n,
    };
    let mut spec = ProxySpec {
        cluster: "t".into(),
        vip: format!("10.252.{x}.100/24"),
        interface: "vmt0".into(),
        self_address: me.clone(),
        peers: vec![format!("10.252.{x}.2")],
        priority: 100,
        router_id: (1 + rand_u32() % 250) as u8,
        writer_port: port,
        reader_port: port + 1,
        max_lag: 10,
        primary: be("db1", 1),
        replicas: vec![be("db2", 2)],
    };

    let t = Instant::now();
    let st = proxy::apply(&cfg, &home, &spec).await.unwrap();
    eprintln!("apply (start) took {:?}", t.elapsed());
    assert!(st.haproxy_running && st.keepalived_running, "{st:?}");
    assert_eq!(st.backends.len(), 4, "{st:?}");
    assert!(
        st.backends.iter().all(|b| b.check_status != "INI"),
        "{st:?}"
    );
    let down = wait_for(Duration::from_secs(5), || async {
        let st = proxy::status(&cfg, &home).await.unwrap();
        st.backends
            .iter()
            .all(|b| b.status == "DOWN" && b.check_status == "L4CON")
    })
    .await;
    let st = proxy::status(&cfg, &home).await.unwrap();
    assert!(down.is_some(), "servers not DOWN/L4CON: {st:?}");
    let primary_fallback = st
        .backends
        .iter()
        .find(|b| b.backup)
        .expect("the reader's primary is a backup server");
    assert_eq!(
        (
            primary_fallback.listener.as_str(),
            primary_fallback.server.as_str()
        ),
        ("reader", "db1")
    );
    let vip_after = wait_for(Duration::from_secs(8), || async {
        proxy::status(&cfg, &home).await.unwrap().holds_vip
    })
    .await;
    eprintln!("VIP held {:?} after apply returned", vip_after);
    assert!(vip_after.is_some(), "keepalived never took the VIP");
    let vip = format!("10.252.{x}.100");
    assert!(ns.connects(&me, port) && ns.connects(&vip, port));
    assert!(ns.connects(&vip, port + 1), "reader listener");

    // A changed spec reloads HAProxy (a new process) and the listener stays.
    let old_pid = std::fs::read_to_string(&cfg.haproxy_pidfile).unwrap();
    let keepalived_pid = std::fs::read_to_string(cfg.keepalived_pidfile.as_ref().unwrap()).unwrap();
    spec.max_lag = 30;
    spec.priority = 120; // keepalived.conf changes too: keepalived gets SIGHUP and keeps the VIP

    // Clients connect all through the reload: none is refused.
    let clients = {
        let (n, addr) = (ns.name.clone(), vip.clone());
        std::thread::spawn(move || {
            let script = format!(
                "ok=0; bad=0; end=$((SECONDS+3)); while [ $SECONDS -lt $end ]; do \
                 if exec 3<>/dev/tcp/{addr}/{port}; then ok=$((ok+1)); exec 3<&-; else bad=$((bad+1)); fi; \
                 sleep 0.01; done 2>/dev/null; echo $ok $bad"
            );
            let out = sh(&["ip", "netns", "exec", &n, "bash", "-c", &script]);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let st = proxy::apply(&cfg, &home, &spec).await.unwrap();
    eprintln!("apply (reload) took {:?}", t.elapsed());
    let counts = clients.join().unwrap();
    eprintln!("connections during the reload (accepted refused): {counts}");
    let (ok, bad) = counts.split_once(' ').unwrap();
    assert!(ok.parse::<u32>().unwrap() > 50 && bad == "0", "{counts}");
    assert!(
        st.haproxy_running && st.keepalived_running && st.holds_vip,
        "{st:?}"
    );
    let new_pid = std::fs::read_to_string(&cfg.haproxy_pidfile).unwrap();
    assert_ne!(old_pid, new_pid, "HAProxy was not reloaded");
    assert_eq!(
        std::fs::read_to_string(cfg.keepalived_pidfile.as_ref().unwrap()).unwrap(),
        keepalived_pid,
        "keepalived was restarted rather than reloaded"
    );
    assert!(std::fs::read_to_string(&cfg.keepalived_config)
        .unwrap()
        .contains("priority 120"));
    assert!(std::fs::read_to_string(&cfg.haproxy_config)
        .unwrap()
        .contains("/replica?max_lag=30"));
    assert!(ns.connects(&me, port) && ns.connects(&vip, port));
    // The same spec again changes nothing.
    proxy::apply(&cfg, &home, &spec).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&cfg.haproxy_pidfile).unwrap(),
        new_pid
    );

    // keepalived's check script: HAProxy killed, the VIP goes; apply starts HAProxy again (its
    // configuration unchanged) and the VIP comes back.
    let pid = new_pid.trim().to_string();
    must(&["kill", "-KILL", &pid]);
    let released = wait_for(Duration::from_secs(8), || async {
        !proxy::status(&cfg, &home).await.unwrap().holds_vip
    })
    .await;
    eprintln!("VIP released {released:?} after HAProxy was killed");
    assert!(released.is_some(), "the VIP stayed without HAProxy");
    let st = proxy::apply(&cfg, &home, &spec).await.unwrap();
    assert!(st.haproxy_running, "{st:?}");
    let back = wait_for(Duration::from_secs(8), || async {
        proxy::status(&cfg, &home).await.unwrap().holds_vip
    })
    .await;
    eprintln!("VIP back {back:?} after HAProxy was started again");
    assert!(back.is_some(), "the VIP did not come back");

    // A spec HAProxy rejects (a host that does not resolve) leaves everything as it was.
    let before = std::fs::read_to_string(&cfg.haproxy_config).unwrap();
    let mut bad = spec.clone();
    bad.replicas[0].host = "no-such-host.invalid".into();
    let e = format!("{:#}", proxy::apply(&cfg, &home, &bad).await.unwrap_err());
    assert!(
        e.contains("HAProxy rejects") && e.contains("no-such-host.invalid"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&cfg.haproxy_config).unwrap(),
        before
    );
    assert!(proxy::status(&cfg, &home).await.unwrap().haproxy_running);

    let t = Instant::now();
    proxy::remove(&cfg, &home).await.unwrap();
    eprintln!("remove took {:?}", t.elapsed());
    let st = proxy::status(&cfg, &home).await.unwrap();
    assert!(!st.haproxy_running && !st.keepalived_running, "{st:?}");
    let addrs = sh(&["ip", "-n", &ns.name, "-o", "addr", "show", "dev", "vmt0"]);
    assert!(
        !String::from_utf8_lossy(&addrs.stdout).contains(&vip),
        "the VIP stayed"
    );
    assert!(!ns.connects(&me, port), "HAProxy still listens");
    assert_eq!(
        std::fs::read_to_string(&cfg.haproxy_config).unwrap(),
        "# the previous haproxy.cfg\n"
    );
    assert!(!cfg.keepalived_config.exists());
    proxy::remove(&cfg, &home).await.unwrap();
}
