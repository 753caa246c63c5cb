//! One instance (`/instances/{name}`): its details (never its password), an edit form whose
//! errors show beside the field they name, its actions (posted to the pool's action handler)
//! and the jobs that touched it.

use super::platform::{place, FieldErrors};
use super::pool::mnet_words;
use super::{page, see_other, when, Chrome};
use crate::auth::Principal;
use crate::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::Deserialize;
use vmoodle_core::Secret;
use vmoodle_ops::instances::InstanceEdit;
use vmoodle_registry::{Instance, Job, JobFilter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/instances/{name}", get(show))
        .route("/instances/{name}/edit", post(edit))
}

/// The edit form's fields, as posted (and shown again with the errors).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct EditForm {
    pub shortname: String,
    pub name: String,
    pub description: String,
    pub wwwroot: String,
    pub dbserver: String,
    pub dbname: String,
    pub dbuser: String,
    pub prefix: String,
    pub dataroot: String,
    pub mnet: String,
    /// Write-only: empty keeps the current password. Never shown back.
    pub password: String,
}

impl EditForm {
    fn of(i: &Instance) -> Self {
        Self {
            shortname: i.shortname.clone(),
            name: i.name.clone(),
            description: i.description.clone(),
            wwwroot: i.wwwroot.clone(),
            dbserver: i.dbserver.clone(),
            dbname: i.dbname.clone(),
            dbuser: i.dbuser.clone(),
            prefix: i.prefix.clone(),
            dataroot: i.dataroot.clone(),
            mnet: i.mnet.to_string(),
            password: String::new(),
        }
    }

    /// The changes against the instance as it is (only what differs is sent to `edit`).
    fn edit(&self, old: &Instance) -> Result<InstanceEdit, (String, String)> {
        let changed = |new: &str, old: &str| (new.trim() != old).then(|| new.trim().to_string());
        let mnet = match self.mnet.trim().parse::<i64>() {
            Ok(m) if m != old.mnet => Some(m),
            Ok(_) => None,
            Err(_) => {
                return Err((
                    "mnet".into(),
                    format!(
                        "invalid MNET `{}`: -1 (none), 0 (free) or a subnetwork number",
                        self.mnet
                    ),
                ))
            }
        };
        Ok(InstanceEdit {
            shortname: changed(&self.shortname, &old.shortname),
            name: changed(&self.name, &old.name),
            description: changed(&self.description, &old.description),
            wwwroot: changed(&self.wwwroot, &old.wwwroot),
            dbserver: changed(&self.dbserver, &old.dbserver),
            dbname: changed(&self.dbname, &old.dbname),
            dbuser: changed(&self.dbuser, &old.dbuser),
            prefix: changed(&self.prefix, &old.prefix),
            dataroot: changed(&self.dataroot, &old.dataroot),
            mnet,
            password: Some(self.password.clone())
                .filter(|p| !p.is_empty())
                .map(Secret::new),
            ..Default::default()
        })
    }
}

/// A text field of a form with its error.
pub struct Field {
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
    pub error: Option<String>,
}

impl EditForm {
    fn fields(&self, errors: &FieldErrors) -> Vec<Field> {
        [
            ("shortname", "Short name", &self.shortname),
            ("name", "Full name", &self.name),
            ("description", "Description", &self.description),
            ("wwwroot", "wwwroot", &self.wwwroot),
            ("dbname", "Database name", &self.dbname),
            ("dbuser", "Database user", &self.dbuser),
            ("prefix", "Table prefix", &self.prefix),
            ("dataroot", "Dataroot", &self.dataroot),
            ("mnet", "MNET (-1 none, 0 free, N subnetwork)", &self.mnet),
        ]
        .into_iter()
        .map(|(key, label, value)| Field {
            key,
            label,
            value: value.clone(),
            error: errors.get(key).cloned(),
        })
        .collect()
    }
}

#[derive(Template)]
#[template(path = "instance.html")]
struct InstancePage {
    chrome: Chrome,
    i: Instance,
    mnet: String,
    created: String,
    updated: String,
    form: EditForm,
    fields: Vec<Field>,
    errors: FieldErrors,
    dbservers: Vec<String>,
    jobs: Vec<(Job, String)>,
}

async fn render(
    state: &AppState,
    p: &Principal,
    i: Instance,
    form: EditForm,
    errors: FieldErrors,
    flash: Option<String>,
) -> Response {
    let reg = &state.home.registry;
    let jobs = reg
        .jobs(&JobFilter {
            target: Some(i.shortname.clone()),
            limit: Some(20),
            ..Default::default()
        })
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|j| {
            let t = when(j.started_at);
            (j, t)
        })
        .collect();
    let dbservers = super::dbserver_names(&state.home).await;
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut r = page(InstancePage {
        chrome: Chrome::new(p, "pool").flash(flash),
        mnet: mnet_words(&i.mnet),
        created: when(i.created_at),
        updated: when(i.updated_at),
        i,
        fields: form.fields(&errors),
        form,
        errors,
        dbservers,
        jobs,
    });
    *r.status_mut() = status;
    r
}

async fn show(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    match state.home.registry.find_instance(&name).await {
        Ok(Some(i)) => {
            let form = EditForm::of(&i);
            render(&state, &p, i, form, FieldErrors::default(), None).await
        }
        Ok(None) => super::message(
            &p,
            StatusCode::NOT_FOUND,
            "No such instance",
            &format!("Instance `{name}` is not in the register."),
        ),
        Err(e) => super::message(
            &p,
            StatusCode::SERVICE_UNAVAILABLE,
            "Register unavailable",
            &e.to_string(),
        ),
    }
}

/// Applies the edit under the home's lock (a quick register change plus its host file), so the
/// form can show the error next to the field at once.
async fn edit(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    Form(f): Form<EditForm>,
) -> Response {
    let old = match state.home.registry.find_instance(&name).await {
        Ok(Some(i)) => i,
        _ => {
            return super::message(
                &p,
                StatusCode::NOT_FOUND,
                "No such instance",
                &format!("Instance `{name}` is not in the register."),
            )
        }
    };
    let mut errors = FieldErrors::default();
    let e = match f.edit(&old) {
        Ok(e) => e,
        Err((field, msg)) => {
            errors.insert(field, msg);
            let f = EditForm {
                password: String::new(),
                ..f
            };
            return render(&state, &p, old, f, errors, None).await;
        }
    };
    if e == InstanceEdit::default() {
        return see_other(&format!("/instances/{}", old.shortname), "Nothing changed.");
    }
    let name = old.shortname.clone();
    let r = crate::with_lock(&state, move |home| async move {
        vmoodle_ops::instances::edit(&home, &name, &e).await
    })
    .await;
    match r {
        Ok(new) => see_other(
            &format!("/instances/{}", new.shortname),
            "Saved; its host file was rewritten.",
        ),
        Err(err) => {
            let shown = [
                "shortname",
                "name",
                "description",
                "wwwroot",
                "dbname",
                "dbuser",
                "prefix",
                "dataroot",
                "mnet",
                "dbserver",
                "password",
            ];
            errors.insert(place(&err, &shown), format!("{err:#}"));
            let f = EditForm {
                password: String::new(),
                ..f
            };
            render(&state, &p, old, f, errors, None).await
        }
    }
}
