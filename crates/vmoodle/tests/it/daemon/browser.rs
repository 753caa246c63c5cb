//! Browser tests: Debian's headless Chromium driven through chromedriver (WebDriver, with the
//! fantoccini client) against a daemon on port 0. Each test saves a screenshot of the pages it
//! visits (1366x768, and a phone-sized one of the pool) into $VMOODLE_SCREENSHOTS (default
//! target/screenshots; `VMOODLE_SCREENSHOTS=docs/screenshots` refreshes the README's).

use super::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::os::unix::process::CommandExt;
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
        // A process group of its own: dropping the driver kills Chromium too, even when a test
        // failed before closing its session.
        let child = Command::new("chromedriver")
            .process_group(0)
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
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
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

/// The value of a form field.
async fn value_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap();
}

async fn type_in(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Waits for the browser to land on a job page, then for the job to end; returns its state.
async fn wait_job_page(c: &Client, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !c.current_url().await.unwrap().path().starts_with("/jobs/") {
        assert!(Instant::now() < deadline, "no job page");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        // The page updates itself from the job's event stream and reloads when it ends.
        let state = c.find(Locator::Id("job-state")).await.ok();
        if let Some(el) = state {
            if let Ok(t) = el.text().await {
                if !matches!(t.as_str(), "queued" | "running" | "recovering" | "") {
                    return t;
                }
            }
        }
        assert!(Instant::now() < deadline, "the job did not end in {secs} s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What an administrator does in a browser: deploys through the form and watches the job end,
/// finds the site in the pool, disables it (its host then answers 503), takes a snapshot with
/// the wizard, and uploads a node list whose bad row is refused with its reason, then runs the
/// good one. Screenshots of every page go to the README.
#[test]
fn browser_deploy_find_disable_snapshot_and_bulk() {
    use crate::deploy::{setup, token};
    let mut s = setup();
    let tpl = token("br");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    admin_and_tokens(&s.vm);
    let d = Daemon::start_with(&s.vm, false);
    let driver = Driver::start();
    let tok = token("bw");
    let tpl2 = token("bs");
    let good = token("bb");
    s.clean.tokens.extend([tok.clone(), good.clone()]);
    s.clean.templates.push(tpl2.clone());
    let nodelist = s.vm.dir.path().join("nodelist.csv");
    std::fs::write(
        &nodelist,
        format!("shortname;name\n{good};Good one\nBad!;Bad one\n"),
    )
    .unwrap();
    let vm = &s.vm;
    runtime().block_on(async {
        let c = chromium(&driver).await;
        log_in(&c, &d.url, "alice", PASSWORD).await;
        wait_text(&c, "<h1>Pool</h1>", 10).await;

        // New platform: the token fills the schema's fields as it is typed.
        c.goto(&format!("{}/platforms/new", d.url)).await.unwrap();
        type_in(&c, "#p-token", &tok).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !value_of(&c, "#p-host").await.contains(&tok) {
            assert!(
                Instant::now() < deadline,
                "the host was not filled from the token"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(value_of(&c, "#p-dbname").await.contains(&tok));
        click(&c, &format!("#p-template option[value='{tpl}']")).await;
        click(&c, "#p-dbserver option[value='maria']").await;
        shot(&c, "new-platform").await;
        click(&c, "button[value=deploy]").await;
        assert_eq!(wait_job_page(&c, 240).await, "done");
        shot(&c, "job").await;

        // Find it in the pool and disable it from there.
        c.goto(&format!("{}/?q={tok}", d.url)).await.unwrap();
        wait_text(&c, &tok, 10).await;
        shot(&c, "pool-search").await;
        click(&c, &format!("input[name=sel][value='{tok}']")).await;
        click(&c, "button[value=disable]").await;
        assert_eq!(wait_job_page(&c, 60).await, "done");
        c.goto(&format!("{}/instances/{tok}", d.url)).await.unwrap();
        wait_text(&c, "disabled", 10).await;
        shot(&c, "instance").await;
        let shown = vm.json(&["instance", "show", &tok, "--json"]);
        let host = shown["host"].as_str().unwrap().to_string();
        let out = vm.run(&["hook", "check", &host]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("503"), "hook check {host}: {text}");

        // The snapshot wizard, then its job's steps.
        c.goto(&format!("{}/snapshot", d.url)).await.unwrap();
        type_in(&c, "#s-source", "srcmaria").await;
        type_in(&c, "#s-template", &tpl2).await;
        shot(&c, "snapshot").await;
        click(&c, "form button.primary").await;
        assert_eq!(wait_job_page(&c, 240).await, "done");
        shot(&c, "snapshot-job").await;

        // Bulk deploy from a node list with one bad row.
        c.goto(&format!("{}/platforms/bulk", d.url)).await.unwrap();
        type_in(&c, "#b-file", &nodelist.display().to_string()).await;
        click(&c, &format!("#b-tpl1 option[value='{tpl}']")).await;
        click(
            &c,
            "#b-file ~ button[type=submit], form[enctype] button[type=submit]",
        )
        .await;
        let page = wait_text(&c, "row(s) can be deployed", 30).await;
        assert!(page.contains("1 of 2 row(s) can be deployed"), "{page}");
        assert!(page.contains("invalid token `Bad!`"), "{page}");
        shot(&c, "bulk-preview").await;
        click(&c, "button.primary").await;
        let state = wait_job_page(&c, 240).await;
        assert_eq!(state, "done", "the bulk run of the good row");
        wait_text(&c, &good, 10).await;
        shot(&c, "bulk-job").await;

        // The other sections, for the README.
        for (path, name) in [
            ("/jobs", "jobs"),
            ("/templates", "templates"),
            (&*format!("/templates/{tpl}"), "template"),
            ("/dbservers", "dbservers"),
            ("/mnet", "mnet"),
            ("/fleet", "fleet"),
            ("/settings", "settings"),
            ("/", "pool"),
        ] {
            c.goto(&format!("{}{path}", d.url)).await.unwrap();
            wait_text(&c, "</main>", 10).await;
            shot(&c, name).await;
        }
        c.c.close().await.unwrap();
    });
}
