//! haproxy.cfg, keepalived.conf and keepalived's HAProxy check script, rendered from a
//! `ProxySpec` and the node's paths. Pure: validation and text only.
//!
//! The reader: HAProxy 2.6 cannot give one server of a `listen` section a different check path,
//! and the lab showed a `backup` server checked on `/replica` never serves (the primary fails
//! that check). So the reader is a `frontend reader` with two backends: `reader_replicas` (the
//! replicas, checked on `/replica?max_lag=N`) and `reader_primary` (the primary, checked on
//! `/read-only`), and `use_backend reader_primary if { nbsrv(reader_replicas) eq 0 }`.
//!
//! Across reloads: the agent saves `show servers state` into `server-state-file` right before a
//! reload, so the new process starts with the servers as the old one last saw them (without
//! it, every server starts "UP 1/2" until its first check: a replica would be in the writer
//! for a moment). HAProxy 2.6 also takes a server's port and check port from that file over
//! the configuration's (verified), so the agent saves only the servers whose address, port and
//! agent port the new configuration keeps (`stat::keep_unchanged`); the others start afresh.
//! `hard-stop-after 60s` ends the old process a minute after a reload, with the
//! sessions it still holds (e.g. to a server the new configuration removed); without it they
//! would last up to the 30 min client timeout.
//!
//! Checks: each server is checked over TLS on its agent port. When the spec carries the
//! agent's pinned certificate, the agent writes it to a file and HAProxy verifies the agent
//! against it alone (`verify required ca-file FILE`: the self-signed certificate is its own
//! CA). There is no hostname check, on purpose: HAProxy checks the certificate's names only
//! against an SNI or `verifyhost`, we give neither, and the agent's certificate names its
//! listen address and node name, not necessarily the address the spec uses. The pin is the
//! whole trust (as for the control node's client), verified live with HAProxy 2.6: a
//! certificate naming another host passes, a different certificate fails (L6RSP).

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use crate::config::ProxyConfig;
use crate::protocol::{Backend, ProxySpec};

/// The backends' names in `show stat` and which listener each belongs to.
pub const WRITER: &str = "writer";
pub const READER_REPLICAS: &str = "reader_replicas";
pub const READER_PRIMARY: &str = "reader_primary";

/// Names HAProxy and keepalived accept unquoted: [A-Za-z0-9_.-], 1 to 64 characters.
pub fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        bail!("{what} {s:?} is not a valid name: use 1 to 64 of A-Z a-z 0-9 _ . -");
    }
    Ok(())
}

/// An IP address or a DNS host name.
pub fn check_host(what: &str, s: &str) -> Result<()> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        bail!("{what} {s:?} is neither an IP address nor a host name");
    }
    Ok(())
}

fn check_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.parse::<IpAddr>()
        .map_err(|_| anyhow::anyhow!("{what} {s:?} is not an IP address"))
}

fn check_port(what: &str, p: u16) -> Result<()> {
    if p == 0 {
        bail!("{what} is 0: name a TCP port (1-65535)");
    }
    Ok(())
}

/// A path written into a configuration file: absolute, without whitespace or quotes.
fn check_path(what: &str, p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{what} {} is not UTF-8", p.display()))?;
    if !p.is_absolute()
        || s.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
    {
        bail!("{what} {s:?} must be an absolute path without spaces or quotes");
    }
    Ok(s.to_string())
}

/// The VIP's address and prefix length ("10.0.0.100/24").
pub fn split_vip(vip: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = vip.split_once('/').with_context(|| {
        format!("vip {vip:?} has no prefix length: write it as ADDRESS/PREFIX, e.g. 10.0.0.100/24")
    })?;
    let ip = check_ip("vip", a)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match p.parse::<u8>() {
        Ok(n) if (1..=max).contains(&n) => Ok((ip, n)),
        _ => bail!("vip {vip:?}: the prefix length must be 1 to {max}"),
    }
}

/// Checks everything the configurations are made of.
pub fn validate(spec: &ProxySpec) -> Result<()> {
    check_name("cluster", &spec.cluster)?;
    split_vip(&spec.vip)?;
    if spec.interface.is_empty()
        || spec.interface.len() > 15
        || !spec
            .interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'))
    {
        bail!(
            "interface {:?} is not a valid interface name",
            spec.interface
        );
    }
    check_ip("self_address", &spec.self_address)?;
    for p in &spec.peers {
        check_ip("peer", p)?;
    }
    if spec.router_id == 0 {
        bail!("router_id is 0: VRRP router ids are 1-255");
    }
    if spec.priority == 0 || spec.priority == 255 {
        bail!("priority {} is out of range: use 1-254", spec.priority);
    }
    check_port("writer_port", spec.writer_port)?;
    check_port("reader_port", spec.reader_port)?;
    if spec.writer_port == spec.reader_port {
        bail!(
            "writer_port and reader_port are both {}: they must differ",
            spec.writer_port
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for b in std::iter::once(&spec.primary).chain(&spec.replicas) {
        check_name("backend name", &b.name)?;
        check_host(&format!("backend {}'s host", b.name), &b.host)?;
        check_port(&format!("backend {}'s port", b.name), b.port)?;
        check_port(&format!("backend {}'s agent_port", b.name), b.agent_port)?;
        if !names.insert(b.name.as_str()) {
            bail!(
                "backend name {:?} is used twice: names must be unique",
                b.name
            );
        }
        backend_ca(b)?;
    }
    Ok(())
}

/// A backend's pinned agent certificate as HAProxy's checks get it: the file name (the
/// backend's name and the certificate's SHA-256, so a new certificate is a new file and
/// changes haproxy.cfg, which reloads HAProxy) and the certificate re-encoded as PEM (only the
/// certificate, whatever else the text held). None when the spec has no certificate.
pub fn backend_ca(b: &Backend) -> Result<Option<(String, Vec<u8>)>> {
    let Some(pem) = &b.cert_pem else {
        return Ok(None);
    };
    let cert = openssl::x509::X509::from_pem(pem.as_bytes())
        .with_context(|| format!("backend {}'s cert_pem is not a PEM certificate", b.name))?;
    let der = cert.to_der()?;
    let hash: String = openssl::sha::sha256(&der)[..8]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    Ok(Some((format!("{}-{hash}.pem", b.name), cert.to_pem()?)))
}

/// Every server line of haproxy.cfg: (its backend, the spec's backend).
pub fn servers(spec: &ProxySpec) -> Vec<(&'static str, &Backend)> {
    let mut v: Vec<(&'static str, &Backend)> = std::iter::once(&spec.primary)
        .chain(&spec.replicas)
        .map(|b| (WRITER, b))
        .collect();
    v.extend(spec.replicas.iter().map(|b| (READER_REPLICAS, b)));
    v.push((READER_PRIMARY, &spec.primary));
    v
}

fn addr(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("ipv6@{v6}:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// A server line. Its check verifies the agent's certificate when the spec pins one (the file
/// `backend_ca` names, in `ca_dir`; no `verifyhost`: see the module's notes).
fn server(out: &mut String, b: &Backend, ca_dir: &Path, extra: &str) -> Result<()> {
    let verify = match backend_ca(b)? {
        Some((file, _)) => format!(
            "verify required ca-file {}",
            check_path("the certificate file", &ca_dir.join(file))?
        ),
        None => "verify none".into(),
    };
    let _ = writeln!(
        out,
        "    server {} {} check port {} check-ssl {verify}{extra}",
        b.name,
        addr(&b.host, b.port),
        b.agent_port
    );
    Ok(())
}

/// Checks once a second while a server's state holds, four times a second while it changes or
/// is down: a promoted primary joins the writer within about half a second of its agent saying
/// so (two passing checks), and a fenced one leaves it as fast.
const DEFAULT_SERVER: &str =
    "    default-server inter 1s fastinter 250ms downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions\n";

/// haproxy.cfg; `ca_dir` is where the agent writes the backends' certificates (`backend_ca`).
pub fn haproxy_cfg(cfg: &ProxyConfig, spec: &ProxySpec, ca_dir: &Path) -> Result<String> {
    validate(spec)?;
    let pidfile = check_path("haproxy_pidfile", &cfg.haproxy_pidfile)?;
    let socket = check_path("haproxy_socket", &cfg.haproxy_socket)?;
    let state_file = check_path("haproxy_state_file", &cfg.server_state_file())?;
    let (vip, _) = split_vip(&spec.vip)?;
    let vip = vip.to_string();
    let mut o = String::new();
    let _ = write!(
        o,
        "# Written by vmoodle-agent for cluster {cluster}; changes are overwritten.\n\
         global\n    pidfile {pidfile}\n    stats socket {socket} mode 600 level admin expose-fd listeners\n    maxconn 4000\n    hard-stop-after 60s\n    server-state-file {state_file}\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n    timeout check 1s\n    load-server-state-from-file global\n",
        cluster = spec.cluster
    );
    let binds = |o: &mut String, port: u16| {
        let _ = writeln!(o, "    bind {}", addr(&spec.self_address, port));
        let _ = writeln!(o, "    bind {}", addr(&vip, port));
    };
    // The writer: every server is checked on /primary; only a writable primary answers 200.
    let _ = writeln!(o, "listen {WRITER}");
    binds(&mut o, spec.writer_port);
    o.push_str("    option httpchk GET /primary\n    http-check expect status 200\n");
    o.push_str(DEFAULT_SERVER);
    for b in std::iter::once(&spec.primary).chain(&spec.replicas) {
        server(&mut o, b, ca_dir, "")?;
    }
    // The reader: the healthy replicas, or the primary when none is.
    o.push_str("frontend reader\n");
    binds(&mut o, spec.reader_port);
    let _ = writeln!(
        o,
        "    use_backend {READER_PRIMARY} if {{ nbsrv({READER_REPLICAS}) eq 0 }}\n    default_backend {READER_REPLICAS}"
    );
    let _ = writeln!(
        o,
        "backend {READER_REPLICAS}\n    option httpchk GET /replica?max_lag={}\n    http-check expect status 200",
        spec.max_lag
    );
    o.push_str(DEFAULT_SERVER);
    for b in &spec.replicas {
        server(&mut o, b, ca_dir, "")?;
    }
    let _ = writeln!(
        o,
        "backend {READER_PRIMARY}\n    option httpchk GET /read-only\n    http-check expect status 200"
    );
    o.push_str(DEFAULT_SERVER);
    server(&mut o, &spec.primary, ca_dir, " backup")?;
    Ok(o)
}

/// keepalived.conf; `check_script` is the script `check_script()` renders, written by the agent.
/// `check_unicast_src`: adverts from any address but the unicast peers are ignored (verified
/// live with keepalived 2.2.7: without it, a stranger advertising a higher priority for the
/// same router id made the holder drop the VIP; with it, keepalived logs "unicast source
/// address ... not a unicast peer" and keeps it).
pub fn keepalived_conf(
    cfg: &ProxyConfig,
    spec: &ProxySpec,
    node_name: &str,
    check_script: &Path,
) -> Result<String> {
    validate(spec)?;
    check_name("node name", node_name)?;
    let script = check_path("the check script", check_script)?;
    let pidfile = check_path("haproxy_pidfile", &cfg.haproxy_pidfile)?;
    let (vip, prefix) = split_vip(&spec.vip)?;
    let mut peers = String::new();
    for p in &spec.peers {
        let _ = writeln!(peers, "        {p}");
    }
    Ok(format!(
        "# Written by vmoodle-agent for cluster {cluster}; changes are overwritten.\n\
global_defs {{\n    router_id {node_name}\n    enable_script_security\n    script_user root\n}}\n\
vrrp_script chk_haproxy {{\n    script \"{script} {pidfile}\"\n    interval 1\n    fall 2\n    rise 2\n}}\n\
vrrp_instance VI_{cluster} {{\n    state BACKUP\n    nopreempt\n    interface {iface}\n    virtual_router_id {rid}\n    priority {prio}\n    advert_int 1\n    unicast_src_ip {src}\n    check_unicast_src\n    unicast_peer {{\n{peers}    }}\n    virtual_ipaddress {{\n        {vip}/{prefix} dev {iface}\n    }}\n    track_script {{\n        chk_haproxy\n    }}\n}}\n",
        cluster = spec.cluster,
        iface = spec.interface,
        rid = spec.router_id,
        prio = spec.priority,
        src = spec.self_address,
    ))
}

/// keepalived's check: HAProxy's pid file names a live process that is not a zombie (daemons
/// orphaned to a PID 1 that reaps late stay zombies for a second or two; `kill -0` succeeds on
/// them).
pub fn check_script() -> &'static str {
    "#!/bin/sh\n# Written by vmoodle-agent: is the HAProxy of pid file $1 running (and not a zombie)?\n\
p=$(cat \"$1\" 2>/dev/null) || exit 1\n\
[ -n \"$p\" ] && kill -0 \"$p\" 2>/dev/null || exit 1\n\
[ \"$(awk '{print $3}' /proc/$p/stat 2>/dev/null)\" != Z ]\n"
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(crate) fn cfg() -> ProxyConfig {
        ProxyConfig {
            haproxy_config: "/etc/haproxy/haproxy.cfg".into(),
            haproxy_pidfile: "/run/haproxy.pid".into(),
            haproxy_socket: "/run/haproxy/admin.sock".into(),
            haproxy_state_file: None,
            haproxy_start: vec!["haproxy".into()],
            haproxy_reload: vec!["haproxy".into()],
            haproxy_stop: vec!["kill".into(), "{pid}".into()],
            keepalived_config: "/etc/keepalived/keepalived.conf".into(),
            keepalived_pidfile: None,
            keepalived_start: vec!["keepalived".into()],
            keepalived_reload: vec!["kill".into(), "-HUP".into(), "{pid}".into()],
            keepalived_stop: vec!["kill".into(), "{pid}".into()],
            ip_command: vec!["ip".into()],
        }
    }

    fn be(name: &str, host: &str) -> Backend {
        Backend {
            name: name.into(),
            host: host.into(),
            port: 3306,
            agent_port: 8008,
            cert_pem: None,
        }
    }

    const CA_DIR: &str = "/var/lib/agent/state/proxy-ca";

    fn agent_cert(name: &str) -> String {
        let (pem, _) = crate::identity::self_signed(name, &[name.into()]).unwrap();
        String::from_utf8(pem).unwrap()
    }

    pub(crate) fn spec() -> ProxySpec {
        ProxySpec {
            cluster: "db".into(),
            vip: "10.251.0.100/24".into(),
            interface: "eth0".into(),
            self_address: "10.251.0.21".into(),
            peers: vec!["10.251.0.22".into()],
            priority: 101,
            router_id: 51,
            writer_port: 3306,
            reader_port: 3307,
            max_lag: 10,
            primary: be("db1", "10.251.0.11"),
            replicas: vec![be("db2", "10.251.0.12")],
        }
    }

    #[test]
    fn renders_haproxy() {
        let text = haproxy_cfg(&cfg(), &spec(), Path::new(CA_DIR)).unwrap();
        let want = "\
global
    pidfile /run/haproxy.pid
    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners
    maxconn 4000
    hard-stop-after 60s
    server-state-file /run/haproxy.server-state
defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 1s
    load-server-state-from-file global
listen writer
    bind 10.251.0.21:3306
    bind 10.251.0.100:3306
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions
    server db1 10.251.0.11:3306 check port 8008 check-ssl verify none
    server db2 10.251.0.12:3306 check port 8008 check-ssl verify none
frontend reader
    bind 10.251.0.21:3307
    bind 10.251.0.100:3307
    use_backend reader_primary if { nbsrv(reader_replicas) eq 0 }
    default_backend reader_replicas
backend reader_replicas
    option httpchk GET /replica?max_lag=10
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions
    server db2 10.251.0.12:3306 check port 8008 check-ssl verify none
backend reader_primary
    option httpchk GET /read-only
    http-check expect status 200
    default-server inter 1s fastinter 250ms downinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions
    server db1 10.251.0.11:3306 check port 8008 check-ssl verify none backup
";
        assert_eq!(text.split_once('\n').unwrap().1, want);
        let mut c = cfg();
        c.haproxy_state_file = Some("/var/lib/haproxy/state".into());
        let text = haproxy_cfg(&c, &spec(), Path::new(CA_DIR)).unwrap();
        assert!(text.contains("\n    server-state-file /var/lib/haproxy/state\n"));
    }

    #[test]
    fn pinned_certificates_are_verified() {
        let mut s = spec();
        let cert = agent_cert("db1");
        s.primary.cert_pem = Some(cert.clone());
        let (file, pem) = backend_ca(&s.primary).unwrap().unwrap();
        assert!(
            file.starts_with("db1-") && file.ends_with(".pem") && file.len() == 4 + 16 + 4,
            "{file}"
        );
        assert_eq!(pem, cert.as_bytes(), "a lone certificate is kept as it is");
        let text = haproxy_cfg(&cfg(), &s, Path::new(CA_DIR)).unwrap();
        let db1 = format!(
            "server db1 10.251.0.11:3306 check port 8008 check-ssl verify required ca-file {CA_DIR}/{file}"
        );
        assert_eq!(text.matches(&db1).count(), 2, "{text}");
        assert!(text.contains(&format!("{db1} backup\n")), "{text}");
        // db2 has no certificate in the spec (an older control node): not verified.
        assert_eq!(
            text.matches("server db2 10.251.0.12:3306 check port 8008 check-ssl verify none\n")
                .count(),
            2,
            "{text}"
        );
        // Another certificate is another file (and another haproxy.cfg: HAProxy reloads).
        s.primary.cert_pem = Some(agent_cert("db1"));
        let (file2, _) = backend_ca(&s.primary).unwrap().unwrap();
        assert_ne!(file, file2);
        // Only the certificate is written, whatever surrounds it.
        s.primary.cert_pem = Some(format!("junk before\n{cert}\nmore junk\n"));
        let (file3, pem) = backend_ca(&s.primary).unwrap().unwrap();
        assert_eq!((file3, pem), (file, cert.into_bytes()));
        // Not a certificate: refused before anything is written.
        s.primary.cert_pem =
            Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
        let e = format!("{:#}", validate(&s).unwrap_err());
        assert!(e.contains("db1's cert_pem is not a PEM certificate"), "{e}");
        s.primary.cert_pem = Some(String::new());
        assert!(haproxy_cfg(&cfg(), &s, Path::new(CA_DIR)).is_err());
    }

    #[test]
    fn backends_without_a_certificate_keep_their_old_json() {
        let b = be("db1", "10.0.0.1");
        let json = serde_json::to_string(&b).unwrap();
        assert!(!json.contains("cert_pem"), "{json}");
        let old: Backend = serde_json::from_str(
            r#"{"name":"db1","host":"10.0.0.1","port":3306,"agent_port":8008}"#,
        )
        .unwrap();
        assert_eq!(old, b);
    }

    #[test]
    fn renders_keepalived() {
        let text = keepalived_conf(&cfg(), &spec(), "lb1", &PathBuf::from("/s/chk.sh")).unwrap();
        for line in [
            "    router_id lb1\n",
            "    script \"/s/chk.sh /run/haproxy.pid\"\n",
            "vrrp_instance VI_db {\n    state BACKUP\n    nopreempt\n    interface eth0\n    virtual_router_id 51\n    priority 101\n    advert_int 1\n    unicast_src_ip 10.251.0.21\n    check_unicast_src\n    unicast_peer {\n        10.251.0.22\n    }\n",
            "    virtual_ipaddress {\n        10.251.0.100/24 dev eth0\n    }\n",
            "    track_script {\n        chk_haproxy\n    }\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        let bad = |f: &dyn Fn(&mut ProxySpec)| {
            let mut s = spec();
            f(&mut s);
            validate(&s).unwrap_err().to_string()
        };
        assert!(bad(&|s| s.primary.name = "db 1".into()).contains("not a valid name"));
        assert!(bad(&|s| s.replicas[0].name = "db1".into()).contains("used twice"));
        assert!(bad(&|s| s.replicas[0].host = "a;b".into()).contains("host name"));
        assert!(bad(&|s| s.vip = "10.0.0.1".into()).contains("prefix"));
        assert!(bad(&|s| s.vip = "10.0.0.1/33".into()).contains("prefix"));
        assert!(bad(&|s| s.peers = vec!["x y".into()]).contains("IP address"));
        assert!(bad(&|s| s.cluster = "a\nb".into()).contains("not a valid name"));
        assert!(bad(&|s| s.reader_port = 3306).contains("must differ"));
        assert!(bad(&|s| s.router_id = 0).contains("router"));
        assert!(bad(&|s| s.primary.port = 0).contains("port"));
        check_host("h", "db-1.example.org").unwrap();
        check_host("h", "fe80::1").unwrap();
        let mut c = cfg();
        c.haproxy_pidfile = "/run/my haproxy.pid".into();
        assert!(haproxy_cfg(&c, &spec(), Path::new(CA_DIR)).is_err());
        let mut c = cfg();
        c.haproxy_state_file = Some("/run/my state".into());
        assert!(haproxy_cfg(&c, &spec(), Path::new(CA_DIR)).is_err());
    }

    #[test]
    fn ipv6_addresses_are_prefixed() {
        let mut s = spec();
        s.replicas[0].host = "fd00::12".into();
        let text = haproxy_cfg(&cfg(), &s, Path::new(CA_DIR)).unwrap();
        assert!(
            text.contains("server db2 ipv6@fd00::12:3306 check"),
            "{text}"
        );
    }
}
