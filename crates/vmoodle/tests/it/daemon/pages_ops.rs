//! The operations pages of the web admin: jobs (list, filters, a job's page, its event stream,
//! cancel, retry), database servers, MNET, settings, templates; and no page ever shows a stored
//! password.

use super::*;
use crate::common::Backend;
use std::io::Read;
use std::time::{Duration, Instant};

/// The job id a redirect to `/jobs/N?...` names.
fn job_of(location: &str) -> i64 {
    let rest = location
        .strip_prefix("/jobs/")
        .unwrap_or_else(|| panic!("not a job page: {location}"));
    rest.split(['?', '/']).next().unwrap().parse().unwrap()
}

/// A job started from the web stays queued while the CLI holds the lock; Cancel stops it before
/// it starts; Retry runs its request again as a new job that ends; the list filters by state and
/// by who started it.
#[test]
fn web_job_cancelled_while_queued_then_retried() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let lock = Locked::take(&vm);
    let (status, loc) = b.post_form("/mnet", "/mnet/repair", &[]);
    assert_eq!(status, 303, "{loc}");
    let id = job_of(&loc);
    let (status, page) = b.get(&format!("/jobs/{id}"));
    assert_eq!(status, 200);
    assert!(page.contains("badge queued"), "{page}");
    assert!(page.contains("web:alice"), "{page}");
    assert!(page.contains(&format!("/jobs/{id}/cancel")), "{page}");
    assert!(page.contains(&format!("data-events=\"/jobs/{id}/events\"")));
    let (status, loc) = b.post_form(&format!("/jobs/{id}"), &format!("/jobs/{id}/cancel"), &[]);
    assert_eq!(status, 303);
    // The next page says so once (the message travels in a cookie, never in the URL).
    assert!(!loc.contains("msg="), "{loc}");
    let (_, page) = b.get(&loc);
    assert!(page.contains("cancelled before it started"), "{page}");
    let (_, page) = b.get(&loc);
    assert!(
        !page.contains("cancelled before it started"),
        "shown once: {page}"
    );
    drop(lock);
    let j = wait_job(&vm, id);
    assert_eq!(j["state"], "cancelled", "{j}");
    let (_, page) = b.get(&format!("/jobs/{id}"));
    assert!(page.contains("badge cancelled"), "{page}");
    assert!(page.contains(&format!("/jobs/{id}/retry")), "{page}");
    // A cancelled job's page is not live: its stream sends it once and ends.
    let r =
        b.c.get(format!("{}/jobs/{id}/events", b.url))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r.text().unwrap();
    assert!(body.contains("event: job"), "{body}");
    assert!(body.contains("\"state\":\"cancelled\""), "{body}");

    let (status, loc) = b.post_form(&format!("/jobs/{id}"), &format!("/jobs/{id}/retry"), &[]);
    assert_eq!(status, 303, "{loc}");
    let new = job_of(&loc);
    assert_ne!(new, id);
    let j = wait_job(&vm, new);
    assert!(
        matches!(j["state"].as_str(), Some("done" | "failed")),
        "{j}"
    );
    assert_eq!(j["kind"], "mnet repair");

    // Filters: by state and by who started it.
    let (_, page) = b.get("/jobs?state=cancelled");
    assert!(page.contains(&format!("href=\"/jobs/{id}\"")), "{page}");
    assert!(!page.contains(&format!("href=\"/jobs/{new}\"")), "{page}");
    let (_, page) = b.get("/jobs?by=web%3Anobody");
    assert!(!page.contains(&format!("href=\"/jobs/{id}\"")), "{page}");
    let (_, page) = b.get("/jobs?by=web%3Aalice&kind=mnet+repair");
    assert!(page.contains(&format!("href=\"/jobs/{id}\"")), "{page}");
    assert!(page.contains(&format!("href=\"/jobs/{new}\"")), "{page}");
}

/// A running job's event stream sends the job as it changes and ends when the job ends.
#[test]
fn event_stream_follows_a_running_job_to_its_end() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let lock = Locked::take(&vm);
    let (_, loc) = b.post_form("/mnet", "/mnet/renew", &[("what", "all")]);
    let id = job_of(&loc);
    let mut r =
        b.c.get(format!("{}/jobs/{id}/events", b.url))
            .send()
            .unwrap();
    // The first event comes at once, while the job waits for the lock.
    let mut buf = [0u8; 4096];
    let n = r.read(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(first.contains("\"state\":\"queued\""), "{first}");
    drop(lock);
    let started = Instant::now();
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    let last = rest.rsplit("data: ").next().unwrap();
    assert!(last.contains("\"active\":false"), "{rest}");
}

/// A bad value is refused inline, naming the setting and what is allowed, and vmoodle.toml is
/// untouched; a good one is saved as `settings set` saves it; the schema's password is sealed
/// and never shown.
#[test]
fn settings_are_validated_like_the_cli() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let toml = vm.home.join("vmoodle.toml");
    let before = std::fs::read_to_string(&toml).unwrap();
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let (status, page) = b.post_form(
        "/settings",
        "/settings",
        &[
            ("mnet.renew_time", "25:99"),
            ("web.retry_after", "soon"),
            ("schema.db_password", ""),
        ],
    );
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("id=\"mnet_renew_time-error\""), "{page}");
    assert!(page.contains("mnet.renew_time"), "{page}");
    assert!(page.contains("a whole number"), "{page}");
    assert!(page.contains("aria-invalid=\"true\""), "{page}");
    assert_eq!(std::fs::read_to_string(&toml).unwrap(), before);

    let secret = "schema-secret-pw-4711";
    let (status, loc) = b.post_form(
        "/settings",
        "/settings",
        &[
            ("mnet.lookforward_hours", "48"),
            ("schema.db_password", secret),
        ],
    );
    assert_eq!(status, 303, "{loc}");
    assert_eq!(
        vm.ok(&["settings", "get", "mnet.lookforward_hours"]).trim(),
        "48"
    );
    assert_eq!(
        vm.ok(&["settings", "get", "schema.db_password"]).trim(),
        "****"
    );
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(
        !text.contains(secret),
        "the password is sealed in vmoodle.toml"
    );
    let (_, page) = b.get("/settings");
    assert!(page.contains("a password is set"), "{page}");
    assert!(!page.contains(secret));
    // Leaving it empty keeps it.
    let sealed = text
        .lines()
        .find(|l| l.starts_with("db_password"))
        .unwrap()
        .to_string();
    let (status, _) = b.post_form("/settings", "/settings", &[("schema.db_password", "")]);
    assert_eq!(status, 303);
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(text.contains(&sealed));
}

/// GETs a page, checks it answers 200, and that it shows none of the stored passwords.
fn page_without(b: &Browser, path: &str, secrets: &[String]) -> String {
    let (status, page) = b.get(path);
    assert_eq!(status, 200, "{path}: {page}");
    for s in secrets {
        assert!(!page.contains(s.as_str()), "{path} shows a stored password");
    }
    page
}

/// Against real servers and a real snapshot (a CLI job): the job list shows the CLI job and its
/// filters work; its page shows its steps; templates list and verify; a spares fill on
/// PostgreSQL fails and its retry is a new job; a database server with a wrong password is
/// refused without echoing it; removing a server in use is refused and says why; no page shows
/// a stored password.
#[test]
fn operations_pages_against_real_servers() {
    let mut s = crate::deploy::setup();
    let tpl = crate::deploy::token("po");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    let schema_pw = "schema-db-pw-5150".to_string();
    s.vm.ok_stdin(
        &["settings", "set", "schema.db_password", "--stdin"],
        &schema_pw,
    );
    admin_and_tokens(&s.vm);
    let secrets = vec![
        vmoodle_test::mariadb_password(),
        vmoodle_test::pg_password(),
        "src-pw".to_string(),
        schema_pw,
        PASSWORD.to_string(),
    ];
    // The daemon's jobs stop at this pause point (env vars are per process: nextest runs each
    // test in a process of its own; the CLI commands below never reach this point).
    let pause = s.vm.dir.path().join("pause-spares");
    std::env::set_var("VMOODLE_TEST_PAUSE", "spares fill:spare 1:made");
    std::env::set_var("VMOODLE_TEST_PAUSE_FILE", &pause);
    let d = Daemon::start_with(&s.vm, false);
    // Declared after the daemon, dropped before it: a failing assertion never leaves a job
    // paused, which would keep the daemon from stopping.
    let _unpause = Unpause(pause.clone());
    let b = d.login("alice", PASSWORD);

    // The CLI's snapshot job, in the list and filtered.
    let jobs = s.vm.json(&["jobs", "list", "--kind", "snapshot", "--json"]);
    let snap = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["target"] == tpl.as_str())
        .unwrap_or_else(|| panic!("no snapshot job: {jobs}"))["id"]
        .as_i64()
        .unwrap();
    let link = format!("href=\"/jobs/{snap}\"");
    let page = page_without(&b, "/jobs", &secrets);
    assert!(page.contains(&link) && page.contains("cli:"), "{page}");
    assert!(page_without(&b, "/jobs?kind=snapshot&state=done", &secrets).contains(&link));
    assert!(!page_without(&b, "/jobs?kind=deploy", &secrets).contains(&link));
    assert!(!page_without(&b, "/jobs?by=web%3Aalice", &secrets).contains(&link));
    let page = page_without(&b, &format!("/jobs/{snap}"), &secrets);
    assert!(page.contains("badge done"), "{page}");
    assert!(
        page.contains("<ol class=\"steps\" id=\"job-steps\">\n<li>"),
        "{page}"
    );
    assert!(!page.contains("data-events"), "an ended job is not live");

    // Templates.
    let page = page_without(&b, "/templates", &secrets);
    assert!(
        page.contains(&format!("href=\"/templates/{tpl}\"")),
        "{page}"
    );
    let page = page_without(&b, &format!("/templates/{tpl}"), &secrets);
    assert!(page.contains("maria: 0"), "{page}");
    let (status, page) = b.post_form(
        &format!("/templates/{tpl}"),
        &format!("/templates/{tpl}/verify"),
        &[],
    );
    assert_eq!(status, 200);
    assert!(page.contains("badge ok\">verified"), "{page}");

    // A spares fill on PostgreSQL fails at run time; its retry is a new job.
    let (status, loc) = b.post_form(
        &format!("/templates/{tpl}"),
        &format!("/templates/{tpl}/spares"),
        &[("dbserver", "pg"), ("count", "1")],
    );
    assert_eq!(status, 303, "{loc}");
    let failed = job_of(&loc);
    let j = wait_job(&s.vm, failed);
    assert_eq!(j["state"], "failed", "{j}");
    let page = page_without(&b, &format!("/jobs/{failed}"), &secrets);
    assert!(page.contains("warm spares are for MariaDB"), "{page}");
    let (status, loc) = b.post_form(
        &format!("/jobs/{failed}"),
        &format!("/jobs/{failed}/retry"),
        &[],
    );
    assert_eq!(status, 303, "{loc}");
    let again = job_of(&loc);
    assert_ne!(again, failed);
    assert_eq!(wait_job(&s.vm, again)["kind"], "spares fill");

    // A running job (held after its first spare) is cancelled: it stops at its next step.
    let (status, loc) = b.post_form(
        &format!("/templates/{tpl}"),
        &format!("/templates/{tpl}/spares"),
        &[("dbserver", "maria"), ("count", "2")],
    );
    assert_eq!(status, 303, "{loc}");
    let running = job_of(&loc);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pause.exists() {
        assert!(Instant::now() < deadline, "the spares job never paused");
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = page_without(&b, &format!("/jobs/{running}"), &secrets);
    assert!(page.contains("badge running"), "{page}");
    assert!(page.contains("spare 1"), "{page}");
    let (status, loc) = b.post_form(
        &format!("/jobs/{running}"),
        &format!("/jobs/{running}/cancel"),
        &[],
    );
    assert_eq!(status, 303);
    let (_, page) = b.get(&loc);
    assert!(page.contains("stopping at its next step"), "{page}");
    std::fs::remove_file(&pause).unwrap();
    let j = wait_job(&s.vm, running);
    assert_ne!(j["state"], "done", "{j}");
    let page = page_without(&b, &format!("/jobs/{running}"), &secrets);
    assert!(page.contains("cancel requested by web:alice"), "{page}");
    assert!(page.contains("Undo records"), "{page}");
    assert!(page.contains(&format!("/jobs/{running}/retry")), "{page}");

    // Database servers: a wrong password is refused, and never echoed back.
    let wrong = "wrong-admin-pw-31337";
    let user = vmoodle_test::mariadb_user();
    let (status, page) = b.post_form(
        "/dbservers",
        "/dbservers",
        &[
            ("name", "wrongpw"),
            ("type", "mariadb"),
            ("host", "127.0.0.1"),
            ("port", ""),
            ("socket", ""),
            ("user", &user),
            ("password", wrong),
        ],
    );
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("role=\"alert\" id=\"add-error\""), "{page}");
    assert!(
        page.contains("value=\"wrongpw\""),
        "the other fields are kept"
    );
    assert!(!page.contains(wrong), "the password is echoed: {page}");
    assert!(!s.vm.ok(&["dbserver", "list"]).contains("wrongpw"));
    let (status, page) = b.post_form("/dbservers", "/dbservers/maria/check", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("Create databases"), "{page}");
    for sec in &secrets {
        assert!(!page.contains(sec.as_str()));
    }
    let (status, loc) = b.post_form("/dbservers", "/dbservers/maria/remove", &[]);
    assert_eq!(status, 303);
    let page = page_without(&b, &loc, &secrets);
    assert!(page.contains("is used by"), "{page}");
    assert!(s.vm.ok(&["dbserver", "list"]).contains("maria"));

    for path in ["/", "/dbservers", "/mnet", "/settings", "/jobs?all=1"] {
        page_without(&b, path, &secrets);
    }
}

/// Removes a pause file when dropped.
struct Unpause(std::path::PathBuf);

impl Drop for Unpause {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
