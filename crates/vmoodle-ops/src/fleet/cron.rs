//! Moodle's cron for the fleet: one pass of `admin/cli/cron.php --keep-alive=0` per site, never
//! two of one site at once. Each site's pass holds the site's `cron` lock in the register (a
//! lease a bit longer than the time limit, renewed while the pass lasts), so an overlapping pass
//! (another `vmoodle cron`, the daemon, or a daemon on another node sharing a PostgreSQL
//! register) skips a busy site. Every pass is recorded in the register's cron runs (start,
//! duration, status, exit code, the tail of its output, who started it, its log), which
//! `vmoodle cron status` and `history`, the pool and the metrics read.
//!
//! Failed tasks: Moodle's cron.php exits 0 even when scheduled or ad hoc tasks threw (it prints
//! `Scheduled task failed: ...` / `Adhoc task failed: ...`, and Moodle retries them later with a
//! growing fail delay). vmoodle counts such a pass as `ok` — cron itself ran, which is what the
//! pass status, `overdue` and `failing` are about — and says how many tasks failed in the
//! message ("ok; 2 tasks failed: ..."), in `data.task_failures` and in the recorded output tail,
//! so a broken task is visible without marking a working site's cron as broken. A pass that
//! exits non-zero (database unreachable, maintenance, PHP fatal error) is `failed`.

use anyhow::Result;
use serde::Serialize;
use std::time::Duration;
use vmoodle_registry::Instance;

use super::moodle::MoodleCode;
use super::{FleetEvent, FleetOptions, FleetReport, FleetRun, Selection, SiteOutcome, SiteStatus};
use crate::Home;

/// The lock purpose of cron passes.
pub const PURPOSE: &str = "cron";

/// What one pass needs beyond the site: the code, the run (for log paths), the time limit.
pub struct CronCtx<'a> {
    pub home: &'a Home,
    pub code: &'a MoodleCode,
    pub run: &'a FleetRun,
    pub timeout: Duration,
    /// Who started the passes (`cli:USER`, `scheduler`...), recorded with each run.
    pub actor: String,
}

/// The lease of a site's lock: the time limit plus a margin, so a pass killed at its limit still
/// holds its lock until it is recorded.
pub fn lease(timeout: Duration) -> i64 {
    timeout.as_secs() as i64 + 60
}

/// `vmoodle cron [selection]`: one pass for every selected instance, as a job `fleet-cron`.
pub async fn cron_pass(
    home: &Home,
    selection: &Selection,
    opts: &FleetOptions,
    events: &(dyn Fn(&FleetEvent) + Sync),
) -> Result<FleetReport> {
    let code = MoodleCode::from_home(home)?;
    code.cli_script("cron.php")?;
    let selected = selection.resolve(home).await?;
    interrupt_dead_runs(home).await?;
    let run = FleetRun::start(home, "cron", &selection.describe()).await?;
    let ctx = CronCtx {
        home,
        code: &code,
        run: &run,
        timeout: opts.timeout,
        actor: home.job_context().actor,
    };
    let ctx = &ctx;
    let sites = run
        .for_each(home, &selected.instances, opts, events, |inst| {
            cron_site(ctx, inst)
        })
        .await;
    run.finish(home, sites, selected.disabled_left_out).await
}

/// Marks `interrupted` the running cron runs of owners on this node whose process is gone (a
/// pass killed with its vmoodle, a daemon that crashed). Returns how many.
pub async fn interrupt_dead_runs(home: &Home) -> Result<u64> {
    let mut n = 0;
    for owner in home.registry.cron_run_owners().await? {
        if !crate::journal::owner_alive(&owner) {
            n += home
                .registry
                .interrupt_cron_runs(&owner, vmoodle_core::now_unix())
                .await?;
        }
    }
    Ok(n)
}

/// One cron pass of one site, under its lock; recorded in the register's cron runs.
pub async fn cron_site(ctx: &CronCtx<'_>, inst: &Instance) -> SiteOutcome {
    let reg = &ctx.home.registry;
    let owner = crate::journal::lock_owner();
    let now = vmoodle_core::now_unix();
    let lease = lease(ctx.timeout);
    match reg
        .try_lock_site(inst.id, PURPOSE, &owner, now, now + lease)
        .await
    {
        Ok(true) => {}
        Ok(false) => return busy(ctx.home, inst, now).await,
        Err(e) => {
            return SiteOutcome::new(
                inst,
                SiteStatus::Failed,
                format!("cannot take the site's cron lock: {e:#}"),
            )
        }
    }
    let o = locked_pass(ctx, inst, &owner, lease).await;
    if let Err(e) = reg.unlock_site(inst.id, PURPOSE, &owner).await {
        tracing::warn!("{}: cannot release the cron lock: {e:#}", inst.shortname);
    }
    o
}

/// A skipped outcome for a site whose lock someone else holds.
async fn busy(home: &Home, inst: &Instance, now: i64) -> SiteOutcome {
    let holder = home
        .registry
        .site_locks(PURPOSE, now)
        .await
        .ok()
        .and_then(|l| l.into_iter().find(|l| l.instance_id == inst.id));
    let why = match holder {
        Some(l) => format!(
            "busy: a cron pass of {} has run since {}",
            l.owner,
            iso_utc(l.acquired_at)
        ),
        None => "busy: another cron pass holds the site's lock".into(),
    };
    SiteOutcome::new(inst, SiteStatus::Skipped, why)
}

async fn locked_pass(ctx: &CronCtx<'_>, inst: &Instance, owner: &str, lease: i64) -> SiteOutcome {
    let reg = &ctx.home.registry;
    let log = ctx.run.log_path(inst);
    let mut o = SiteOutcome::new(inst, SiteStatus::Failed, "");
    o.log = Some(log.clone());
    let started = vmoodle_core::now_unix();
    let run_id = match reg
        .start_cron_run(
            inst.id,
            owner,
            &ctx.actor,
            started,
            &log.display().to_string(),
        )
        .await
    {
        Ok(id) => id,
        Err(e) => {
            o.message = format!("cannot record the cron run: {e:#}");
            return o;
        }
    };
    crate::journal::pause_point(&format!("cron:{}:locked", inst.shortname)).await;
    let script = match ctx.code.cli_script("cron.php") {
        Ok(p) => p,
        Err(e) => {
            o.message = format!("{e:#}");
            let _ = reg
                .finish_cron_run(run_id, "failed", None, started, 0, &o.message)
                .await;
            return o;
        }
    };
    let args = vec!["--keep-alive=0".to_string()];
    let pass = ctx.code.run(&inst.host, &script, &args, ctx.timeout, &log);
    tokio::pin!(pass);
    // Renew the lease a few times per lease while the pass lasts.
    let mut tick = tokio::time::interval(Duration::from_secs((lease / 3).max(5) as u64));
    tick.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut pass => break r,
            _ = tick.tick() => {
                let until = vmoodle_core::now_unix() + lease;
                match reg.renew_site_lock(inst.id, PURPOSE, owner, until).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("{}: the cron lock was taken over", inst.shortname),
                    Err(e) => tracing::warn!("{}: cannot renew the cron lock: {e:#}", inst.shortname),
                }
            }
        }
    };
    let (status, tail) = match result {
        Ok(r) => {
            o.exit_code = r.exit_code;
            o.duration_ms = r.duration.as_millis() as u64;
            let failed_tasks = failed_tasks(&r.stdout_text());
            if !failed_tasks.is_empty() {
                o.data = serde_json::json!({
                    "task_failures": failed_tasks.len(),
                    "failed_tasks": failed_tasks,
                });
            }
            if r.timed_out {
                o.status = SiteStatus::Timeout;
                o.message = format!("killed after {} s", ctx.timeout.as_secs());
            } else if r.ok() {
                o.status = SiteStatus::Ok;
                o.message = if failed_tasks.is_empty() {
                    "ok".into()
                } else {
                    format!(
                        "ok; {} task{} failed: {}",
                        failed_tasks.len(),
                        if failed_tasks.len() == 1 { "" } else { "s" },
                        failed_tasks.join(", ")
                    )
                };
            } else {
                o.status = SiteStatus::Failed;
                o.message = last_line(&r.tail);
            }
            let mut tail = r.tail.clone();
            if !failed_tasks.is_empty() {
                tail = format!("{}\n{tail}", o.message);
            }
            (o.status, tail)
        }
        Err(e) => {
            o.message = format!("{e:#}");
            (SiteStatus::Failed, o.message.clone())
        }
    };
    let word = match status {
        SiteStatus::Ok => "ok",
        SiteStatus::Timeout => "timeout",
        _ => "failed",
    };
    let finished = vmoodle_core::now_unix();
    if let Err(e) = reg
        .finish_cron_run(
            run_id,
            word,
            o.exit_code.map(i64::from),
            finished,
            o.duration_ms as i64,
            &tail,
        )
        .await
    {
        tracing::warn!(
            "{}: cannot record the end of its cron run: {e:#}",
            inst.shortname
        );
    }
    o
}

/// The tasks a cron pass reported failed (`Scheduled task failed: NAME,...`,
/// `Adhoc task failed: CLASS,...`), each named once.
pub fn failed_tasks(output: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let rest = line
            .strip_prefix("Scheduled task failed:")
            .or_else(|| line.strip_prefix("Adhoc task failed:"));
        if let Some(rest) = rest {
            let name = rest.split(',').next().unwrap_or("").trim().to_string();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

fn last_line(tail: &str) -> String {
    tail.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("exit code"))
        .unwrap_or("")
        .to_string()
}

/// A gap as it reads: `45 s`, `12 min`, `3 h`, `2 d`.
pub fn gap_words(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// `2026-11-23 06:48:31 UTC`.
pub fn iso_utc(unix: i64) -> String {
    let s = super::utc_stamp(unix);
    format!(
        "{}-{}-{} {}:{}:{} UTC",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// The cron record of one instance, as `vmoodle cron status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CronSiteStatus {
    pub instance: String,
    pub host: String,
    pub enabled: bool,
    /// When the last pass started (unix seconds).
    pub last_started_at: Option<i64>,
    pub last_duration_ms: Option<i64>,
    /// `ok`, `failed`, `timeout`, `interrupted`, `running`; none before the first pass.
    pub last_status: Option<String>,
    pub last_exit_code: Option<i64>,
    pub last_ok_at: Option<i64>,
    /// Seconds since the last successful pass started (none: never).
    pub gap_s: Option<i64>,
    pub failures_in_a_row: i64,
    /// Whose pass holds the site's lock now.
    pub running: Option<String>,
    /// No successful pass within twice the interval, or never.
    pub overdue: bool,
    /// The last finished pass was not ok.
    pub failing: bool,
}

/// The cron status of the selected instances (a few register queries, no site database read).
pub async fn status(home: &Home, selection: &Selection) -> Result<Vec<CronSiteStatus>> {
    let selected = selection.resolve(home).await?;
    let interval = i64::from(home.settings.cron.interval);
    let now = vmoodle_core::now_unix();
    let states = home.registry.cron_states().await?;
    let locks = home.registry.site_locks(PURPOSE, now).await?;
    Ok(selected
        .instances
        .iter()
        .map(|i| {
            let st = states.iter().find(|s| s.instance_id == i.id);
            let last = st.and_then(|s| s.last.as_ref());
            let last_ok_at = st.and_then(|s| s.last_ok_at);
            let gap_s = last_ok_at.map(|t| (now - t).max(0));
            let last_status = last.map(|r| r.status.clone());
            let failing = last.is_some_and(|r| !matches!(r.status.as_str(), "ok" | "running"))
                || (last.is_some_and(|r| r.status == "running")
                    && st.is_some_and(|s| s.failures_in_a_row > 0));
            CronSiteStatus {
                instance: i.shortname.clone(),
                host: i.host.clone(),
                enabled: i.enabled,
                last_started_at: last.map(|r| r.started_at),
                last_duration_ms: last.and_then(|r| r.duration_ms),
                last_status,
                last_exit_code: last.and_then(|r| r.exit_code),
                last_ok_at,
                gap_s,
                failures_in_a_row: st.map(|s| s.failures_in_a_row).unwrap_or(0),
                running: locks
                    .iter()
                    .find(|l| l.instance_id == i.id)
                    .map(|l| l.owner.clone()),
                overdue: gap_s.is_none_or(|g| g > 2 * interval),
                failing,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_failures_are_read_from_cron_output() {
        let out = "Execute scheduled task: Cleanup old sessions (core\\task\\session_cleanup_task)\n\
                   Scheduled task failed: Send messages (core\\task\\messaging_cleanup_task),boom\n\
                   Adhoc task failed: mod_forum\\task\\send_user_notifications,smtp down\n\
                   Scheduled task failed: Send messages (core\\task\\messaging_cleanup_task),boom\n";
        assert_eq!(
            failed_tasks(out),
            vec![
                "Send messages (core\\task\\messaging_cleanup_task)".to_string(),
                "mod_forum\\task\\send_user_notifications".to_string()
            ]
        );
        assert!(failed_tasks("Cron run completed correctly\n").is_empty());
    }

    #[test]
    fn times() {
        assert_eq!(iso_utc(1_795_416_000), "2026-11-23 06:40:00 UTC");
        assert_eq!(lease(Duration::from_secs(600)), 660);
    }
}
