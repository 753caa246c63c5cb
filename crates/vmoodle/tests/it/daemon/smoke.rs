//! The daemon starts, answers /healthz publicly and nothing else without a login.

use super::*;
use crate::common::Backend;

#[test]
fn healthz_is_public_and_the_rest_needs_a_login() {
    let vm = Vm::new(Backend::Sqlite);
    let (write, _read) = admin_and_tokens(&vm);
    let d = Daemon::start_with(&vm, false);
    let c = d.client();
    let r = c.get(format!("{}/healthz", d.url)).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/", d.url)).send().unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login"));
    let r = c.get(format!("{}/readyz", d.url)).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/readyz", d.url))
        .bearer_auth(&write)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = d.login("alice", PASSWORD);
    let (status, page) = b.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("Pool"), "{page}");
    assert!(page.contains("Key expiry"), "{page}");
}
