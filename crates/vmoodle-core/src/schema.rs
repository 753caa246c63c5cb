//! The naming schema, as VMoodle had it: patterns with `<%%INSTANCE%%>` that preset the wwwroot,
//! database name, database user and dataroot of a new instance from one token.

use serde::Serialize;
use std::path::PathBuf;

use crate::settings::SchemaSettings;
use crate::validate::{self, ValidationError};
use crate::DbKind;

/// The placeholder replaced by the token in every pattern.
pub const PLACEHOLDER: &str = "<%%INSTANCE%%>";

/// What a token gives under the schema.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Expansion {
    pub token: String,
    pub wwwroot: String,
    pub host: String,
    pub db_type: DbKind,
    pub db_host: String,
    pub db_port: u16,
    pub db_name: String,
    pub db_user: String,
    pub prefix: String,
    pub db_persist: bool,
    pub dataroot: PathBuf,
}

pub fn substitute(pattern: &str, token: &str) -> String {
    pattern.replace(PLACEHOLDER, token)
}

/// Expands the schema for a token, validating the token and every resulting value.
pub fn expand(schema: &SchemaSettings, token: &str) -> Result<Expansion, ValidationError> {
    validate::token(token)?;
    let www = validate::wwwroot(&substitute(&schema.wwwroot, token))?;
    let db_name = substitute(&schema.db_name, token);
    validate::db_name(&db_name)?;
    let db_user = substitute(&schema.db_login, token);
    validate::db_user(&db_user)?;
    let dataroot = validate::abs_path("dataroot", &substitute(&schema.dataroot, token))?;
    Ok(Expansion {
        token: token.to_string(),
        wwwroot: www.url,
        host: www.host,
        db_type: schema.db_type,
        db_host: schema.db_host.clone(),
        db_port: if schema.db_port == 0 {
            schema.db_type.default_port()
        } else {
            schema.db_port
        },
        db_name,
        db_user,
        prefix: schema.prefix.clone(),
        db_persist: schema.db_persist,
        dataroot,
    })
}

/// Checks a pattern: it must hold the placeholder once, and give a valid value for a sample token.
pub fn check_pattern(
    field: &str,
    pattern: &str,
    check: impl Fn(&str) -> Result<(), ValidationError>,
) -> Result<(), ValidationError> {
    if pattern.matches(PLACEHOLDER).count() != 1 {
        return Err(ValidationError::new(
            field,
            pattern,
            format!("a pattern holding {PLACEHOLDER} exactly once, so every instance gets its own value"),
        ));
    }
    let longest = "x".repeat(20);
    for sample in ["a", longest.as_str()] {
        check(&substitute(pattern, sample)).map_err(|e| {
            ValidationError::new(
                field,
                pattern,
                format!(
                    "with token `{sample}` it gives `{}`, which is not {}",
                    e.value, e.allowed
                ),
            )
        })?;
    }
    Ok(())
}
