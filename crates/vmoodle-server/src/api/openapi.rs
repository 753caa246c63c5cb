//! The OpenAPI document: the paths and schemas `Api::op` collected from the handlers'
//! `#[utoipa::path]` attributes, with the API's info, its bearer-token security and the
//! problem schema every error uses.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, SecurityRequirement};
use utoipa::{PartialSchema, ToSchema};

/// The whole document, as JSON text (built once at start).
pub fn document(collected: &OpenApi) -> String {
    let mut doc = collected.clone();
    doc.info = InfoBuilder::new()
        .title("vmoodle")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Runs a fleet of virtual Moodle sites. Long operations answer 202 Accepted with a \
             job; follow it at /api/v1/jobs/{id} or as Server-Sent Events at \
             /api/v1/jobs/{id}/events. Errors are RFC 9457 problem+json. Authenticate with \
             `Authorization: Bearer TOKEN` (`vmoodle admin token create`); a read token may \
             only GET.",
        ))
        .build();
    let comps = doc.components.get_or_insert_with(Default::default);
    comps
        .schemas
        .insert(super::Problem::name().into(), super::Problem::schema());
    comps.security_schemes.insert(
        "bearer".into(),
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()).into(),
    );
    doc.security = Some(vec![SecurityRequirement::new(
        "bearer",
        Vec::<String>::new(),
    )]);
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub async fn serve(doc: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}
