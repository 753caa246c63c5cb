//! A temporary vmoodle home driven through the real binary, with its register in SQLite or in a
//! PostgreSQL database of its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use vmoodle_test::{PgDb, TempDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Vm {
    pub dir: TempDir,
    pub home: PathBuf,
    _registry_db: Option<PgDb>,
}

impl Vm {
    /// A fresh home (after `vmoodle init`).
    pub fn new(backend: Backend) -> Self {
        let dir = TempDir::new("home");
        let home = dir.path().join("home");
        let (registry_db, args): (Option<PgDb>, Vec<String>) = match backend {
            Backend::Sqlite => (None, vec![]),
            Backend::Postgres => {
                let db = PgDb::create("reg");
                // The URL without its password; the password on stdin.
                let url = format!(
                    "postgres://{}@127.0.0.1:5432/{}",
                    vmoodle_test::pg_user(),
                    db.name
                );
                (
                    Some(db),
                    vec!["--registry".into(), url, "--registry-password-stdin".into()],
                )
            }
        };
        let vm = Self {
            dir,
            home,
            _registry_db: registry_db,
        };
        let mut a = vec!["init".to_string()];
        a.extend(args);
        vm.ok_stdin(
            &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            &vmoodle_test::pg_password(),
        );
        vm
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmoodle"));
        c.args(args)
            .env("VMOODLE_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("VMOODLE_LOG");
        c
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmoodle");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vmoodle")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        check_ok(args, self.run(args))
    }

    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        check_ok(args, self.run_with_stdin(args, input))
    }

    /// Runs and expects failure with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        check_fails(args, self.run(args), code)
    }

    pub fn fails_stdin(&self, args: &[&str], input: &str, code: i32) -> String {
        check_fails(args, self.run_with_stdin(args, input), code)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
    }

    /// Registers the local MariaDB and PostgreSQL servers as `maria` and `pg`.
    pub fn add_local_servers(&self) {
        for (args, password) in vmoodle_test::local_server_args() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.ok_stdin(&args, &password);
        }
    }

    pub fn hosts_dir(&self) -> PathBuf {
        self.home.join("hosts")
    }

    pub fn hook(&self) -> PathBuf {
        self.home.join("hook.php")
    }

    pub fn set(&self, key: &str, value: &str) {
        self.ok(&["settings", "set", key, value]);
    }
}

fn check_ok(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "vmoodle {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check_fails(args: &[&str], out: Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "vmoodle {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Writes a Moodle-style config.php (as Moodle's installer writes it) with a stand-in
/// lib/setup.php that prints $CFG as JSON, in the 4.x layout or the 5.x layout (code under
/// public/, config.php above it).
pub fn fake_moodle(dir: &Path, layout5: bool, cfg: &[(&str, &str)]) -> PathBuf {
    let root = dir.join(if layout5 { "moodle5" } else { "moodle4" });
    let code = if layout5 {
        root.join("public")
    } else {
        root.clone()
    };
    std::fs::create_dir_all(code.join("lib")).unwrap();
    let setup = "<?php\n// Stand-in for Moodle's lib/setup.php: shows the $CFG that config.php built.\necho json_encode($CFG, JSON_UNESCAPED_SLASHES);\n";
    std::fs::write(code.join("lib/setup.php"), setup).unwrap();
    if layout5 {
        // Moodle 5.x: public/config.php only includes the real one above it.
        std::fs::write(
            code.join("config.php"),
            "<?php\nrequire_once(__DIR__ . '/../config.php');\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/setup.php"), setup).unwrap();
    }
    let mut text = String::from("<?php  // Moodle configuration file\n\nunset($CFG);\nglobal $CFG;\n$CFG = new stdClass();\n\n");
    for (k, v) in cfg {
        if k.starts_with("dboptions") {
            continue;
        }
        text.push_str(&format!(
            "$CFG->{k} = '{}';\n",
            v.replace('\\', "\\\\").replace('\'', "\\'")
        ));
    }
    text.push_str("$CFG->dboptions = array (\n  'dbpersist' => 0,\n  'dbport' => '',\n  'dbsocket' => '',\n);\n");
    text.push_str("$CFG->admin = 'admin';\n$CFG->directorypermissions = 0777;\n\n");
    text.push_str("require_once(__DIR__ . '/lib/setup.php');\n\n// There is no php closing tag in this file,\n// it is intentional because it prevents trailing whitespace problems!\n");
    std::fs::write(root.join("config.php"), text).unwrap();
    root
}

/// Runs the Moodle config.php of `moodle` with php-cli as a CLI script with VMOODLE_HOST.
pub fn php_cli_config(moodle: &Path, host: Option<&str>) -> Output {
    let mut c = Command::new("php");
    c.args(["-n", "-r", "define('CLI_SCRIPT', true); require $argv[1];"])
        .arg("--")
        .arg(moodle.join("config.php"));
    c.env_remove("VMOODLE_HOST");
    if let Some(h) = host {
        c.env("VMOODLE_HOST", h);
    }
    c.output().expect("php")
}
