//! `vmoodle upgrade status` (the code's version against each site's, what is pending, each
//! site's last upgrade) and `vmoodle upgrade rollback` (a site's database restored from its
//! pre-upgrade snapshot).

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use vmoodle_dbserver::{admin, quote_ident, tools};
use vmoodle_registry::{Instance, UpgradeRow};

use super::moodle::{MoodleCode, MoodleVersion};
use super::upgrade::{db_version, is_pending, lock_site, unlock_site, LOCKS};
use super::FleetRun;
use crate::{dbservers, templates, Home};

/// One site in `upgrade status`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteUpgradeStatus {
    pub instance: String,
    pub host: String,
    /// config.version of its database (read now, or the last one read when it cannot be).
    pub db_version: String,
    pub db_release: String,
    /// Whether Moodle's upgrade is pending (None: could not tell, see `error`).
    pub pending: Option<bool>,
    /// Its last upgrade (state `interrupted` when its process is gone).
    pub last: Option<UpgradeRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpgradeStatus {
    pub code: MoodleVersion,
    pub sites: Vec<SiteUpgradeStatus>,
}

/// The state of an upgrade row as shown: a `running` row whose process is gone is `interrupted`.
pub fn shown_state(u: &UpgradeRow) -> String {
    if u.state == "running" && !crate::journal::owner_alive(&u.owner) {
        "interrupted".into()
    } else {
        u.state.clone()
    }
}

/// The code's version and every instance's (read with its own account), pending or not.
pub async fn status(home: &Home) -> Result<UpgradeStatus> {
    use futures::StreamExt;
    let code = MoodleCode::from_home(home)?;
    let cv = code.code_version()?;
    let instances = home.registry.instances().await?;
    let facts = home.registry.site_facts().await?;
    let mut rows = home.registry.upgrades().await?;
    for r in &mut rows {
        r.state = shown_state(r);
    }
    let run = FleetRun::unjournaled(home, "upgrade-status")?;
    let (code, run, facts, rows) = (&code, &run, &facts, &rows);
    let sites = futures::stream::iter(instances.iter())
        .map(|inst| async move {
            let mut s = SiteUpgradeStatus {
                instance: inst.shortname.clone(),
                host: inst.host.clone(),
                db_version: String::new(),
                db_release: String::new(),
                pending: None,
                last: rows.iter().find(|u| u.instance_id == inst.id).cloned(),
                error: None,
            };
            match db_version(home, inst).await {
                Ok(v) => {
                    s.db_version = v.version;
                    s.db_release = v.release;
                }
                Err(e) => {
                    if let Some(f) = facts.iter().find(|f| f.instance_id == inst.id) {
                        s.db_version = f.moodle_version.clone();
                        s.db_release = f.moodle_release.clone();
                    }
                    s.error = Some(format!("{e:#}"));
                }
            }
            match is_pending(code, inst, Duration::from_secs(120), &run.log_path(inst)).await {
                Ok(p) => s.pending = Some(p),
                Err(e) => s.error = Some(format!("{e:#}")),
            }
            s
        })
        .buffered(4)
        .collect()
        .await;
    Ok(UpgradeStatus { code: cv, sites })
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackOutcome {
    pub instance: String,
    pub snapshot: String,
    pub job: i64,
    /// The database's version after the restore.
    pub db_version: String,
    pub code_version: String,
    /// Still in maintenance: the code is ahead of the restored database.
    pub maintenance: bool,
    pub message: String,
    pub log: PathBuf,
}

/// Restores an instance's database from its pre-upgrade snapshot (the content as it was before
/// the upgrade; its own database user and password are kept). The site is in maintenance while
/// it happens, and stays in it when the code is still ahead of the restored database.
pub async fn rollback(
    home: &Home,
    key: &str,
    events: crate::journal::Events<'_>,
) -> Result<RollbackOutcome> {
    let inst = home.registry.instance(key).await?;
    let row = home.registry.upgrade_of(inst.id).await?;
    let Some(snapshot) = row.as_ref().and_then(|u| u.snapshot.clone()) else {
        bail!(
            "`{}` has no pre-upgrade snapshot to roll back to{}\nhint: `vmoodle upgrade --snapshot {}` makes one before upgrading",
            inst.shortname,
            match &row {
                Some(u) => format!(" (its last upgrade, {}, was run without --snapshot)", shown_state(u)),
                None => " (it was never upgraded by vmoodle)".into(),
            },
            inst.shortname
        );
    };
    let row = row.expect("a snapshot comes from a row");
    if row.state == "running" && crate::journal::owner_alive(&row.owner) {
        bail!(
            "`{}` is being upgraded right now (by {}); wait for it to end",
            inst.shortname,
            row.owner
        );
    }
    let template = home.registry.find_template(&snapshot).await?.ok_or_else(|| {
        anyhow!(
            "the pre-upgrade snapshot `{snapshot}` of `{}` is no longer a template (deleted?); nothing to roll back to",
            inst.shortname
        )
    })?;
    let (manifest, dir) = templates::open(&template)?;
    let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
    if manifest.source.shortname != inst.shortname {
        bail!(
            "the snapshot `{snapshot}` was taken of `{}`, not of `{}`: refusing to load another site's data",
            manifest.source.shortname,
            inst.shortname
        );
    }
    if manifest.source.kind != server.kind || manifest.source.prefix != inst.prefix {
        bail!(
            "the snapshot `{snapshot}` ({} tables `{}*`) does not fit `{}` ({} tables `{}*`)",
            manifest.source.kind,
            manifest.source.prefix,
            inst.shortname,
            server.kind,
            inst.prefix
        );
    }
    let code = MoodleCode::from_home(home)?;
    let cv = code.code_version()?;
    let run = FleetRun::unjournaled(home, "upgrade-rollback")?;
    let log = run.log_path(&inst);
    let owner = crate::journal::lock_owner();
    let lease = Duration::from_secs(3600);
    if let Some(busy) = lock_site(home, &inst, &owner, lease).await? {
        bail!("`{}` is busy: {busy}", inst.shortname);
    }
    let keeper = super::keep_leases(&home.registry, inst.id, &LOCKS, &owner, lease);
    let mut j =
        crate::journal::Journal::start(home, "upgrade-rollback", &inst.shortname, 3, events)
            .await?;
    let r = async {
        let timeout = Duration::from_secs(600);
        j.step("maintenance on").await?;
        script(
            &code,
            &inst,
            "maintenance.php",
            &["--enable"],
            timeout,
            &log,
        )
        .await?;
        j.step("restore the database").await?;
        // PostgreSQL: as the instance's own role, never the server's administrator. The
        // tenant owns this database and could have planted functions that an administrator's
        // session would resolve and run (CVE-2018-1058); its own role owns what it drops and
        // what the dump (--no-owner) makes. MariaDB: the administrator (a dump may need more
        // than the instance's grants), in a database whose functions cannot take its place.
        let spec = if server.kind.is_mysql_family() {
            dbservers::admin_spec(home, &server)?
        } else {
            super::sitedb::SiteDb::new(home, &inst).await?.spec
        };
        drop_tables(&spec, &inst).await?;
        tools::load(
            &templates::clients(home)?,
            &spec,
            &inst.dbname,
            &dir.join(&manifest.database.file),
        )
        .await
        .context("loading the pre-upgrade dump")?;
        j.step("maintenance").await?;
        let v = db_version(home, &inst).await?;
        let pending = is_pending(&code, &inst, timeout, &log).await?;
        if !pending {
            script(&code, &inst, "purge_caches.php", &[], timeout, &log).await?;
            script(
                &code,
                &inst,
                "maintenance.php",
                &["--disable"],
                timeout,
                &log,
            )
            .await?;
        }
        anyhow::Ok((v, pending))
    }
    .await;
    drop(keeper);
    unlock_site(home, &inst, &owner).await;
    let now = vmoodle_core::now_unix();
    match r {
        Ok((v, pending)) => {
            let job = j.id;
            j.finish().await?;
            home.registry
                .finish_upgrade(inst.id, "rolled_back", None, now)
                .await?;
            let message = if pending {
                format!(
                    "`{}` is back at its pre-upgrade database (Moodle {}); the code (Moodle {}) is ahead of it, its upgrade is pending, so it stays in maintenance. Revert the code to the old version and `vmoodle run maintenance.php {} -- --disable`, or fix what failed and run `vmoodle upgrade {}` again",
                    inst.shortname, v.version, cv.version, inst.shortname, inst.shortname
                )
            } else {
                format!(
                    "`{}` is back at its pre-upgrade database ({}) and out of maintenance",
                    inst.shortname, v.version
                )
            };
            Ok(RollbackOutcome {
                instance: inst.shortname.clone(),
                snapshot,
                job,
                db_version: v.version,
                code_version: cv.version,
                maintenance: pending,
                message,
                log,
            })
        }
        Err(e) => {
            let id = j.id;
            let _ = j.fail(&format!("{e:#}")).await;
            Err(e.context(format!(
                "rollback of `{}` failed (job {id}); it stays in maintenance; log {}",
                inst.shortname,
                log.display()
            )))
        }
    }
}

async fn script(
    code: &MoodleCode,
    inst: &Instance,
    name: &str,
    args: &[&str],
    timeout: Duration,
    log: &std::path::Path,
) -> Result<()> {
    let path = code.cli_script(name)?;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let r = code.run(&inst.host, &path, &args, timeout, log).await?;
    if !r.ok() {
        bail!("{name} failed: {}", r.tail.lines().last().unwrap_or(""));
    }
    Ok(())
}

/// Drops every table of the instance's prefix in its database (the restore then makes them
/// again as they were; tables the upgrade added go too).
async fn drop_tables(spec: &vmoodle_dbserver::ConnSpec, inst: &Instance) -> Result<()> {
    let kind = spec.kind;
    let mut c = vmoodle_dbserver::connect(spec, Some(&inst.dbname)).await?;
    let sql = if kind.is_mysql_family() {
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE()"
    } else {
        "SELECT c.relname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
         WHERE s.nspname = pg_catalog.current_schema() AND c.relkind = 'r'"
    };
    let rows = c.rows(sql, &[]).await;
    vmoodle_dbserver::close(c).await;
    let names: Vec<String> = rows?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter(|n| n.starts_with(&inst.prefix))
        .collect();
    let stmts: Vec<String> = names
        .chunks(100)
        .map(|ch| {
            let list = ch
                .iter()
                .map(|n| quote_ident(kind, n))
                .collect::<Vec<_>>()
                .join(", ");
            if kind.is_mysql_family() {
                format!("DROP TABLE IF EXISTS {list}")
            } else {
                format!("DROP TABLE IF EXISTS {list} CASCADE")
            }
        })
        .collect();
    admin::run(
        spec,
        Some(&inst.dbname),
        "dropping the upgraded tables",
        &stmts,
    )
    .await?;
    if !kind.is_mysql_family() {
        // Sequences of their own (not owned by a dropped table).
        admin::run(
            spec,
            Some(&inst.dbname),
            "dropping the upgraded sequences",
            &[format!(
                "DO $vm$ DECLARE r record; BEGIN FOR r IN SELECT c.relname::text AS n \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
                 WHERE s.nspname = pg_catalog.current_schema() AND c.relkind = 'S' \
                 AND pg_catalog.left(c.relname::text, pg_catalog.length({p}::text)) = {p}::text LOOP \
                 EXECUTE pg_catalog.format('DROP SEQUENCE IF EXISTS %I', r.n); END LOOP; END $vm$",
                p = vmoodle_dbserver::quote_literal(kind, &inst.prefix)
            )],
        )
        .await?;
    }
    Ok(())
}
