//! Jobs started from the web admin and the API. A request becomes a job row at once (state
//! `queued`, with who asked and what, never a password), so its page exists before the work
//! starts; a task then takes the home's lock (waiting while the CLI or another job changes the
//! home) and runs the operation of vmoodle-ops, whose journal takes the queued row over. A bulk
//! run is a parent row whose deploys are its children. Cancel works on a queued job (it never
//! starts), on a running one of this or another node (it stops at its next step boundary and is
//! undone), and on a CLI job of this node (SIGTERM to its process, which undoes it).

use crate::AppState;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use utoipa::ToSchema;
use vmoodle_core::Secret;
use vmoodle_ops::deploy::{self, DeployRequest};
use vmoodle_ops::home::JobContext;
use vmoodle_ops::journal::JobEvent;
use vmoodle_ops::mnet::RenewWhat;
use vmoodle_ops::Home;

/// One deploy as the form, a node-list row or the API asks it. Empty strings count as absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeployParams {
    /// The template to deploy from.
    pub template: String,
    /// The instance's token: `[a-z][a-z0-9]{0,19}`; host, database, user and dataroot come from
    /// the naming schema unless given.
    pub token: String,
    pub name: Option<String>,
    pub shortname: Option<String>,
    pub description: Option<String>,
    /// A host name or a full wwwroot.
    pub host: Option<String>,
    pub dbserver: Option<String>,
    pub dbname: Option<String>,
    pub dbuser: Option<String>,
    pub dataroot: Option<String>,
    pub prefix: Option<String>,
    /// MNET: -1 none, 0 free, N subnetwork N.
    pub mnet: Option<i64>,
    pub admin_email: Option<String>,
    /// A new password for the site's admin account (write-only: never stored with the job).
    #[serde(skip_serializing)]
    pub admin_password: Option<String>,
    /// VMoodle node-list `config_NAME` columns.
    pub cfg: Vec<(String, String)>,
    /// VMoodle node-list `plugin|setting` columns.
    pub plugin_config: Vec<(String, String, String)>,
}

fn some(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl DeployParams {
    pub fn request(&self) -> DeployRequest {
        DeployRequest {
            template: self.template.trim().to_string(),
            token: self.token.trim().to_string(),
            name: some(&self.name),
            shortname: some(&self.shortname),
            description: some(&self.description),
            host: some(&self.host),
            dbserver: some(&self.dbserver),
            dataroot: some(&self.dataroot),
            prefix: some(&self.prefix),
            dbname: some(&self.dbname),
            dbuser: some(&self.dbuser),
            mnet: self.mnet,
            admin_password: some(&self.admin_password).map(Secret::new),
            admin_email: some(&self.admin_email),
            cfg: self.cfg.clone(),
            plugin_config: self.plugin_config.clone(),
            ..Default::default()
        }
    }
}

/// An operation the daemon runs as a job.
#[allow(clippy::large_enum_variant)] // built once per request
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Deploy one instance from a template.
    Deploy(DeployParams),
    /// Deploy many: each row is a job of its own, all children of one bulk run.
    BulkDeploy {
        items: Vec<DeployParams>,
        #[serde(default = "default_parallel")]
        parallel: usize,
    },
    /// Snapshot an instance (or the master) as a template.
    Snapshot {
        source: String,
        template: String,
    },
    /// Delete an instance (archived first unless `archive` is false).
    Delete {
        instance: String,
        #[serde(default = "yes")]
        archive: bool,
    },
    Enable {
        instance: String,
    },
    Disable {
        instance: String,
    },
    /// Renew MNET keys: one instance, all, or those due.
    MnetRenew {
        instance: Option<String>,
        all: bool,
    },
    /// Repair MNET peerings.
    MnetRepair,
    /// Fill warm spares of a template on a MariaDB server.
    SparesFill {
        template: String,
        dbserver: String,
        count: usize,
    },
    /// Delete a template.
    TemplateDelete {
        name: String,
    },
    /// A fleet operation (script, cron, upgrade, setting) on a selection of instances.
    Fleet(crate::fleet::FleetParams),
}

fn default_parallel() -> usize {
    2
}
fn yes() -> bool {
    true
}

impl Op {
    /// The job kind, as the CLI's jobs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Deploy(_) => "deploy",
            Op::BulkDeploy { .. } => "bulk deploy",
            Op::Snapshot { .. } => "snapshot",
            Op::Delete { .. } => "delete",
            Op::Enable { .. } => "enable",
            Op::Disable { .. } => "disable",
            Op::MnetRenew { .. } => "mnet renew",
            Op::MnetRepair => "mnet repair",
            Op::SparesFill { .. } => "spares fill",
            Op::TemplateDelete { .. } => "template delete",
            Op::Fleet(f) => match f.operation.name() {
                "run" => "fleet-run",
                "config-set" => "fleet-config-set",
                "config-unset" => "fleet-config-unset",
                "upgrade" => "fleet-upgrade",
                "cron" => "fleet-cron",
                _ => "fleet",
            },
        }
    }

    /// What it acts on.
    pub fn target(&self) -> String {
        match self {
            Op::Deploy(p) => p.token.trim().to_string(),
            Op::BulkDeploy { items, .. } => format!("{} instances", items.len()),
            Op::Snapshot { template, .. } => template.clone(),
            Op::Delete { instance, .. } | Op::Enable { instance } | Op::Disable { instance } => {
                instance.clone()
            }
            Op::MnetRenew { instance, all } => match (instance, all) {
                (Some(i), _) => i.clone(),
                (None, true) => "all".into(),
                (None, false) => "due".into(),
            },
            Op::MnetRepair => "all".into(),
            Op::SparesFill {
                template, dbserver, ..
            } => format!("{template}@{dbserver}"),
            Op::TemplateDelete { name } => name.clone(),
            Op::Fleet(f) => f.target(),
        }
    }

    /// Whether it changes the home and so runs under the home's lock (fleet operations change
    /// sites, each under its own lock in the register).
    fn takes_home_lock(&self) -> bool {
        match self {
            Op::Fleet(f) => f.operation.takes_home_lock(),
            _ => true,
        }
    }

    /// Checks what can be checked without the lock, so a form shows the error at once.
    pub async fn check(&self, home: &Home) -> Result<()> {
        match self {
            Op::Deploy(p) => {
                deploy::plan(home, &p.request()).await?;
            }
            Op::BulkDeploy { items, parallel } => {
                if items.is_empty() {
                    bail!("the node list holds no rows");
                }
                if *parallel == 0 || *parallel > 32 {
                    bail!("parallel must be between 1 and 32, not {parallel}");
                }
            }
            Op::Snapshot { source, template } => {
                vmoodle_ops::templates::check_name(template)?;
                home.registry.instance(source).await?;
                if home.registry.find_template(template).await?.is_some() {
                    bail!("template `{template}` already exists");
                }
            }
            Op::Delete { instance, .. } | Op::Enable { instance } | Op::Disable { instance } => {
                home.registry.instance(instance).await?;
            }
            Op::MnetRenew {
                instance: Some(i), ..
            } => {
                home.registry.instance(i).await?;
            }
            Op::SparesFill {
                template,
                dbserver,
                count,
            } => {
                home.registry.template(template).await?;
                home.registry.dbserver(dbserver).await?;
                if *count == 0 || *count > 100 {
                    bail!("count must be between 1 and 100, not {count}");
                }
            }
            Op::TemplateDelete { name } => {
                home.registry.template(name).await?;
            }
            Op::MnetRenew { .. } | Op::MnetRepair => {}
            Op::Fleet(f) => f.check(home).await?,
        }
        Ok(())
    }

    /// Runs it on a locked home. Returns the job's final state when the operation has no
    /// journal of its own (`done`, or `partial` for a bulk run with failures) and a summary.
    async fn run(
        &self,
        home: &Home,
        job: i64,
        events: vmoodle_ops::journal::Events<'_>,
    ) -> Result<(&'static str, serde_json::Value)> {
        let v = match self {
            Op::Deploy(p) => {
                let plan = deploy::plan(home, &p.request()).await?;
                serde_json::to_value(deploy::execute(home, plan, events).await?)?
            }
            Op::BulkDeploy { items, parallel } => {
                let reqs = items.iter().map(DeployParams::request).collect();
                let done = deploy::deploy_many(home, reqs, *parallel, events).await;
                for item in done.iter().filter(|i| !i.ok) {
                    let _ = home
                        .registry
                        .append_job_log(
                            job,
                            &format!(
                                "{}: refused: {}",
                                item.token,
                                item.error.as_deref().unwrap_or("failed")
                            ),
                        )
                        .await;
                }
                let failed = done.iter().filter(|i| !i.ok).count();
                let state = if failed == 0 {
                    "done"
                } else if failed == done.len() {
                    "failed"
                } else {
                    "partial"
                };
                return Ok((state, serde_json::to_value(&done)?));
            }
            Op::Snapshot { source, template } => serde_json::to_value(
                vmoodle_ops::templates::snapshot(home, source, template, events).await?,
            )?,
            Op::Delete { instance, archive } => serde_json::to_value(
                vmoodle_ops::archive::delete(home, instance, *archive, events).await?,
            )?,
            Op::Enable { instance } => serde_json::to_value(
                vmoodle_ops::instances::set_enabled(home, instance, true).await?,
            )?,
            Op::Disable { instance } => serde_json::to_value(
                vmoodle_ops::instances::set_enabled(home, instance, false).await?,
            )?,
            Op::MnetRenew { instance, all } => {
                let what = match (instance, all) {
                    (Some(i), _) => RenewWhat::One(i.clone()),
                    (None, true) => RenewWhat::All,
                    (None, false) => RenewWhat::Due,
                };
                let r = vmoodle_ops::mnet::renew(home, what).await?;
                let ok = r.ok();
                let v = serde_json::to_value(&r)?;
                if !ok {
                    return Ok(("partial", v));
                }
                v
            }
            Op::MnetRepair => serde_json::to_value(vmoodle_ops::mnet::repair(home).await?)?,
            Op::SparesFill {
                template,
                dbserver,
                count,
            } => serde_json::to_value(
                vmoodle_ops::spares::fill_spares(home, template, dbserver, *count).await?,
            )?,
            Op::TemplateDelete { name } => {
                vmoodle_ops::templates::delete(home, name).await?;
                serde_json::json!({ "deleted": name })
            }
            Op::Fleet(f) => {
                // The fleet run ends its job row itself (done, partial or failed).
                let r = f.run(home, &|_| {}).await?;
                let state = match r.exit_code() {
                    0 => "done",
                    _ => "partial",
                };
                return Ok((state, serde_json::to_value(&r)?));
            }
        };
        Ok(("done", v))
    }
}

/// Results of finished jobs kept in memory.
const MAX_RESULTS: usize = 500;

/// What a running job of this daemon is doing now (for live pages), beyond what its journal
/// records at each step.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Live {
    pub step: Option<String>,
    pub n: usize,
    pub total: usize,
    /// Items done of a total inside the current step.
    pub done: u64,
    pub of: u64,
    pub what: String,
}

/// The jobs this daemon runs.
#[derive(Debug, Default)]
pub struct Runner {
    live: Mutex<HashMap<i64, Live>>,
    /// The summary of each finished job of this daemon (its result value).
    results: Mutex<HashMap<i64, serde_json::Value>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Runner {
    pub fn live(&self, id: i64) -> Option<Live> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn result(&self, id: i64) -> Option<serde_json::Value> {
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn on_event(&self, e: &JobEvent) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            JobEvent::Step {
                job,
                n,
                total,
                name,
                ..
            } => {
                let l = live.entry(*job).or_default();
                l.step = Some(name.clone());
                l.n = *n;
                l.total = *total;
                l.done = 0;
                l.of = 0;
            }
            JobEvent::Count {
                job,
                done,
                total,
                what,
                ..
            } => {
                let l = live.entry(*job).or_default();
                l.done = *done;
                l.of = *total;
                l.what = what.clone();
            }
            JobEvent::Finished { job, .. } => {
                live.remove(job);
            }
            _ => {}
        }
    }

    /// Waits until every job of this daemon has ended (at shutdown, after asking them to stop).
    pub async fn wait_idle(&self) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Starts `op` for `actor` (`web:NAME`, `api:TOKEN`, `scheduler`): checks it, records the
/// queued job, and runs it in the background. Returns the job id.
pub async fn submit(state: &AppState, actor: &str, op: Op) -> Result<i64> {
    op.check(&*state.fresh().await?).await?;
    // What the job records of the request: never a secret.
    let params = match &op {
        Op::Fleet(f) => serde_json::to_string(&Op::Fleet(f.for_record()))?,
        op => serde_json::to_string(op)?,
    };
    let id = state
        .home
        .registry
        .queue_job(
            op.kind(),
            &op.target(),
            &state.owner,
            actor,
            None,
            Some(&params),
        )
        .await?;
    let st = state.clone();
    let actor = actor.to_string();
    // A job runs on a thread of its own (driven by the runtime's handle): long operations do
    // not hold the server's workers, and their futures need not be Send.
    let rt = tokio::runtime::Handle::current();
    let handle = tokio::task::spawn_blocking(move || {
        rt.block_on(run_job(&st, id, &actor, op));
    });
    let mut tasks = state.runner.tasks.lock().unwrap_or_else(|p| p.into_inner());
    tasks.retain(|t| !t.is_finished());
    tasks.push(handle);
    Ok(id)
}

async fn run_job(state: &AppState, id: i64, actor: &str, op: Op) {
    let reg = &state.home.registry;
    let opened = if op.takes_home_lock() {
        Home::open_locked(&state.cfg.root).await
    } else {
        Home::open(&state.cfg.root).await
    };
    let home = match opened {
        Ok(h) => h,
        Err(e) => {
            let _ = reg
                .set_job_state(id, "failed", Some(&format!("{e:#}")))
                .await;
            return;
        }
    };
    // Cancelled while it waited for the lock? Otherwise it runs from now on (a cancel then asks
    // it to stop at its next step).
    match reg.start_queued_job(id, &state.owner).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!("job {id}: {e}");
            return;
        }
    }
    let parent = matches!(op, Op::BulkDeploy { .. }).then_some(id);
    home.set_job_context(JobContext {
        actor: actor.to_string(),
        parent,
        adopt: parent.is_none().then_some(id),
    });
    let runner = &state.runner;
    let events = |e: &JobEvent| runner.on_event(e);
    // A panic in an operation fails its job instead of leaving it running for ever.
    let r = match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(op.run(
        &home, id, &events,
    )))
    .await
    {
        Ok(r) => r,
        Err(_) => Err(anyhow!(
            "the operation stopped on an internal error (a bug: please report it with the daemon's log)"
        )),
    };
    // The operation's journal took the queued row over, or it had none (enable, a bulk run,
    // a failure before its journal started): then the row's state is set here.
    let own_row = parent.is_some() || home.take_adopt().is_some();
    match r {
        Ok((state_hint, v)) => {
            if own_row {
                let _ = reg.set_job_state(id, state_hint, None).await;
            }
            let mut results = runner.results.lock().unwrap_or_else(|p| p.into_inner());
            results.insert(id, v);
            // The newest results are kept for the API's job answers; older ones are dropped.
            while results.len() > MAX_RESULTS {
                let oldest = *results.keys().min().unwrap_or(&id);
                results.remove(&oldest);
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            if own_row {
                let _ = reg.set_job_state(id, "failed", Some(&msg)).await;
            }
            let _ = reg.append_job_log(id, &format!("error: {msg}")).await;
        }
    }
    runner
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    vmoodle_ops::cancel::forget_job(id);
}

/// Asks job `id` to stop: a queued job never starts; a running one stops at its next step
/// boundary and is undone (this node's jobs at once, other nodes' through the register); a
/// CLI job of this node gets SIGTERM, which its process turns into the same.
pub async fn cancel(state: &AppState, id: i64, by: &str) -> Result<String> {
    let reg = &state.home.registry;
    let job = reg.job(id).await?;
    match job.state.as_str() {
        "queued" => {
            if reg
                .cancel_queued_job(id, &format!("cancelled by {by} before it started"))
                .await?
            {
                return Ok("cancelled before it started".into());
            }
            // It started meanwhile: fall through to a running job's cancel.
        }
        "running" => {}
        s => bail!("job {id} is {s}; only a queued or running job can be cancelled"),
    }
    reg.request_cancel(id).await?;
    let _ = reg
        .append_job_log(id, &format!("cancel requested by {by}"))
        .await;
    if job.owner == state.owner {
        vmoodle_ops::cancel::request_job(id);
        return Ok("stopping at its next step; what it did is undone".into());
    }
    // Another daemon (of this node or another) reads the request from the register; it is never
    // signalled, as that would stop all of its jobs.
    if reg.nodes().await?.iter().any(|n| n.owner == job.owner) {
        return Ok("asked its daemon to stop it at its next step; what it did is undone".into());
    }
    if let Some(pid) = local_cli_pid(&job.owner) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| anyhow!("cannot signal process {pid}: {e}"))?;
        return Ok(format!(
            "sent SIGTERM to process {pid}; it stops at its next step and undoes what it did"
        ));
    }
    Ok("asked its node to stop it at its next step".into())
}

/// The pid of a live process of this node that owns a job (checked against its start time, so
/// a reused pid is never signalled).
fn local_cli_pid(owner: &str) -> Option<i32> {
    let mut parts = owner.rsplitn(3, '/');
    let (_, pid, node) = (parts.next()?, parts.next()?, parts.next()?);
    if node != vmoodle_ops::journal::node_name() || !vmoodle_ops::journal::owner_alive(owner) {
        return None;
    }
    pid.parse().ok()
}

/// Runs a failed, rolled back or cancelled job's request again as a new job.
pub async fn retry(state: &AppState, id: i64, actor: &str) -> Result<i64> {
    let job = state.home.registry.job(id).await?;
    if !matches!(
        job.state.as_str(),
        "failed" | "rolled back" | "cancelled" | "partial"
    ) {
        bail!(
            "job {id} is {}; only a failed, rolled back, partial or cancelled job can be retried",
            job.state
        );
    }
    let Some(params) = job.params else {
        bail!("job {id} was started from the command line; run the command again (its journal shows what it was: `vmoodle jobs show {id}`)");
    };
    let op: Op = serde_json::from_str(&params)
        .map_err(|e| anyhow!("job {id} holds a request this version cannot read: {e}"))?;
    submit(state, actor, op).await
}
