//! `vmoodle upgrade`: after the shared Moodle code was updated, each site whose database is
//! behind it (Moodle's own `upgrade.php --is-pending`) is upgraded in steps recorded in its
//! `upgrades` row: its upgrade and cron locks (no cron pass during the upgrade), CLI maintenance
//! on, an optional pre-upgrade snapshot (a template), `upgrade.php --non-interactive`,
//! `purge_caches.php`, maintenance off, the new version in the site facts. Canary sites go
//! first; the rest only start when every canary succeeded. A failed site stays in maintenance
//! with its log and error recorded. A run that died leaves its rows `running` with a dead owner:
//! they are shown as interrupted and the next `vmoodle upgrade` finishes them (upgrade.php is
//! safe to run again).

use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use vmoodle_registry::{Instance, NewUpgrade};

use super::moodle::{MoodleCode, MoodleVersion};
use super::sitedb::SiteDb;
use super::{FleetEvent, FleetOptions, FleetReport, FleetRun, Selection, SiteOutcome, SiteStatus};
use crate::Home;

/// How an upgrade run goes.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub fleet: FleetOptions,
    /// A pre-upgrade snapshot (template) of each site, for `upgrade rollback`.
    pub snapshot: bool,
    /// This many sites first; the rest only when all of them succeeded.
    pub canary: usize,
    /// Only find the pending sites.
    pub dry_run: bool,
}

/// The locks an upgrade holds on a site.
pub const LOCKS: [&str; 2] = ["upgrade", "cron"];

/// Whether Moodle's upgrade is pending for a site: `upgrade.php --is-pending` exits 2 when it
/// is, 0 when not.
pub async fn is_pending(
    code: &MoodleCode,
    inst: &Instance,
    timeout: Duration,
    log: &Path,
) -> Result<bool> {
    let script = code.cli_script("upgrade.php")?;
    let r = code
        .run(&inst.host, &script, &["--is-pending".into()], timeout, log)
        .await?;
    match r.exit_code {
        Some(0) => Ok(false),
        Some(2) => Ok(true),
        _ if r.timed_out => anyhow::bail!(
            "upgrade.php --is-pending: killed after {} s",
            timeout.as_secs()
        ),
        c => anyhow::bail!(
            "upgrade.php --is-pending ended with {}: {}",
            c.map(|c| format!("exit code {c}"))
                .unwrap_or_else(|| "a signal".into()),
            r.tail.lines().last().unwrap_or("")
        ),
    }
}

/// The version of a site's database, read with its own account (and recorded in site facts).
pub async fn db_version(home: &Home, inst: &Instance) -> Result<MoodleVersion> {
    let db = SiteDb::new(home, inst).await?;
    let mut c = db.conn().await?;
    let v = db.version(&mut c).await;
    vmoodle_dbserver::close(c).await;
    let v = v?;
    home.registry
        .set_site_facts(inst.id, &v.version, &v.release, vmoodle_core::now_unix())
        .await?;
    Ok(v)
}

/// Takes the upgrade and cron locks of a site (a lock left by a dead process on this node is
/// taken over). Returns who holds the one it could not take.
pub async fn lock_site(
    home: &Home,
    inst: &Instance,
    owner: &str,
    lease: Duration,
) -> Result<Option<String>> {
    let reg = &home.registry;
    let now = vmoodle_core::now_unix();
    let mut taken = Vec::new();
    for purpose in LOCKS {
        for l in reg.site_locks(purpose, now).await? {
            if l.instance_id == inst.id
                && l.owner != owner
                && !crate::journal::owner_alive(&l.owner)
            {
                reg.unlock_site(inst.id, purpose, &l.owner).await?;
            }
        }
        if reg
            .try_lock_site(inst.id, purpose, owner, now, now + lease.as_secs() as i64)
            .await?
        {
            taken.push(purpose);
        } else {
            let holder = reg
                .site_locks(purpose, now)
                .await?
                .into_iter()
                .find(|l| l.instance_id == inst.id)
                .map(|l| l.owner)
                .unwrap_or_default();
            for p in taken {
                reg.unlock_site(inst.id, p, owner).await?;
            }
            return Ok(Some(format!("its {purpose} lock is held by {holder}")));
        }
    }
    Ok(None)
}

pub async fn unlock_site(home: &Home, inst: &Instance, owner: &str) {
    for purpose in LOCKS {
        if let Err(e) = home.registry.unlock_site(inst.id, purpose, owner).await {
            tracing::warn!(
                "{}: cannot release its {purpose} lock: {e:#}",
                inst.shortname
            );
        }
    }
}

/// A pre-upgrade snapshot's template name: `pre_SHORTNAME_YYYYMMDDHHMMSS` (at most 40
/// characters, lowercase letters, digits and underscores).
pub fn snapshot_name(shortname: &str, unix: i64) -> String {
    let short: String = shortname
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(21)
        .collect();
    format!("pre_{short}_{}", super::utc_stamp(unix).replace('-', ""))
}

/// What one site's upgrade did (the `data` of its outcome).
#[derive(Debug, Clone, Serialize)]
pub struct SiteUpgrade {
    pub from_version: String,
    pub to_version: String,
    pub resumed: bool,
    pub snapshot: Option<String>,
}

/// Upgrades the selected sites that are behind the code (and finishes interrupted upgrades).
pub async fn upgrade(
    home: &Home,
    selection: &Selection,
    opts: &UpgradeOptions,
    events: &(dyn Fn(&FleetEvent) + Sync),
) -> Result<FleetReport> {
    use futures::StreamExt;
    let code = MoodleCode::from_home(home)?;
    let to = code.code_version()?;
    let selected = selection.resolve(home).await?;
    let run = if opts.dry_run {
        FleetRun::unjournaled(home, "upgrade-check")?
    } else {
        FleetRun::start(home, "upgrade", &selection.describe()).await?
    };
    let interrupted: Vec<i64> = home
        .registry
        .upgrades()
        .await?
        .into_iter()
        .filter(|u| u.state == "running" && !crate::journal::owner_alive(&u.owner))
        .map(|u| u.instance_id)
        .collect();
    // 1. Which sites are behind the code.
    let (code_ref, run_ref, to_ref, interrupted_ref) = (&code, &run, &to, &interrupted);
    let checks: Vec<(Instance, Result<(bool, String)>)> =
        futures::stream::iter(selected.instances.iter())
            .map(|inst| async move {
                let r = async {
                    let from = db_version(home, inst)
                        .await
                        .map(|v| v.version)
                        .unwrap_or_default();
                    let resume = interrupted_ref.contains(&inst.id);
                    let pending = resume
                        || is_pending(code_ref, inst, opts.fleet.timeout, &run_ref.log_path(inst))
                            .await?;
                    anyhow::Ok((pending, from))
                }
                .await;
                (inst.clone(), r)
            })
            .buffered(opts.fleet.parallel.max(1))
            .collect()
            .await;
    let mut sites = Vec::new();
    let mut todo: Vec<(Instance, String)> = Vec::new();
    for (inst, r) in checks {
        match r {
            Ok((true, from)) if opts.dry_run => {
                let mut o = SiteOutcome::new(
                    &inst,
                    SiteStatus::Ok,
                    format!("pending: {} -> {}", shown(&from), to_ref.version),
                );
                o.data = serde_json::json!({"pending": true, "from_version": from, "to_version": to.version,
                    "interrupted": interrupted.contains(&inst.id)});
                sites.push(o);
            }
            Ok((true, from)) => todo.push((inst, from)),
            Ok((false, from)) => {
                let mut o = SiteOutcome::new(
                    &inst,
                    SiteStatus::Skipped,
                    format!("up to date ({})", shown(&from)),
                );
                o.data = serde_json::json!({"pending": false, "from_version": from, "to_version": to.version});
                sites.push(o);
            }
            Err(e) => {
                let mut o = SiteOutcome::new(&inst, SiteStatus::Failed, format!("{e:#}"));
                o.log = Some(run.log_path(&inst));
                sites.push(o);
            }
        }
    }
    if opts.dry_run || todo.is_empty() {
        sort_like(&mut sites, &selected.instances);
        return run.finish(home, sites, selected.disabled_left_out).await;
    }
    // 2. Canaries, then the rest.
    let owner = crate::journal::lock_owner();
    let canary = opts.canary.min(todo.len());
    let (first, rest) = todo.split_at(canary);
    let work = |inst: &Instance| {
        let from = todo
            .iter()
            .find(|(i, _)| i.id == inst.id)
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        let resumed = interrupted.contains(&inst.id);
        let (code, run, to, owner) = (&code, &run, &to, &owner);
        let inst = inst.clone();
        async move { upgrade_site(home, code, run, &inst, &from, to, resumed, opts, owner).await }
    };
    let first: Vec<Instance> = first.iter().map(|(i, _)| i.clone()).collect();
    let rest: Vec<Instance> = rest.iter().map(|(i, _)| i.clone()).collect();
    let mut done = run.for_each(home, &first, &opts.fleet, events, work).await;
    let canaries_ok = done.iter().all(|o| o.status == SiteStatus::Ok);
    let budget_left = opts
        .fleet
        .max_failures
        .map(|m| m.saturating_sub(done.iter().filter(|o| o.status.is_failure()).count()));
    if canaries_ok && budget_left != Some(0) {
        let mut o2 = opts.fleet.clone();
        o2.max_failures = budget_left;
        done.extend(run.for_each(home, &rest, &o2, events, work).await);
    } else {
        let why = if canaries_ok {
            "not started: the failure budget ran out".to_string()
        } else {
            format!(
                "not started: a canary failed ({})",
                first
                    .iter()
                    .map(|i| i.shortname.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for inst in &rest {
            done.push(SiteOutcome::new(inst, SiteStatus::NotStarted, why.clone()));
        }
    }
    sites.extend(done);
    sort_like(&mut sites, &selected.instances);
    run.finish(home, sites, selected.disabled_left_out).await
}

fn shown(v: &str) -> &str {
    if v.is_empty() {
        "version unknown"
    } else {
        v
    }
}

fn sort_like(sites: &mut [SiteOutcome], order: &[Instance]) {
    sites.sort_by_key(|o| {
        order
            .iter()
            .position(|i| i.shortname == o.instance)
            .unwrap_or(usize::MAX)
    });
}

/// One site's upgrade, every step recorded in its `upgrades` row.
#[allow(clippy::too_many_arguments)]
async fn upgrade_site(
    home: &Home,
    code: &MoodleCode,
    run: &FleetRun,
    inst: &Instance,
    from: &str,
    to: &MoodleVersion,
    resumed: bool,
    opts: &UpgradeOptions,
    owner: &str,
) -> SiteOutcome {
    let log = run.log_path(inst);
    let mut o = SiteOutcome::new(inst, SiteStatus::Failed, "");
    o.log = Some(log.clone());
    let timeout = opts.fleet.timeout;
    // Long enough for every step; a dead holder's lock is taken over by the next run on this node.
    let lease = timeout * 5 + Duration::from_secs(600);
    match lock_site(home, inst, owner, lease).await {
        Ok(None) => {}
        Ok(Some(busy)) => {
            o.status = SiteStatus::Skipped;
            o.message = format!("busy: {busy}");
            return o;
        }
        Err(e) => {
            o.message = format!("taking its locks: {e:#}");
            return o;
        }
    }
    // Held while the steps run, however long a snapshot or an upgrade takes.
    let keeper = super::keep_leases(&home.registry, inst.id, &LOCKS, owner, lease);
    let reg = &home.registry;
    let r = async {
        reg.start_upgrade(&NewUpgrade {
            instance_id: inst.id,
            from_version: from,
            to_version: &to.version,
            log_path: &log.display().to_string(),
            owner,
            job_id: run.job,
            now: vmoodle_core::now_unix(),
        })
        .await?;
        let mut snapshot = None;
        let script = |step: &'static str, name: &'static str, args: &'static [&'static str]| {
            let log = log.clone();
            async move {
                reg.set_upgrade_step(inst.id, step).await?;
                let path = code.cli_script(name)?;
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                let r = code.run(&inst.host, &path, &args, timeout, &log).await?;
                if r.timed_out {
                    return Err(StepError::timeout(step, timeout));
                }
                if !r.ok() {
                    anyhow::bail!(
                        "{step}: {name} ended with {}: {}",
                        r.exit_code
                            .map(|c| format!("exit code {c}"))
                            .unwrap_or_else(|| "a signal".into()),
                        r.tail.lines().last().unwrap_or("")
                    );
                }
                anyhow::Ok(())
            }
        };
        script("maintenance on", "maintenance.php", &["--enable"]).await?;
        if resumed {
            // The snapshot of the first attempt is the state before the upgrade; a new one now
            // would hold a half-upgraded database.
            snapshot = reg.upgrade_of(inst.id).await?.and_then(|u| u.snapshot);
        } else {
            // A previous upgrade's snapshot is older than this site's data: never roll back to it.
            reg.set_upgrade_snapshot(inst.id, None).await?;
            if opts.snapshot {
                reg.set_upgrade_step(inst.id, "snapshot").await?;
                let name = snapshot_name(&inst.shortname, vmoodle_core::now_unix());
                crate::templates::snapshot(
                    home,
                    &inst.shortname,
                    &name,
                    &crate::journal::no_events,
                )
                .await
                .map_err(|e| e.context("snapshot"))?;
                reg.set_upgrade_snapshot(inst.id, Some(&name)).await?;
                snapshot = Some(name);
            }
        }
        script("upgrade", "upgrade.php", &["--non-interactive"]).await?;
        script("purge caches", "purge_caches.php", &[]).await?;
        script("maintenance off", "maintenance.php", &["--disable"]).await?;
        reg.set_upgrade_step(inst.id, "done").await?;
        let now = db_version(home, inst).await?;
        anyhow::Ok((now, snapshot))
    }
    .await;
    match r {
        Ok((now, snapshot)) => {
            let _ = reg
                .finish_upgrade(inst.id, "ok", None, vmoodle_core::now_unix())
                .await;
            o.status = SiteStatus::Ok;
            o.message = format!(
                "{}{} -> {}",
                if resumed { "resumed: " } else { "" },
                shown(from),
                now.version
            );
            o.data = serde_json::to_value(SiteUpgrade {
                from_version: from.into(),
                to_version: now.version,
                resumed,
                snapshot,
            })
            .unwrap_or_default();
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = reg
                .finish_upgrade(inst.id, "failed", Some(&msg), vmoodle_core::now_unix())
                .await;
            o.status = if e.downcast_ref::<StepTimeout>().is_some() {
                SiteStatus::Timeout
            } else {
                SiteStatus::Failed
            };
            o.message = format!("{msg} (left in maintenance)");
        }
    }
    drop(keeper);
    unlock_site(home, inst, owner).await;
    o
}

/// A step killed at the time limit.
#[derive(Debug)]
struct StepTimeout(String);

impl std::fmt::Display for StepTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for StepTimeout {}

struct StepError;
impl StepError {
    fn timeout(step: &str, t: Duration) -> anyhow::Error {
        StepTimeout(format!(
            "{step}: killed after {} s (time limit)",
            t.as_secs()
        ))
        .into()
    }
}

/// The code's version when a template's Moodle (its manifest's `config.version`) is behind it;
/// None when it is not, or when the code is unknown (no `moodle.dir`).
pub fn template_behind(home: &Home, m: &crate::templates::Manifest) -> Option<MoodleVersion> {
    let code = MoodleCode::from_home(home).ok()?.code_version().ok()?;
    (super::moodle::version_cmp(&m.moodle.version, &code.version) == std::cmp::Ordering::Less)
        .then_some(code)
}

/// Moodle's CLI maintenance file in a (new, not yet served) dataroot: pages answer 503 until
/// `maintenance.php --disable` removes it. Created new (never over an existing file).
pub fn write_cli_maintenance(
    dataroot: &Path,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = dataroot.join("climaintenance.html");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&p)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?;
    f.write_all(b"<h1>This site is being upgraded</h1>\n")?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(&f, Some(u.as_raw()), Some(g.as_raw()))?;
    }
    Ok(())
}

/// Upgrades a just-deployed site whose template was behind the code: `upgrade.php
/// --non-interactive`, `purge_caches.php`, then `maintenance.php --disable` (which removes the
/// maintenance file the deploy put in its dataroot). An error names the log.
pub async fn upgrade_new_site(home: &Home, inst: &Instance, to: &str) -> Result<()> {
    let code = MoodleCode::from_home(home)?;
    let run = FleetRun::unjournaled(home, "deploy-upgrade")?;
    let log = run.log_path(inst);
    let timeout = Duration::from_secs(3600);
    for (name, args) in [
        ("upgrade.php", &["--non-interactive"][..]),
        ("purge_caches.php", &[][..]),
        ("maintenance.php", &["--disable"][..]),
    ] {
        let path = code.cli_script(name)?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let r = code.run(&inst.host, &path, &args, timeout, &log).await?;
        if !r.ok() {
            anyhow::bail!(
                "the template is behind the code (Moodle {to}) and {name} failed for the new site: {} (log {})",
                r.tail.lines().last().unwrap_or(""),
                log.display()
            );
        }
    }
    // Recorded in the site facts.
    db_version(home, inst).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn snapshot_names_are_template_names() {
        let n = super::snapshot_name("A-very-long-school-name-indeed", 1_795_416_000);
        assert_eq!(n, "pre_a_very_long_school_na_20261123064000");
        crate::templates::check_name(&n).unwrap();
    }
}
