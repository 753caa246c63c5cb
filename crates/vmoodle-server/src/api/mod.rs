//! The JSON API under `/api/v1`: the same operations as the pages; long ones answer 202 with
//! a job; job progress as Server-Sent Events; errors as RFC 9457 problem+json; the OpenAPI
//! description, generated from this code, at `/api/v1/openapi.json`.
//!
//! Every route is added through [`Api::op`], which registers the handler on the router AND its
//! `#[utoipa::path]` operation in the document, so the document cannot miss a route.

mod clusters;
mod dbservers;
mod deploy;
mod fleet;
mod instances;
mod jobs;
mod misc;
mod mnet;
pub mod openapi;
mod templates;
mod views;

use crate::AppState;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde::Serialize;
use utoipa::openapi::path::HttpMethod;
use utoipa::ToSchema;
use vmoodle_core::validate::ValidationError;
use vmoodle_registry::RegistryError;

pub use views::Accepted;

/// The API's routes (nested under `/api/v1` by the caller), with the problem+json fallback.
pub fn routes() -> Router<AppState> {
    let api = build();
    let doc = openapi::document(&api.doc);
    api.router
        .route(
            "/openapi.json",
            axum::routing::get(move || openapi::serve(doc.clone())),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
}

/// The router and the paths of the document, built together.
pub struct Api {
    pub router: Router<AppState>,
    pub doc: utoipa::openapi::OpenApi,
}

/// Every operation of the API.
pub fn build() -> Api {
    let api = Api {
        router: Router::new(),
        doc: utoipa::openapi::OpenApi::default(),
    };
    let api = instances::add(api);
    let api = deploy::add(api);
    let api = templates::add(api);
    let api = dbservers::add(api);
    let api = mnet::add(api);
    let api = jobs::add(api);
    let api = fleet::add(api);
    let api = clusters::add(api);
    misc::add(api)
}

impl Api {
    /// Serves `handler` at the path and methods its `#[utoipa::path]` names (`P`, the generated
    /// `__path_handler`), and records the operation and the schemas it uses in the document.
    pub fn op<P, H, T>(mut self, handler: H) -> Self
    where
        P: utoipa::Path + utoipa::__dev::SchemaReferences,
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let path = P::path();
        let methods = P::methods();
        let filter = methods
            .iter()
            .map(method_filter)
            .reduce(|a, b| a.or(b))
            .expect("an operation has a method");
        self.router = self.router.route(&path, on(filter, handler));
        self.doc
            .paths
            .add_path_operation(format!("/api/v1{path}"), methods, P::operation());
        let mut schemas = Vec::new();
        P::schemas(&mut schemas);
        let comps = self.doc.components.get_or_insert_with(Default::default);
        comps.schemas.extend(schemas);
        self
    }
}

fn method_filter(m: &HttpMethod) -> MethodFilter {
    match m {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such route",
        &format!(
            "`{}` is not a route of this API; /api/v1/openapi.json lists every route",
            uri.path()
        ),
    )
}

async fn not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        &format!(
            "{method} is not served at `{}`; /api/v1/openapi.json lists each route's methods",
            uri.path()
        ),
    )
}

/// An RFC 9457 problem detail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, naming the bad value and what is allowed.
    pub detail: String,
    /// The request field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &str, detail: &str) -> Self {
        Self {
            kind: "about:blank".into(),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    /// A 422 naming the field at fault.
    pub fn invalid(field: &str, detail: &str) -> Self {
        let mut p = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid request", detail);
        p.field = Some(field.into());
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// Turns an operation's error into a problem: a register NotFound is 404, a Conflict 409, a
/// broken rule (a `ValidationError`, naming its field) 422; any other refusal of a request that
/// was checked before it ran is 422 too, with the operation's own words. `unexpected` marks
/// errors of reading state (register, disk) that are the server's fault: 500.
pub fn problem(e: &anyhow::Error, unexpected: bool) -> Problem {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<RegistryError>() {
            match r {
                RegistryError::NotFound { .. } => {
                    return Problem::new(StatusCode::NOT_FOUND, "not found", &r.to_string())
                }
                RegistryError::Conflict(_) => {
                    return Problem::new(StatusCode::CONFLICT, "conflict", &format!("{e:#}"))
                }
                _ => {}
            }
        }
        if let Some(v) = cause.downcast_ref::<ValidationError>() {
            return Problem::invalid(&v.field, &v.to_string());
        }
    }
    if unexpected {
        tracing::error!("API: {e:#}");
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error",
            &format!("{e:#}"),
        );
    }
    let detail = format!("{e:#}");
    // The operations refuse a name that is taken in their own words (no typed error).
    if detail.contains("already exists") || detail.contains("already registered") {
        return Problem::new(StatusCode::CONFLICT, "conflict", &detail);
    }
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "request refused", &detail)
}

/// Errors of reads (500 unless NotFound/Conflict/validation).
pub fn read_err(e: impl Into<anyhow::Error>) -> Problem {
    problem(&e.into(), true)
}

/// Errors of requests (422 unless NotFound/Conflict).
pub fn req_err(e: impl Into<anyhow::Error>) -> Problem {
    problem(&e.into(), false)
}

/// Handlers answer JSON or a problem.
pub type ApiResult<T> = Result<axum::Json<T>, Problem>;

/// 202 Accepted with the job and its Location.
pub fn accepted(job: i64) -> Response {
    let href = format!("/api/v1/jobs/{job}");
    let mut r = (
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            job,
            href: href.clone(),
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&href) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Submits `op` as a job for the caller: 202, or the problem with the request.
pub async fn submit(
    state: &AppState,
    p: &crate::auth::Principal,
    op: crate::runner::Op,
) -> Response {
    match crate::runner::submit(state, &p.actor(), op).await {
        Ok(id) => accepted(id),
        Err(e) => req_err(e).into_response(),
    }
}

/// A JSON body whose rejection is a problem naming what is wrong (422), not axum's text.
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(e) => {
                let status = e.status();
                let mut p = Problem::new(status, "bad request body", &e.body_text());
                if status == StatusCode::UNPROCESSABLE_ENTITY {
                    p.field = field_of(&e.body_text());
                }
                Err(p)
            }
        }
    }
}

/// The field serde named in its message (`missing field `x``, `unknown field `x``, or a
/// path `x.y: ...`).
fn field_of(msg: &str) -> Option<String> {
    for pat in ["missing field `", "unknown field `"] {
        if let Some(at) = msg.find(pat) {
            let rest = &msg[at + pat.len()..];
            return rest.find('`').map(|e| rest[..e].to_string());
        }
    }
    let rest = msg.split_once(": ")?.1;
    let (path, _) = rest.split_once(": ")?;
    (!path.contains(' ')).then(|| path.to_string())
}

/// A query string whose rejection is a 400 problem.
pub struct Q<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Q<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "bad query", &e.body_text()))
    }
}

pub use crate::with_lock;
