//! Moodle Network across the fleet, done through each instance's database (no core patch, no
//! XML-RPC): key pairs in Moodle's own format, peers (each holding the other's `mnet_host` row
//! and, where the SSO services exist, `mnet_host2service` rows both ways), subnetworks, renewal
//! that updates every peer, and a status/repair pass that mends stale or missing peer rows.
//!
//! A peer row that a site's administrator deleted in Moodle (`mnet_host.deleted = 1`) stays
//! deleted: renewal and repair never revive it (only an explicit `peer`/`bind` does). Renewal,
//! status and repair work instance by instance: one unreachable database is reported and the rest
//! of the fleet is still renewed and mended. After a site's key changed, its Moodle caches are
//! invalidated through Moodle itself (crate::caches).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use vmoodle_core::{now_unix, DbKind};
use vmoodle_dbserver::{quote_ident, Conn, ConnSpec, Param};
use vmoodle_registry::Instance;
use vmoodle_site::fixups::set_setting;
use vmoodle_site::mnet::{self, CertInfo, HistoryEntry, Keypair};

use crate::caches::{self, CacheReport};
use crate::journal::{self, Journal};
use crate::{dbservers, Home};

/// Something that failed for one instance while the others went on.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceError {
    pub instance: String,
    pub error: String,
}

impl InstanceError {
    fn new(instance: &str, e: &anyhow::Error) -> Self {
        Self {
            instance: instance.to_string(),
            error: format!("{e:#}"),
        }
    }
}

/// An instance's database, reached with its server's administrator account.
struct Site {
    inst: Instance,
    kind: DbKind,
    spec: ConnSpec,
}

impl Site {
    fn t(&self, table: &str) -> String {
        quote_ident(self.kind, &format!("{}{table}", self.inst.prefix))
    }
    fn cast(&self, col: &str) -> String {
        if self.kind.is_mysql_family() {
            format!("CAST({col} AS CHAR)")
        } else {
            format!("{col}::text")
        }
    }
    async fn conn(&self) -> Result<Conn> {
        Ok(vmoodle_dbserver::connect(&self.spec, Some(&self.inst.dbname)).await?)
    }
    async fn config(
        &self,
        c: &mut Conn,
        plugin: Option<&str>,
        name: &str,
    ) -> Result<Option<String>> {
        let v = self.cast("value");
        Ok(match plugin {
            None => {
                c.column(
                    &format!("SELECT {v} FROM {} WHERE name = ?", self.t("config")),
                    &[name.into()],
                )
                .await?
            }
            Some(p) => {
                c.column(
                    &format!(
                        "SELECT {v} FROM {} WHERE plugin = ? AND name = ?",
                        self.t("config_plugins")
                    ),
                    &[p.into(), name.into()],
                )
                .await?
            }
        }
        .into_iter()
        .next())
    }
    async fn local_id(&self, c: &mut Conn) -> Result<i64> {
        self.config(c, None, "mnet_localhost_id")
            .await?
            .and_then(|v| v.parse().ok())
            .with_context(|| {
                format!(
                    "`{}` has no mnet_localhost_id: is it a Moodle database?",
                    self.inst.shortname
                )
            })
    }
    async fn keypair(&self, c: &mut Conn) -> Result<Option<Keypair>> {
        Ok(self
            .config(c, Some("mnet"), "openssl")
            .await?
            .as_deref()
            .and_then(mnet::from_config))
    }
}

async fn site(home: &Home, inst: Instance) -> Result<Site> {
    let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
    Ok(Site {
        kind: server.kind,
        spec: dbservers::admin_spec(home, &server)?,
        inst,
    })
}

async fn site_by_key(home: &Home, key: &str) -> Result<Site> {
    let inst = home.registry.instance(key).await?;
    site(home, inst).await
}

#[derive(Debug, Serialize)]
pub struct KeysReport {
    pub instance: String,
    pub wwwroot: String,
    pub mnet_mode: String,
    pub dispatcher: Option<String>,
    pub current: Option<CertInfo>,
    pub private_key_matches: bool,
    pub local_row_current: bool,
    pub history: Vec<HistoryItem>,
}

#[derive(Debug, Serialize)]
pub struct HistoryItem {
    pub expires: i64,
    pub fingerprint_sha256: String,
}

pub async fn keys(home: &Home, key: &str) -> Result<KeysReport> {
    let s = site_by_key(home, key).await?;
    let mut c = s.conn().await?;
    let r = async {
        let kp = s.keypair(&mut c).await?;
        let local = s.local_id(&mut c).await?;
        let row = c
            .column(
                &format!(
                    "SELECT {} FROM {} WHERE id = ?",
                    s.cast("public_key"),
                    s.t("mnet_host")
                ),
                &[local.into()],
            )
            .await?;
        let history = s
            .config(&mut c, Some("mnet"), "openssl_history")
            .await?
            .and_then(|h| mnet::parse_history(&h))
            .unwrap_or_default();
        anyhow::Ok(KeysReport {
            instance: s.inst.shortname.clone(),
            wwwroot: s.inst.wwwroot.clone(),
            mnet_mode: vmoodle_core::MnetMode(s.inst.mnet).describe(),
            dispatcher: s.config(&mut c, None, "mnet_dispatcher_mode").await?,
            current: kp
                .as_ref()
                .and_then(|k| mnet::cert_info(&k.certificate).ok()),
            private_key_matches: kp.as_ref().is_some_and(mnet::key_matches),
            local_row_current: kp
                .as_ref()
                .is_some_and(|k| row.first().is_some_and(|r| r == &k.certificate)),
            history: history
                .iter()
                .map(|h| HistoryItem {
                    expires: h.expires,
                    fingerprint_sha256: mnet::cert_info(&h.certificate)
                        .map(|i| i.fingerprint_sha256)
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }
    .await;
    vmoodle_dbserver::close(c).await;
    r
}

/// Gives a site a fresh key pair, the previous one moved into the history as Moodle does, and
/// turns MNET on. Returns the new pair and its expiry.
async fn rotate(home: &Home, s: &Site, c: &mut Conn) -> Result<(Keypair, i64)> {
    let local = s.local_id(c).await?;
    let old = s.keypair(c).await?;
    let old_expires: i64 = c
        .column(
            &format!(
                "SELECT {} FROM {} WHERE id = ?",
                s.cast("public_key_expires"),
                s.t("mnet_host")
            ),
            &[local.into()],
        )
        .await?
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let host = s
        .inst
        .host
        .split(':')
        .next()
        .unwrap_or(&s.inst.host)
        .to_string();
    let kp = mnet::generate(
        &s.inst.wwwroot,
        &s.inst.name,
        &format!("noreply@{host}"),
        home.settings.mnet.key_lifetime_days,
    )?;
    let expires = mnet::cert_info(&kp.certificate)?.not_after;
    let mut history = s
        .config(c, Some("mnet"), "openssl_history")
        .await?
        .and_then(|h| mnet::parse_history(&h))
        .unwrap_or_default();
    let generations = match s
        .config(c, Some("mnet"), "openssl_generations")
        .await?
        .and_then(|g| g.parse::<usize>().ok())
    {
        Some(g) if g > 0 => g,
        _ => {
            set_setting(
                c,
                s.kind,
                &s.inst.prefix,
                Some("mnet"),
                "openssl_generations",
                &mnet::DEFAULT_GENERATIONS.to_string(),
            )
            .await?;
            mnet::DEFAULT_GENERATIONS
        }
    };
    if let Some(o) = old {
        history.insert(
            0,
            HistoryEntry {
                certificate: o.certificate,
                private_key: o.private_key,
                expires: old_expires,
            },
        );
    }
    history.truncate(generations);
    set_setting(
        c,
        s.kind,
        &s.inst.prefix,
        Some("mnet"),
        "openssl_history",
        &mnet::serialize_history(&history),
    )
    .await?;
    set_setting(
        c,
        s.kind,
        &s.inst.prefix,
        Some("mnet"),
        "openssl",
        &mnet::to_config(&kp),
    )
    .await?;
    c.exec(
        &format!(
            "UPDATE {} SET public_key = ?, public_key_expires = ?, wwwroot = ? WHERE id = ?",
            s.t("mnet_host")
        ),
        &[
            kp.certificate.as_str().into(),
            expires.into(),
            s.inst.wwwroot.as_str().into(),
            local.into(),
        ],
    )
    .await?;
    set_setting(
        c,
        s.kind,
        &s.inst.prefix,
        None,
        "mnet_dispatcher_mode",
        "strict",
    )
    .await?;
    Ok((kp, expires))
}

/// What `mnet init` did.
#[derive(Debug, Serialize)]
pub struct InitReport {
    pub certificate: CertInfo,
    pub repair: RepairReport,
    pub caches: CacheReport,
}

/// `vmoodle mnet init X`: a fresh key pair (and MNET on); its peers learn the new key, and the
/// site's Moodle caches are invalidated.
pub async fn init(home: &Home, key: &str) -> Result<InitReport> {
    let s = site_by_key(home, key).await?;
    let mut c = s.conn().await?;
    let r = rotate(home, &s, &mut c).await;
    vmoodle_dbserver::close(c).await;
    let (kp, _) = r?;
    let repair = repair_for(home, Some(s.inst.id)).await?;
    let caches = caches::invalidate_config(home, std::slice::from_ref(&s.inst)).await;
    Ok(InitReport {
        certificate: mnet::cert_info(&kp.certificate)?,
        repair,
        caches,
    })
}

/// A peer's view of another site: its current certificate and expiry.
struct Current {
    certificate: String,
    expires: i64,
}

async fn current(s: &Site, c: &mut Conn) -> Result<Option<Current>> {
    Ok(match s.keypair(c).await? {
        Some(k) => {
            let expires = mnet::cert_info(&k.certificate)?.not_after;
            Some(Current {
                certificate: k.certificate,
                expires,
            })
        }
        None => None,
    })
}

/// What writing a peer row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerWrite {
    Created,
    Updated,
    /// The site's administrator deleted that peer (deleted = 1); left as it is.
    LeftDeleted,
}

/// Writes (or refreshes) `other`'s row in `s`'s mnet_host, and the SSO service rows where those
/// services exist. A row the site's administrator deleted (deleted = 1) is brought back only
/// when `revive` (an explicit `peer`/`bind`); otherwise it is left deleted and nothing is written.
async fn write_peer_row(
    s: &Site,
    c: &mut Conn,
    other: &Instance,
    cur: &Current,
    revive: bool,
) -> Result<PeerWrite> {
    let rows = c
        .rows(
            &format!(
                "SELECT {}, {} FROM {} WHERE wwwroot = ?",
                s.cast("id"),
                s.cast("deleted"),
                s.t("mnet_host")
            ),
            &[other.wwwroot.as_str().into()],
        )
        .await?;
    let all: Vec<(i64, bool)> = rows
        .iter()
        .filter_map(|r| {
            let id = r[0].as_deref()?.parse().ok()?;
            Some((id, r[1].as_deref().is_some_and(|d| d != "0")))
        })
        .collect();
    let live: Vec<i64> = all.iter().filter(|(_, d)| !d).map(|(id, _)| *id).collect();
    if live.is_empty() && !all.is_empty() && !revive {
        return Ok(PeerWrite::LeftDeleted);
    }
    let (id, created) = match live.first().or(all.first().map(|(id, _)| id)) {
        Some(&id) => {
            // Every live row for that wwwroot (an administrator may have made more than one);
            // with `revive`, deleted ones too.
            c.exec(
                &format!(
                    "UPDATE {} SET public_key = ?, public_key_expires = ?, deleted = 0, name = ? WHERE wwwroot = ?{}",
                    s.t("mnet_host"),
                    if revive { "" } else { " AND deleted = 0" }
                ),
                &[
                    cur.certificate.as_str().into(),
                    cur.expires.into(),
                    other.name.chars().take(80).collect::<String>().into(),
                    other.wwwroot.as_str().into(),
                ],
            )
            .await?;
            (id, false)
        }
        None => {
            let app: i64 = c
                .column(
                    &format!(
                        "SELECT {} FROM {} WHERE name = 'moodle'",
                        s.cast("id"),
                        s.t("mnet_application")
                    ),
                    &[],
                )
                .await?
                .first()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let host = other
                .host
                .split(':')
                .next()
                .unwrap_or(&other.host)
                .to_string();
            let ip = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 80))
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let ssl = if other.wwwroot.starts_with("https://") {
                2
            } else {
                0
            };
            c.exec(
                &format!(
                    "INSERT INTO {} (deleted, wwwroot, ip_address, name, public_key, public_key_expires, transport, portno, \
                     last_connect_time, last_log_id, force_theme, theme, applicationid, sslverification) \
                     VALUES (0, ?, ?, ?, ?, ?, 0, 0, 0, 0, 0, NULL, ?, ?)",
                    s.t("mnet_host")
                ),
                &[
                    other.wwwroot.as_str().into(),
                    ip.into(),
                    other.name.chars().take(80).collect::<String>().into(),
                    cur.certificate.as_str().into(),
                    cur.expires.into(),
                    app.into(),
                    Param::I64(ssl),
                ],
            )
            .await?;
            let id = *peer_row_ids(s, c, &other.wwwroot)
                .await?
                .first()
                .context("reading back a new mnet_host row")?;
            (id, true)
        }
    };
    // Single sign-on both ways: identity provider and service provider, published and
    // subscribed, where auth_mnet's services exist (core in Moodle 4.x, an add-on in 5.x).
    let services = c
        .rows(
            &format!(
                "SELECT {}, {} FROM {} WHERE name IN ('sso_idp', 'sso_sp')",
                s.cast("id"),
                s.cast("name"),
                s.t("mnet_service")
            ),
            &[],
        )
        .await?;
    for r in services {
        let Some(sid) = r[0].as_deref().and_then(|v| v.parse::<i64>().ok()) else {
            continue;
        };
        let n = c
            .exec(
                &format!(
                    "UPDATE {} SET publish = 1, subscribe = 1 WHERE hostid = ? AND serviceid = ?",
                    s.t("mnet_host2service")
                ),
                &[id.into(), sid.into()],
            )
            .await?;
        if n == 0 {
            let exists = !c
                .rows(
                    &format!(
                        "SELECT {} FROM {} WHERE hostid = ? AND serviceid = ?",
                        s.cast("id"),
                        s.t("mnet_host2service")
                    ),
                    &[id.into(), sid.into()],
                )
                .await?
                .is_empty();
            if !exists {
                c.exec(&format!("INSERT INTO {} (hostid, serviceid, publish, subscribe) VALUES (?, ?, 1, 1)", s.t("mnet_host2service")), &[id.into(), sid.into()])
                    .await?;
            }
        }
    }
    Ok(if created {
        PeerWrite::Created
    } else {
        PeerWrite::Updated
    })
}

/// Makes sure a site has a key (making one if it has none); returns its current key and
/// whether it was just made.
async fn ensure_key(home: &Home, s: &Site, c: &mut Conn) -> Result<(Current, bool)> {
    if let Some(cur) = current(s, c).await? {
        return Ok((cur, false));
    }
    let (kp, expires) = rotate(home, s, c).await?;
    Ok((
        Current {
            certificate: kp.certificate,
            expires,
        },
        true,
    ))
}

/// `vmoodle mnet peer X Y`: each holds the other's row (and SSO service rows). Returns the
/// instances that got their first key (their Moodle caches need invalidating).
pub async fn peer(home: &Home, x: &str, y: &str) -> Result<Vec<Instance>> {
    let a = site_by_key(home, x).await?;
    let b = site_by_key(home, y).await?;
    if a.inst.id == b.inst.id {
        bail!("an instance cannot be its own peer");
    }
    peer_sites(home, &a, &b).await
}

/// The ids of `s`'s peer rows (live or deleted) for `wwwroot`.
async fn peer_row_ids(s: &Site, c: &mut Conn, wwwroot: &str) -> Result<Vec<i64>> {
    let ids = c
        .column(
            &format!(
                "SELECT {} FROM {} WHERE wwwroot = ?",
                s.cast("id"),
                s.t("mnet_host")
            ),
            &[wwwroot.into()],
        )
        .await?;
    Ok(ids.iter().filter_map(|v| v.parse().ok()).collect())
}

/// Whether `s` has a peer row (live or deleted) for `wwwroot`.
async fn has_peer_row(s: &Site, c: &mut Conn, wwwroot: &str) -> Result<bool> {
    Ok(!peer_row_ids(s, c, wwwroot).await?.is_empty())
}

async fn peer_sites(home: &Home, a: &Site, b: &Site) -> Result<Vec<Instance>> {
    let mut ca = a.conn().await?;
    let mut cb = b.conn().await?;
    let r = async {
        let (ka, a_new) = ensure_key(home, a, &mut ca).await?;
        let (kb, b_new) = ensure_key(home, b, &mut cb).await?;
        // The register learns which rows vmoodle is about to create before it writes them, so
        // a crash in between never leaves a row in a peer's database that nobody can find (the
        // deploy's undo and `forget` remove what the link says vmoodle made).
        let a_will = !has_peer_row(a, &mut ca, &b.inst.wwwroot).await?;
        let b_will = !has_peer_row(b, &mut cb, &a.inst.wwwroot).await?;
        home.registry
            .add_mnet_link(a.inst.id, b.inst.id, a_will, b_will)
            .await?;
        let a_made = write_peer_row(a, &mut ca, &b.inst, &kb, true).await? == PeerWrite::Created;
        let b_made = write_peer_row(b, &mut cb, &a.inst, &ka, true).await? == PeerWrite::Created;
        if (a_made, b_made) != (a_will, b_will) {
            home.registry
                .add_mnet_link(a.inst.id, b.inst.id, a_made, b_made)
                .await?;
        }
        let mut keyed = Vec::new();
        if a_new {
            keyed.push(a.inst.clone());
        }
        if b_new {
            keyed.push(b.inst.clone());
        }
        anyhow::Ok(keyed)
    }
    .await;
    vmoodle_dbserver::close(ca).await;
    vmoodle_dbserver::close(cb).await;
    r
}

/// Removes a peering: the rows vmoodle made on each side, and nothing else.
pub async fn unpeer(home: &Home, x: &str, y: &str) -> Result<()> {
    let a = site_by_key(home, x).await?;
    let b = site_by_key(home, y).await?;
    unpeer_sites(home, &a, &b).await
}

async fn unpeer_sites(home: &Home, a: &Site, b: &Site) -> Result<()> {
    let links = home.registry.mnet_links().await?;
    let (lo, hi) = if a.inst.id < b.inst.id {
        (a, b)
    } else {
        (b, a)
    };
    let Some(link) = links
        .iter()
        .find(|l| l.a_id == lo.inst.id && l.b_id == hi.inst.id)
    else {
        bail!(
            "`{}` and `{}` are not peers made by vmoodle",
            a.inst.shortname,
            b.inst.shortname
        );
    };
    for (side, other, made) in [(lo, hi, link.a_made), (hi, lo, link.b_made)] {
        if !made {
            continue;
        }
        let mut c = side.conn().await?;
        let r = delete_peer_rows(side, &mut c, &other.inst.wwwroot).await;
        vmoodle_dbserver::close(c).await;
        r?;
    }
    home.registry.remove_mnet_link(a.inst.id, b.inst.id).await?;
    Ok(())
}

/// What `bind` did.
#[derive(Debug, Default)]
pub struct BindReport {
    pub peers: Vec<String>,
    /// Instances that got their first key (their Moodle caches need invalidating).
    pub keyed: Vec<Instance>,
}

/// `vmoodle mnet bind X --subnetwork N`: X joins subnetwork N and peers with every member.
pub async fn bind(home: &Home, x: &str, n: i64) -> Result<BindReport> {
    if n < 1 {
        bail!("a subnetwork is a number from 1 (use `vmoodle mnet unbind` to leave one)");
    }
    let s = site_by_key(home, x).await?;
    if s.inst.mnet > 0 && s.inst.mnet != n {
        unbind(home, x).await?;
    }
    home.registry.set_mnet(s.inst.id, n).await?;
    let s = site_by_key(home, x).await?;
    let mut report = BindReport::default();
    for other in home.registry.instances().await? {
        if other.id != s.inst.id && other.mnet == n {
            let o = site(home, other).await?;
            report.keyed.extend(peer_sites(home, &s, &o).await?);
            report.peers.push(o.inst.shortname.clone());
        }
    }
    if report.peers.is_empty() {
        // Alone in its subnetwork for now: it still gets its key.
        let mut c = s.conn().await?;
        let r = ensure_key(home, &s, &mut c).await;
        vmoodle_dbserver::close(c).await;
        if r?.1 {
            report.keyed.push(s.inst.clone());
        }
    }
    Ok(report)
}

/// Leaves the subnetwork: the peerings with its members go (rows vmoodle made), MNET stays on.
pub async fn unbind(home: &Home, x: &str) -> Result<Vec<String>> {
    let s = site_by_key(home, x).await?;
    let n = s.inst.mnet;
    let mut removed = Vec::new();
    if n > 0 {
        let links = home.registry.mnet_links().await?;
        for other in home.registry.instances().await? {
            let linked = links.iter().any(|l| {
                (l.a_id == s.inst.id && l.b_id == other.id)
                    || (l.b_id == s.inst.id && l.a_id == other.id)
            });
            if other.id != s.inst.id && other.mnet == n && linked {
                let o = site(home, other).await?;
                unpeer_sites(home, &s, &o).await?;
                removed.push(o.inst.shortname.clone());
            }
        }
    }
    home.registry.set_mnet(s.inst.id, 0).await?;
    Ok(removed)
}

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

async fn repair_for(home: &Home, only: Option<i64>) -> Result<RepairReport> {
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

/// MNET changes touch several instances' databases (a new key, then rows in every peer).
/// Commands take the home's lock, so across processes they run one at a time; within one
/// process, the deploys of a bulk run take this lock for their MNET step, so two of them never
/// both create the same key or peer row.
static MNET_STEP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Gives a newly deployed instance its MNET: its own key, and its subnetwork's peers.
pub async fn setup_new(home: &Home, key: &str) -> Result<()> {
    let _one_at_a_time = MNET_STEP.lock().await;
    let s = site_by_key(home, key).await?;
    if s.inst.mnet < 0 {
        return Ok(());
    }
    // The fix-ups removed the template's key; the instance has none unless a sibling of the
    // same bulk run, binding first, already gave it its own.
    // Its Moodle caches are empty (a deploy leaves the template's cache out), and its peers
    // already have keys, so no cache needs invalidating here.
    let mut c = s.conn().await?;
    let r = ensure_key(home, &s, &mut c).await;
    vmoodle_dbserver::close(c).await;
    r?;
    if s.inst.mnet > 0 {
        bind(home, key, s.inst.mnet).await?;
    }
    Ok(())
}

/// Removes every peering vmoodle made with `inst`: in each peer's database, the row (and SSO
/// service rows) for `inst` that vmoodle created, then the register's record of the peering.
/// `inst`'s own database is left alone (`instance forget` keeps it; `delete` drops it). Peers
/// that cannot be reached keep their record, and the error names them, so a second run finishes.
/// Returns the shortnames of the peers it was removed from.
pub async fn remove_peerings(home: &Home, inst: &Instance) -> Result<Vec<String>> {
    let links: Vec<_> = home
        .registry
        .mnet_links()
        .await?
        .into_iter()
        .filter(|l| l.a_id == inst.id || l.b_id == inst.id)
        .collect();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for l in links {
        // The other side, and whether vmoodle made its row for `inst`.
        let (other_id, made) = if l.a_id == inst.id {
            (l.b_id, l.b_made)
        } else {
            (l.a_id, l.a_made)
        };
        let Some(other) = home
            .registry
            .instances()
            .await?
            .into_iter()
            .find(|i| i.id == other_id)
        else {
            home.registry.remove_mnet_link(inst.id, other_id).await?;
            continue;
        };
        let name = other.shortname.clone();
        let r = async {
            if made {
                let o = site(home, other).await?;
                let mut c = o.conn().await?;
                let r = delete_peer_rows(&o, &mut c, &inst.wwwroot).await;
                vmoodle_dbserver::close(c).await;
                r?;
            }
            home.registry.remove_mnet_link(inst.id, other_id).await?;
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => done.push(name),
            Err(e) => failed.push(format!("`{name}`: {e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!(
            "the MNET peer rows for `{}` could not be removed from {}\nhint: make those databases reachable and run the command again",
            inst.shortname,
            failed.join("; ")
        );
    }
    Ok(done)
}

/// Deletes the peer rows for `wwwroot` in `s`'s database, with their SSO service rows.
async fn delete_peer_rows(s: &Site, c: &mut Conn, wwwroot: &str) -> Result<()> {
    for id in peer_row_ids(s, c, wwwroot).await? {
        c.exec(
            &format!("DELETE FROM {} WHERE hostid = ?", s.t("mnet_host2service")),
            &[id.into()],
        )
        .await?;
        c.exec(
            &format!("DELETE FROM {} WHERE id = ?", s.t("mnet_host")),
            &[id.into()],
        )
        .await?;
    }
    Ok(())
}

/// `remove_peerings` by instance id (for job undo records): nothing to do once the instance
/// is gone from the register (its peerings went with it).
pub async fn remove_peerings_of(home: &Home, instance_id: i64) -> Result<()> {
    let all = home.registry.instances().await?;
    if let Some(inst) = all.into_iter().find(|i| i.id == instance_id) {
        remove_peerings(home, &inst).await?;
    }
    Ok(())
}
