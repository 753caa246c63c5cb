//! The network as a whole: status, repair of stale or missing peer rows, key renewal, and MNET
//! changes run as jobs that go forward.

use super::*;

/// One instance's key as the network sees it.
#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub mnet: i64,
    pub has_key: bool,
    pub expires: Option<i64>,
    pub due: bool,
}

/// One peering, from both sides.
#[derive(Debug, Serialize)]
pub struct PairStatus {
    pub a: String,
    pub b: String,
    pub a_holds_b: bool,
    pub b_holds_a: bool,
    /// a's administrator deleted b's peer row in Moodle (vmoodle leaves it deleted).
    pub a_deleted_b: bool,
    pub b_deleted_a: bool,
}

impl PairStatus {
    /// Each side holds the other's current key, or deliberately does not (deleted by its admin).
    pub fn ok(&self) -> bool {
        (self.a_holds_b || self.a_deleted_b) && (self.b_holds_a || self.b_deleted_a)
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub instances: Vec<InstanceStatus>,
    pub pairs: Vec<PairStatus>,
    /// Instances whose database could not be read.
    pub errors: Vec<InstanceError>,
}

/// What every reachable instance's database says: its own key, and the peer rows it holds.
struct Snapshot {
    sites: Vec<Site>,
    keys: HashMap<i64, Current>,
    /// instance id -> (peer wwwroot -> public_key), live rows (deleted = 0)
    rows: HashMap<i64, HashMap<String, String>>,
    /// instance id -> peer wwwroots whose every row its administrator deleted (deleted = 1)
    deleted: HashMap<i64, std::collections::HashSet<String>>,
    /// Instances that could not be read; they are left out of `sites`.
    errors: Vec<InstanceError>,
}

async fn read_network(home: &Home, only: Option<&[i64]>) -> Result<Snapshot> {
    let links = home.registry.mnet_links().await?;
    let mut sites = Vec::new();
    let mut errors = Vec::new();
    for inst in home.registry.instances().await? {
        let involved =
            inst.mnet >= 0 || links.iter().any(|l| l.a_id == inst.id || l.b_id == inst.id);
        if involved && only.is_none_or(|o| o.contains(&inst.id)) {
            let name = inst.shortname.clone();
            match site(home, inst).await {
                Ok(s) => sites.push(s),
                Err(e) => errors.push(InstanceError::new(&name, &e)),
            }
        }
    }
    let mut keys = HashMap::new();
    let mut rows = HashMap::new();
    let mut deleted = HashMap::new();
    let mut readable = Vec::new();
    for s in sites {
        let r = async {
            let mut c = s.conn().await?;
            let r = async {
                let cur = current(&s, &mut c).await?;
                let local = s.local_id(&mut c).await?;
                let all = c
                    .rows(
                        &format!(
                            "SELECT {}, {}, {} FROM {} WHERE id <> ?",
                            s.cast("wwwroot"),
                            s.cast("public_key"),
                            s.cast("deleted"),
                            s.t("mnet_host")
                        ),
                        &[local.into()],
                    )
                    .await?;
                anyhow::Ok((cur, all))
            }
            .await;
            vmoodle_dbserver::close(c).await;
            r
        }
        .await
        .with_context(|| format!("reading the MNET state of `{}`", s.inst.shortname));
        match r {
            Ok((cur, all)) => {
                if let Some(cur) = cur {
                    keys.insert(s.inst.id, cur);
                }
                let mut live: HashMap<String, String> = HashMap::new();
                let mut gone = std::collections::HashSet::new();
                for r in all {
                    let Some(www) = r[0].clone() else { continue };
                    if r[2].as_deref().is_some_and(|d| d != "0") {
                        gone.insert(www);
                    } else {
                        live.insert(www, r[1].clone().unwrap_or_default());
                    }
                }
                gone.retain(|w| !live.contains_key(w));
                rows.insert(s.inst.id, live);
                deleted.insert(s.inst.id, gone);
                readable.push(s);
            }
            Err(e) => errors.push(InstanceError::new(&s.inst.shortname, &e)),
        }
    }
    Ok(Snapshot {
        sites: readable,
        keys,
        rows,
        deleted,
        errors,
    })
}

impl Snapshot {
    /// Whether x's administrator deleted y's peer row.
    fn deleted_by_admin(&self, x: i64, y_wwwroot: &str) -> bool {
        self.deleted.get(&x).is_some_and(|d| d.contains(y_wwwroot))
    }
}

pub async fn status(home: &Home) -> Result<Status> {
    let net = read_network(home, None).await?;
    let now = now_unix();
    let look = i64::from(home.settings.mnet.lookforward_hours) * 3600;
    let by_id: HashMap<i64, &Site> = net.sites.iter().map(|s| (s.inst.id, s)).collect();
    let instances = net
        .sites
        .iter()
        .map(|s| {
            let k = net.keys.get(&s.inst.id);
            InstanceStatus {
                instance: s.inst.shortname.clone(),
                mnet: s.inst.mnet,
                has_key: k.is_some(),
                expires: k.map(|k| k.expires),
                due: k.is_some_and(|k| k.expires - now < look),
            }
        })
        .collect();
    let holds = |x: i64, y: i64| {
        let (Some(ys), Some(rows)) = (by_id.get(&y), net.rows.get(&x)) else {
            return false;
        };
        match (net.keys.get(&y), rows.get(&ys.inst.wwwroot)) {
            (Some(k), Some(pk)) => pk == &k.certificate,
            _ => false,
        }
    };
    let pairs = home
        .registry
        .mnet_links()
        .await?
        .iter()
        .filter(|l| by_id.contains_key(&l.a_id) && by_id.contains_key(&l.b_id))
        .map(|l| PairStatus {
            a: by_id[&l.a_id].inst.shortname.clone(),
            b: by_id[&l.b_id].inst.shortname.clone(),
            a_holds_b: holds(l.a_id, l.b_id),
            b_holds_a: holds(l.b_id, l.a_id),
            a_deleted_b: net.deleted_by_admin(l.a_id, &by_id[&l.b_id].inst.wwwroot),
            b_deleted_a: net.deleted_by_admin(l.b_id, &by_id[&l.a_id].inst.wwwroot),
        })
        .collect();
    Ok(Status {
        instances,
        pairs,
        errors: net.errors,
    })
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub mended: Vec<String>,
    /// Peer rows a site's administrator deleted; left deleted.
    pub left_deleted: Vec<String>,
    /// Instances that could not be read or mended; the others were.
    pub errors: Vec<InstanceError>,
}

/// Mends every stale or missing peer row (of peerings vmoodle made), optionally only those
/// involving one instance. Cost grows with the number of peer rows.
pub async fn repair(home: &Home) -> Result<RepairReport> {
    repair_for(home, None).await
}

pub(super) async fn repair_for(home: &Home, only: Option<i64>) -> Result<RepairReport> {
    let links: Vec<_> = home
        .registry
        .mnet_links()
        .await?
        .into_iter()
        .filter(|l| only.is_none_or(|o| l.a_id == o || l.b_id == o))
        .collect();
    let mut report = RepairReport::default();
    if links.is_empty() {
        return Ok(report);
    }
    let mut ids: Vec<i64> = links.iter().flat_map(|l| [l.a_id, l.b_id]).collect();
    ids.sort();
    ids.dedup();
    let net = read_network(home, Some(&ids)).await?;
    report.errors.extend(net.errors.iter().cloned());
    let by_id: HashMap<i64, &Site> = net.sites.iter().map(|s| (s.inst.id, s)).collect();
    // Group the fixes by the database they go to, so each gets one connection.
    let mut fixes: HashMap<i64, Vec<i64>> = HashMap::new();
    for l in &links {
        for (x, y) in [(l.a_id, l.b_id), (l.b_id, l.a_id)] {
            let (Some(xs), Some(ys), Some(k)) = (by_id.get(&x), by_id.get(&y), net.keys.get(&y))
            else {
                continue;
            };
            if net.deleted_by_admin(x, &ys.inst.wwwroot) {
                report.left_deleted.push(format!(
                    "{} deleted its peer {} (left deleted)",
                    xs.inst.shortname, ys.inst.shortname
                ));
                continue;
            }
            let ok = net
                .rows
                .get(&x)
                .and_then(|r| r.get(&ys.inst.wwwroot))
                .is_some_and(|pk| pk == &k.certificate);
            if !ok {
                fixes.entry(x).or_default().push(y);
            }
        }
    }
    let mut fixes: Vec<_> = fixes.into_iter().collect();
    fixes.sort();
    for (x, ys) in fixes {
        let Some(s) = by_id.get(&x) else { continue };
        let r = async {
            let mut c = s.conn().await?;
            let r = async {
                for y in ys {
                    let (Some(o), Some(k)) = (by_id.get(&y), net.keys.get(&y)) else {
                        continue;
                    };
                    let what = write_peer_row(s, &mut c, &o.inst, k, false).await?;
                    if what == PeerWrite::Created {
                        // A row vmoodle made: recorded, so forget, delete and undo find it.
                        home.registry
                            .add_mnet_link(s.inst.id, o.inst.id, true, false)
                            .await?;
                    }
                    report.mended.push(format!(
                        "{} now holds the current key of {}",
                        s.inst.shortname, o.inst.shortname
                    ));
                    debug_assert_ne!(what, PeerWrite::LeftDeleted);
                }
                anyhow::Ok(())
            }
            .await;
            vmoodle_dbserver::close(c).await;
            r
        }
        .await;
        if let Err(e) = r {
            report.errors.push(InstanceError::new(
                &s.inst.shortname,
                &e.context("mending its peer rows"),
            ));
        }
    }
    Ok(report)
}

/// Which keys `renew` renews.
#[derive(Debug, Clone)]
pub enum RenewWhat {
    /// Those due (expiring within the look-forward delay), inside the renewal window.
    Due,
    All,
    One(String),
}

#[derive(Debug, Default, Serialize)]
pub struct RenewReport {
    pub renewed: Vec<String>,
    pub mended: Vec<String>,
    /// Peer rows a site's administrator deleted; left deleted.
    pub left_deleted: Vec<String>,
    pub skipped: Option<String>,
    /// Instances that could not be renewed, read or mended; the others were.
    pub errors: Vec<InstanceError>,
    /// The Moodle caches of the renewed instances.
    pub caches: CacheReport,
}

impl RenewReport {
    /// Everything that was asked for was done.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.caches.ok()
    }
}

pub async fn renew(home: &Home, what: RenewWhat) -> Result<RenewReport> {
    let mut report = RenewReport::default();
    let targets = renew_targets(home, &what, &mut report).await?;
    if targets.is_empty() {
        // Nothing to rotate (the usual cron run): only the repair pass, which changes nothing
        // when nothing is stale; not worth a job.
        finish_peers(home, &mut report, &[]).await?;
        return Ok(report);
    }
    // Rotating keys cannot be undone (a peer may already use the new key): the job goes
    // forward from the start, and one found interrupted is finished by `jobs recover`
    // (repair, then the caches of every instance it was renewing).
    let names: Vec<String> = targets.iter().map(|i| i.shortname.clone()).collect();
    let label = match &what {
        RenewWhat::One(x) => x.clone(),
        RenewWhat::All => "all".into(),
        RenewWhat::Due => "due".into(),
    };
    let mut j = Journal::start(home, "mnet renew", &label, 2, &journal::no_events).await?;
    let r = async {
        j.step("rotate keys").await?;
        j.go_forward(&names).await?;
        let rotated = rotate_all(home, targets, &mut report).await;
        j.step("update peers and caches").await?;
        finish_peers(home, &mut report, &rotated).await
    }
    .await;
    match r {
        Ok(()) => {
            j.finish().await?;
            Ok(report)
        }
        Err(e) => {
            j.fail(&format!("{e:#}")).await;
            Err(e)
        }
    }
}

/// Runs an MNET change (`kind`, e.g. "mnet bind") as a job that goes forward: what it writes
/// into live sites (keys, peer rows) cannot be taken back once a peer may use it, so a job
/// found interrupted is finished by a repair pass and by invalidating the caches of the
/// `instances` it was changing (`jobs recover`, or the next command that takes the lock).
pub async fn as_job<T>(
    home: &Home,
    kind: &str,
    target: &str,
    instances: Vec<String>,
    change: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let mut j = Journal::start(home, kind, target, 1, &journal::no_events).await?;
    let r = async {
        j.step(kind).await?;
        j.go_forward(&instances).await?;
        change.await
    }
    .await;
    match r {
        Ok(v) => {
            j.finish().await?;
            Ok(v)
        }
        Err(e) => {
            j.fail(&format!("{e:#}")).await;
            Err(e)
        }
    }
}

/// Finishes a `mnet renew` (or other MNET) job found interrupted: every peer learns the current keys, and the
/// caches of the instances it was renewing are invalidated.
pub async fn finish_renew(home: &Home, j: Journal<'_>) -> Result<()> {
    let names: Vec<String> = j.forward_plan().unwrap_or_default();
    let all = home.registry.instances().await?;
    let targets: Vec<Instance> = all
        .into_iter()
        .filter(|i| names.contains(&i.shortname))
        .collect();
    let mut report = RenewReport::default();
    match finish_peers(home, &mut report, &targets).await {
        Ok(()) if report.ok() => {
            j.finish().await?;
            Ok(())
        }
        Ok(()) => {
            let msg = format!(
                "{} instance(s) could not be mended or had their caches invalidated",
                report.errors.len() + usize::from(!report.caches.ok())
            );
            j.fail(&msg).await;
            bail!(msg)
        }
        Err(e) => {
            j.fail(&format!("{e:#}")).await;
            Err(e)
        }
    }
}

async fn renew_targets(
    home: &Home,
    what: &RenewWhat,
    report: &mut RenewReport,
) -> Result<Vec<Instance>> {
    let now = now_unix();
    let m = &home.settings.mnet;
    let targets: Vec<Instance> = match what {
        RenewWhat::One(x) => vec![home.registry.instance(x).await?],
        RenewWhat::All => home
            .registry
            .instances()
            .await?
            .into_iter()
            .filter(|i| i.mnet >= 0)
            .collect(),
        RenewWhat::Due => {
            if !m.autorenew {
                report.skipped = Some("mnet.autorenew is off".into());
                vec![]
            } else if !m.in_window(now) {
                report.skipped = Some(format!(
                    "outside the renewal window ({} UTC for {} minutes)",
                    m.renew_time, m.renew_window_minutes
                ));
                vec![]
            } else {
                let st = status(home).await?;
                let due: Vec<String> = st
                    .instances
                    .into_iter()
                    .filter(|i| i.due)
                    .map(|i| i.instance)
                    .collect();
                home.registry
                    .instances()
                    .await?
                    .into_iter()
                    .filter(|i| due.contains(&i.shortname))
                    .collect()
            }
        }
    };
    Ok(targets)
}

/// New keys for `targets`, one instance at a time; one that fails is reported and the others
/// go on. Returns the instances whose key was rotated.
async fn rotate_all(
    home: &Home,
    targets: Vec<Instance>,
    report: &mut RenewReport,
) -> Vec<Instance> {
    let mut rotated = Vec::new();
    for inst in targets {
        let name = inst.shortname.clone();
        let r = async {
            let s = site(home, inst).await?;
            let mut c = s.conn().await?;
            let r = rotate(home, &s, &mut c).await;
            vmoodle_dbserver::close(c).await;
            r?;
            anyhow::Ok(s.inst)
        }
        .await
        .with_context(|| format!("renewing the key of `{name}`"));
        match r {
            Ok(i) => {
                report.renewed.push(name);
                rotated.push(i);
            }
            Err(e) => report.errors.push(InstanceError::new(&name, &e)),
        }
    }
    rotated
}

/// Every peer learns the current keys (this also finishes a run that was interrupted between
/// an instance and its peers; an instance that failed before is reported only once), then the
/// Moodle caches of the `rotated` instances are invalidated.
async fn finish_peers(home: &Home, report: &mut RenewReport, rotated: &[Instance]) -> Result<()> {
    let rep = repair(home).await?;
    report.mended = rep.mended;
    report.left_deleted = rep.left_deleted;
    for e in rep.errors {
        if !report.errors.iter().any(|x| x.instance == e.instance) {
            report.errors.push(e);
        }
    }
    // The renewed sites' Moodle caches still hold their old keys.
    report.caches = caches::invalidate_config(home, rotated).await;
    Ok(())
}
