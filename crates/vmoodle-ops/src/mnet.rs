//! Moodle Network across the fleet, done through each instance's database (no core patch, no
//! XML-RPC): key pairs in Moodle's own format, peers (each holding the other's `mnet_host` row
//! and, where the SSO services exist, `mnet_host2service` rows both ways), subnetworks, renewal
//! that updates every peer, and a status/repair pass that mends stale or missing peer rows.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use vmoodle_core::{now_unix, DbKind};
use vmoodle_dbserver::{quote_ident, Conn, ConnSpec, Param};
use vmoodle_registry::Instance;
use vmoodle_site::fixups::set_setting;
use vmoodle_site::mnet::{self, CertInfo, HistoryEntry, Keypair};

use crate::{dbservers, Home};

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

/// `vmoodle mnet init X`: a fresh key pair (and MNET on); its peers learn the new key.
pub async fn init(home: &Home, key: &str) -> Result<CertInfo> {
    let s = site_by_key(home, key).await?;
    let mut c = s.conn().await?;
    let r = rotate(home, &s, &mut c).await;
    vmoodle_dbserver::close(c).await;
    let (kp, _) = r?;
    repair_for(home, Some(s.inst.id)).await?;
    Ok(mnet::cert_info(&kp.certificate)?)
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

/// Writes (or refreshes) `other`'s row in `s`'s mnet_host, and the SSO service rows where those
/// services exist. Returns whether the row was created.
async fn write_peer_row(s: &Site, c: &mut Conn, other: &Instance, cur: &Current) -> Result<bool> {
    let rows = c
        .rows(
            &format!(
                "SELECT {} FROM {} WHERE wwwroot = ?",
                s.cast("id"),
                s.t("mnet_host")
            ),
            &[other.wwwroot.as_str().into()],
        )
        .await?;
    let ids: Vec<i64> = rows
        .iter()
        .filter_map(|r| r[0].as_deref().and_then(|v| v.parse().ok()))
        .collect();
    let (id, created) = match ids.first() {
        Some(&id) => {
            // Every row for that wwwroot (an administrator may have made more than one).
            c.exec(
                &format!("UPDATE {} SET public_key = ?, public_key_expires = ?, deleted = 0, name = ? WHERE wwwroot = ?", s.t("mnet_host")),
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
            let id = c
                .column(
                    &format!(
                        "SELECT {} FROM {} WHERE wwwroot = ?",
                        s.cast("id"),
                        s.t("mnet_host")
                    ),
                    &[other.wwwroot.as_str().into()],
                )
                .await?
                .first()
                .and_then(|v| v.parse().ok())
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
    Ok(created)
}

/// Makes sure a site has a key (making one if it has none); returns its current key.
async fn ensure_key(home: &Home, s: &Site, c: &mut Conn) -> Result<Current> {
    if let Some(cur) = current(s, c).await? {
        return Ok(cur);
    }
    let (kp, expires) = rotate(home, s, c).await?;
    Ok(Current {
        certificate: kp.certificate,
        expires,
    })
}

/// `vmoodle mnet peer X Y`: each holds the other's row (and SSO service rows).
pub async fn peer(home: &Home, x: &str, y: &str) -> Result<()> {
    let a = site_by_key(home, x).await?;
    let b = site_by_key(home, y).await?;
    if a.inst.id == b.inst.id {
        bail!("an instance cannot be its own peer");
    }
    peer_sites(home, &a, &b).await
}

async fn peer_sites(home: &Home, a: &Site, b: &Site) -> Result<()> {
    let mut ca = a.conn().await?;
    let mut cb = b.conn().await?;
    let r = async {
        let ka = ensure_key(home, a, &mut ca).await?;
        let kb = ensure_key(home, b, &mut cb).await?;
        let a_made = write_peer_row(a, &mut ca, &b.inst, &kb).await?;
        let b_made = write_peer_row(b, &mut cb, &a.inst, &ka).await?;
        home.registry
            .add_mnet_link(a.inst.id, b.inst.id, a_made, b_made)
            .await?;
        anyhow::Ok(())
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
        let r = async {
            let ids = c
                .column(
                    &format!(
                        "SELECT {} FROM {} WHERE wwwroot = ?",
                        side.cast("id"),
                        side.t("mnet_host")
                    ),
                    &[other.inst.wwwroot.as_str().into()],
                )
                .await?;
            for id in ids.iter().filter_map(|v| v.parse::<i64>().ok()) {
                c.exec(
                    &format!(
                        "DELETE FROM {} WHERE hostid = ?",
                        side.t("mnet_host2service")
                    ),
                    &[id.into()],
                )
                .await?;
                c.exec(
                    &format!("DELETE FROM {} WHERE id = ?", side.t("mnet_host")),
                    &[id.into()],
                )
                .await?;
            }
            anyhow::Ok(())
        }
        .await;
        vmoodle_dbserver::close(c).await;
        r?;
    }
    home.registry.remove_mnet_link(a.inst.id, b.inst.id).await?;
    Ok(())
}

/// `vmoodle mnet bind X --subnetwork N`: X joins subnetwork N and peers with every member.
pub async fn bind(home: &Home, x: &str, n: i64) -> Result<Vec<String>> {
    if n < 1 {
        bail!("a subnetwork is a number from 1 (use `vmoodle mnet unbind` to leave one)");
    }
    let s = site_by_key(home, x).await?;
    if s.inst.mnet > 0 && s.inst.mnet != n {
        unbind(home, x).await?;
    }
    home.registry.set_mnet(s.inst.id, n).await?;
    let s = site_by_key(home, x).await?;
    let mut peers = Vec::new();
    for other in home.registry.instances().await? {
        if other.id != s.inst.id && other.mnet == n {
            let o = site(home, other).await?;
            peer_sites(home, &s, &o).await?;
            peers.push(o.inst.shortname.clone());
        }
    }
    if peers.is_empty() {
        // Alone in its subnetwork for now: it still gets its key.
        let mut c = s.conn().await?;
        let r = ensure_key(home, &s, &mut c).await;
        vmoodle_dbserver::close(c).await;
        r?;
    }
    Ok(peers)
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
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub instances: Vec<InstanceStatus>,
    pub pairs: Vec<PairStatus>,
}

/// What every instance's database says: its own key, and the peer rows it holds.
struct Snapshot {
    sites: Vec<Site>,
    keys: HashMap<i64, Current>,
    /// instance id -> (peer wwwroot -> public_key)
    rows: HashMap<i64, HashMap<String, String>>,
}

async fn read_network(home: &Home, only: Option<&[i64]>) -> Result<Snapshot> {
    let links = home.registry.mnet_links().await?;
    let mut sites = Vec::new();
    for inst in home.registry.instances().await? {
        let involved =
            inst.mnet >= 0 || links.iter().any(|l| l.a_id == inst.id || l.b_id == inst.id);
        if involved && only.is_none_or(|o| o.contains(&inst.id)) {
            sites.push(site(home, inst).await?);
        }
    }
    let mut keys = HashMap::new();
    let mut rows = HashMap::new();
    for s in &sites {
        let mut c = s.conn().await?;
        let r = async {
            if let Some(cur) = current(s, &mut c).await? {
                keys.insert(s.inst.id, cur);
            }
            let local = s.local_id(&mut c).await?;
            let all = c
                .rows(
                    &format!(
                        "SELECT {}, {} FROM {} WHERE id <> ? AND deleted = 0",
                        s.cast("wwwroot"),
                        s.cast("public_key"),
                        s.t("mnet_host")
                    ),
                    &[local.into()],
                )
                .await?;
            rows.insert(
                s.inst.id,
                all.into_iter()
                    .filter_map(|r| Some((r[0].clone()?, r[1].clone().unwrap_or_default())))
                    .collect(),
            );
            anyhow::Ok(())
        }
        .await;
        vmoodle_dbserver::close(c).await;
        r.with_context(|| format!("reading MNET state of `{}`", s.inst.shortname))?;
    }
    Ok(Snapshot { sites, keys, rows })
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
        })
        .collect();
    Ok(Status { instances, pairs })
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub mended: Vec<String>,
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
    let by_id: HashMap<i64, &Site> = net.sites.iter().map(|s| (s.inst.id, s)).collect();
    // Group the fixes by the database they go to, so each gets one connection.
    let mut fixes: HashMap<i64, Vec<i64>> = HashMap::new();
    for l in &links {
        for (x, y) in [(l.a_id, l.b_id), (l.b_id, l.a_id)] {
            let (Some(ys), Some(k)) = (by_id.get(&y), net.keys.get(&y)) else {
                continue;
            };
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
    for (x, ys) in fixes {
        let Some(s) = by_id.get(&x) else { continue };
        let mut c = s.conn().await?;
        let r = async {
            for y in ys {
                let (Some(o), Some(k)) = (by_id.get(&y), net.keys.get(&y)) else {
                    continue;
                };
                write_peer_row(s, &mut c, &o.inst, k).await?;
                report.mended.push(format!(
                    "{} now holds the current key of {}",
                    s.inst.shortname, o.inst.shortname
                ));
            }
            anyhow::Ok(())
        }
        .await;
        vmoodle_dbserver::close(c).await;
        r?;
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
    pub skipped: Option<String>,
}

pub async fn renew(home: &Home, what: RenewWhat) -> Result<RenewReport> {
    let mut report = RenewReport::default();
    let now = now_unix();
    let m = &home.settings.mnet;
    let targets: Vec<Instance> = match &what {
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
    for inst in targets {
        let s = site(home, inst).await?;
        let mut c = s.conn().await?;
        let r = rotate(home, &s, &mut c).await;
        vmoodle_dbserver::close(c).await;
        r.with_context(|| format!("renewing the key of `{}`", s.inst.shortname))?;
        report.renewed.push(s.inst.shortname.clone());
    }
    // Every peer learns the new keys; this also finishes a run that was interrupted between an
    // instance and its peers.
    report.mended = repair(home).await?.mended;
    Ok(report)
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
    let mut c = s.conn().await?;
    let r = ensure_key(home, &s, &mut c).await;
    vmoodle_dbserver::close(c).await;
    r?;
    if s.inst.mnet > 0 {
        bind(home, key, s.inst.mnet).await?;
    }
    Ok(())
}

/// Removes every peering vmoodle made for an instance (the rows it wrote in its peers'
/// databases and in the instance's own), leaving rows an administrator made alone.
pub async fn remove_peerings_of(home: &Home, instance_id: i64) -> Result<()> {
    let all = home.registry.instances().await?;
    let name = |id: i64| all.iter().find(|i| i.id == id).map(|i| i.shortname.clone());
    for l in home.registry.mnet_links().await? {
        if l.a_id != instance_id && l.b_id != instance_id {
            continue;
        }
        if let (Some(a), Some(b)) = (name(l.a_id), name(l.b_id)) {
            unpeer(home, &a, &b).await?;
        }
    }
    Ok(())
}
