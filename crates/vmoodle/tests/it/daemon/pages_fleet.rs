//! The fleet pages: the pool (search, filters, sort, pagination over 120 instances; acting on
//! selected rows), the new-platform form (inline errors, a real deploy), the bulk preview, the
//! snapshot wizard's errors, the instance page's edit, and CSRF on their forms.

use super::*;
use crate::common::Backend;
use crate::deploy::{setup, token};

fn fleet() -> (Vm, Daemon, Browser) {
    fleet_on(Backend::Sqlite)
}

/// A home with 120 registered instances (one import of a node list: fast), an admin, a daemon
/// without background loops, and a logged-in browser.
fn fleet_on(backend: Backend) -> (Vm, Daemon, Browser) {
    let vm = Vm::new(backend);
    vm.add_local_servers();
    let mut csv = String::from(
        "vhostname;name;shortname;vdatapath;vdbname;vdblogin;vdbpass;vdbtype;vdbhost;mnet;enabled\n",
    );
    for i in 1..=120 {
        let (kind, name) = if i % 2 == 0 {
            ("mariadb", format!("Site {i}"))
        } else {
            ("postgres", format!("Site {i}"))
        };
        let name = if i == 77 {
            "Zeta Lake School".into()
        } else {
            name
        };
        csv += &format!(
            "http://s{i:03}.fleet.test;{name};s{i:03};/srv/vmdata/s{i:03};vm_s{i:03};vm_s{i:03};pw{i};{kind};127.0.0.1;{};{}\n",
            i % 3,
            u8::from(i % 10 != 0)
        );
    }
    let path = vm.dir.path().join("fleet.csv");
    std::fs::write(&path, csv).unwrap();
    vm.ok(&["import", "csv", path.to_str().unwrap()]);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    (vm, d, b)
}

fn pool(b: &Browser, query: &str) -> String {
    let (status, page) = b.get(&format!("/?{query}"));
    assert_eq!(status, 200, "{page}");
    page
}

/// The shortnames of the rows shown, in order.
fn shown(page: &str) -> Vec<String> {
    page.split("name=\"sel\" value=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_string())
        .collect()
}

const BOUNDARY: &str = "----vmoodle-test-boundary";

/// A multipart/form-data body (as a browser sends a file upload).
fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str)>) -> String {
    let mut b = String::new();
    for (k, v) in fields {
        b +=
            &format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n");
    }
    if let Some((k, v)) = file {
        b += &format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"nodes.csv\"\r\nContent-Type: text/csv\r\n\r\n{v}\r\n");
    }
    b + &format!("--{BOUNDARY}--\r\n")
}

fn job_of(location: &str) -> i64 {
    location
        .strip_prefix("/jobs/")
        .unwrap_or_else(|| panic!("not a job page: {location}"))
        .parse()
        .unwrap()
}

#[test]
fn pool_searches_filters_sorts_and_pages_in_sql() {
    pool_queries(Backend::Sqlite);
}

#[test]
fn pool_searches_filters_sorts_and_pages_in_sql_on_postgres() {
    pool_queries(Backend::Postgres);
}

fn pool_queries(backend: Backend) {
    let (_vm, _d, b) = fleet_on(backend);
    let p = pool(&b, "");
    assert!(p.contains("120 instance(s); showing 1–50."), "{p}");
    let rows = shown(&p);
    assert_eq!(rows.len(), 50);
    assert_eq!((rows[0].as_str(), rows[49].as_str()), ("s001", "s050"));
    assert!(
        p.contains("href=\"/instances/s001\"") && p.contains("href=\"http://s001.fleet.test\"")
    );
    assert!(p.contains("<span class=\"badge disabled\">disabled</span>"));
    let p = pool(&b, "page=3");
    assert!(
        p.contains("showing 101–120") && p.contains("Page 3 of 3"),
        "{p}"
    );
    assert_eq!(shown(&p).len(), 20);
    assert!(!p.contains("rel=\"next\""));
    // Sort by name, descending; by database server (mariadb `maria` before `pg`).
    assert_eq!(
        shown(&pool(&b, "sort=name&dir=desc"))[..2],
        ["s120", "s119"]
    );
    assert_eq!(shown(&pool(&b, "sort=dbserver&dir=desc"))[0], "s119");
    assert_eq!(shown(&pool(&b, "sort=dbserver"))[0], "s002");
    // Search shortname/host, and name case-insensitively.
    let p = pool(&b, "q=s01");
    assert!(p.contains("10 instance(s)"), "{p}");
    assert_eq!(shown(&pool(&b, "q=zeta+LAKE")), ["s077"]);
    // Filters, combined with pagination.
    assert!(pool(&b, "state=disabled").contains("12 instance(s)"));
    assert!(pool(&b, "state=enabled&dbserver=maria").contains("48 instance(s)"));
    let p = pool(&b, "mnet=1&page=1");
    assert!(p.contains("40 instance(s)"), "{p}");
    assert!(shown(&p)
        .iter()
        .all(|s| s[1..].parse::<u32>().unwrap() % 3 == 1));
    // A bad query names the parameter and what is allowed.
    let p = pool(&b, "sort=size");
    assert!(p.contains("sort `size` is not a column"), "{p}");
}

#[test]
fn disabling_from_the_pool_publishes_a_503_host_file_and_forms_need_csrf() {
    let (vm, d, b) = fleet();
    let host_file = vm.hosts_dir().join("s001.fleet.test.php");
    assert!(std::fs::read_to_string(&host_file)
        .unwrap()
        .contains("'enabled' => true"));
    let (status, loc) = b.post_form("/", "/pool/act", &[("action", "disable"), ("sel", "s001")]);
    assert_eq!(status, 303, "{loc}");
    let j = wait_job(&vm, job_of(&loc));
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["started_by"], "web:alice", "{j}");
    assert!(std::fs::read_to_string(&host_file)
        .unwrap()
        .contains("'enabled' => false"));
    let check = vm.run(&["hook", "check", "s001.fleet.test"]);
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(out.contains("503"), "{out}");
    assert!(pool(&b, "q=s001").contains("badge disabled"));
    // "Select all" takes every row shown; several jobs go to the jobs list.
    let (status, loc) = b.post_form(
        "/",
        "/pool/act",
        &[
            ("action", "enable"),
            ("all", "1"),
            ("row", "s001"),
            ("row", "s010"),
        ],
    );
    assert_eq!((status, loc.as_str()), (303, "/jobs"), "{loc}");
    // Delete asks first, listing what will go.
    let (status, page) = b.post_form("/", "/pool/act", &[("action", "delete"), ("sel", "s002")]);
    assert_eq!(status, 200);
    assert!(
        page.contains("Delete 1 instance(s)?") && page.contains("/srv/vmdata/s002"),
        "{page}"
    );
    // A snapshot needs a valid template name.
    let (_, loc) = b.post_form(
        "/",
        "/pool/act",
        &[
            ("action", "snapshot"),
            ("sel", "s002"),
            ("template", "Bad Name"),
        ],
    );
    let (_, page) = b.get(&loc);
    assert!(page.contains("invalid template name"), "{page}");
    // No CSRF token: refused.
    let r =
        b.c.post(format!("{}/pool/act", d.url))
            .form(&[("action", "disable"), ("sel", "s003")])
            .send()
            .unwrap();
    assert_eq!(r.status(), 403);
    let r =
        b.c.post(format!("{}/platforms/bulk/preview", d.url))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(multipart(&[("csrf", "wrong"), ("template", "t")], None))
            .send()
            .unwrap();
    assert_eq!(r.status(), 403);
    assert!(pool(&b, "q=s003").contains("badge enabled"));
}

#[test]
fn forms_show_errors_beside_the_field_they_name() {
    let (_vm, _d, b) = fleet();
    let (status, page) = b.post_form(
        "/platforms/new",
        "/platforms/new",
        &[("token", "Bad Token!"), ("action", "deploy")],
    );
    assert_eq!(status, 422, "{page}");
    assert!(
        page.contains("id=\"p-token-err\">invalid token `Bad Token!`"),
        "{page}"
    );
    let (status, page) = b.post_form(
        "/platforms/new",
        "/platforms/new",
        &[("token", "school5"), ("action", "fill")],
    );
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("value=\"/srv/vmdata/school5\"") || page.contains("school5"),
        "{page}"
    );
    let (status, json) = b.get("/platforms/expand?token=school5");
    assert_eq!(status, 200, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["host"].as_str().unwrap().contains("school5"), "{v}");
    let (status, json) = b.get("/platforms/expand?token=9x");
    assert_eq!(status, 422);
    assert!(json.contains("\"field\":\"token\""), "{json}");
    // Snapshot wizard.
    let (status, page) = b.post_form(
        "/snapshot",
        "/snapshot",
        &[("source", "s001"), ("template", "Bad")],
    );
    assert_eq!(status, 422);
    assert!(
        page.contains("id=\"s-template-err\">invalid template name `Bad`"),
        "{page}"
    );
    // Instance edit: a bad wwwroot is shown at the wwwroot field; a good edit is saved.
    let (status, page) = b.post_form(
        "/instances/s004",
        "/instances/s004/edit",
        &[
            ("shortname", "s004"),
            ("name", "Site 4"),
            ("wwwroot", "not a url"),
            ("dbserver", "maria"),
            ("dbname", "vm_s004"),
            ("dbuser", "vm_s004"),
            ("prefix", "mdl_"),
            ("dataroot", "/srv/vmdata/s004"),
            ("mnet", "1"),
        ],
    );
    assert_eq!(status, 422);
    assert!(
        page.contains("id=\"e-wwwroot-err\">invalid wwwroot `not a url`"),
        "{page}"
    );
    let (status, loc) = b.post_form(
        "/instances/s004",
        "/instances/s004/edit",
        &[
            ("shortname", "s004"),
            ("name", "Renamed Four"),
            ("wwwroot", "http://s004.fleet.test"),
            ("dbserver", "maria"),
            ("dbname", "vm_s004"),
            ("dbuser", "vm_s004"),
            ("prefix", "mdl_"),
            ("dataroot", "/srv/vmdata/s004"),
            ("mnet", "1"),
        ],
    );
    assert_eq!(status, 303, "{loc}");
    let (_, page) = b.get("/instances/s004");
    assert!(
        page.contains("Renamed Four") && !page.contains("pw4"),
        "{page}"
    );
}

#[test]
fn new_platform_form_deploys_on_mariadb_and_bulk_preview_refuses_a_bad_row() {
    let mut s = setup();
    let tpl = token("pf");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcmaria", "--template", &tpl]);
    admin_and_tokens(&s.vm);
    let d = Daemon::start_with(&s.vm, false);
    let b = d.login("alice", PASSWORD);
    // Bulk preview: one good row, one refused with its reason.
    let good = token("bk");
    let list = format!("shortname;name\n{good};Good one\nBad!;Bad one\n");
    let (_, form) = b.get("/platforms/bulk");
    let r =
        b.c.post(format!("{}/platforms/bulk/preview", d.url))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(multipart(
                &[("csrf", &csrf_of(&form)), ("template", &tpl)],
                Some(("nodelist", &list)),
            ))
            .send()
            .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().unwrap();
    assert!(page.contains("1 of 2 row(s) can be deployed"), "{page}");
    assert!(page.contains("<span class=\"badge refused\">refused</span> <span class=\"reason\">invalid token `Bad!`"), "{page}");
    assert!(page.contains("name=\"stash\""));
    // A real deploy through the new-platform form.
    let tok = token("web");
    s.clean.tokens.push(tok.clone());
    let (status, loc) = b.post_form(
        "/platforms/new",
        "/platforms/new",
        &[
            ("action", "deploy"),
            ("token", &tok),
            ("template", &tpl),
            ("dbserver", "maria"),
            ("admin_password", "Secret-pw-1"),
        ],
    );
    assert_eq!(status, 303, "{loc}");
    let id = job_of(&loc);
    let j = wait_job(&s.vm, id);
    assert_eq!(j["state"], "done", "{j}");
    let (_, p) = b.get(&format!("/?template={tpl}"));
    assert!(p.contains(&format!("href=\"/instances/{tok}\"")), "{p}");
    let (_, p) = b.get(&format!("/instances/{tok}"));
    assert!(
        p.contains(&format!("href=\"/jobs/{id}\"")) && !p.contains("Secret-pw-1"),
        "{p}"
    );
}
