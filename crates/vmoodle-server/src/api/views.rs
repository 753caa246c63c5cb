//! What the API answers: views of the register's rows with their schemas. Secrets (sealed
//! passwords) have no field here at all, so no answer can carry one.

use serde::Serialize;
use utoipa::ToSchema;
use vmoodle_registry::{DbServer, Instance, Template};

/// A long request was accepted: its job, and where to follow it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Accepted {
    pub job: i64,
    /// `/api/v1/jobs/{job}`.
    pub href: String,
}

/// One page of instances.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstancePage {
    /// How many match the filters (before limit/offset).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<InstanceView>,
}

/// One page of jobs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobPage {
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<JobOut>,
}

/// A Moodle instance (or the master). Its database password is never shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceView {
    pub shortname: String,
    pub name: String,
    pub description: String,
    pub host: String,
    pub wwwroot: String,
    pub is_master: bool,
    /// `enabled` or `disabled`.
    pub state: String,
    pub enabled: bool,
    pub dbserver: String,
    pub dbtype: String,
    pub dbname: String,
    pub dbuser: String,
    pub prefix: String,
    pub dbpersist: bool,
    pub dataroot: String,
    /// MNET: -1 none, 0 free, N subnetwork N.
    pub mnet: i64,
    pub template: Option<String>,
    /// Extra `$CFG` values.
    pub config: std::collections::BTreeMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// When its last cron pass started (unix seconds); none before the first.
    pub last_cron_at: Option<i64>,
    /// How its last cron pass ended: `ok`, `failed`, `timeout`, `interrupted`, or `running`.
    pub last_cron_status: Option<String>,
    /// Seconds since its last successful cron pass started; none when none succeeded.
    pub cron_gap_s: Option<i64>,
    /// Its Moodle version (`config.version`) as last read (hourly by the scheduler).
    pub moodle_version: Option<String>,
    /// Its Moodle release (`config.release`) as last read.
    pub moodle_release: Option<String>,
}

impl InstanceView {
    /// The view with what the register knows of its cron and Moodle version.
    pub fn with_facts(i: Instance, facts: &crate::cron::Facts) -> Self {
        let f = facts.of(i.id);
        Self {
            last_cron_at: f.last_cron_at,
            last_cron_status: f.last_cron_status,
            cron_gap_s: f.cron_gap_s,
            moodle_version: f.moodle_version,
            moodle_release: f.moodle_release,
            ..Self::from(i)
        }
    }
}

impl From<Instance> for InstanceView {
    fn from(i: Instance) -> Self {
        Self {
            state: if i.enabled { "enabled" } else { "disabled" }.into(),
            shortname: i.shortname,
            name: i.name,
            description: i.description,
            host: i.host,
            wwwroot: i.wwwroot,
            is_master: i.is_master,
            enabled: i.enabled,
            dbserver: i.dbserver,
            dbtype: i.dbtype,
            dbname: i.dbname,
            dbuser: i.dbuser,
            prefix: i.prefix,
            dbpersist: i.dbpersist,
            dataroot: i.dataroot,
            mnet: i.mnet,
            template: i.template,
            config: i.config,
            created_at: i.created_at,
            updated_at: i.updated_at,
            last_cron_at: None,
            last_cron_status: None,
            cron_gap_s: None,
            moodle_version: None,
            moodle_release: None,
        }
    }
}

/// A database server. Its administrator password is write-only.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DbServerView {
    pub name: String,
    /// `mariadb`, `mysql` or `pgsql`.
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub socket: Option<String>,
    pub admin_user: String,
    pub topology: String,
    /// Where reads go when the server is a cluster (its reader port behind the virtual IP).
    pub reader_host: Option<String>,
    pub reader_port: Option<u16>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<DbServer> for DbServerView {
    fn from(s: DbServer) -> Self {
        Self {
            kind: serde_json::to_value(s.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            name: s.name,
            host: s.host,
            port: s.port,
            socket: s.socket,
            admin_user: s.admin_user,
            topology: s.topology,
            reader_host: s.reader_host,
            reader_port: s.reader_port,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// A template.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateView {
    pub name: String,
    /// The instance it was taken from.
    pub source: String,
    pub path: String,
    pub created_at: i64,
}

impl From<&Template> for TemplateView {
    fn from(t: &Template) -> Self {
        Self {
            name: t.name.clone(),
            source: t.source.clone(),
            path: t.path.clone(),
            created_at: t.created_at,
        }
    }
}

/// A template with its manifest.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TemplateDetail {
    #[serde(flatten)]
    pub template: TemplateView,
    /// The manifest: what the template holds (Moodle version, plugins, files, checksums).
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
}

/// A job: its journal decoded, and what it is doing now when it runs on this daemon.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobOut {
    pub id: i64,
    pub kind: String,
    pub target: String,
    /// queued, running, recovering, done, partial, rolled back, incomplete, failed, cancelled.
    pub state: String,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// The journal's steps.
    #[schema(value_type = Vec<Object>)]
    pub steps: serde_json::Value,
    pub undone: Vec<String>,
    pub error: Option<String>,
    /// Past its point of no return (finished, never undone).
    pub forward: bool,
    /// `cli:USER`, `web:ADMIN`, `api:TOKEN` or `scheduler`.
    pub started_by: String,
    /// The bulk run it belongs to.
    pub parent: Option<i64>,
    pub cancel_requested: bool,
    pub log: Vec<String>,
    pub updated_at: i64,
    /// Live progress (a job of this daemon, running).
    pub live: Option<crate::runner::Live>,
    /// The summary a finished job of this daemon returned.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

impl JobOut {
    pub fn new(j: vmoodle_ops::jobs::JobView, runner: &crate::runner::Runner) -> Self {
        Self {
            live: runner.live(j.id),
            result: runner.result(j.id),
            steps: serde_json::to_value(&j.steps).unwrap_or_default(),
            id: j.id,
            kind: j.kind,
            target: j.target,
            state: j.state,
            owner: j.owner,
            started_at: j.started_at,
            finished_at: j.finished_at,
            undone: j.undone,
            error: j.error,
            forward: j.forward,
            started_by: j.started_by,
            parent: j.parent,
            cancel_requested: j.cancel_requested,
            log: j.log,
            updated_at: j.updated_at,
        }
    }

    /// Whether the job has ended (the SSE stream ends with it).
    pub fn ended(&self) -> bool {
        !matches!(self.state.as_str(), "queued" | "running" | "recovering")
    }
}

/// What a request to change something answered at once (no job).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outcome {
    pub message: String,
}
