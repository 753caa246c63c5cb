//! The JSON API: its OpenAPI document lists every route and every GET answer matches the
//! schema the document gives; errors are problem+json naming the field; a deploy on
//! PostgreSQL runs as a job followed over Server-Sent Events; no answer carries a password.

use super::api_schema::assert_matches;
use super::*;
use crate::common::Backend;
use crate::deploy::{setup, token};
use serde_json::{json, Value};

/// Every operation the API must serve (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/instances"),
    ("get", "/api/v1/instances/{name}"),
    ("patch", "/api/v1/instances/{name}"),
    ("delete", "/api/v1/instances/{name}"),
    ("post", "/api/v1/instances/{name}/enable"),
    ("post", "/api/v1/instances/{name}/disable"),
    ("post", "/api/v1/deploy"),
    ("post", "/api/v1/deploy/bulk"),
    ("post", "/api/v1/snapshot"),
    ("get", "/api/v1/templates"),
    ("get", "/api/v1/templates/{name}"),
    ("delete", "/api/v1/templates/{name}"),
    ("post", "/api/v1/templates/{name}/verify"),
    ("post", "/api/v1/templates/{name}/spares"),
    ("get", "/api/v1/dbservers"),
    ("post", "/api/v1/dbservers"),
    ("get", "/api/v1/dbservers/{name}"),
    ("post", "/api/v1/dbservers/{name}/check"),
    ("get", "/api/v1/mnet"),
    ("post", "/api/v1/mnet/renew"),
    ("post", "/api/v1/mnet/repair"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("get", "/api/v1/jobs/{id}/events"),
    ("post", "/api/v1/jobs/{id}/cancel"),
    ("post", "/api/v1/jobs/{id}/retry"),
    ("get", "/api/v1/schema/expand"),
    ("get", "/api/v1/settings"),
    ("post", "/api/v1/fleet"),
    ("post", "/api/v1/fleet/preview"),
    ("get", "/api/v1/clusters"),
    ("get", "/api/v1/clusters/{name}/status"),
    ("get", "/api/v1/nodes"),
];

/// A bearer-token client of one daemon, keeping every answer's body to grep for secrets.
struct Api<'a> {
    d: &'a Daemon,
    c: reqwest::blocking::Client,
    token: String,
    bodies: std::cell::RefCell<Vec<String>>,
}

impl<'a> Api<'a> {
    fn new(d: &'a Daemon, token: &str) -> Self {
        Self {
            d,
            c: d.client(),
            token: token.into(),
            bodies: Default::default(),
        }
    }

    /// Sends a request; returns (status, content type, body as JSON or a string).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String, Value) {
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut rq = self
            .c
            .request(m, format!("{}{path}", self.d.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = r.text().unwrap();
        self.bodies.borrow_mut().push(text.clone());
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, ctype, v)
    }

    fn get(&self, path: &str) -> Value {
        let (status, _, v) = self.call("get", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// GETs a documented route with its parameters filled in and checks the answer's schema.
    fn get_checked(&self, doc: &Value, route: &str, concrete: &str) -> Value {
        let v = self.get(concrete);
        assert_matches(doc, route, "get", &v);
        v
    }

    /// No answer so far contains any of `secrets`.
    fn assert_no_secret(&self, secrets: &[&str]) {
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            for b in self.bodies.borrow().iter() {
                assert!(!b.contains(s), "an answer contains a stored password:\n{b}");
            }
        }
    }
}

/// The documented (method, path) pairs.
fn documented(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&m.as_str()) {
                out.push((m.clone(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

fn is_problem(ctype: &str, v: &Value, status: u16) {
    assert_eq!(ctype, "application/problem+json", "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
}

#[test]
fn openapi_lists_every_route_and_errors_are_problems() {
    let vm = Vm::new(Backend::Sqlite);
    vm.add_local_servers();
    vm.ok_stdin(
        &["settings", "set", "schema.db_password", "--stdin"],
        "Schema-Secret-5",
    );
    let (write, _) = admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let api = Api::new(&d, &write);
    let doc = api.get("/api/v1/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let mut want: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    want.sort();
    assert_eq!(documented(&doc), want);
    // Every documented operation is served: no 405, no "no such route".
    for (m, p) in &want {
        let concrete = p.replace("{name}", "nosuch").replace("{id}", "999999");
        let body = matches!(m.as_str(), "post" | "patch").then(|| json!({}));
        let (status, _, v) = api.call(m, &concrete, body);
        assert_ne!(status, 405, "{m} {concrete}: {v}");
        assert_ne!(v["title"], "no such route", "{m} {concrete}: {v}");
    }
    let (status, ctype, v) = api.call("get", "/api/v1/nowhere", None);
    assert_eq!(status, 404);
    is_problem(&ctype, &v, 404);
    assert_eq!(v["title"], "no such route");
    let (status, ctype, v) = api.call("delete", "/api/v1/jobs", None);
    assert_eq!(status, 405);
    is_problem(&ctype, &v, 405);
    let (status, ctype, v) = api.call("get", "/api/v1/instances/nosuch", None);
    is_problem(&ctype, &v, 404);
    assert_eq!(status, 404);
    assert!(v["detail"].as_str().unwrap().contains("nosuch"), "{v}");
    // Validation errors: 422 naming the field.
    for (path, body, field) in [
        ("/api/v1/deploy", json!({"token": "abc"}), "template"),
        (
            "/api/v1/deploy",
            json!({"template": "t", "token": "Bad Token!"}),
            "token",
        ),
        (
            "/api/v1/deploy/bulk",
            json!({"items": [], "parallel": 99}),
            "parallel",
        ),
        (
            "/api/v1/dbservers",
            json!({"name": "x", "kind": "oracle", "host": "h", "admin_user": "u", "admin_password": "p"}),
            "kind",
        ),
    ] {
        let (status, ctype, v) = api.call("post", path, Some(body));
        assert_eq!(status, 422, "{path}: {v}");
        is_problem(&ctype, &v, 422);
        assert_eq!(v["field"], field, "{path}: {v}");
    }
    let (status, _, v) = api.call("get", "/api/v1/instances?state=bogus", None);
    assert_eq!((status, v["field"].as_str()), (422, Some("state")), "{v}");
    let (status, _, v) = api.call("get", "/api/v1/schema/expand?token=9bad", None);
    assert_eq!((status, v["field"].as_str()), (422, Some("token")), "{v}");
    // A database server added through the API: 201, its password never shown; twice: 409.
    let new = json!({"name": "extra", "kind": "pgsql", "host": "127.0.0.1",
        "admin_user": "someone", "admin_password": "Db-Admin-Secret-7", "check": false});
    let (status, _, v) = api.call("post", "/api/v1/dbservers", Some(new.clone()));
    assert_eq!(status, 201, "{v}");
    assert_matches(&doc, "/api/v1/dbservers", "post", &v);
    let (status, ctype, v) = api.call("post", "/api/v1/dbservers", Some(new));
    assert_eq!(status, 409, "{v}");
    is_problem(&ctype, &v, 409);
    // Every GET answers what its schema says.
    for (route, concrete) in [
        (
            "/api/v1/instances",
            "/api/v1/instances?sort=-created&limit=5",
        ),
        ("/api/v1/templates", "/api/v1/templates"),
        ("/api/v1/dbservers", "/api/v1/dbservers"),
        ("/api/v1/dbservers/{name}", "/api/v1/dbservers/extra"),
        ("/api/v1/mnet", "/api/v1/mnet"),
        ("/api/v1/jobs", "/api/v1/jobs"),
        ("/api/v1/schema/expand", "/api/v1/schema/expand?token=abc"),
        ("/api/v1/settings", "/api/v1/settings"),
    ] {
        api.get_checked(&doc, route, concrete);
    }
    let s = api.get("/api/v1/settings");
    assert_eq!(s["settings"]["schema"]["db_password"], "(set)", "{s}");
    let (status, _, v) = api.call("post", "/api/v1/dbservers/pg/check", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["can_deploy"], true, "{v}");
    api.assert_no_secret(&[
        "Db-Admin-Secret-7",
        "Schema-Secret-5",
        &vmoodle_test::mariadb_password(),
        &vmoodle_test::pg_password(),
    ]);
}

/// Reads a finished SSE stream: the data of each `job` event.
fn sse_jobs(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|ev| ev.lines().any(|l| l == "event: job"))
        .map(|ev| {
            let data: String = ev
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            serde_json::from_str(&data).unwrap()
        })
        .collect()
}

#[test]
fn deploy_through_the_api_on_postgres() {
    let mut s = setup();
    let tpl = token("ta");
    s.clean.templates.push(tpl.clone());
    s.vm.ok(&["snapshot", "srcpg", "--template", &tpl]);
    let one = token("a");
    s.clean.tokens.push(one.clone());
    let (write, _) = admin_and_tokens(&s.vm);
    let d = Daemon::start_with(&s.vm, false);
    let api = Api::new(&d, &write);
    let doc = api.get("/api/v1/openapi.json");
    let r = api
        .c
        .post(format!("{}/api/v1/deploy", d.url))
        .bearer_auth(&write)
        .json(&json!({"template": tpl, "token": one, "dbserver": "pg", "name": "Via API"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let a: Value = r.json().unwrap();
    let id = a["job"].as_i64().unwrap();
    assert_eq!(a["href"], format!("/api/v1/jobs/{id}"));
    assert_eq!(loc, format!("/api/v1/jobs/{id}"));
    // Server-Sent Events until the job ends.
    let sse = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .unwrap()
        .get(format!("{}{loc}/events", d.url))
        .bearer_auth(&write)
        .send()
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let events = sse_jobs(&sse.text().unwrap());
    assert!(!events.is_empty());
    let last = events.last().unwrap();
    assert_eq!(last["state"], "done", "{last}");
    assert!(events.iter().all(|e| e["id"] == id));
    let job = wait_job(&s.vm, id);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["started_by"], "api:w", "{job}");
    let j = api.get_checked(&doc, "/api/v1/jobs/{id}", &format!("/api/v1/jobs/{id}"));
    assert_eq!(j["started_by"], "api:w");
    // The new instance, through every GET.
    let i = api.get_checked(
        &doc,
        "/api/v1/instances/{name}",
        &format!("/api/v1/instances/{one}"),
    );
    assert_eq!(i["name"], "Via API");
    assert_eq!(i["dbserver"], "pg");
    let page = api.get_checked(
        &doc,
        "/api/v1/instances",
        &format!("/api/v1/instances?q={one}&dbserver=pg&state=enabled"),
    );
    assert_eq!(page["total"], 1, "{page}");
    let page = api.get_checked(
        &doc,
        "/api/v1/instances",
        &format!("/api/v1/instances?template={tpl}&sort=-name"),
    );
    assert_eq!(page["items"][0]["shortname"], one.as_str(), "{page}");
    for (route, concrete) in [
        ("/api/v1/templates", "/api/v1/templates".to_string()),
        (
            "/api/v1/templates/{name}",
            format!("/api/v1/templates/{tpl}"),
        ),
        ("/api/v1/dbservers", "/api/v1/dbservers".into()),
        ("/api/v1/dbservers/{name}", "/api/v1/dbservers/pg".into()),
        ("/api/v1/mnet", "/api/v1/mnet".into()),
        (
            "/api/v1/jobs",
            "/api/v1/jobs?state=done&started_by=api:w".into(),
        ),
        ("/api/v1/settings", "/api/v1/settings".into()),
    ] {
        api.get_checked(&doc, route, &concrete);
    }
    let (status, _, v) = api.call("post", &format!("/api/v1/templates/{tpl}/verify"), None);
    assert_eq!((status, &v["ok"]), (200, &json!(true)), "{v}");
    // An edit (quick, answered at once).
    let (status, _, v) = api.call(
        "patch",
        &format!("/api/v1/instances/{one}"),
        Some(json!({"description": "edited through the API"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["description"], "edited through the API");
    // No answer carries the instance's database password or an administrator's.
    let host = i["host"].as_str().unwrap();
    let hf = std::fs::read_to_string(s.vm.hosts_dir().join(format!("{host}.php"))).unwrap();
    let line = hf.lines().find(|l| l.contains("'dbpass' =>")).unwrap();
    let dbpass = line.split('\'').nth(3).unwrap().to_string();
    assert!(dbpass.len() >= 8, "{line}");
    api.assert_no_secret(&[
        &dbpass,
        "src-pw",
        &vmoodle_test::pg_password(),
        &vmoodle_test::mariadb_password(),
    ]);
    for e in &events {
        assert!(!e.to_string().contains(&dbpass));
    }
}
