//! Fleet operations (`/fleet`): choose what to do (a Moodle CLI script, cron, an upgrade, a
//! setting), choose the instances (names, or all, narrowed by server, template, subnetwork,
//! pattern), preview which sites that is, then run it as one job whose page shows each site's
//! outcome as it finishes.

use super::platform::FieldErrors;
use super::{dbserver_names, page, template_names, Chrome};
use crate::auth::Principal;
use crate::fleet::{FleetOperation, FleetParams, FleetSelection};
use crate::runner::{self, Op};
use crate::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Form, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new().route("/fleet", get(form).post(post))
}

/// The form as posted (every field text; checkboxes present or absent).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct FleetForm {
    /// `run` (a script), and the operations the fleet commands offer.
    pub op: String,
    /// Instances, separated by commas, spaces or lines.
    pub instances: String,
    pub all: Option<String>,
    pub dbserver: String,
    pub template: String,
    pub subnetwork: String,
    pub matches: String,
    pub exclude: String,
    pub include_disabled: Option<String>,
    pub script: String,
    /// The script's arguments, one per line.
    pub args: String,
    /// A setting's name, plugin and value; `secret` hides the value.
    pub name: String,
    pub plugin: String,
    pub value: String,
    pub secret: Option<String>,
    /// Upgrade: a pre-upgrade snapshot of each site; canary sites first.
    pub snapshot: Option<String>,
    pub canary: String,
    pub parallel: String,
    pub timeout: String,
    pub max_failures: String,
    /// `preview` or `run`.
    pub action: String,
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

impl FleetForm {
    fn selection(&self, errors: &mut FieldErrors) -> FleetSelection {
        let subnetwork = match self.subnetwork.trim() {
            "" => None,
            s => {
                match s.parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        errors.insert(
                        "subnetwork".into(),
                        format!("subnetwork: `{s}` is not a number (subnetworks are numbered from 1)"),
                    );
                        None
                    }
                }
            }
        };
        FleetSelection {
            names: words(&self.instances),
            all: self.all.is_some(),
            subnetwork,
            dbserver: Some(self.dbserver.clone()),
            template: Some(self.template.clone()),
            matches: words(&self.matches),
            exclude: words(&self.exclude),
            include_disabled: self.include_disabled.is_some(),
        }
    }

    /// The request, or the errors of each field.
    fn params(&self, errors: &mut FieldErrors) -> Option<FleetParams> {
        let selection = self.selection(errors);
        let number = |errors: &mut FieldErrors, field: &str, v: &str, default: u64| -> u64 {
            match v.trim() {
                "" => default,
                s => s.parse().unwrap_or_else(|_| {
                    errors.insert(
                        field.into(),
                        format!("{field}: `{s}` is not a whole number"),
                    );
                    default
                }),
            }
        };
        let parallel = number(errors, "parallel", &self.parallel, 4) as usize;
        let timeout_secs = number(errors, "timeout", &self.timeout, 600);
        let max_failures = match self.max_failures.trim() {
            "" => None,
            s => Some(number(errors, "max_failures", s, 0) as usize),
        };
        let operation = match self.op.as_str() {
            "run" => {
                if self.script.trim().is_empty() {
                    errors.insert(
                        "script".into(),
                        "script: choose one of Moodle's admin/cli scripts".into(),
                    );
                }
                FleetOperation::Run {
                    script: self.script.trim().to_string(),
                    args: self
                        .args
                        .lines()
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect(),
                }
            }
            "cron" => FleetOperation::Cron,
            "upgrade" => FleetOperation::Upgrade {
                snapshot: self.snapshot.is_some(),
                canary: number(errors, "canary", &self.canary, 0) as usize,
            },
            "config_set" | "config_unset" => {
                let plugin = Some(self.plugin.trim().to_string()).filter(|p| !p.is_empty());
                let name = self.name.trim().to_string();
                if let Err(e) = vmoodle_ops::fleet::config::Setting::new(&name, plugin.as_deref()) {
                    let field = if format!("{e}").contains("--plugin") {
                        "plugin"
                    } else {
                        "name"
                    };
                    errors.insert(field.into(), format!("{e:#}").replace("--plugin ", ""));
                }
                if self.op == "config_set" {
                    FleetOperation::ConfigSet {
                        name,
                        plugin,
                        value: self.value.clone(),
                        secret: self.secret.is_some(),
                    }
                } else {
                    FleetOperation::ConfigUnset { name, plugin }
                }
            }
            other => {
                errors.insert(
                    "op".into(),
                    format!(
                        "operation: `{other}` is not one this page offers; choose one of the list"
                    ),
                );
                return None;
            }
        };
        errors.is_empty().then_some(FleetParams {
            operation,
            selection,
            parallel,
            timeout_secs,
            max_failures,
        })
    }
}

/// The operations the page offers.
const OPS: &[(&str, &str)] = &[
    ("cron", "Run cron (one pass)"),
    ("upgrade", "Upgrade the sites behind the code"),
    ("run", "Run a Moodle CLI script"),
    ("config_set", "Change a setting"),
    ("config_unset", "Remove a setting"),
];

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    chrome: Chrome,
    f: FleetForm,
    errors: FieldErrors,
    dbservers: Vec<String>,
    templates: Vec<String>,
    scripts: Vec<String>,
    /// The operations offered: (value, label).
    ops: Vec<(&'static str, &'static str)>,
    /// The instances the selection names (after a preview).
    preview: Option<Vec<String>>,
    left_out: Vec<String>,
}

async fn render(
    state: &AppState,
    p: &Principal,
    f: FleetForm,
    errors: FieldErrors,
    preview: Option<(Vec<String>, Vec<String>)>,
) -> Response {
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let scripts = state
        .fresh()
        .await
        .ok()
        .and_then(|h| vmoodle_ops::fleet::moodle::MoodleCode::from_home(&h).ok())
        .map(|c| c.cli_scripts())
        .unwrap_or_default();
    let (preview, left_out) = match preview {
        Some((p, l)) => (Some(p), l),
        None => (None, Vec::new()),
    };
    let mut r = page(FleetPage {
        chrome: Chrome::new(p, "fleet"),
        f,
        errors,
        dbservers: dbserver_names(&state.home).await,
        templates: template_names(&state.home).await,
        scripts,
        ops: OPS.to_vec(),
        preview,
        left_out,
    });
    *r.status_mut() = status;
    r
}

async fn form(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(mut f): Query<FleetForm>,
) -> Response {
    if f.op.is_empty() {
        f.op = "cron".into();
    }
    render(&state, &p, f, FieldErrors::default(), None).await
}

async fn post(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Form(f): Form<FleetForm>,
) -> Response {
    let mut errors = FieldErrors::default();
    let params = f.params(&mut errors);
    let Some(params) = params else {
        return render(&state, &p, f, errors, None).await;
    };
    if f.action == "preview" {
        let home = match state.fresh().await {
            Ok(h) => h,
            Err(e) => {
                errors.insert("top".into(), format!("{e:#}"));
                return render(&state, &p, f, errors, None).await;
            }
        };
        return match params.selection.selection().resolve(&home).await {
            Ok(sel) => {
                let names = sel.instances.into_iter().map(|i| i.shortname).collect();
                render(&state, &p, f, errors, Some((names, sel.disabled_left_out))).await
            }
            Err(e) => {
                errors.insert("selection".into(), format!("{e:#}"));
                render(&state, &p, f, errors, None).await
            }
        };
    }
    match runner::submit(&state, &p.actor(), Op::Fleet(params)).await {
        Ok(id) => Redirect::to(&format!("/jobs/{id}")).into_response(),
        Err(e) => {
            let msg = format!("{e:#}");
            let field = if msg.contains("secret setting") {
                "value"
            } else if msg.contains("admin/cli") || msg.contains("moodle.dir") {
                "script"
            } else if msg.contains("parallel") {
                "parallel"
            } else if msg.contains("time limit") {
                "timeout"
            } else {
                "selection"
            };
            errors.insert(field.into(), msg);
            render(&state, &p, f, errors, None).await
        }
    }
}
