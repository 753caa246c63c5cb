//! Settings: the parts of vmoodle.toml an administrator changes day to day, checked exactly as
//! `vmoodle settings set` checks them (one key at a time through `set_in_document`, the whole
//! file parsed and validated) and saved only when every changed key is valid. The schema's
//! database password is write-only: sealed like the CLI seals it, never rendered.

use super::{page, see_other, Chrome};
use crate::auth::Principal;
use crate::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Form, Router};
use std::collections::HashMap;
use vmoodle_core::settings::{set_in_document, Settings, SECRET_KEYS};
use vmoodle_core::Secret;
use vmoodle_ops::Home;

pub fn routes() -> Router<AppState> {
    Router::new().route("/settings", get(show).post(save))
}

/// How a setting is edited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Number,
    Bool,
    Secret,
    Choice(&'static [&'static str]),
}

/// A setting: its key, label and hint.
type Setting = (&'static str, &'static str, &'static str);

/// The settings this page edits, by group, with a label and a hint.
const GROUPS: &[(&str, &[Setting])] = &[
    (
        "Naming schema",
        &[
            (
                "schema.automate",
                "Automate",
                "fill host, database and dataroot from the schema",
            ),
            (
                "schema.wwwroot",
                "wwwroot",
                "with <%%INSTANCE%%> where the token goes",
            ),
            ("schema.db_type", "Database type", ""),
            ("schema.db_host", "Database host", ""),
            ("schema.db_port", "Database port", "0: the type's default"),
            ("schema.db_login", "Database login", ""),
            (
                "schema.db_password",
                "Database password",
                "leave empty to keep the current one; stored encrypted, never shown",
            ),
            ("schema.db_name", "Database name", ""),
            ("schema.prefix", "Table prefix", ""),
            ("schema.db_persist", "Persistent connections", ""),
            ("schema.dataroot", "Dataroot", ""),
        ],
    ),
    (
        "Executables",
        &[
            ("executables.mariadb", "mariadb", "empty: looked up on PATH"),
            (
                "executables.mariadb_dump",
                "mariadb-dump",
                "empty: looked up on PATH",
            ),
            (
                "executables.mariabackup",
                "mariabackup",
                "empty: looked up on PATH",
            ),
            ("executables.psql", "psql", "empty: looked up on PATH"),
            ("executables.pg_dump", "pg_dump", "empty: looked up on PATH"),
            (
                "executables.pg_restore",
                "pg_restore",
                "empty: looked up on PATH",
            ),
            ("executables.php", "php", "empty: looked up on PATH"),
        ],
    ),
    (
        "MNET key renewal",
        &[
            ("mnet.autorenew", "Renew automatically", ""),
            (
                "mnet.lookforward_hours",
                "Look forward (hours)",
                "renew keys that expire within this time",
            ),
            ("mnet.renew_time", "Renewal window opens (HH:MM UTC)", ""),
            ("mnet.renew_window_minutes", "Renewal window (minutes)", ""),
            ("mnet.key_lifetime_days", "Key lifetime (days)", ""),
        ],
    ),
    (
        "Web server and daemon",
        &[
            ("web.user", "Web server user", ""),
            ("web.group", "Web server group", ""),
            ("web.retry_after", "Retry-After when disabled (seconds)", ""),
            (
                "web.listen",
                "Daemon listens on (ADDR:PORT)",
                "takes effect when the daemon restarts",
            ),
        ],
    ),
    (
        "Warm spares",
        &[(
            "spares.keep",
            "Spares kept per template and MariaDB server",
            "0: the daemon fills none",
        )],
    ),
    (
        "Moodle cron",
        &[
            (
                "cron.enabled",
                "The daemon runs cron",
                "off: run `vmoodle cron --all` from the system's crontab",
            ),
            (
                "cron.interval",
                "Interval (seconds)",
                "a pass of each site this often (10 or more); overdue past twice this",
            ),
            ("cron.parallel", "Sites at once on this node", "1 to 64"),
            (
                "cron.timeout",
                "Time limit per pass (seconds)",
                "a pass past it is killed",
            ),
        ],
    ),
];

fn kind_of(key: &str, current: &serde_json::Value) -> Kind {
    if SECRET_KEYS.contains(&key) {
        return Kind::Secret;
    }
    if key == "schema.db_type" {
        return Kind::Choice(&["mariadb", "mysql", "pgsql"]);
    }
    match current {
        serde_json::Value::Bool(_) => Kind::Bool,
        serde_json::Value::Number(_) => Kind::Number,
        _ => Kind::Text,
    }
}

struct Field {
    key: &'static str,
    /// The id of its input (the key with `_` for `.`).
    id: String,
    label: &'static str,
    hint: &'static str,
    kind: Kind,
    value: String,
    /// Whether a secret is set now (the page says so, never what it is).
    is_set: bool,
    error: Option<String>,
}

impl Field {
    fn is_text(&self) -> bool {
        matches!(self.kind, Kind::Text)
    }
    fn is_number(&self) -> bool {
        matches!(self.kind, Kind::Number)
    }
    fn is_bool(&self) -> bool {
        matches!(self.kind, Kind::Bool)
    }
    fn is_secret(&self) -> bool {
        matches!(self.kind, Kind::Secret)
    }
    fn choices(&self) -> &'static [&'static str] {
        match self.kind {
            Kind::Choice(c) => c,
            _ => &[],
        }
    }
}

struct Group {
    title: &'static str,
    fields: Vec<Field>,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    groups: Vec<Group>,
    error: Option<String>,
}

fn display(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The page's groups with the current values, overridden by what a rejected form sent.
fn groups(
    current: &Settings,
    sent: &HashMap<String, String>,
    errors: &HashMap<String, String>,
) -> Vec<Group> {
    let flat: HashMap<String, serde_json::Value> = current.flatten().into_iter().collect();
    GROUPS
        .iter()
        .map(|(title, keys)| Group {
            title,
            fields: keys
                .iter()
                .map(|(key, label, hint)| {
                    let cur = flat.get(*key).cloned().unwrap_or_default();
                    let kind = kind_of(key, &cur);
                    let value = if kind == Kind::Secret {
                        String::new()
                    } else {
                        sent.get(*key).cloned().unwrap_or_else(|| display(&cur))
                    };
                    Field {
                        key,
                        id: key.replace('.', "_"),
                        label,
                        hint,
                        kind,
                        value,
                        is_set: kind == Kind::Secret && !display(&cur).is_empty(),
                        error: errors.get(*key).cloned(),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Reads vmoodle.toml from disk (the daemon's own copy may be older than a CLI change).
fn current(state: &AppState) -> anyhow::Result<(String, Settings)> {
    let text = state.home.settings_text()?;
    let s = Settings::parse(&text)?;
    Ok((text, s))
}

async fn show(State(state): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let chrome = Chrome::new(&p, "settings");
    match current(&state) {
        Ok((_, s)) => page(SettingsPage {
            chrome,
            groups: groups(&s, &HashMap::new(), &HashMap::new()),
            error: None,
        }),
        Err(e) => page(SettingsPage {
            chrome,
            groups: Vec::new(),
            error: Some(format!("{e:#}")),
        }),
    }
}

/// Applies every changed key to the text, as `settings set` would one after the other; returns
/// the new text and the changed keys, or each rejected key with why.
fn apply(
    home: &Home,
    text: &str,
    current: &Settings,
    sent: &HashMap<String, String>,
) -> Result<(String, Vec<String>), HashMap<String, String>> {
    let flat: HashMap<String, serde_json::Value> = current.flatten().into_iter().collect();
    let mut text = text.to_string();
    let mut changed = Vec::new();
    let mut errors = HashMap::new();
    for (key, _, _) in GROUPS.iter().flat_map(|(_, k)| k.iter()) {
        let Some(raw) = sent.get(*key) else { continue };
        let secret = SECRET_KEYS.contains(key);
        let value = if secret {
            if raw.is_empty() {
                continue; // leave empty to keep
            }
            match home.secrets.seal(
                &Secret::new(raw.clone()),
                &vmoodle_core::Binding::setting(key),
            ) {
                Ok(v) => v,
                Err(e) => {
                    errors.insert(key.to_string(), format!("{e:#}"));
                    continue;
                }
            }
        } else {
            if flat.get(*key).map(display).as_deref() == Some(raw.as_str()) {
                continue;
            }
            raw.clone()
        };
        match set_in_document(&text, key, &value) {
            Ok(t) => {
                text = t;
                changed.push(key.to_string());
            }
            Err(e) => {
                errors.insert(key.to_string(), e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok((text, changed))
    } else {
        Err(errors)
    }
}

async fn save(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(mut sent): Form<HashMap<String, String>>,
) -> Response {
    sent.remove("csrf");
    let form = sent.clone();
    let result = crate::with_lock(&state, move |mut home| async move {
        let text = home.settings_text()?;
        let cur = Settings::parse(&text)?;
        match apply(&home, &text, &cur, &form) {
            Ok((new, changed)) => {
                if !changed.is_empty() {
                    home.save_settings(&new)?;
                    if changed.iter().any(|k| k.starts_with("web.")) {
                        vmoodle_ops::publish::publish_all(&home).await?;
                    }
                }
                Ok(Ok(changed))
            }
            Err(errors) => Ok(Err((cur, errors))),
        }
    })
    .await;
    match result {
        Ok(Ok(changed)) if changed.is_empty() => see_other("/settings", "Nothing changed."),
        Ok(Ok(changed)) => see_other("/settings", &format!("Saved: {}.", changed.join(", "))),
        Ok(Err((cur, errors))) => {
            let mut keys: Vec<&String> = errors.keys().collect();
            keys.sort();
            let summary = format!(
                "Nothing was saved: {} is not valid (see below).",
                keys.iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut r = page(SettingsPage {
                chrome: Chrome::new(&p, "settings"),
                groups: groups(&cur, &sent, &errors),
                error: Some(summary),
            });
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
        Err(e) => {
            let mut r = page(SettingsPage {
                chrome: Chrome::new(&p, "settings"),
                groups: Vec::new(),
                error: Some(format!("Nothing was saved: {e:#}")),
            });
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}
