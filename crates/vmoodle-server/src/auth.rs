//! Who is asking: administrators log in with a password (argon2id hashes in the register) and
//! get a session cookie (HttpOnly, SameSite=Strict, Secure under TLS, a new id at each login);
//! every form carries the session's CSRF token; API clients send `Authorization: Bearer TOKEN`
//! with a read or write scope. Failed logins are rate-limited per address and per name. Nothing
//! but `/healthz`, the login page and the stylesheet is public.

use crate::AppState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "vmoodle_session";
pub const LOGIN_CSRF_COOKIE: &str = "vmoodle_login";
pub const FLASH_COOKIE: &str = "vmoodle_flash";
/// Sessions last this long (seconds).
pub const SESSION_TTL: i64 = 12 * 3600;

/// Paths anybody may fetch.
fn public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/login" | "/static/app.css" | "/favicon.ico"
    )
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
        .to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random token: 32 bytes as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    openssl::rand::rand_bytes(&mut b).expect("the system's random generator works");
    hex(&b)
}

/// What the register keeps of a secret token: its SHA-256.
pub fn token_hash(token: &str) -> String {
    let d = openssl::sha::sha256(token.as_bytes());
    hex(&d)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time comparison of two secrets.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a.as_bytes(), b.as_bytes())
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Principal {
    pub admin: String,
    pub via: Via,
    /// A one-time message for this page, left by the previous answer (`web::see_other`) in a
    /// cookie of this site, so no link from elsewhere can put words in the page's banner.
    pub flash: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Via {
    /// A browser session, with its CSRF token.
    Session { csrf: String },
    /// An API token: its name and whether it may change things.
    Token { name: String, write: bool },
}

impl Principal {
    /// How jobs record who started them.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::Session { .. } => format!("web:{}", self.admin),
            Via::Token { name, .. } => format!("api:{name}"),
        }
    }
    pub fn may_write(&self) -> bool {
        match &self.via {
            Via::Session { .. } => true,
            Via::Token { write, .. } => *write,
        }
    }
    pub fn csrf(&self) -> &str {
        match &self.via {
            Via::Session { csrf } => csrf,
            Via::Token { .. } => "",
        }
    }
}

/// Reads a cookie from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A Set-Cookie value with the attributes every vmoodle cookie has.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Finds the principal of a request (session cookie or bearer token), if any.
pub async fn principal(state: &AppState, headers: &HeaderMap) -> Option<Principal> {
    let reg = &state.home.registry;
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = auth.strip_prefix("Bearer ")?.trim();
        let t = reg.token_by_hash(&token_hash(token)).await.ok()??;
        return Some(Principal {
            admin: t.admin,
            via: Via::Token {
                write: t.scope == "write",
                name: t.name,
            },
            flash: None,
        });
    }
    let sid = cookie(headers, SESSION_COOKIE)?;
    let s = reg.session(&token_hash(&sid)).await.ok()??;
    let flash = cookie(headers, FLASH_COOKIE)
        .map(|v| {
            url::form_urlencoded::parse(format!("m={v}").as_bytes())
                .next()
                .map(|(_, m)| m.chars().take(400).collect::<String>())
                .unwrap_or_default()
        })
        .filter(|m| !m.is_empty());
    Some(Principal {
        admin: s.admin,
        via: Via::Session { csrf: s.csrf },
        flash,
    })
}

/// The middleware in front of everything: finds the principal, refuses what it may not do.
/// Pages send an anonymous visitor to the login page; the API answers 401/403 problem+json.
/// A browser session's change (any method but GET/HEAD) must carry the session's CSRF token in
/// the form field `csrf` (checked by the form extractors) or the `X-CSRF-Token` header (checked
/// here for the API).
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if public(&path) {
        return next.run(req).await;
    }
    let api = path.starts_with("/api/") || path == "/metrics" || path == "/readyz";
    let Some(p) = principal(&state, req.headers()).await else {
        if api {
            return crate::api::Problem::new(
                StatusCode::UNAUTHORIZED,
                "not authenticated",
                "send `Authorization: Bearer TOKEN` (`vmoodle admin token create`) or log in",
            )
            .into_response();
        }
        let next_url = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        return Redirect::to(&format!("/login?next={}", urlencode(&next_url))).into_response();
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes && !p.may_write() {
        return crate::api::Problem::new(
            StatusCode::FORBIDDEN,
            "read-only token",
            "this API token has the read scope; changes need a token with the write scope",
        )
        .into_response();
    }
    if changes && api {
        if let Via::Session { csrf } = &p.via {
            let sent = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !same(sent, csrf) {
                return crate::api::Problem::new(
                    StatusCode::FORBIDDEN,
                    "CSRF token missing or wrong",
                    "a browser session's API call must send the page's CSRF token in X-CSRF-Token",
                )
                .into_response();
            }
        }
    }
    if changes && !api {
        // A page's form: its `csrf` field must be the session's token. Multipart forms (the
        // node-list upload) are checked by their handler, which reads the field itself.
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let multipart = ctype.starts_with("multipart/form-data");
        if multipart && !MULTIPART_CHECKED.contains(&path.as_str()) {
            // Only the handlers listed read a multipart body, and they check its CSRF field
            // themselves; anywhere else a multipart body would slip past the check below.
            return csrf_refused();
        }
        if !multipart {
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, 4 << 20).await else {
                return (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
            };
            let sent = form_field(&bytes, "csrf").unwrap_or_default();
            if !same(&sent, p.csrf()) {
                return csrf_refused();
            }
            req = Request::from_parts(parts, axum::body::Body::from(bytes));
        }
    }
    let had_flash = p.flash.is_some();
    req.extensions_mut().insert(p);
    let mut res = next.run(req).await;
    // A page has shown the one-time message: it goes.
    if had_flash && !res.status().is_redirection() {
        if let Ok(v) = header::HeaderValue::from_str(&set_cookie(
            FLASH_COOKIE,
            "",
            0,
            state.cfg.secure_cookies,
        )) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// Page routes that take a multipart form (file uploads) and check its `csrf` field themselves.
const MULTIPART_CHECKED: &[&str] = &["/platforms/bulk/preview"];

/// A path of this site to go back to: absolute, not protocol-relative, no backslash, no control
/// characters or spaces (browsers drop tabs and newlines, turning `/\t/evil` into `//evil`).
pub fn local_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && !p
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
}

/// The page shown when a form's CSRF token is missing or wrong.
pub fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::response::Html(
            "<!doctype html><title>Refused</title><p>This form was refused: its security token \
             is missing or out of date (CSRF protection). Go back, reload the page and submit \
             it again.</p>",
        ),
    )
        .into_response()
}

/// A field of an urlencoded form body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The client address (the TCP peer; a proxy's X-Forwarded-For is not trusted).
pub fn client_ip(req_peer: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    req_peer
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Failed logins: at most `MAX_FAILURES` per address and per name within `WINDOW`; then the
/// login answers 429 with Retry-After until the oldest failure leaves the window. An attempt is
/// counted from its start (`begin`) until its end (`end`), so a burst of concurrent guesses
/// cannot slip past the count while their passwords are being checked.
#[derive(Debug, Default)]
pub struct RateLimiter {
    entries: Mutex<HashMap<String, Attempts>>,
}

#[derive(Debug, Default)]
struct Attempts {
    failures: Vec<Instant>,
    in_flight: usize,
}

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(300);
/// Keys kept before old ones are dropped (each unknown address or name adds one).
const MAX_KEYS: usize = 10_000;

fn keys(ip: IpAddr, name: &str) -> [String; 2] {
    // Administrator names have at most 64 characters; a longer one is some other string.
    let name: String = name.chars().take(64).collect();
    [format!("ip:{ip}"), format!("name:{name}")]
}

impl RateLimiter {
    /// Starts a login attempt, or says how many seconds to wait when the address or the name
    /// has used up its attempts. Every `Ok` must be followed by `end`.
    pub fn begin(&self, ip: IpAddr, name: &str) -> Result<(), u64> {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if m.len() > MAX_KEYS {
            m.retain(|_, a| {
                a.failures.retain(|t| now.duration_since(*t) < WINDOW);
                a.in_flight > 0 || !a.failures.is_empty()
            });
        }
        let keys = keys(ip, name);
        let mut wait = None;
        for key in &keys {
            if let Some(a) = m.get_mut(key) {
                a.failures.retain(|t| now.duration_since(*t) < WINDOW);
                if a.failures.len() + a.in_flight >= MAX_FAILURES {
                    let left = a.failures.first().map_or(1, |t| {
                        WINDOW.saturating_sub(now.duration_since(*t)).as_secs() + 1
                    });
                    wait = Some(wait.map_or(left, |w: u64| w.max(left)));
                }
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        for key in keys {
            m.entry(key).or_default().in_flight += 1;
        }
        Ok(())
    }

    /// Ends an attempt begun with `begin`: a failure counts against the address and the name;
    /// a success clears the name's failures.
    pub fn end(&self, ip: IpAddr, name: &str, ok: bool) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let [ip_key, name_key] = keys(ip, name);
        for key in [&ip_key, &name_key] {
            if let Some(a) = m.get_mut(key) {
                a.in_flight = a.in_flight.saturating_sub(1);
                if !ok {
                    a.failures.push(now);
                }
            }
        }
        if ok {
            if let Some(a) = m.get_mut(&name_key) {
                a.failures.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_attempts_is_counted_before_the_passwords_are_checked() {
        let l = RateLimiter::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            l.begin(ip, "alice").unwrap();
        }
        // Five attempts in flight: the sixth waits, before any of them failed.
        assert!(l.begin(ip, "alice").is_err());
        for _ in 0..MAX_FAILURES {
            l.end(ip, "alice", false);
        }
        assert!(l.begin(ip, "bob").is_err(), "the address is blocked too");
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(l.begin(other, "alice").is_err(), "and the name");
        l.begin(other, "bob").unwrap();
        l.end(other, "bob", true);
    }

    #[test]
    fn local_paths_only() {
        assert!(local_path("/jobs/1?x=2"));
        for bad in ["//evil", "/\\evil", "/\t/evil", "https://evil", "", "/a b"] {
            assert!(!local_path(bad), "{bad:?}");
        }
    }
}
