//! The daemon (`vmoodle serve`) under test: `launch` on port 0 in this process, against a
//! temporary home; a blocking HTTP client that logs in like a browser (cookie jar, CSRF token
//! from the page) or calls the API with a bearer token.
#![allow(dead_code)] // helpers for the daemon tests of every section

use crate::common::Vm;
use std::net::SocketAddr;

pub const PASSWORD: &str = "correct horse battery staple";

/// A daemon serving a home until dropped.
pub struct Daemon {
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts a daemon (with its background loops) on 127.0.0.1, port 0.
    pub fn start(vm: &Vm) -> Self {
        Self::start_with(vm, true)
    }

    /// Starts a daemon; `background` false leaves the scheduler and the sync loops off.
    pub fn start_with(vm: &Vm, background: bool) -> Self {
        let root = vm.home.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                addr_tx.send(addr).unwrap();
                let cfg = vmoodle_server::Config {
                    root,
                    secure_cookies: false,
                    background,
                    listen: format!("http://{addr}"),
                    tls: None,
                };
                vmoodle_server::launch(listener, cfg, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the daemon starts");
        Self {
            url: format!("http://{addr}"),
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// An HTTP client that keeps cookies and does not follow redirects.
    pub fn client(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap()
    }

    /// Logs in through the login form; returns the client (holding the session cookie).
    pub fn login(&self, name: &str, password: &str) -> Browser {
        let c = self.client();
        let page = c
            .get(format!("{}/login", self.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let csrf = csrf_of(&page);
        let r = c
            .post(format!("{}/login", self.url))
            .form(&[
                ("csrf", csrf.as_str()),
                ("name", name),
                ("password", password),
                ("next", "/"),
            ])
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            303,
            "login as {name} failed: {}",
            r.text().unwrap_or_default()
        );
        Browser {
            c,
            url: self.url.clone(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in the page:\n{page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// A logged-in browser session.
pub struct Browser {
    pub c: reqwest::blocking::Client,
    pub url: String,
}

impl Browser {
    /// GETs a page; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.c.get(format!("{}{path}", self.url)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// Submits a form found at `page_path` (its CSRF token is read from that page) to
    /// `action`; returns (status, Location header or body).
    pub fn post_form(
        &self,
        page_path: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String) {
        let (_, page) = self.get(page_path);
        let csrf = csrf_of(&page);
        let mut all: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let r = self
            .c
            .post(format!("{}{action}", self.url))
            .form(&all)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let loc = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (status, loc.unwrap_or_else(|| r.text().unwrap()))
    }
}

/// Adds an administrator `alice` with PASSWORD and returns a write token and a read token.
pub fn admin_and_tokens(vm: &Vm) -> (String, String) {
    vm.ok_stdin(&["admin", "add", "alice", "--password-stdin"], PASSWORD);
    let write = vm
        .ok(&[
            "admin", "token", "create", "w", "--admin", "alice", "--scope", "write",
        ])
        .trim()
        .to_string();
    let read = vm
        .ok(&[
            "admin", "token", "create", "r", "--admin", "alice", "--scope", "read",
        ])
        .trim()
        .to_string();
    (write, read)
}

/// Waits until job `id` is no longer queued or running (through the CLI's `jobs show --json`).
pub fn wait_job(vm: &Vm, id: i64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let j = vm.json(&["jobs", "show", &id.to_string(), "--json"]);
        let s = j["state"].as_str().unwrap_or("").to_string();
        if !matches!(s.as_str(), "queued" | "running" | "recovering") {
            return j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} did not end: {j}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Holds the home's lock (as a running CLI command would) until dropped.
pub struct Locked {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Locked {
    pub fn take(vm: &Vm) -> Self {
        let root = vm.home.clone();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let home = rt.block_on(vmoodle_ops::Home::open_locked(&root)).unwrap();
            ready_tx.send(()).unwrap();
            let _ = stop_rx.recv();
            drop(home);
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap();
        Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

mod api;
mod api_schema;
mod auth;
mod browser;
mod clusters;
mod metrics;
mod nodes;
mod pages_fleet;
mod pages_ops;
mod smoke;
