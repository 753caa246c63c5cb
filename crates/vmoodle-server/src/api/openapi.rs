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

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    /// Every `$ref` of the document (answers, bodies, nested schemas) names a schema it holds.
    #[test]
    fn every_reference_resolves() {
        let doc: Value =
            serde_json::from_str(&super::document(&super::super::build().doc)).unwrap();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20, "{all:?}");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{r} does not resolve"
            );
        }
        for p in doc["paths"].as_object().unwrap().keys() {
            assert!(p.starts_with("/api/v1/"), "{p}");
        }
    }

    #[test]
    fn serde_messages_name_their_field() {
        use super::super::field_of;
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: missing field `token` at line 1 column 2").as_deref(),
            Some("token")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: items[0].mnet: invalid type: string \"x\", expected i64 at line 1 column 30").as_deref(),
            Some("items[0].mnet")
        );
    }
}
