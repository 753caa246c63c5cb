//! Browser tests: Debian's headless Chromium driven through chromedriver (WebDriver, with the
//! fantoccini client) against a daemon on port 0. Each test saves a screenshot of the pages it
//! visits (1366x768, and a phone-sized one of the pool) into $VMOODLE_SCREENSHOTS (default
//! target/screenshots; `VMOODLE_SCREENSHOTS=docs/screenshots` refreshes the README's).

use super::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver on a free local port, killed when dropped.
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Driver {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver) runs; scripts/test installs it");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session of 1366x768 with its own profile directory (removed with it).
pub struct Session {
    pub c: Client,
    _profile: vmoodle_test::TempDir,
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.c
    }
}

pub async fn chromium(driver: &Driver) -> Session {
    let mut caps = serde_json::Map::new();
    let profile = vmoodle_test::TempDir::new("chromium");
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,768", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let c = ClientBuilder::native()
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium");
    Session {
        c,
        _profile: profile,
    }
}

/// Where screenshots go.
pub fn shots_dir() -> PathBuf {
    let d = std::env::var_os("VMOODLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots")
        });
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Saves a screenshot of the current page as NAME.png.
pub async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Logs in through the login form.
pub async fn log_in(c: &Client, base: &str, name: &str, password: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Css("#name"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    c.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until the page's text contains `what` (polls; pages update themselves live).
pub async fn wait_text(c: &Client, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let html = c.source().await.unwrap();
        if html.contains(what) {
            return html;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what:?}:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn browser_login_refuses_a_wrong_password_then_shows_the_pool() {
    let vm = Vm::new(crate::common::Backend::Sqlite);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let driver = Driver::start();
    runtime().block_on(async {
        let c = chromium(&driver).await;
        c.goto(&format!("{}/", d.url)).await.unwrap();
        // Sent to the login page.
        assert!(c.current_url().await.unwrap().path().starts_with("/login"));
        shot(&c, "login").await;
        log_in(&c, &d.url, "alice", "not the password").await;
        wait_text(&c, "Wrong administrator name or password", 10).await;
        log_in(&c, &d.url, "alice", PASSWORD).await;
        wait_text(&c, "<h1>Pool</h1>", 10).await;
        shot(&c, "pool").await;
        c.set_window_size(390, 844).await.unwrap();
        shot(&c, "pool-phone").await;
        c.c.close().await.unwrap();
    });
}
