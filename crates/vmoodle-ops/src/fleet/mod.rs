//! Operations across the fleet: one piece of work (a Moodle CLI script, a cron pass, an upgrade,
//! a setting) done for each selected instance, a few at a time, each with its own log file under
//! the home's `logs/fleet/`, with a per-instance timeout, a failure budget (`--max-failures`: no
//! new site is started once that many failed), and a report of every site's outcome. The run is a
//! job in the register (its log holds one line per site), visible in `vmoodle jobs` and the web
//! admin like any other.
//!
//! Selection (`Selection::resolve`): names (shortnames or hosts), or the whole register with
//! `--all`, narrowed by `--subnetwork`, `--dbserver`, `--template`, `--match GLOB` and
//! `--exclude`; disabled instances are left out unless `--include-disabled`.

pub mod compare;
pub mod config;
pub mod cron;
pub mod moodle;
pub mod report;
pub mod rollback;
pub mod run;
mod select;
pub mod sitedb;
pub mod sql;
pub mod sql_text;
pub mod upgrade;

pub use select::{Selected, Selection};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmoodle_registry::Instance;

use crate::Home;

/// How a fleet run goes.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Sites worked on at once (at least 1).
    pub parallel: usize,
    /// Per-site time limit.
    pub timeout: Duration,
    /// Stop starting new sites once this many failed.
    pub max_failures: Option<usize>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            parallel: 4,
            timeout: Duration::from_secs(600),
            max_failures: None,
        }
    }
}

/// How one site's part of a fleet run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteStatus {
    Ok,
    Failed,
    /// Killed at the per-site time limit.
    Timeout,
    /// Nothing to do, or the site was busy (another pass holds its lock).
    Skipped,
    /// Never started: the failure budget ran out, or the run was cancelled.
    NotStarted,
}

impl SiteStatus {
    pub fn word(self) -> &'static str {
        match self {
            SiteStatus::Ok => "ok",
            SiteStatus::Failed => "failed",
            SiteStatus::Timeout => "timeout",
            SiteStatus::Skipped => "skipped",
            SiteStatus::NotStarted => "not started",
        }
    }
    /// Counts against the failure budget and the exit code.
    pub fn is_failure(self) -> bool {
        matches!(self, SiteStatus::Failed | SiteStatus::Timeout)
    }
}

/// One site's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SiteOutcome {
    pub instance: String,
    pub host: String,
    pub status: SiteStatus,
    /// The script's exit code, when one ran to its end.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// One line: why it failed or was skipped, or what it did.
    pub message: String,
    /// The site's log file for this run.
    pub log: Option<PathBuf>,
    /// What the operation reports per site (a setting's value, a version...).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl SiteOutcome {
    pub fn new(inst: &Instance, status: SiteStatus, message: impl Into<String>) -> Self {
        Self {
            instance: inst.shortname.clone(),
            host: inst.host.clone(),
            status,
            exit_code: None,
            duration_ms: 0,
            message: message.into(),
            log: None,
            data: serde_json::Value::Null,
        }
    }
}

/// The report of a fleet run.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// `run`, `cron`, `upgrade`, `config-set`...
    pub operation: String,
    /// The job row of this run.
    pub job: Option<i64>,
    /// This run's log directory.
    pub log_dir: PathBuf,
    pub elapsed_ms: u64,
    pub sites: Vec<SiteOutcome>,
    pub disabled_left_out: Vec<String>,
}

impl FleetReport {
    pub fn count(&self, s: SiteStatus) -> usize {
        self.sites.iter().filter(|o| o.status == s).count()
    }
    pub fn failures(&self) -> usize {
        self.sites.iter().filter(|o| o.status.is_failure()).count()
    }
    /// 0 when no site failed or was left unstarted, else 3 (partial).
    pub fn exit_code(&self) -> i32 {
        if self.failures() > 0 || self.count(SiteStatus::NotStarted) > 0 {
            3
        } else {
            0
        }
    }
    /// `12 ok, 1 failed, 2 skipped` (only the non-zero counts).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            SiteStatus::Ok,
            SiteStatus::Failed,
            SiteStatus::Timeout,
            SiteStatus::Skipped,
            SiteStatus::NotStarted,
        ]
        .iter()
        .filter_map(|s| {
            let n = self.count(*s);
            (n > 0).then(|| format!("{n} {}", s.word()))
        })
        .collect();
        if parts.is_empty() {
            "no instances".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Progress of a fleet run, for bars and live pages.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    Started { total: usize },
    SiteStarted { instance: String },
    SiteDone(SiteOutcome),
}

/// Where a fleet run keeps its logs, and its job row.
#[derive(Debug)]
pub struct FleetRun {
    pub operation: String,
    pub job: Option<i64>,
    pub log_dir: PathBuf,
    started: Instant,
    /// Sites whose outcome is in the job's log.
    logged: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl FleetRun {
    /// Makes the run's log directory (`logs/fleet/OPERATION-YYYYMMDD-HHMMSS-JOB/`) and its job
    /// row (kind `fleet-OPERATION`, target the selection).
    pub async fn start(home: &Home, operation: &str, target: &str) -> Result<Self> {
        let ctx = home.job_context();
        let owner = crate::journal::this_owner();
        let kind = format!("fleet-{operation}");
        // The daemon queued the row already (its page exists): take it over.
        let job = match home.take_adopt() {
            Some(id) if home.registry.adopt_job(id, &kind, target, &owner).await? => id,
            Some(id) => bail!("job {id} was cancelled before it started"),
            None => {
                home.registry
                    .start_job_by(&kind, target, &owner, &ctx.actor, ctx.parent)
                    .await?
            }
        };
        let stamp = utc_stamp(vmoodle_core::now_unix());
        let log_dir = home
            .root
            .join("logs/fleet")
            .join(format!("{operation}-{stamp}-{job}"));
        make_private_dir(&log_dir)?;
        Ok(Self {
            operation: operation.into(),
            job: Some(job),
            log_dir,
            started: Instant::now(),
            logged: Default::default(),
        })
    }

    /// A log directory without a job row (the scheduler's cron passes, which record each run in
    /// the register's cron runs instead of flooding the job list).
    pub fn unjournaled(home: &Home, operation: &str) -> Result<Self> {
        let stamp = utc_stamp(vmoodle_core::now_unix());
        let log_dir = home
            .root
            .join("logs/fleet")
            .join(format!("{operation}-{stamp}-{}", std::process::id()));
        make_private_dir(&log_dir)?;
        Ok(Self {
            operation: operation.into(),
            job: None,
            log_dir,
            started: Instant::now(),
            logged: Default::default(),
        })
    }

    /// The log file of one site in this run.
    pub fn log_path(&self, inst: &Instance) -> PathBuf {
        self.log_dir.join(format!("{}.log", inst.shortname))
    }

    /// Runs `work` for every instance, `opts.parallel` at a time, and records the outcome of each
    /// in the job's log. A site is not started once `max_failures` sites failed, or once the run
    /// was cancelled (SIGINT/SIGTERM, or an administrator's cancel of its job).
    pub async fn for_each<'a, F, Fut>(
        &self,
        home: &'a Home,
        instances: &'a [Instance],
        opts: &FleetOptions,
        events: &'a (dyn Fn(&FleetEvent) + Sync),
        work: F,
    ) -> Vec<SiteOutcome>
    where
        F: Fn(&'a Instance) -> Fut,
        Fut: Future<Output = SiteOutcome> + 'a,
    {
        use futures::StreamExt;
        events(&FleetEvent::Started {
            total: instances.len(),
        });
        let failures = AtomicUsize::new(0);
        let failures = &failures;
        let job = self.job;
        let work = &work;
        let max = opts.max_failures;
        let results: Vec<SiteOutcome> = futures::stream::iter(instances.iter())
            .map(|inst| async move {
                let stop = if max.is_some_and(|m| failures.load(Ordering::SeqCst) >= m) {
                    Some(format!(
                        "not started: {} sites failed (--max-failures {})",
                        failures.load(Ordering::SeqCst),
                        max.unwrap_or(0)
                    ))
                } else if let Some(sig) = crate::cancel::requested() {
                    Some(format!("not started: stopped by {sig}"))
                } else if job.is_some_and(crate::cancel::job_requested) {
                    Some("not started: cancelled by an administrator".into())
                } else {
                    None
                };
                let outcome = match stop {
                    Some(why) => SiteOutcome::new(inst, SiteStatus::NotStarted, why),
                    None => {
                        events(&FleetEvent::SiteStarted {
                            instance: inst.shortname.clone(),
                        });
                        let t = Instant::now();
                        let mut o = work(inst).await;
                        if o.duration_ms == 0 {
                            o.duration_ms = t.elapsed().as_millis() as u64;
                        }
                        o
                    }
                };
                if outcome.status.is_failure() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                self.log_outcome(home, &outcome).await;
                events(&FleetEvent::SiteDone(outcome.clone()));
                outcome
            })
            .buffer_unordered(opts.parallel.max(1))
            .collect()
            .await;
        // Report in selection order, whatever order the sites finished in.
        let mut results = results;
        results.sort_by_key(|o| {
            instances
                .iter()
                .position(|i| i.shortname == o.instance)
                .unwrap_or(usize::MAX)
        });
        results
    }

    /// Writes a site's outcome into the job's log, once.
    async fn log_outcome(&self, home: &Home, o: &SiteOutcome) {
        let Some(id) = self.job else { return };
        if !self
            .logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(o.instance.clone())
        {
            return;
        }
        let line = format!(
            "{}: {} ({:.1} s){}",
            o.instance,
            o.status.word(),
            o.duration_ms as f64 / 1000.0,
            if o.message.is_empty() {
                String::new()
            } else {
                format!(": {}", o.message)
            }
        );
        if let Err(e) = home.registry.append_job_log(id, &line).await {
            tracing::warn!("job {id}: cannot write its log: {e:#}");
        }
    }

    /// Ends the run: the job is `done` when every site went well, `partial` when some failed or
    /// were not started, `failed` when none succeeded.
    pub async fn finish(
        self,
        home: &Home,
        sites: Vec<SiteOutcome>,
        disabled_left_out: Vec<String>,
    ) -> Result<FleetReport> {
        // Sites decided without running (up to date, refused early) get their line too.
        for o in &sites {
            self.log_outcome(home, o).await;
        }
        let report = FleetReport {
            operation: self.operation,
            job: self.job,
            log_dir: self.log_dir,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            sites,
            disabled_left_out,
        };
        if let Some(id) = report.job {
            let (state, error) = if report.exit_code() == 0 {
                ("done", None)
            } else if report.count(SiteStatus::Ok) + report.count(SiteStatus::Skipped) == 0 {
                ("failed", Some(report.summary()))
            } else {
                ("partial", Some(report.summary()))
            };
            home.registry
                .set_job_state(id, state, error.as_deref())
                .await
                .context("recording the end of the fleet run")?;
            crate::cancel::forget_job(id);
        }
        Ok(report)
    }
}

/// Renews a site's locks while long work runs (every third of the lease), until dropped: a
/// holder that is alive never loses its site because a step took longer than foreseen.
pub struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn keep_leases(
    reg: &vmoodle_registry::Registry,
    instance_id: i64,
    purposes: &[&'static str],
    owner: &str,
    lease: Duration,
) -> LeaseKeeper {
    let (reg, owner, purposes) = (reg.clone(), owner.to_string(), purposes.to_vec());
    let secs = lease.as_secs().max(30) as i64;
    LeaseKeeper(tokio::spawn(async move {
        let every = Duration::from_secs((secs / 3) as u64);
        loop {
            tokio::time::sleep(every).await;
            let until = vmoodle_core::now_unix() + secs;
            for p in &purposes {
                if let Err(e) = reg.renew_site_lock(instance_id, p, &owner, until).await {
                    tracing::warn!("renewing a site's {p} lock: {e:#}");
                }
            }
        }
    }))
}

/// `20261123-063700` (UTC).
pub fn utc_stamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A directory only root (or vmoodle's user) reads: logs may show site data.
fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_795_416_000), "20261123-064000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
    }

    #[test]
    fn exit_codes() {
        let o = |s| SiteOutcome {
            instance: "a".into(),
            host: "a".into(),
            status: s,
            exit_code: None,
            duration_ms: 0,
            message: String::new(),
            log: None,
            data: serde_json::Value::Null,
        };
        let r = |sites| FleetReport {
            operation: "run".into(),
            job: None,
            log_dir: PathBuf::new(),
            elapsed_ms: 0,
            sites,
            disabled_left_out: vec![],
        };
        assert_eq!(
            r(vec![o(SiteStatus::Ok), o(SiteStatus::Skipped)]).exit_code(),
            0
        );
        assert_eq!(
            r(vec![o(SiteStatus::Ok), o(SiteStatus::Timeout)]).exit_code(),
            3
        );
        assert_eq!(r(vec![o(SiteStatus::NotStarted)]).exit_code(), 3);
        assert_eq!(
            r(vec![o(SiteStatus::Ok), o(SiteStatus::Failed)]).summary(),
            "1 ok, 1 failed"
        );
    }
}
