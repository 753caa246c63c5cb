//! The daemon's cron: when `cron.enabled`, every enabled instance gets one pass of Moodle's
//! cron every `cron.interval` seconds, at most `cron.parallel` at once on this node.
//!
//! Each site has a stable offset within the interval (a hash of its shortname, the same on every
//! node), so 300 sites do not all start at :00: site S is due once per period
//! `[k * interval + offset(S), (k + 1) * interval + offset(S))`. Several daemons on one
//! PostgreSQL register share the work: each runs the sites due, under the site's lock in the
//! register (a busy site is skipped, so no site's cron runs twice at once), and a site whose last
//! pass (by any node) started within the current period is not run again. The passes are
//! recorded in the register's cron runs, not as jobs (they would flood the jobs list).

use crate::AppState;
use futures::StreamExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vmoodle_core::now_unix;
use vmoodle_ops::fleet::cron::{cron_site, interrupt_dead_runs, CronCtx};
use vmoodle_ops::fleet::moodle::MoodleCode;
use vmoodle_ops::fleet::{FleetRun, SiteStatus};
use vmoodle_registry::Instance;

/// Seconds between reads of the settings and the list of instances.
const REFRESH_SECS: i64 = 10;
/// Seconds a stopping daemon waits for its cron passes under way.
const STOP_GRACE_SECS: u64 = 15;
/// A new log directory (logs/fleet/cron-STAMP-PID/, a file per site) this often.
const LOG_ROTATE_SECS: i64 = 3600;

/// The offset of a site within the interval: FNV-1a of its shortname (stable across nodes and
/// builds, unlike std's hasher).
pub fn offset(shortname: &str, interval: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shortname.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % interval.max(1) as u64) as i64
}

/// The start of the period of a site that holds `now`.
pub fn period_start(now: i64, offset: i64, interval: i64) -> i64 {
    (now - offset).div_euclid(interval) * interval + offset
}

struct Shared {
    home: Arc<vmoodle_ops::Home>,
    code: MoodleCode,
    run: FleetRun,
    made: i64,
}

/// Runs until `stop` turns true.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut queue: VecDeque<Instance> = VecDeque::new();
    let mut busy: HashSet<i64> = HashSet::new();
    // Site -> start of the period it last ran (or was found run) in.
    let mut done: HashMap<i64, i64> = HashMap::new();
    let mut shared: Option<Arc<Shared>> = None;
    let mut instances: Vec<Instance> = Vec::new();
    let mut last_refresh = 0;
    let mut said: Option<String> = None;
    let (mut enabled, mut interval, mut parallel, mut timeout) = (false, 60, 2, 600);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((id, status)) = inflight.next(), if !inflight.is_empty() => {
                busy.remove(&id);
                if let Some(s) = status {
                    state.cache.count_cron(s);
                }
            }
            _ = stop.changed() => break,
        }
        let now = now_unix();
        if now - last_refresh >= REFRESH_SECS {
            last_refresh = now;
            match state.fresh().await {
                Ok(home) => {
                    let c = &home.settings.cron;
                    (enabled, interval, parallel, timeout) = (
                        c.enabled,
                        i64::from(c.interval),
                        c.parallel as usize,
                        u64::from(c.timeout),
                    );
                    if enabled {
                        match home.registry.instances().await {
                            Ok(v) => instances = v.into_iter().filter(|i| i.enabled).collect(),
                            Err(e) => tracing::warn!("cron: listing instances: {e:#}"),
                        }
                        if let Err(e) = interrupt_dead_runs(&home).await {
                            tracing::warn!("cron: marking interrupted runs: {e:#}");
                        }
                        let stale = shared.as_ref().is_none_or(|s| {
                            !Arc::ptr_eq(&s.home, &home) || now - s.made >= LOG_ROTATE_SECS
                        });
                        if stale {
                            shared = match new_shared(home) {
                                Ok(s) => {
                                    said = None;
                                    Some(Arc::new(s))
                                }
                                Err(e) => {
                                    // Said once (and again when the reason changes), not every
                                    // refresh: a home without moodle.dir is a normal state.
                                    let msg = format!("{e:#}");
                                    if said.as_deref() != Some(msg.as_str()) {
                                        tracing::warn!("cron: not running: {msg}");
                                        said = Some(msg);
                                    }
                                    None
                                }
                            };
                        }
                    }
                }
                Err(e) => tracing::warn!("cron: reading the settings: {e:#}"),
            }
        }
        let Some(sh) = shared.clone().filter(|_| enabled) else {
            queue.clear();
            continue;
        };
        // Sites whose period came round since they last ran; a site another node already ran
        // in this period is left alone.
        let due: Vec<&Instance> = instances
            .iter()
            .filter(|i| {
                let p = period_start(now, offset(&i.shortname, interval), interval);
                done.get(&i.id).is_none_or(|d| *d < p)
                    && !busy.contains(&i.id)
                    && !queue.iter().any(|q| q.id == i.id)
            })
            .collect();
        if !due.is_empty() {
            let states = sh.home.registry.cron_states().await.unwrap_or_default();
            for i in due {
                let p = period_start(now, offset(&i.shortname, interval), interval);
                let last = states
                    .iter()
                    .find(|s| s.instance_id == i.id)
                    .and_then(|s| s.last.as_ref())
                    .map(|r| r.started_at);
                match last {
                    // Run in this period already (by this node or another): done.
                    Some(t) if t >= p => {
                        done.insert(i.id, p);
                    }
                    // A late pass of the previous period: the next one waits half an interval,
                    // so passes of a site never come back to back.
                    Some(t) if now - t < interval / 2 => {}
                    _ => {
                        done.insert(i.id, p);
                        queue.push_back(i.clone());
                    }
                }
            }
        }
        while inflight.len() < parallel {
            let Some(inst) = queue.pop_front() else { break };
            busy.insert(inst.id);
            let sh = sh.clone();
            let timeout = Duration::from_secs(timeout);
            inflight.push(async move {
                let ctx = CronCtx {
                    home: &sh.home,
                    code: &sh.code,
                    run: &sh.run,
                    timeout,
                    actor: crate::sched::ACTOR.into(),
                };
                let o = cron_site(&ctx, &inst).await;
                if o.status.is_failure() {
                    tracing::warn!(
                        "cron of {}: {} {}",
                        inst.shortname,
                        o.status.word(),
                        o.message
                    );
                }
                let counted = match o.status {
                    SiteStatus::Ok => Some("ok"),
                    SiteStatus::Failed => Some("failed"),
                    SiteStatus::Timeout => Some("timeout"),
                    SiteStatus::Skipped => Some("skipped"),
                    SiteStatus::NotStarted => None,
                };
                (inst.id, counted)
            });
        }
    }
    // Passes under way may end and be recorded for a little while; then they are dropped (their
    // PHP is killed with them), and the next pass on this node marks them interrupted.
    let drain = async { while inflight.next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(STOP_GRACE_SECS), drain)
        .await
        .is_err()
    {
        tracing::warn!("cron: passes still running at stop were cut short");
    }
}

fn new_shared(home: Arc<vmoodle_ops::Home>) -> anyhow::Result<Shared> {
    let code = MoodleCode::from_home(&home)?;
    code.cli_script("cron.php")?;
    let run = FleetRun::unjournaled(&home, "cron")?;
    Ok(Shared {
        home,
        code,
        run,
        made: now_unix(),
    })
}

/// What the register knows of each instance's cron and Moodle version, for the pool and the
/// API (three cron queries and one of site facts, whatever the number of sites shown).
#[derive(Debug, Default)]
pub struct Facts {
    cron: HashMap<i64, vmoodle_registry::CronState>,
    sites: HashMap<i64, vmoodle_registry::SiteFacts>,
}

/// One instance's part of [`Facts`].
#[derive(Debug, Clone, Default)]
pub struct InstanceFacts {
    pub last_cron_at: Option<i64>,
    pub last_cron_status: Option<String>,
    pub cron_gap_s: Option<i64>,
    pub moodle_version: Option<String>,
    pub moodle_release: Option<String>,
}

impl Facts {
    pub async fn load(reg: &vmoodle_registry::Registry) -> anyhow::Result<Self> {
        Ok(Self {
            cron: reg
                .cron_states()
                .await?
                .into_iter()
                .map(|s| (s.instance_id, s))
                .collect(),
            sites: reg
                .site_facts()
                .await?
                .into_iter()
                .map(|f| (f.instance_id, f))
                .collect(),
        })
    }

    pub fn of(&self, instance_id: i64) -> InstanceFacts {
        let c = self.cron.get(&instance_id);
        let last = c.and_then(|c| c.last.as_ref());
        let f = self.sites.get(&instance_id);
        InstanceFacts {
            last_cron_at: last.map(|r| r.started_at),
            last_cron_status: last.map(|r| r.status.clone()),
            cron_gap_s: c
                .and_then(|c| c.last_ok_at)
                .map(|t| (now_unix() - t).max(0)),
            moodle_version: f.map(|f| f.moodle_version.clone()),
            moodle_release: f.map(|f| f.moodle_release.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_spread_over_the_interval() {
        let offsets: HashSet<i64> = (0..300)
            .map(|i| offset(&format!("school{i}"), 60))
            .collect();
        // 300 sites over 60 seconds: most seconds have a site, none has them all.
        assert!(offsets.len() > 40, "{offsets:?}");
        assert!(offsets.iter().all(|o| (0..60).contains(o)));
        assert_eq!(offset("school1", 60), offset("school1", 60));
    }

    #[test]
    fn periods() {
        assert_eq!(period_start(1000, 7, 60), 967);
        assert_eq!(period_start(967, 7, 60), 967);
        assert_eq!(period_start(966, 7, 60), 907);
    }
}
