//! `/metrics` answers a read-scoped token with the families of the fleet; the daemon serves
//! HTTPS when given a certificate (a self-signed one made here with OpenSSL).

use super::*;
use crate::common::Backend;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Name, X509};

#[test]
fn metrics_answer_with_the_fleets_families() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    for t in ["m1", "m2"] {
        vm.ok_stdin(&["instance", "add", "--token", t, "--password-stdin"], "pw");
    }
    vm.ok(&["instance", "disable", "m2"]);
    finished_job(&vm, "deploy", "failed");
    let (_write, read) = admin_and_tokens(&vm);
    let d = Daemon::start(&vm);
    let c = d.client();
    let r = c.get(format!("{}/metrics", d.url)).send().unwrap();
    assert_eq!(r.status(), 401, "metrics need a token");
    let r = c
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&read)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().unwrap();
    for want in [
        "vmoodle_instances{state=\"enabled\"} 1",
        "vmoodle_instances{state=\"disabled\"} 1",
        "vmoodle_jobs_total{kind=\"deploy\",state=\"failed\"} 1",
        "vmoodle_job_duration_seconds_count{kind=\"deploy\"} 1",
        "vmoodle_nodes 1",
        "vmoodle_up 1",
    ] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
}

/// Records a job that ended in `state` in the register, as the daemon's runner does.
fn finished_job(vm: &Vm, kind: &str, state: &str) {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let home = vmoodle_ops::Home::open(&vm.home).await.unwrap();
        let reg = &home.registry;
        let id = reg
            .queue_job(kind, "m9", "elsewhere/1/1", "test", None, None)
            .await
            .unwrap();
        reg.set_job_state(id, state, Some("refused")).await.unwrap();
    });
}

/// A self-signed certificate for 127.0.0.1, written as PEM files into `dir`.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

#[test]
fn the_daemon_serves_https_with_a_certificate() {
    let vm = Vm::new(Backend::Sqlite);
    let (cert, key) = self_signed(vm.dir.path());
    let root = vm.home.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            addr_tx.send(addr).unwrap();
            let cfg = vmoodle_server::Config {
                root,
                secure_cookies: true,
                background: false,
                listen: format!("https://{addr}"),
                tls: Some((cert, key)),
            };
            vmoodle_server::launch(listener, cfg, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    let page = https_get(addr, "/healthz");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.ends_with("ok\n"), "{page}");
    let page = https_get(addr, "/login");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let cookie = page
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {page}"));
    assert!(cookie.contains("Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no page.
    assert!(reqwest::blocking::get(format!("http://{addr}/healthz"))
        .map(|r| r.status() != 200)
        .unwrap_or(true));
    tx.send(()).unwrap();
    server.join().unwrap();
}

/// One GET over TLS (the certificate is not verified: it is self-signed); the whole response.
fn https_get(addr: std::net::SocketAddr, path: &str) -> String {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::{Read, Write};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut s = b.build().connect("127.0.0.1", tcp).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
