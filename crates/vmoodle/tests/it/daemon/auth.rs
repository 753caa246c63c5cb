//! Who may do what: login failures and their rate limit, CSRF on forms and on API calls from
//! a browser session, token scopes, session cookies, logout, security headers.

use super::*;
use crate::common::Backend;
use reqwest::blocking::{Client, Response};

/// Submits the login form (reading its CSRF token from a fresh login page) with `password`.
fn try_login(d: &Daemon, c: &Client, name: &str, password: &str) -> Response {
    let page = c
        .get(format!("{}/login", d.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let csrf = csrf_of(&page);
    c.post(format!("{}/login", d.url))
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", name),
            ("password", password),
            ("next", "/"),
        ])
        .send()
        .unwrap()
}

/// The Set-Cookie values of an answer for the session cookie.
fn session_cookies(r: &Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .filter(|v| v.starts_with("vmoodle_session="))
        .collect()
}

fn session_id(r: &Response) -> String {
    let c = session_cookies(r);
    assert_eq!(c.len(), 1, "one session cookie: {c:?}");
    c[0]["vmoodle_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn wrong_password_then_rate_limit() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let c = d.client();
    let r = try_login(&d, &c, "alice", "wrong password");
    assert_eq!(r.status(), 401);
    assert!(
        session_cookies(&r).is_empty(),
        "no session for a wrong password"
    );
    let body = r.text().unwrap();
    assert!(
        body.contains("Wrong administrator name or password"),
        "{body}"
    );
    let r = c.get(format!("{}/", d.url)).send().unwrap();
    assert_eq!(r.status(), 303, "still not logged in");
    for _ in 0..4 {
        assert_eq!(try_login(&d, &c, "alice", "wrong again").status(), 401);
    }
    // The 6th attempt is refused even with the right password.
    let r = try_login(&d, &c, "alice", PASSWORD);
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 301, "Retry-After {wait}");
    assert!(session_cookies(&r).is_empty());
}

#[test]
fn csrf_is_required_on_forms_and_on_api_calls_from_a_session() {
    let vm = Vm::new(Backend::Sqlite);
    admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let b = d.login("alice", PASSWORD);
    let (_, page) = b.get("/");
    let csrf = csrf_of(&page);
    // A page form without the token, and with a wrong one.
    let r = b.c.post(format!("{}/logout", d.url)).send().unwrap();
    assert_eq!(r.status(), 403);
    let r =
        b.c.post(format!("{}/logout", d.url))
            .form(&[("csrf", "0".repeat(64))])
            .send()
            .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(b.get("/").0, 200, "the session survived the refused forms");
    // An API change from the session: refused without X-CSRF-Token, or with a wrong one.
    let url = format!("{}/api/v1/mnet/repair", d.url);
    let r = b.c.post(&url).send().unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let r =
        b.c.post(&url)
            .header("x-csrf-token", "nope")
            .send()
            .unwrap();
    assert_eq!(r.status(), 403);
    let r = b.c.post(&url).header("x-csrf-token", &csrf).send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
    // A read from the session needs no token.
    assert_eq!(b.get("/api/v1/instances").0, 200);
}

#[test]
fn token_scopes_and_revocation() {
    let vm = Vm::new(Backend::Sqlite);
    let (write, read) = admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let c = d.client();
    let get = |t: &str| {
        c.get(format!("{}/api/v1/instances", d.url))
            .bearer_auth(t)
            .send()
            .unwrap()
            .status()
    };
    let post = |t: &str| {
        c.post(format!("{}/api/v1/mnet/repair", d.url))
            .bearer_auth(t)
            .send()
            .unwrap()
    };
    assert_eq!(get(&read), 200);
    let r = post(&read);
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().unwrap();
    assert_eq!(p["title"], "read-only token");
    let r = post(&write);
    assert_eq!(r.status(), 202);
    let a: serde_json::Value = r.json().unwrap();
    let job = wait_job(&vm, a["job"].as_i64().unwrap());
    assert_eq!(job["started_by"], "api:w", "{job}");
    assert_eq!(get("not-a-token"), 401);
    vm.ok(&["admin", "token", "revoke", "r"]);
    assert_eq!(get(&read), 401);
    assert_eq!(get(&write), 200);
}

#[test]
fn session_cookies_logout_and_security_headers() {
    let vm = Vm::new(Backend::Sqlite);
    let (write, _) = admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let c = d.client();
    let r = try_login(&d, &c, "alice", PASSWORD);
    assert_eq!(r.status(), 303);
    let cookie = &session_cookies(&r)[0];
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let first = session_id(&r);
    let r = try_login(&d, &c, "alice", PASSWORD);
    let second = session_id(&r);
    assert_ne!(first, second, "a new session id at each login");
    // Logout ends the session: the old cookie no longer opens a page.
    let page = c.get(format!("{}/", d.url)).send().unwrap().text().unwrap();
    let r = c
        .post(format!("{}/logout", d.url))
        .form(&[("csrf", csrf_of(&page))])
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let fresh = d.client();
    let r = fresh
        .get(format!("{}/", d.url))
        .header("cookie", format!("vmoodle_session={second}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303, "the session ended at logout");
    // Security headers on a page and on the API.
    for r in [
        fresh.get(format!("{}/login", d.url)).send().unwrap(),
        fresh
            .get(format!("{}/api/v1/instances", d.url))
            .bearer_auth(&write)
            .send()
            .unwrap(),
        fresh
            .get(format!("{}/api/v1/nowhere", d.url))
            .send()
            .unwrap(),
    ] {
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
