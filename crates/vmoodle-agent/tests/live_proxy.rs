//! HAProxy and keepalived for real, in a network namespace this test creates and deletes
//! (`vmt-<random>`): apply starts both, HAProxy reports its (unanswering) servers DOWN with
//! L4CON, keepalived takes the VIP, a changed spec reloads HAProxy without dropping its listener
//! (and the new HAProxy starts from the server states the agent saved), keepalived's check drops
//! the VIP when HAProxy dies, a spec HAProxy rejects changes nothing, and remove stops both, the
//! VIP goes and the previous files come back.
//!
//! A second test runs agent-like TLS servers (the agent's own TLS code and a certificate from
//! `identity::self_signed`) in the namespace: HAProxy's checks pass against a backend's pinned
//! certificate although it names neither the address nor the host checked, fail (L6RSP)
//! against another certificate, and do not verify a backend without one; a new certificate
//! reloads HAProxy; keepalived ignores adverts from an address that is not a unicast peer.
//!
//! Needs root, haproxy, keepalived and ip; skipped (with a note) otherwise.

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
    /// A namespace with only lo.
    fn bare() -> Netns {
        let name = format!("vmt-{:08x}", rand_u32());
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        must(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn new(addr: &str) -> Netns {
        let ns = Netns::bare();
        let n = ns.name.as_str();
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
        // Default: beside the pid file (DIR/haproxy.server-state).
        haproxy_state_file: None,
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
        cert_pem: None,
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
    // The agent saved the old process's server states, and the new one started from them: its
    // servers were DOWN from the start, not "UP 1/2" until their first checks.
    let state_file = cfg.server_state_file();
    assert_eq!(state_file, dir.path().join("haproxy.server-state"));
    let saved = std::fs::read_to_string(&state_file).unwrap();
    assert!(
        saved.starts_with("1\n# be_id ") && saved.contains(" writer ") && saved.contains(" db2 "),
        "{saved}"
    );
    let reload_log =
        std::fs::read_to_string(home.state().join("proxy-haproxy-reload.log")).unwrap();
    assert!(
        reload_log.contains("Server writer/db1 is DOWN, changed from server-state after a reload"),
        "{reload_log}"
    );
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
    assert!(!cfg.server_state_file().exists());
    proxy::remove(&cfg, &home).await.unwrap();
}

/// Binds a listener at ADDR:PORT inside namespace `ns` (a thread enters it to bind; the socket
/// stays there).
fn listen_in(ns: &str, addr: &str, port: u16) -> tokio::net::TcpListener {
    let (ns, addr) = (ns.to_string(), format!("{addr}:{port}"));
    let l = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind(addr).unwrap()
    })
    .join()
    .unwrap();
    l.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(l).unwrap()
}

/// An agent's health checks, always healthy, over the agent's TLS code with the certificate
/// and key `identity::self_signed` made.
fn agent_like(listener: tokio::net::TcpListener, dir: &Path, cert: &[u8], key: &[u8]) {
    use axum::routing::get;
    let (c, k) = (dir.join("agent-cert.pem"), dir.join("agent-key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    let acceptor = vmoodle_agent::tls::acceptor(&c, &k).unwrap();
    let app = axum::Router::new()
        .route("/primary", get(|| async { "primary\n" }))
        .route("/replica", get(|| async { "replica\n" }))
        .route("/read-only", get(|| async { "primary\n" }));
    tokio::spawn(vmoodle_agent::tls::serve(
        listener,
        acceptor,
        app,
        std::future::pending(),
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_proxy_checks_verify_pinned_certificates() {
    if !usable() {
        return;
    }
    let x = 1 + rand_u32() % 250;
    let me = format!("10.252.{x}.1");
    let ns = Netns::new(&me);
    let dir = tempfile::tempdir().unwrap();
    let home = AgentHome::new(dir.path().join("home"));
    let cfg = config(&ns.name, dir.path());
    let port = 20000 + (rand_u32() % 20000) as u16;
    // The agent's certificate names another host (and not the address HAProxy checks): only
    // the pin counts.
    let (cert, key) =
        vmoodle_agent::identity::self_signed("db1", &["elsewhere.invalid".into()]).unwrap();
    let (other, _) = vmoodle_agent::identity::self_signed("db1", &["db1".into()]).unwrap();
    let (cert, other) = (
        String::from_utf8(cert).unwrap(),
        String::from_utf8(other).unwrap(),
    );
    let agent_port = port + 20;
    agent_like(
        listen_in(&ns.name, &me, agent_port),
        dir.path(),
        cert.as_bytes(),
        &key,
    );
    // Three backends checked at the same agent: db1 pinned to its certificate, db2 to another
    // one, db3 with none (a control node from before the pin).
    let be = |name: &str, n: u16, pem: Option<&String>| Backend {
        name: name.into(),
        host: me.clone(),
        port: port + 10 + n,
        agent_port,
        cert_pem: pem.cloned(),
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
        primary: be("db1", 1, Some(&cert)),
        replicas: vec![be("db2", 2, Some(&other)), be("db3", 3, None)],
    };
    proxy::apply(&cfg, &home, &spec).await.unwrap();
    let text = std::fs::read_to_string(&cfg.haproxy_config).unwrap();
    assert_eq!(text.matches("verify required ca-file").count(), 4, "{text}");
    assert_eq!(text.matches("verify none").count(), 2, "{text}");
    let ca_dir = home.state().join("proxy-ca");
    let ca_files = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&ca_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ca_files().len(), 2);
    for f in ca_files() {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o644, 0), "{}", f.display());
    }
    // (listener, server, backup) -> (status, check status)
    let states = || async {
        let st = proxy::status(&cfg, &home).await.unwrap();
        st.backends
            .iter()
            .map(|b| {
                (
                    format!(
                        "{}/{}{}",
                        b.listener,
                        b.server,
                        if b.backup { "+" } else { "" }
                    ),
                    format!("{} {}", b.status, b.check_status),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let want = |db2: &str, db3: &str| -> std::collections::BTreeMap<String, String> {
        [
            ("writer/db1", "UP L7OK"),
            ("writer/db2", db2),
            ("writer/db3", db3),
            ("reader/db2", db2),
            ("reader/db3", db3),
            ("reader/db1+", "UP L7OK"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    };
    let settled = wait_for(Duration::from_secs(8), || async {
        states().await == want("DOWN L6RSP", "UP L7OK")
    })
    .await;
    assert!(settled.is_some(), "{:#?}", states().await);

    // keepalived takes the VIP, and keeps it when a stranger (not a unicast peer) advertises a
    // higher priority for the same router id: check_unicast_src.
    let vip = format!("10.252.{x}.100");
    let holds = || async { proxy::status(&cfg, &home).await.unwrap().holds_vip };
    assert!(wait_for(Duration::from_secs(8), holds).await.is_some());
    let stranger = Netns::bare();
    must(&[
        "ip",
        "-n",
        &ns.name,
        "link",
        "set",
        "vmt1",
        "netns",
        &stranger.name,
    ]);
    must(&[
        "ip",
        "-n",
        &stranger.name,
        "addr",
        "add",
        &format!("10.252.{x}.3/24"),
        "dev",
        "vmt1",
    ]);
    must(&["ip", "-n", &stranger.name, "link", "set", "vmt1", "up"]);
    let kconf = dir.path().join("stranger.conf");
    std::fs::write(
        &kconf,
        format!(
            "vrrp_instance VI_x {{\n    state BACKUP\n    interface vmt1\n    virtual_router_id {rid}\n    priority 200\n    advert_int 1\n    unicast_src_ip 10.252.{x}.3\n    unicast_peer {{\n        {me}\n    }}\n    virtual_ipaddress {{\n        {vip}/24 dev vmt1\n    }}\n}}\n",
            rid = spec.router_id
        ),
    )
    .unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    must(&[
        "ip",
        "netns",
        "exec",
        &stranger.name,
        "keepalived",
        "-D",
        "-G",
        "-P",
        "-f",
        &p("stranger.conf"),
        "-p",
        &p("stranger.pid"),
        "-r",
        &p("stranger-vrrp.pid"),
    ]);
    let stranger_holds = || async {
        let out = sh(&[
            "ip",
            "-n",
            &stranger.name,
            "-o",
            "addr",
            "show",
            "dev",
            "vmt1",
        ]);
        String::from_utf8_lossy(&out.stdout).contains(&vip)
    };
    // The stranger hears nobody, becomes master (about 3.6 s) and advertises to us every second.
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), stranger_holds)
            .await
            .is_some(),
        "the stranger's keepalived never became master"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "stranger master after {:?}; 3 s of its adverts later:",
        t.elapsed()
    );
    assert!(holds().await, "a stranger's adverts took the VIP away");
    // The stranger's namespace stays to the end: deleting it would delete vmt1, and with it
    // its peer vmt0 and our addresses.
    let spid = std::fs::read_to_string(dir.path().join("stranger.pid")).unwrap();
    must(&["kill", "-TERM", spid.trim()]);

    // db2's pinned certificate is replaced by the right one: a new file, a new haproxy.cfg, a
    // reload, db2 passes; db2's old file goes.
    let before = ca_files();
    spec.replicas[0].cert_pem = Some(cert.clone());
    // In the same reload db3's agent moves to a port where nothing listens: HAProxy 2.6 would
    // take the old check port from a saved state, so the agent saves none for db3, whose checks
    // then fail.
    spec.replicas[1].agent_port = agent_port + 1;
    proxy::apply(&cfg, &home, &spec).await.unwrap();
    let settled = wait_for(Duration::from_secs(8), || async {
        states().await == want("UP L7OK", "DOWN L4CON")
    })
    .await;
    assert!(settled.is_some(), "{:#?}", states().await);
    let saved = std::fs::read_to_string(cfg.server_state_file()).unwrap();
    assert!(
        saved.contains(" db1 ") && saved.contains(" db2 ") && !saved.contains(" db3 "),
        "{saved}"
    );
    let after = ca_files();
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(before, after);

    proxy::remove(&cfg, &home).await.unwrap();
    assert!(!ca_dir.exists());
}
