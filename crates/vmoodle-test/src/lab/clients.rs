//! Reaching the lab from its app namespace: commands, the vmoodle binary, SQL as vmadmin, the
//! agents' HTTP API. Secrets go in 0600 files under app/, never in argv or the environment.

use anyhow::Result;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::db::{ADMIN, PG_BIN};
use super::{net, Engine, Lab};

impl Lab {
    /// 0600 client files in app/: admin.cnf (MariaDB) and pgpass (PostgreSQL) for vmadmin.
    pub(super) fn write_client_files(&self) -> Result<()> {
        let app = self.path.join("app");
        for (f, text) in [
            (
                "admin.cnf",
                format!("[client]\nuser={ADMIN}\npassword={}\n", self.admin_password),
            ),
            ("pgpass", format!("*:*:*:{ADMIN}:{}\n", self.admin_password)),
        ] {
            let p = app.join(f);
            std::fs::write(&p, "")?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            std::fs::write(&p, text)?;
        }
        Ok(())
    }

    /// Runs argv inside a host's namespace (`host` is db1, lb1, app... or a full namespace).
    pub fn exec_in(&self, host: &str, argv: &[&str]) -> Output {
        let ns = if host.starts_with(&self.prefix) {
            host.to_string()
        } else {
            self.ns(host)
        };
        let mut a = vec!["ip", "netns", "exec", &ns];
        a.extend(argv);
        net::output(&a, None).expect("ip netns exec")
    }

    /// Runs the vmoodle binary inside the app namespace with `VMOODLE_HOME=home`, `stdin` on
    /// its standard input.
    pub fn vmoodle(&self, home: &Path, args: &[&str], stdin: &str) -> Output {
        self.run_vmoodle(home, args, &[], stdin)
    }

    /// `vmoodle` with extra environment variables (e.g. VMOODLE_TEST_FAIL_STEP); stdin empty.
    pub fn vmoodle_env(&self, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_vmoodle(home, args, env, "")
    }

    fn run_vmoodle(&self, home: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
        use std::io::Write;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns("app")])
            .arg(&self.spec.bin)
            .args(args)
            .env("VMOODLE_HOME", home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/");
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("running vmoodle in the app namespace");
        let mut w = child.stdin.take().expect("stdin");
        let _ = w.write_all(stdin.as_bytes());
        drop(w);
        child.wait_with_output().expect("waiting for vmoodle")
    }

    /// The role a database node's agent reports on /health (primary, replica, read-only,
    /// down), or None when it reports none or does not answer.
    pub fn node_role(&self, node: &str) -> Option<String> {
        let (code, body) = self.agent_call(node, "GET", "/health", None);
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["role"].as_str().map(str::to_string)
    }

    /// Whether a proxy node holds the VIP now (on its eth0).
    pub fn holds_vip(&self, node: &str) -> bool {
        let out = self.exec_in(node, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        let vip = format!(" {}/", self.vip());
        String::from_utf8_lossy(&out.stdout).contains(&vip)
    }

    /// Kills (SIGKILL) every HAProxy process of a proxy node, as a crash would; returns how
    /// many there were.
    pub fn kill_haproxy(&self, node: &str) -> usize {
        let ns = self.ns(node);
        let mut n = 0;
        for pid in net::pids(&ns) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "haproxy" {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                n += 1;
            }
        }
        n
    }

    /// Runs SQL as vmadmin from the app namespace against `host` (a node name, or an address
    /// such as the VIP) on the database port; the password comes from a 0600 file. Err(stderr).
    pub fn sql(&self, host: &str, sql: &str) -> std::result::Result<String, String> {
        self.sql_port(host, self.db_port(), sql)
    }

    /// `sql` on another port (a proxy's reader port, say).
    pub fn sql_port(
        &self,
        host: &str,
        port: u16,
        sql: &str,
    ) -> std::result::Result<String, String> {
        self.sql_port_as(None, host, port, sql)
    }

    /// MariaDB: a client option file (0600, in the app host's directory) for `user`, for
    /// `sql_port_as`; the password never reaches argv.
    pub fn client_cnf(&self, user: &str, password: &str) -> Result<PathBuf> {
        let path = self.path.join("app").join(format!("{user}.cnf"));
        std::fs::write(
            &path,
            format!("[client]\nuser={user}\npassword={password}\n"),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    /// `sql_port` as the account of a `client_cnf` file (MariaDB; PostgreSQL ignores it).
    pub fn sql_port_as(
        &self,
        cnf: Option<&Path>,
        host: &str,
        port: u16,
        sql: &str,
    ) -> std::result::Result<String, String> {
        let addr = self
            .nodes
            .get(host)
            .map_or(host.to_string(), |n| n.ip.clone());
        let app = self.path.join("app");
        let port = port.to_string();
        let ns = self.ns("app");
        let out = match self.engine {
            Engine::Mariadb => {
                let df = format!(
                    "--defaults-file={}",
                    cnf.map_or(app.join("admin.cnf"), Path::to_path_buf)
                        .display()
                );
                net::output(
                    &[
                        "ip", "netns", "exec", &ns, "mariadb", &df, "-h", &addr, "-P", &port, "-N",
                        "-B",
                    ],
                    Some(sql),
                )
            }
            Engine::Postgresql => {
                let pgpass = format!("PGPASSFILE={}", app.join("pgpass").display());
                let psql = format!("{PG_BIN}/psql");
                net::output(
                    &[
                        "ip",
                        "netns",
                        "exec",
                        &ns,
                        "env",
                        &pgpass,
                        &psql,
                        "-h",
                        &addr,
                        "-p",
                        &port,
                        "-U",
                        ADMIN,
                        "-d",
                        "postgres",
                        "-X",
                        "-q",
                        "-A",
                        "-t",
                        "-v",
                        "ON_ERROR_STOP=1",
                    ],
                    Some(sql),
                )
            }
        }
        .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Calls a node's agent from the app namespace (curl; the token goes in a 0600 header file,
    /// never in argv): `method` `path` with an optional JSON body. Returns (HTTP status, body).
    pub fn agent_call(
        &self,
        node: &str,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> (u16, String) {
        let n = self.node(node);
        let app = self.path.join("app");
        let hdr = app.join(format!("auth-{node}"));
        if !hdr.exists() {
            std::fs::write(&hdr, "").expect("header file");
            std::fs::set_permissions(&hdr, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            std::fs::write(&hdr, format!("Authorization: Bearer {}\n", n.token)).expect("header");
        }
        let url = format!("https://{}:{}{path}", n.ip, n.port);
        let h = format!("@{}", hdr.display());
        let ns = self.ns("app");
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            &ns,
            "curl",
            "-sk",
            "--max-time",
            "600",
            "-X",
            method,
            "-H",
            &h,
            "-w",
            "\n%{http_code}",
        ];
        if json.is_some() {
            argv.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        argv.push(&url);
        let out = net::output(&argv, json).expect("curl in the app namespace");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}
