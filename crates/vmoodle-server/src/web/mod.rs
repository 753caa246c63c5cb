//! The web admin: server-rendered pages (askama templates, auto-escaped), usable without
//! JavaScript; app.js adds live updates. Each section has its module with its routes.

mod bulk;
mod clusters;
mod dbservers;
mod fleet;
mod instance;
mod jobs;
mod mnet;
mod platform;
mod pool;
mod settings;
mod snapshot;
mod templates;

use crate::auth::{self, Principal};
use crate::AppState;
use askama::Template;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use std::net::SocketAddr;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/favicon.ico", get(favicon))
        .merge(pool::routes())
        .merge(instance::routes())
        .merge(platform::routes())
        .merge(snapshot::routes())
        .merge(fleet::routes())
        .merge(templates::routes())
        .merge(dbservers::routes())
        .merge(clusters::routes())
        .merge(mnet::routes())
        .merge(jobs::routes())
        .merge(settings::routes())
}

/// What every page's frame shows: the administrator, the CSRF token for its forms, the current
/// section, a one-time message.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub admin: String,
    pub csrf: String,
    pub section: &'static str,
    pub flash: Option<String>,
}

impl Chrome {
    pub fn new(p: &Principal, section: &'static str) -> Self {
        Self {
            admin: p.admin.clone(),
            csrf: p.csrf().to_string(),
            section,
            flash: p.flash.clone(),
        }
    }
    /// A message of this answer's own (a check's result), shown instead of the one left by
    /// the previous answer.
    pub fn flash(mut self, msg: Option<String>) -> Self {
        if let Some(m) = msg.filter(|m| !m.is_empty()) {
            self.flash = Some(m);
        }
        self
    }
}

/// Renders a page.
pub fn page<T: Template>(t: T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("rendering a page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message {
    chrome: Chrome,
    heading: String,
    text: String,
}

/// A page that says what went wrong (404, refused).
pub fn message(p: &Principal, status: StatusCode, heading: &str, text: &str) -> Response {
    let mut r = page(Message {
        chrome: Chrome::new(p, ""),
        heading: heading.into(),
        text: text.into(),
    });
    *r.status_mut() = status;
    r
}

/// Redirect after a POST, with a one-time message for the next page (in a cookie, never in the
/// URL: a link from elsewhere cannot make a page say something).
pub fn see_other(to: &str, msg: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    let value: String = url::form_urlencoded::byte_serialize(msg.as_bytes()).collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=120",
        auth::FLASH_COOKIE
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Headers on every answer: a strict Content-Security-Policy, no framing, no sniffing, and no
/// caching of pages that show the fleet.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../static/app.css"),
    )
        .into_response()
}

/// Browsers ask for it on every site; nothing to show.
async fn favicon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "public, max-age=86400")],
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("../../static/app.js"),
    )
        .into_response()
}

// ---- login ------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    name: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only a path of this site is a place to go after login.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if auth::local_path(n) => n.into(),
        _ => "/".into(),
    }
}

fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    next: String,
    name: String,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    // Login CSRF: a random token in a cookie and in the form (double submit). A token the
    // browser already holds is kept, so a second tab or a stray request (a favicon) does not
    // invalidate the form on screen.
    let token = auth::cookie(headers, auth::LOGIN_CSRF_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(auth::random_token);
    let mut r = page(LoginPage {
        csrf: token.clone(),
        next,
        name,
        error,
    });
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(
        auth::LOGIN_CSRF_COOKIE,
        &token,
        3600,
        state.cfg.secure_cookies,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    login_form(
        &state,
        &headers,
        safe_next(q.next.as_deref()),
        String::new(),
        None,
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(Some(&f.next));
    let cookie = auth::cookie(&headers, auth::LOGIN_CSRF_COOKIE).unwrap_or_default();
    if f.csrf.is_empty() || !auth::same(&cookie, &f.csrf) {
        return login_form(
            &state,
            &headers,
            next,
            f.name,
            Some("The login form expired (or cookies are off). Please log in again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let ip = peer.ip();
    let name = f.name.trim().to_string();
    if let Err(wait) = state.limiter.begin(ip, &name) {
        let mut r = login_form(
            &state,
            &headers,
            next,
            name,
            Some(format!(
                "Too many failed logins. Try again in {wait} seconds."
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let admin = state.home.registry.find_admin(&name).await.ok().flatten();
    // Verify against a dummy hash for an unknown name, so timing does not tell names apart.
    // argon2 takes tens of milliseconds of CPU: off the server's workers.
    let hash = admin
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |a| a.password_hash.clone());
    let password = f.password.clone();
    let verified = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let ok = verified && admin.is_some();
    state.limiter.end(ip, &name, ok);
    let Some(admin) = admin.filter(|_| ok) else {
        return login_form(
            &state,
            &headers,
            next,
            name,
            Some("Wrong administrator name or password.".into()),
            StatusCode::UNAUTHORIZED,
        );
    };
    // A new session id at each login.
    let sid = auth::random_token();
    let csrf = auth::random_token();
    let expires = vmoodle_core::now_unix() + auth::SESSION_TTL;
    if let Err(e) = state
        .home
        .registry
        .add_session(&auth::token_hash(&sid), admin.id, &csrf, expires)
        .await
    {
        tracing::error!("starting a session: {e}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the register is unavailable",
        )
            .into_response();
    }
    let _ = state.home.registry.touch_login(admin.id).await;
    let mut r = Redirect::to(&next).into_response();
    let secure = state.cfg.secure_cookies;
    for c in [
        auth::set_cookie(auth::SESSION_COOKIE, &sid, auth::SESSION_TTL, secure),
        auth::set_cookie(auth::LOGIN_CSRF_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// An argon2id hash of a random string, verified when the name is unknown.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| auth::hash_password(&auth::random_token()).unwrap_or_default())
}

async fn logout(
    State(state): State<AppState>,
    Extension(_p): Extension<Principal>,
    headers: HeaderMap,
) -> Response {
    if let Some(sid) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        let _ = state
            .home
            .registry
            .remove_session(&auth::token_hash(&sid))
            .await;
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(
        auth::SESSION_COOKIE,
        "",
        0,
        state.cfg.secure_cookies,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The registered database servers' names, for a form's choices.
pub async fn dbserver_names(home: &vmoodle_ops::Home) -> Vec<String> {
    let all = home.registry.dbservers().await.unwrap_or_default();
    all.into_iter().map(|s| s.name).collect()
}

/// The templates' names, for a form's choices.
pub async fn template_names(home: &vmoodle_ops::Home) -> Vec<String> {
    let all = home.registry.templates().await.unwrap_or_default();
    all.into_iter().map(|t| t.name).collect()
}

/// Formats a unix time for pages (UTC).
pub fn when(t: i64) -> String {
    const FMT: &[time::format_description::FormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    if t <= 0 {
        return String::new();
    }
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(FMT).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn when_formats_utc() {
        assert_eq!(super::when(0), "");
        assert_eq!(super::when(1_795_000_000), "2026-11-18 11:06 UTC");
    }

    #[test]
    fn only_local_paths_are_next() {
        assert_eq!(super::safe_next(Some("/jobs/3")), "/jobs/3");
        assert_eq!(super::safe_next(Some("//evil.example")), "/");
        assert_eq!(super::safe_next(Some("https://evil.example")), "/");
        assert_eq!(super::safe_next(Some("/\\evil")), "/");
        assert_eq!(super::safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(super::safe_next(Some("/ok?x=1")), "/ok?x=1");
    }
}
