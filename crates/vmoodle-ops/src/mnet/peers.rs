//! MNET peers: the rows each site holds for the other, subnetworks, a new instance's peers, and
//! removing the peerings vmoodle made.

use super::*;

/// What writing a peer row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerWrite {
    Created,
    Updated,
    /// The site's administrator deleted that peer (deleted = 1); left as it is.
    LeftDeleted,
}

/// Writes (or refreshes) `other`'s row in `s`'s mnet_host, and the SSO service rows where those
/// services exist. A row the site's administrator deleted (deleted = 1) is brought back only
/// when `revive` (an explicit `peer`/`bind`); otherwise it is left deleted and nothing is written.
pub(super) async fn write_peer_row(
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
