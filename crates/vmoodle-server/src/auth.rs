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
        });
    }
    let sid = cookie(headers, SESSION_COOKIE)?;
    let s = reg.session(&token_hash(&sid)).await.ok()??;
    Some(Principal {
        admin: s.admin,
        via: Via::Session { csrf: s.csrf },
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
        if !ctype.starts_with("multipart/form-data") {
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
    req.extensions_mut().insert(p);
    next.run(req).await
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
/// login answers 429 with Retry-After until the oldest failure leaves the window.
#[derive(Debug, Default)]
pub struct RateLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(300);

impl RateLimiter {
    /// Seconds to wait before trying again, if the address or the name is blocked.
    pub fn blocked(&self, ip: IpAddr, name: &str) -> Option<u64> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut wait = None;
        for key in [format!("ip:{ip}"), format!("name:{name}")] {
            if let Some(v) = f.get_mut(&key) {
                v.retain(|t| now.duration_since(*t) < WINDOW);
                if v.len() >= MAX_FAILURES {
                    let left = WINDOW.saturating_sub(now.duration_since(v[0])).as_secs() + 1;
                    wait = Some(wait.map_or(left, |w: u64| w.max(left)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, ip: IpAddr, name: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for key in [format!("ip:{ip}"), format!("name:{name}")] {
            f.entry(key).or_default().push(now);
        }
    }

    pub fn succeeded(&self, name: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(&format!("name:{name}"));
    }
}
