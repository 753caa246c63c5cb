//! Fleet operations on live Moodle 5.1 sites: the real Moodle code (shared/moodle) with the
//! vmoodle config hook in its config.php, instances deployed from a snapshot of a real Moodle
//! database, and Moodle's own admin/cli scripts run for them by `vmoodle run`, `cron`,
//! `upgrade`, `config`.

mod config;
mod cron;
mod cron_daemon;
mod report;
mod run;
mod sql;
mod upgrade;
mod web;

use crate::deploy::{deploy_json, token, Setup};
use crate::mnet_live::{free_port, PhpServer, ROUTER};
use std::path::{Path, PathBuf};

/// Writes the master's config.php into a copy of the Moodle code, as Moodle's installer writes
/// it: the source site's database (`mariadb` or `pgsql`, database and user `db`, password
/// `src-pw`), wwwroot http://master.moodle.test, dataroot `data`.
pub(crate) fn write_master_config(moodle: &Path, dbtype: &str, db: &str, data: &Path) {
    std::fs::write(
        moodle.join("config.php"),
        format!(
            "<?php  // Moodle configuration file\n\nunset($CFG);\nglobal $CFG;\n$CFG = new stdClass();\n\n\
             $CFG->dbtype = '{dbtype}';\n$CFG->dblibrary = 'native';\n$CFG->dbhost = '127.0.0.1';\n\
             $CFG->dbname = '{db}';\n$CFG->dbuser = '{db}';\n$CFG->dbpass = 'src-pw';\n$CFG->prefix = 'mdl_';\n\
             $CFG->dboptions = ['dbpersist' => 0, 'dbport' => '', 'dbsocket' => ''];\n\
             $CFG->wwwroot = 'http://master.moodle.test';\n$CFG->dataroot = '{data}';\n\
             $CFG->admin = 'admin';\n$CFG->directorypermissions = 02777;\n\n\
             require_once(__DIR__ . '/lib/setup.php');\n",
            data = data.display()
        ),
    )
    .unwrap();
}

/// A home with `n` live instances deployed on `server` (`maria` or `pg`) from a snapshot of the
/// real Moodle 5.1 fixture, the Moodle code (a private copy) with the hook installed and
/// `moodle.dir` set, and wwwroots on a local port where [`LiveFleet::serve`] can serve them.
pub(crate) struct LiveFleet {
    pub(crate) s: Setup,
    pub(crate) moodle: PathBuf,
    pub(crate) port: u16,
    /// The deployed instances' shortnames (= their tokens).
    pub(crate) tokens: Vec<String>,
    #[allow(dead_code)] // the template the instances came from (upgrade tests snapshot again)
    pub(crate) template: String,
}

impl LiveFleet {
    pub(crate) fn new(server: &str, n: usize) -> Self {
        Self::new_on(crate::common::Backend::Sqlite, server, n)
    }

    /// [`LiveFleet::new`] with the register in SQLite or PostgreSQL.
    pub(crate) fn new_on(register: crate::common::Backend, server: &str, n: usize) -> Self {
        let mut s = crate::deploy::setup_on(register);
        let port = free_port();
        s.vm.set(
            "schema.wwwroot",
            &format!("http://<%%INSTANCE%%>.localhost:{port}"),
        );
        // The tests run as root and so do their scripts and web server: Moodle's files and the
        // datadirs belong to root.
        s.vm.set("web.user", "root");
        s.vm.set("web.group", "root");
        let dir = s._data.path().to_path_buf();
        let moodle = vmoodle_test::moodle_copy(&dir);
        let (src, dbtype, db, data) = match server {
            "maria" => (
                "srcmaria",
                "mariadb",
                s._maria.name.clone(),
                dir.join("maria-src"),
            ),
            "pg" => ("srcpg", "pgsql", s._pg.name.clone(), dir.join("pg-src")),
            other => panic!("no such test server {other}"),
        };
        // The master's config.php, as Moodle's installer writes it, then the hook.
        write_master_config(&moodle, dbtype, &db, &data);
        let mdir = moodle.to_str().unwrap();
        s.vm.ok(&["hook", "install", "--moodle-dir", mdir]);
        s.vm.ok(&["settings", "set", "moodle.dir", mdir]);
        let template = token("tf");
        s.clean.templates.push(template.clone());
        s.vm.ok(&["snapshot", src, "--template", &template]);
        let tokens: Vec<String> = (0..n).map(|i| token(&format!("f{i}"))).collect();
        s.clean.tokens.extend(tokens.iter().cloned());
        if n > 0 {
            let r = deploy_json(
                &s.vm,
                &[
                    "--template",
                    &template,
                    "--tokens",
                    &tokens.join(","),
                    "--dbserver",
                    server,
                ],
            );
            assert!(r.as_array().unwrap().iter().all(|i| i["ok"] == true), "{r}");
        }
        Self {
            s,
            moodle,
            port,
            tokens,
            template,
        }
    }

    /// The host of an instance deployed here.
    pub(crate) fn host(&self, token: &str) -> String {
        format!("{token}.localhost:{}", self.port)
    }

    /// Serves every instance with PHP's built-in server (routed like nginx's try_files).
    pub(crate) fn serve(&self) -> PhpServer {
        self.serve_in(None)
    }

    /// [`LiveFleet::serve`] inside a network namespace (a lab's app host).
    pub(crate) fn serve_in(&self, netns: Option<&str>) -> PhpServer {
        let dir = self.s._data.path();
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, vmoodle_site::php_env::LEGACY_OPENSSL_CONF).unwrap();
        let router = dir.join("router.php");
        std::fs::write(&router, ROUTER).unwrap();
        crate::mnet_live::serve_in(netns, &self.moodle, self.port, &cnf, &router)
    }

    /// GET a page of an instance over HTTP: (status, body).
    pub(crate) fn get(&self, token: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        // One write: PHP's built-in server takes a request split over packets for a bad one.
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host(token)
        );
        c.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }
}
