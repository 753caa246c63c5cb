//! The journal of a job, the engine every change runs on. A job is a sequence of steps; before
//! a step creates anything, the journal writes to the register what it is about to create and
//! everything needed to remove it (an undo record: server and database, server and user, a path,
//! an instance id, peer rows), and marks the record made once the thing exists. So at any moment
//! the register knows what a job may have left behind:
//! - when a step fails, or a signal stops the job at a step boundary, the records are undone in
//!   reverse order, and the job ends `rolled back` (or `failed`, naming what could not be undone);
//! - when the process dies (kill -9, a reboot), the job stays `running` with an owner that no
//!   longer exists; `jobs::recover` (run by every command that takes the home's lock) claims it
//!   and undoes it the same way;
//! - a job that has passed its point of no return (a delete that dropped a database) records a
//!   forward plan instead, and is finished, not undone.
//!
//! Undo is idempotent (drop if exists, remove if present), so undoing a record whose action never
//! ran, or running recovery twice, is harmless. A record is cancelled, never undone, when its
//! action failed because the thing already existed: it belongs to someone else.
//!
//! Progress goes out as `JobEvent`s, which the CLI draws as bars and the daemon will stream.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vmoodle_registry::{Job, JobUpdate};

use crate::Home;

/// How to take back one change; everything needed is in the record itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Undo {
    /// Drop a database that the job created.
    DropDatabase { server_id: i64, database: String },
    /// Drop a database user (role) that the job created.
    DropUser { server_id: i64, user: String },
    /// Remove a directory the job created; only ever inside the dataroot base or the home.
    RemoveDir { path: PathBuf },
    /// Remove a register entry the job added (found by its shortname, which the job checked
    /// was free), and its host file.
    Unregister { shortname: String, host: String },
    /// Remove the MNET peerings vmoodle made for an instance (rows in its peers' databases).
    RemovePeerings { instance_id: i64 },
    /// Put an instance's enabled flag back (and republish its host file).
    SetEnabled { instance_id: i64, enabled: bool },
    /// Remove a template's register entry (its files are a separate RemoveDir).
    RemoveTemplate { name: String },
    /// Remove a cluster's register entry (and its members).
    RemoveCluster { name: String },
    /// Ask a node's agent to undo its replica seed (its previous data directory back).
    UndoReplica { node: String },
    /// Drop a PostgreSQL replication slot on a server.
    DropSlot { server_id: i64, slot: String },
    /// Ask a proxy node's agent to stop HAProxy and keepalived and put their files back.
    RemoveProxy { node: String },
    /// Give a running proxy node the configuration it served before (HAProxy reloaded with
    /// its listeners kept).
    ApplyProxy {
        node: String,
        spec: Box<vmoodle_agent::ProxySpec>,
    },
    /// Let a fenced old primary take writes again (a switchover that did not happen).
    Unfence { node: String },
    /// Remove a node from a cluster's members in the register.
    RemoveClusterMember {
        cluster: String,
        node: String,
        role: String,
    },
    /// Point a database server back at its own address and republish its instances' host files.
    RestoreEndpoint {
        server_id: i64,
        host: String,
        port: u16,
        socket: Option<String>,
    },
}

impl std::fmt::Display for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undo::DropDatabase {
                server_id,
                database,
            } => write!(f, "drop database `{database}` (server #{server_id})"),
            Undo::DropUser { server_id, user } => {
                write!(f, "drop database user `{user}` (server #{server_id})")
            }
            Undo::RemoveDir { path } => write!(f, "remove {}", path.display()),
            Undo::Unregister { host, .. } => write!(f, "unregister {host}"),
            Undo::RemovePeerings { instance_id } => {
                write!(f, "remove the MNET peerings of instance #{instance_id}")
            }
            Undo::SetEnabled {
                instance_id,
                enabled,
            } => write!(
                f,
                "{} instance #{instance_id} again",
                if *enabled { "enable" } else { "disable" }
            ),
            Undo::RemoveTemplate { name } => write!(f, "unregister template `{name}`"),
            Undo::RemoveCluster { name } => write!(f, "unregister cluster `{name}`"),
            Undo::UndoReplica { node } => write!(f, "undo the replica seed of node `{node}`"),
            Undo::DropSlot { server_id, slot } => {
                write!(f, "drop replication slot `{slot}` (server #{server_id})")
            }
            Undo::RemoveProxy { node } => write!(f, "stop the proxies of node `{node}`"),
            Undo::ApplyProxy { node, .. } => {
                write!(f, "give proxy node `{node}` its previous configuration")
            }
            Undo::RemoveClusterMember {
                cluster,
                node,
                role,
            } => write!(f, "remove {role} `{node}` from cluster `{cluster}`"),
            Undo::Unfence { node } => write!(f, "let `{node}` take writes again"),
            Undo::RestoreEndpoint {
                server_id,
                host,
                port,
                ..
            } => write!(f, "point server #{server_id} back at {host}:{port}"),
        }
    }
}

/// Where an undo record stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Written before the action: the thing may or may not exist.
    Intended,
    /// The action succeeded: the thing exists.
    Made,
    /// The action failed because the thing already existed: not ours, never undone.
    Cancelled,
    /// Taken back.
    Undone,
    /// Part of a job that is complete by itself (one warm spare of several): kept even if a
    /// later part fails.
    Kept,
    /// Taking it back failed (see the job's `undone` list).
    UndoFailed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UndoEntry {
    pub step: String,
    pub state: EntryState,
    #[serde(flatten)]
    pub undo: Undo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub ms: u128,
}

/// A job's progress, as the CLI's bars and the daemon's live pages consume it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    Started {
        job: i64,
        kind: String,
        target: String,
    },
    /// Step `n` of `total` began.
    Step {
        job: i64,
        target: String,
        n: usize,
        total: usize,
        name: String,
    },
    StepDone {
        job: i64,
        target: String,
        name: String,
        ms: u128,
    },
    /// Progress inside a step (items done of a total).
    Count {
        job: i64,
        target: String,
        done: u64,
        total: u64,
        what: String,
    },
    Undoing {
        job: i64,
        target: String,
        what: String,
    },
    Finished {
        job: i64,
        target: String,
        state: String,
    },
}

/// Where job events go.
pub type Events<'a> = &'a (dyn Fn(&JobEvent) + Sync);

/// Drops events (for callers that do not show progress).
pub fn no_events(_: &JobEvent) {}

/// A running job.
pub struct Journal<'h> {
    home: &'h Home,
    pub id: i64,
    kind: String,
    target: String,
    pub steps: Vec<StepRecord>,
    undo: Vec<UndoEntry>,
    forward: Option<String>,
    undone: Vec<String>,
    current: Option<(String, Instant)>,
    n: usize,
    total: usize,
    started: Instant,
    events: Events<'h>,
    parent: Option<i64>,
}

/// The identity of this process as a job owner: node, pid and the process's start time (so a
/// reused pid is not taken for the owner).
pub fn this_owner() -> String {
    let pid = std::process::id();
    format!("{}/{pid}/{}", node_name(), start_time(pid).unwrap_or(0))
}

/// A holder of a site lock: this process and a random token, so two pieces of work of one
/// process (the daemon's scheduler and a web job, two web jobs) are different holders and never
/// both get a site; `owner_alive` still tells when the process is gone.
pub fn lock_owner() -> String {
    let mut r = [0u8; 6];
    let _ = openssl::rand::rand_bytes(&mut r);
    let token: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}#{token}", this_owner())
}

pub fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The start time of a process (field 22 of /proc/PID/stat, in clock ticks since boot).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether an owner string names a process that is still running on this node. Owners on other
/// nodes count as alive: only their own node can tell.
pub fn owner_alive(owner: &str) -> bool {
    // A lock holder is its process plus a token of its own (`node/pid/start#token`).
    let owner = owner.split('#').next().unwrap_or(owner);
    let mut parts = owner.rsplitn(3, '/');
    let (Some(start), Some(pid), Some(node)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if node != node_name() {
        return true;
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid).is_some_and(|s| s == start)
}

impl<'h> Journal<'h> {
    /// Starts a job of `total` steps and records it in the register.
    pub async fn start(
        home: &'h Home,
        kind: &str,
        target: &str,
        total: usize,
        events: Events<'h>,
    ) -> Result<Journal<'h>> {
        let ctx = home.job_context();
        let owner = this_owner();
        let id = match home.take_adopt() {
            Some(id) if home.registry.adopt_job(id, kind, target, &owner).await? => id,
            Some(id) => bail!("job {id} was cancelled before it started"),
            None => {
                home.registry
                    .start_job_by(kind, target, &owner, &ctx.actor, ctx.parent)
                    .await?
            }
        };
        events(&JobEvent::Started {
            job: id,
            kind: kind.into(),
            target: target.into(),
        });
        Ok(Self {
            home,
            id,
            kind: kind.into(),
            target: target.into(),
            steps: Vec::new(),
            undo: Vec::new(),
            forward: None,
            undone: Vec::new(),
            current: None,
            n: 0,
            total,
            started: Instant::now(),
            events,
            parent: ctx.parent,
        })
    }

    /// Takes over a job found in the register (already claimed by this process).
    pub fn resume(home: &'h Home, job: &Job, events: Events<'h>) -> Result<Journal<'h>> {
        let steps: Vec<StepRecord> = serde_json::from_str(&job.steps).unwrap_or_default();
        let undo: Vec<UndoEntry> = serde_json::from_str(&job.undo)
            .map_err(|e| anyhow!("job {} has an unreadable undo journal: {e}", job.id))?;
        Ok(Self {
            home,
            id: job.id,
            kind: job.kind.clone(),
            target: job.target.clone(),
            n: steps.len(),
            total: steps.len(),
            steps,
            undo,
            forward: job.forward.clone(),
            undone: serde_json::from_str(&job.undone).unwrap_or_default(),
            current: None,
            started: Instant::now(),
            events,
            parent: job.parent,
        })
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Begins the next step. This is the job's step boundary: a SIGINT/SIGTERM received since
    /// the last one stops the job here (the caller's error path undoes it).
    pub async fn step(&mut self, name: &str) -> Result<()> {
        self.close_step();
        if let Some(sig) = crate::cancel::requested() {
            bail!("stopped by {sig} before step \"{name}\"");
        }
        #[cfg(debug_assertions)]
        if std::env::var(vmoodle_core::env::VMOODLE_TEST_FAIL_STEP)
            .is_ok_and(|v| v == format!("{}:{name}", self.kind))
        {
            bail!("failure injected before step \"{name}\" (tests only)");
        }
        if crate::cancel::job_requested(self.id)
            || self.parent.is_some_and(crate::cancel::job_requested)
        {
            bail!("cancelled by an administrator before step \"{name}\"");
        }
        self.n += 1;
        self.total = self.total.max(self.n);
        self.current = Some((name.to_string(), Instant::now()));
        (self.events)(&JobEvent::Step {
            job: self.id,
            target: self.target.clone(),
            n: self.n,
            total: self.total,
            name: name.into(),
        });
        self.save("running", None).await?;
        pause_point(&format!("{}:{name}:start", self.kind)).await;
        Ok(())
    }

    /// Reports progress inside the current step.
    pub fn count(&self, done: u64, total: u64, what: &str) {
        (self.events)(&JobEvent::Count {
            job: self.id,
            target: self.target.clone(),
            done,
            total,
            what: what.into(),
        });
    }

    fn step_name(&self) -> String {
        self.current
            .as_ref()
            .map(|c| c.0.clone())
            .unwrap_or_default()
    }

    fn close_step(&mut self) {
        if let Some((name, t)) = self.current.take() {
            let ms = t.elapsed().as_millis();
            (self.events)(&JobEvent::StepDone {
                job: self.id,
                target: self.target.clone(),
                name: name.clone(),
                ms,
            });
            self.steps.push(StepRecord { step: name, ms });
        }
    }

    /// Records, durably, what the next action will create and how to remove it. Call it
    /// before acting; if it fails, do not act.
    pub async fn intend(&mut self, undo: Undo) -> Result<()> {
        self.undo.push(UndoEntry {
            step: self.step_name(),
            state: EntryState::Intended,
            undo,
        });
        if let Err(e) = self.save("running", None).await {
            // Not recorded, so not acted on: nothing to undo either.
            self.undo.pop();
            return Err(e);
        }
        pause_point(&format!("{}:{}:intended", self.kind, self.step_name())).await;
        Ok(())
    }

    /// The newest intended action succeeded: the thing exists.
    pub async fn made(&mut self) -> Result<()> {
        self.mark_newest(EntryState::Made);
        self.save("running", None).await?;
        pause_point(&format!("{}:{}:made", self.kind, self.step_name())).await;
        Ok(())
    }

    /// The newest intended action failed because its thing already existed (someone else's):
    /// it must never be undone.
    pub async fn cancel_intent(&mut self) -> Result<()> {
        self.mark_newest(EntryState::Cancelled);
        self.save("running", None).await
    }

    fn mark_newest(&mut self, state: EntryState) {
        if let Some(e) = self
            .undo
            .iter_mut()
            .rev()
            .find(|e| e.state == EntryState::Intended)
        {
            e.state = state;
        }
    }

    /// Everything made so far is complete by itself and is kept whatever happens next.
    pub async fn keep_made(&mut self) -> Result<()> {
        for e in self.undo.iter_mut().filter(|e| e.state == EntryState::Made) {
            e.state = EntryState::Kept;
        }
        self.save("running", None).await
    }

    /// From here on the job cannot be undone: `plan` (JSON) is what finishing it needs.
    pub async fn go_forward(&mut self, plan: &impl Serialize) -> Result<()> {
        self.forward = Some(serde_json::to_string(plan)?);
        self.save("running", None).await
    }

    pub fn forward_plan<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.forward
            .as_deref()
            .and_then(|f| serde_json::from_str(f).ok())
    }

    /// Steps already done (by name), for a job being finished forward.
    pub fn did_step(&self, name: &str) -> bool {
        self.steps.iter().any(|s| s.step == name)
    }

    pub fn elapsed_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    async fn save(&self, state: &str, error: Option<&str>) -> Result<()> {
        let steps = serde_json::to_string(&self.steps)?;
        let undo = serde_json::to_string(&self.undo)?;
        let undone = serde_json::to_string(&self.undone)?;
        self.home
            .registry
            .save_job(
                self.id,
                &JobUpdate {
                    state,
                    steps: &steps,
                    undo: &undo,
                    forward: self.forward.as_deref(),
                    error,
                    undone: &undone,
                },
            )
            .await?;
        Ok(())
    }

    /// The job succeeded: records it done. A job the register cannot mark done would be taken
    /// for an interrupted one and undone later, after the command said it worked; so the
    /// write is retried, and if the register stays unwritable the job is undone now and the
    /// error says so.
    pub async fn finish(mut self) -> Result<Vec<StepRecord>> {
        self.close_step();
        let mut last = None;
        for attempt in 0..10 {
            match self.save("done", None).await {
                Ok(()) => {
                    (self.events)(&JobEvent::Finished {
                        job: self.id,
                        target: self.target.clone(),
                        state: "done".into(),
                    });
                    return Ok(self.steps);
                }
                Err(e) => {
                    tracing::warn!(
                        "job {}: cannot record its end (try {}): {e:#}",
                        self.id,
                        attempt + 1
                    );
                    last = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        let e = last.unwrap_or_else(|| anyhow!("the register did not answer"));
        let msg = format!("the register could not record the job as done: {e:#}");
        let left = self.fail(&msg).await;
        let mut err = e.context(format!(
            "the job could not be recorded as done in the register, so it was undone{}",
            if left.is_empty() {
                String::new()
            } else {
                format!(" except: {}", left.join("; "))
            }
        ));
        err = err.context("the register is not writable");
        Err(err)
    }

    /// Ends the job with the outcome of its work: done; or failed, its records undone (a job
    /// past its point of no return is left for `jobs recover` instead). `explain(forward)` says
    /// what the failure leaves for the user; what could not be undone is added to the error.
    pub async fn conclude<T>(
        self,
        r: Result<T>,
        explain: impl FnOnce(bool) -> String,
    ) -> Result<T> {
        match r {
            Ok(v) => {
                self.finish().await?;
                Ok(v)
            }
            Err(e) => {
                let forward = self.forward.is_some();
                let left = self.fail(&format!("{e:#}")).await;
                let mut err = e.context(explain(forward));
                if !left.is_empty() {
                    err = err.context(left.join("; "));
                }
                Err(err)
            }
        }
    }

    /// The job failed: undoes every record newest first (a job past its point of no return is
    /// left `incomplete` for `jobs recover` to finish instead). Returns what could not be undone.
    pub async fn fail(mut self, error: &str) -> Vec<String> {
        // The step that failed is not done: a job finished forward runs it again.
        self.current = None;
        if self.forward.is_some() {
            let _ = self.save("incomplete", Some(error)).await;
            (self.events)(&JobEvent::Finished {
                job: self.id,
                target: self.target.clone(),
                state: "incomplete".into(),
            });
            return vec![format!(
                "job {} stopped past its point of no return; `vmoodle jobs recover` finishes it",
                self.id
            )];
        }
        let left = self.undo_all().await;
        let state = if left.is_empty() {
            "rolled back"
        } else {
            "failed"
        };
        if let Err(e) = self.save(state, Some(error)).await {
            tracing::warn!("job {}: cannot record its end: {e:#}", self.id);
        }
        (self.events)(&JobEvent::Finished {
            job: self.id,
            target: self.target.clone(),
            state: state.into(),
        });
        left
    }

    /// Undoes every record that is not cancelled or undone (a failed undo is tried again),
    /// newest first; saves after each.
    async fn undo_all(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        let mut peerings_kept = false;
        for i in (0..self.undo.len()).rev() {
            let e = &self.undo[i];
            if !matches!(
                e.state,
                EntryState::Intended | EntryState::Made | EntryState::UndoFailed
            ) {
                continue;
            }
            if peerings_kept && matches!(e.undo, Undo::Unregister { .. }) {
                // Unregistering would drop the register's record of the peer rows still to
                // remove (mnet_links go with the instance): keep it for the next try.
                let msg = format!(
                    "{}: kept, so that its MNET peerings can still be removed (`vmoodle jobs recover` tries again)",
                    e.undo
                );
                self.undo[i].state = EntryState::UndoFailed;
                self.undone.push(format!("NOT DONE: {msg}"));
                left.push(msg);
                continue;
            }
            let what = e.undo.to_string();
            (self.events)(&JobEvent::Undoing {
                job: self.id,
                target: self.target.clone(),
                what: what.clone(),
            });
            match undo_one(self.home, &e.undo).await {
                Ok(()) => {
                    self.undo[i].state = EntryState::Undone;
                    self.undone.push(what);
                }
                Err(err) => {
                    if matches!(self.undo[i].undo, Undo::RemovePeerings { .. }) {
                        peerings_kept = true;
                    }
                    self.undo[i].state = EntryState::UndoFailed;
                    let msg = format!("{what}: {err:#}").replace('\n', " ");
                    self.undone.push(format!("NOT DONE: {msg}"));
                    left.push(msg);
                }
            }
            let _ = self.save("running", None).await;
        }
        left
    }

    /// Recovery of a job whose process died: undoes every record; returns the end state and
    /// what could not be undone.
    pub async fn roll_back_interrupted(mut self, why: &str) -> (String, Vec<String>) {
        let left = self.undo_all().await;
        let state = if left.is_empty() {
            "rolled back"
        } else {
            "failed"
        };
        let _ = self.save(state, Some(why)).await;
        (state.to_string(), left)
    }
}

/// Takes back one change. Idempotent: what is already gone is fine.
pub async fn undo_one(home: &Home, u: &Undo) -> Result<()> {
    match u {
        Undo::DropDatabase {
            server_id,
            database,
        } => {
            let s = home.registry.dbserver_by_id(*server_id).await?;
            let spec = crate::dbservers::admin_spec(home, &s)?;
            vmoodle_dbserver::admin::drop_database(&spec, database).await?;
        }
        Undo::DropUser { server_id, user } => {
            let s = home.registry.dbserver_by_id(*server_id).await?;
            if *user == s.admin_user {
                bail!("refusing to drop `{user}`: it is the server's administrator account");
            }
            let spec = crate::dbservers::admin_spec(home, &s)?;
            vmoodle_dbserver::admin::drop_user(&spec, user).await?;
        }
        Undo::RemoveDir { path } => remove_managed_dir(home, path)?,
        Undo::Unregister { shortname, host } => {
            let all = home.registry.instances().await?;
            if let Some(i) = all.iter().find(|i| i.shortname == *shortname) {
                if i.host != *host || i.is_master {
                    bail!("refusing to unregister `{shortname}`: it is not the entry this job made (host {})", i.host);
                }
                home.registry.remove_instance(i.id).await?;
            }
            crate::publish::remove_host_file(home, host)?;
        }
        Undo::RemovePeerings { instance_id } => {
            crate::mnet::remove_peerings_of(home, *instance_id).await?;
        }
        Undo::SetEnabled {
            instance_id,
            enabled,
        } => {
            let all = home.registry.instances().await?;
            if let Some(i) = all.iter().find(|i| i.id == *instance_id) {
                crate::instances::set_enabled(home, &i.shortname, *enabled).await?;
            }
        }
        Undo::RemoveTemplate { name } => {
            if home.registry.find_template(name).await?.is_some() {
                home.registry.remove_template(name).await?;
            }
        }
        Undo::RemoveCluster { name } => {
            if let Some(c) = home.registry.find_cluster(name).await? {
                home.registry.remove_cluster(c.id).await?;
            }
        }
        Undo::UndoReplica { node } => {
            crate::cluster::node_client(home, node)
                .await?
                .undo_replica()
                .await?;
        }
        Undo::DropSlot { server_id, slot } => {
            let s = home.registry.dbserver_by_id(*server_id).await?;
            crate::cluster::drop_slot(home, &s, slot).await?;
        }
        Undo::RemoveProxy { node } => {
            crate::cluster::node_client(home, node)
                .await?
                .remove_proxy()
                .await?;
        }
        Undo::ApplyProxy { node, spec } => {
            crate::cluster::node_client(home, node)
                .await?
                .apply_proxy(spec)
                .await?;
        }
        Undo::Unfence { node } => {
            crate::cluster::node_client(home, node)
                .await?
                .unfence()
                .await?;
        }
        Undo::RemoveClusterMember {
            cluster,
            node,
            role,
        } => {
            if let (Some(c), Some(n)) = (
                home.registry.find_cluster(cluster).await?,
                home.registry.find_cluster_node(node).await?,
            ) {
                home.registry
                    .remove_cluster_member(c.id, n.id, role)
                    .await?;
            }
        }
        Undo::RestoreEndpoint {
            server_id,
            host,
            port,
            socket,
        } => {
            home.registry
                .set_dbserver_endpoint(
                    *server_id,
                    host,
                    *port,
                    socket.as_deref(),
                    None,
                    "standalone",
                )
                .await?;
            let s = home.registry.dbserver_by_id(*server_id).await?;
            crate::cluster::republish(home, &s).await?;
        }
    }
    Ok(())
}

/// Removes a directory vmoodle made, only inside the directories it manages (the dataroot base
/// and the home), never through a symbolic link.
pub fn remove_managed_dir(home: &Home, path: &Path) -> Result<()> {
    let base = crate::deploy::dataroot_base(home);
    let inside = |root: &Path| path.starts_with(root) && path != root;
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        || !(inside(&base) || inside(&home.root))
        || path == home.hosts_dir()
    {
        bail!(
            "refusing to remove {}: it is outside the directories vmoodle manages ({} and {})",
            path.display(),
            base.display(),
            home.root.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("{}: {e}", path.display())),
        Ok(m) if m.file_type().is_symlink() => {
            // A link planted where our directory was: remove the link, never its target.
            std::fs::remove_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))
        }
        Ok(m) if m.is_dir() => {
            // remove_dir_all does not follow symbolic links inside the tree.
            std::fs::remove_dir_all(path).map_err(|e| anyhow!("{}: {e}", path.display()))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| anyhow!("{}: {e}", path.display())),
    }
}

/// Tests only (debug builds): stops the job at a named point (`VMOODLE_TEST_PAUSE`, or
/// `NAME#K` for its K-th occurrence) after writing the pid into `VMOODLE_TEST_PAUSE_FILE`, and
/// waits there until it is killed, the file is removed (it then goes on) or a signal arrives.
pub(crate) async fn pause_point(name: &str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::Mutex;
        use vmoodle_core::env;
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let Ok(want) = std::env::var(env::VMOODLE_TEST_PAUSE) else {
            return;
        };
        let (want_name, nth) = match want.rsplit_once('#') {
            Some((n, k)) => (n.to_string(), k.parse::<usize>().unwrap_or(1)),
            None => (want.clone(), 1),
        };
        if want_name != name {
            return;
        }
        let count = {
            let mut seen = SEEN.lock().expect("pause points");
            seen.push(name.to_string());
            seen.iter().filter(|s| *s == name).count()
        };
        if count != nth {
            return;
        }
        let Ok(file) = std::env::var(env::VMOODLE_TEST_PAUSE_FILE) else {
            return;
        };
        let _ = std::fs::write(&file, std::process::id().to_string());
        while std::path::Path::new(&file).exists() && crate::cancel::requested().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
