//! Fleet operations from the web admin (`/fleet`) and the API (`/api/v1/fleet`): a preview of the
//! selection, a run that is one job with a line per site, started while a CLI command holds the
//! home's lock (fleet jobs change sites, not the home), and the API's read-only tokens refused.

use super::LiveFleet;
use crate::common::Vm;
use crate::daemon::{admin_and_tokens, wait_job, Browser, Daemon, Locked, PASSWORD};

/// Runs the Fleet form with these fields; returns the job page it went to and the ended job.
fn run_on_page(br: &Browser, vm: &Vm, fields: &[(&str, &str)]) -> (String, serde_json::Value) {
    let mut all = fields.to_vec();
    all.push(("action", "run"));
    let (status, location) = br.post_form("/fleet", "/fleet", &all);
    assert_eq!(status, 303, "{location}");
    let id: i64 = location.trim_start_matches("/jobs/").parse().unwrap();
    let job = wait_job(vm, id);
    (location, job)
}

#[test]
fn fleet_page_and_api_run_scripts_on_a_selection() {
    let f = LiveFleet::new("pg", 2);
    let (a, b) = (f.tokens[0].clone(), f.tokens[1].clone());
    let vm = &f.s.vm;
    let (write, read) = admin_and_tokens(vm);
    let d = Daemon::start_with(vm, false);
    let br = d.login("alice", PASSWORD);

    let (status, page) = br.get("/fleet");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<option value=\"purge_caches.php\">"),
        "{page}"
    );

    // Preview: the pattern names the two deployed sites, not the source sites.
    let (status, page) = br.post_form(
        "/fleet",
        "/fleet",
        &[
            ("op", "run"),
            ("script", "purge_caches.php"),
            ("matches", "f[01]*"),
            ("action", "preview"),
        ],
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<strong>2</strong> instance(s)"), "{page}");
    assert!(page.contains(&a) && page.contains(&b), "{page}");
    // A name that is not registered is named in the answer, on the form.
    let (status, page) = br.post_form(
        "/fleet",
        "/fleet",
        &[
            ("op", "run"),
            ("script", "purge_caches.php"),
            ("instances", "nosuchsite"),
            ("action", "preview"),
        ],
    );
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("`nosuchsite`"), "{page}");
    // A script that is not one of Moodle's is refused before any job exists.
    let (status, page) = br.post_form(
        "/fleet",
        "/fleet",
        &[
            ("op", "run"),
            ("script", "../../config.php"),
            ("all", "1"),
            ("action", "run"),
        ],
    );
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("is not one of Moodle"), "{page}");

    // Run, while a CLI command holds the home's lock: the fleet job does not wait for it.
    let lock = Locked::take(vm);
    let instances = format!("{a}, {b}");
    let (location, j) = run_on_page(
        &br,
        vm,
        &[
            ("op", "run"),
            ("script", "purge_caches.php"),
            ("instances", &instances),
            ("parallel", "2"),
        ],
    );
    drop(lock);
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["kind"], "fleet-run", "{j}");
    let log = j["log"].to_string();
    for t in [&a, &b] {
        assert!(log.contains(&format!("{t}: ok")), "{log}");
    }
    let (status, page) = br.get(&location);
    assert_eq!(status, 200);
    assert!(page.contains(&format!("{a}: ok")), "{page}");

    // A setting through the page (Moodle's cfg.php), seen by `config get`.
    let (_, j) = run_on_page(
        &br,
        vm,
        &[
            ("op", "config_set"),
            ("name", "forcelogin"),
            ("value", "1"),
            ("instances", &a),
        ],
    );
    assert_eq!(
        (j["state"].as_str(), j["kind"].as_str()),
        (Some("done"), Some("fleet-config-set")),
        "{j}"
    );
    let r = vm.json(&["config", "get", "forcelogin", &a, &b, "--json"]);
    assert_eq!(r["sites"][0]["value"], "1", "{r}");
    assert_ne!(r["sites"][1]["value"], "1", "{r}");
    // A secret value: set, but never on the job's page, in its log or its recorded request.
    let secret = "s3cr3t-Value-93f1";
    let (location, j) = run_on_page(
        &br,
        vm,
        &[
            ("op", "config_set"),
            ("name", "smtppass"),
            ("value", secret),
            ("secret", "1"),
            ("instances", &b),
        ],
    );
    assert_eq!(j["state"], "done", "{j}");
    assert!(!j.to_string().contains(secret), "{j}");
    let (_, page) = br.get(&location);
    assert!(!page.contains(secret), "{page}");
    assert_eq!(
        crate::deploy::pg_value(
            &format!("vmt_{b}"),
            "SELECT value FROM mdl_config WHERE name = 'smtppass'"
        ),
        secret
    );
    // Cron from the page: one pass per site, recorded like the CLI's.
    let (_, j) = run_on_page(&br, vm, &[("op", "cron"), ("instances", &instances)]);
    assert_eq!(
        (j["state"].as_str(), j["kind"].as_str()),
        (Some("done"), Some("fleet-cron")),
        "{j}"
    );
    let st = vm.json(&["cron", "history", &a, "--json"]);
    assert!(st.to_string().contains("web:alice"), "{st}");
    // An upgrade from the page: nothing is behind the code, so every site is skipped.
    let (_, j) = run_on_page(&br, vm, &[("op", "upgrade"), ("instances", &instances)]);
    assert_eq!(
        (j["state"].as_str(), j["kind"].as_str()),
        (Some("done"), Some("fleet-upgrade")),
        "{j}"
    );
    assert!(
        j["log"].to_string().contains(&format!("{a}: skipped")),
        "{j}"
    );
    // A bad setting name is refused on the form.
    let (status, page) = br.post_form(
        "/fleet",
        "/fleet",
        &[
            ("op", "config_set"),
            ("name", "bad name;"),
            ("all", "1"),
            ("action", "run"),
        ],
    );
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("is not a Moodle setting name"), "{page}");

    // The API: a write token starts it; a read token may only look.
    let api = reqwest::blocking::Client::new();
    let body = serde_json::json!({
        "operation": {"do": "run", "script": "maintenance.php", "args": ["--enable"]},
        "selection": {"names": [a]},
    });
    let r = api
        .post(format!("{}/api/v1/fleet", d.url))
        .bearer_auth(&read)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = api
        .post(format!("{}/api/v1/fleet", d.url))
        .bearer_auth(&write)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().unwrap();
    let j = wait_job(vm, v["job"].as_i64().unwrap());
    assert_eq!(j["state"], "done", "{j}");
    let on = crate::deploy::pg_value(
        &format!("vmt_{a}"),
        "SELECT value FROM mdl_config WHERE name = 'maintenance_enabled'",
    );
    assert_eq!(on, "cli mode");
    let r = api
        .post(format!("{}/api/v1/fleet/preview", d.url))
        .bearer_auth(&read)
        .json(&serde_json::json!({"all": true}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "a preview is a POST: write tokens only");
    let r: serde_json::Value = api
        .post(format!("{}/api/v1/fleet/preview", d.url))
        .bearer_auth(&write)
        .json(&serde_json::json!({"all": true, "exclude": ["srcmaria"]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&a.as_str()) && names.contains(&"srcpg"),
        "{r}"
    );
    assert!(!names.contains(&"srcmaria"), "{r}");
}
