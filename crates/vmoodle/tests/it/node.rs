//! `vmoodle agent` and `vmoodle node`: a real agent over HTTPS on loopback; its certificate is
//! pinned, its token checked and sealed, its health checks answered without a token and its
//! steps refused without one.

use crate::common::{Backend, Vm};
use crate::mnet_live::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    home: std::path::PathBuf,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(vm: &Vm, name: &str) -> Agent {
    let home = vm.dir.path().join(format!("agent-{name}"));
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_vmoodle"))
        .args(["agent", "--agent-home"])
        .arg(&home)
        .args([
            "init",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            name,
            "--proxy",
            "--token-file",
        ])
        .arg(home.with_extension("token"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = Command::new(env!("CARGO_BIN_EXE_vmoodle"))
        .args(["agent", "--agent-home"])
        .arg(&home)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Agent { child, home, port }
}

fn fingerprint(a: &Agent) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmoodle"))
        .args(["agent", "--agent-home"])
        .arg(&a.home)
        .arg("fingerprint")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_node_is_registered_with_its_certificate_pinned_and_its_token_sealed() {
    let vm = Vm::new(Backend::Sqlite);
    let a = agent(&vm, "lb1");
    let b = agent(&vm, "lb2");
    let token_file = a.home.with_extension("token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let port = a.port.to_string();

    // The fingerprint of another agent: refused, nothing registered.
    let err = vm.fails(
        &[
            "node",
            "add",
            "lb1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--token-file",
            token_file.to_str().unwrap(),
            "--fingerprint",
            &fingerprint(&b),
        ],
        1,
    );
    assert!(
        err.contains("not the") && err.contains("nothing was registered"),
        "{err}"
    );
    // A wrong token: refused by the agent, nothing registered, the token never echoed.
    let err = vm.fails_stdin(
        &[
            "node",
            "add",
            "lb1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--token-stdin",
            "--trust-on-first-use",
        ],
        "not-the-token\n",
        1,
    );
    assert!(
        err.contains("401") && !err.contains("not-the-token"),
        "{err}"
    );
    assert_eq!(
        vm.json(&["node", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Neither a fingerprint nor an explicit trust on first use: a usage error.
    let tf = token_file.to_str().unwrap();
    let err = vm.fails(
        &[
            "node",
            "add",
            "lb1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--token-file",
            tf,
        ],
        2,
    );
    assert!(err.contains("--fingerprint"), "{err}");

    // The right token and fingerprint (pasted in lower case without colons: normalised).
    let fp = fingerprint(&a).replace(':', "").to_lowercase();
    vm.ok(&[
        "node",
        "add",
        "lb1",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "--token-file",
        token_file.to_str().unwrap(),
        "--fingerprint",
        &fp,
    ]);
    let list = vm.json(&["node", "list", "--json"]);
    assert_eq!(list[0]["name"], "lb1");
    assert_eq!(list[0]["fingerprint"], fingerprint(&a));
    assert!(list[0].get("token_sealed").is_none() && list[0].get("cert_pem").is_none());
    let reg = std::fs::read(vm.home.join("registry.sqlite")).unwrap();
    assert!(
        !reg.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is stored in clear"
    );
    // Registered twice: refused.
    let err = vm.fails(
        &[
            "node",
            "add",
            "lb1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--token-file",
            token_file.to_str().unwrap(),
            "--trust-on-first-use",
        ],
        1,
    );
    assert!(err.contains("already registered"), "{err}");

    let check = vm.json(&["node", "check", "--json"]);
    assert!(check[0]["error"].is_null(), "{check}");
    assert_eq!(check[0]["health"]["proxy"], true);
    assert_eq!(check[0]["health"]["name"], "lb1");

    // The agent's steps need the token; its health checks do not.
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .build();
    if let Ok(client) = client {
        let url = format!("https://127.0.0.1:{}", a.port);
        assert_eq!(
            client
                .get(format!("{url}/v1/status"))
                .send()
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            client.get(format!("{url}/health")).send().unwrap().status(),
            200
        );
        // A proxy-only node has no database: never a primary or a replica.
        assert_eq!(
            client
                .get(format!("{url}/primary"))
                .send()
                .unwrap()
                .status(),
            503
        );
        assert_eq!(
            client
                .get(format!("{url}/replica?max_lag=5"))
                .send()
                .unwrap()
                .status(),
            503
        );
    }

    // A new token on the node: the register's old one no longer works, and `node check` says so.
    let out = Command::new(env!("CARGO_BIN_EXE_vmoodle"))
        .args(["agent", "--agent-home"])
        .arg(&a.home)
        .args(["rotate-token", "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = vm.run(&["node", "check"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("401"));

    vm.ok(&["node", "remove", "lb1"]);
    assert_eq!(
        vm.json(&["node", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
