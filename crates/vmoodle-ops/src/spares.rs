//! Warm spares (MariaDB/MySQL): databases pre-cloned from a template's live database, so that a
//! deploy only renames tables. Two templates' spares must never mix (a spare of `base_x` taken
//! by a deploy of `base` hands a new site another customer's users), so a spare is matched by
//! its exact name, `vmspare_<template>_<8 hex>` parsed (never a LIKE pattern), and by its stamp:
//! the checksum of the template's manifest, written into the spare once it is complete. A spare
//! without a stamp is being filled (or its fill was interrupted) and is passed over; a spare with
//! another template version's stamp is stale and dropped.
//!
//! The stamp on MariaDB/MySQL is a one-row table `vmoodle_stamp` without the Moodle prefix (so
//! it is never copied or renamed with Moodle's tables): MySQL has no database comments, and a
//! table is written in the same place as the data it vouches for. PostgreSQL live templates
//! carry theirs in `COMMENT ON DATABASE` (see templates.rs), readable without connecting to the
//! template, which would block its clones.

use anyhow::{bail, Context, Result};
use vmoodle_dbserver::{admin, quote_ident, quote_literal, ConnSpec};
use vmoodle_registry::Template;

use crate::deploy::copy_tables;
use crate::journal::{Journal, Undo};
use crate::templates;
use crate::{dbservers, Home};

/// The table that holds a MariaDB/MySQL database's stamp.
pub const STAMP_TABLE: &str = "vmoodle_stamp";
/// The completion mark of live templates made before stamps (never copied either).
pub const OLD_READY_TABLE: &str = "vmoodle_template_ready";

/// Whether a table belongs to vmoodle's bookkeeping, not to Moodle (left out of every copy).
pub fn is_bookkeeping(table: &str) -> bool {
    table == STAMP_TABLE || table == OLD_READY_TABLE
}

/// The stamp of a template's databases: the checksum of its manifest (a re-snapshot under the
/// same name has another).
pub fn template_stamp(t: &Template) -> String {
    format!(
        "sha256:{}",
        vmoodle_site::dataroot::sha256_bytes(t.manifest.as_bytes())
    )
}

/// The template a spare's name belongs to: `vmspare_<template>_<8 lowercase hex>`, parsed.
pub fn spare_template(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("vmspare_")?;
    let (template, suffix) = rest.rsplit_once('_')?;
    let hex = suffix.len() == 8
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && templates::check_name(template).is_ok()).then_some(template)
}

/// The stamp written in a MariaDB/MySQL database, if it has one.
pub async fn read_stamp(spec: &ConnSpec, db: &str) -> Result<Option<String>> {
    let mut c = vmoodle_dbserver::connect(spec, None).await?;
    let r = async {
        let has = c
            .column(
                "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                &[db.into(), STAMP_TABLE.into()],
            )
            .await?;
        if has.is_empty() {
            return anyhow::Ok(None);
        }
        let v = c
            .column(
                &format!(
                    "SELECT CAST(checksum AS CHAR) FROM {}.{}",
                    quote_ident(spec.kind, db),
                    quote_ident(spec.kind, STAMP_TABLE)
                ),
                &[],
            )
            .await?;
        anyhow::Ok(v.into_iter().next())
    }
    .await;
    vmoodle_dbserver::close(c).await;
    r
}

/// Stamps a complete MariaDB/MySQL database with `stamp`.
pub async fn write_stamp(spec: &ConnSpec, db: &str, stamp: &str) -> Result<()> {
    let t = quote_ident(spec.kind, STAMP_TABLE);
    admin::run(
        spec,
        Some(db),
        &format!("stamping database `{db}`"),
        &[
            format!("CREATE TABLE {t} (checksum VARCHAR(100) NOT NULL)"),
            format!(
                "INSERT INTO {t} (checksum) VALUES ({})",
                quote_literal(spec.kind, stamp)
            ),
        ],
    )
    .await?;
    Ok(())
}

/// MariaDB warm spares of a template on a server (names matched exactly; stamps not checked).
pub async fn spare_databases(spec: &ConnSpec, template: &str) -> Result<Vec<String>> {
    let mut c = vmoodle_dbserver::connect(spec, None).await?;
    let r = c
        .column(
            "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'vmspare\\_%' ORDER BY SCHEMA_NAME",
            &[],
        )
        .await;
    vmoodle_dbserver::close(c).await;
    Ok(r?
        .into_iter()
        .filter(|n| spare_template(n) == Some(template))
        .collect())
}

/// Claims a warm spare of `template` stamped with its manifest's checksum: a named lock
/// (GET_LOCK) makes the claim exclusive; a spare without a stamp (being filled) or whose table
/// count is not the template's (a claim interrupted half-way) is passed over; a spare stamped by
/// another version of the template is dropped. The tables move into `to_db` with RENAME TABLE on
/// several connections at once (InnoDB commits each renamed table; parallel statements share
/// those commits).
pub async fn take_spare(
    spec: &ConnSpec,
    template: &Template,
    expected_tables: u64,
    to_db: &str,
    from_prefix: &str,
    to_prefix: &str,
) -> Result<bool> {
    let k = spec.kind;
    let want = template_stamp(template);
    for spare in spare_databases(spec, &template.name).await? {
        let mut lock = vmoodle_dbserver::connect(spec, None).await?;
        let got = lock
            .column(
                "SELECT CAST(GET_LOCK(?, 0) AS CHAR)",
                &[spare.as_str().into()],
            )
            .await?;
        if got.first().map(String::as_str) != Some("1") {
            vmoodle_dbserver::close(lock).await;
            continue;
        }
        match read_stamp(spec, &spare).await? {
            None => {
                vmoodle_dbserver::close(lock).await;
                continue;
            }
            Some(s) if s != want => {
                tracing::info!(
                    "dropping warm spare `{spare}`: it was made from another version of template `{}`",
                    template.name
                );
                let r = admin::drop_database(spec, &spare).await;
                vmoodle_dbserver::close(lock).await;
                r?;
                continue;
            }
            Some(_) => {}
        }
        let tables: Vec<String> = admin::tables(spec, &spare, from_prefix)
            .await?
            .into_iter()
            .filter(|t| !is_bookkeeping(t))
            .collect();
        if tables.len() as u64 != expected_tables {
            vmoodle_dbserver::close(lock).await;
            continue;
        }
        const WORKERS: usize = 4;
        let mut buckets: Vec<Vec<String>> = vec![Vec::new(); WORKERS];
        for (n, t) in tables.iter().enumerate() {
            buckets[n % WORKERS].push(format!(
                "{}.{} TO {}.{}",
                quote_ident(k, &spare),
                quote_ident(k, t),
                quote_ident(k, to_db),
                quote_ident(k, &format!("{to_prefix}{}", &t[from_prefix.len()..]))
            ));
        }
        let mut set = tokio::task::JoinSet::new();
        for b in buckets.into_iter().filter(|b| !b.is_empty()) {
            let spec = spec.clone();
            set.spawn(async move {
                admin::run(
                    &spec,
                    None,
                    "taking a warm spare",
                    &[format!("RENAME TABLE {}", b.join(", "))],
                )
                .await
            });
        }
        let mut failed = None;
        while let Some(r) = set.join_next().await {
            if let Err(e) = r
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from))
            {
                failed = Some(e);
            }
        }
        vmoodle_dbserver::close(lock).await;
        if let Some(e) = failed {
            // Some tables may have moved: the new database is dropped by the deploy's undo; the
            // broken spare is dropped here.
            let _ = admin::drop_database(spec, &spare).await;
            return Err(e.context("taking a warm spare"));
        }
        admin::drop_database(spec, &spare).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Fills `count` warm spares of a template on a MariaDB server, each stamped with the template's
/// manifest checksum once complete; returns their names.
pub async fn fill_spares(
    home: &Home,
    template: &str,
    server: &str,
    count: usize,
) -> Result<Vec<String>> {
    let t = home.registry.template(template).await?;
    let s = home.registry.dbserver(server).await?;
    if !s.kind.is_mysql_family() {
        bail!("warm spares are for MariaDB/MySQL; PostgreSQL deploys already clone a live template database in one statement");
    }
    let (m, _) = templates::open(&t)?;
    templates::ensure_live(home, &t, &s).await?;
    let spec = dbservers::admin_spec(home, &s)?;
    let stamp = template_stamp(&t);
    let mut made = Vec::new();
    // A job: each spare's database is recorded before it is created, so one interrupted
    // half-way is dropped by recovery; each finished spare is kept.
    let mut j = Journal::start(
        home,
        "spares fill",
        &format!("{template}@{server}"),
        count,
        &crate::journal::no_events,
    )
    .await?;
    let r = async {
        for k in 0..count {
            j.step(&format!("spare {}", k + 1)).await?;
            let mut r = [0u8; 4];
            openssl::rand::rand_bytes(&mut r)?;
            let name = format!(
                "vmspare_{template}_{:02x}{:02x}{:02x}{:02x}",
                r[0], r[1], r[2], r[3]
            );
            j.intend(Undo::DropDatabase {
                server_id: s.id,
                database: name.clone(),
            })
            .await?;
            if let Err(e) = admin::create_database(&spec, &name).await {
                if e.already_exists() {
                    j.cancel_intent().await?;
                }
                return Err(anyhow::Error::from(e));
            }
            copy_tables(
                &spec,
                &templates::live_db_name(template),
                &name,
                &m.source.prefix,
                &m.source.prefix,
            )
            .await
            .context("filling a warm spare")?;
            write_stamp(&spec, &name, &stamp).await?;
            j.made().await?;
            j.keep_made().await?;
            made.push(name);
        }
        anyhow::Ok(())
    }
    .await;
    match r {
        Ok(()) => {
            j.finish().await?;
            Ok(made)
        }
        Err(e) => {
            let left = j.fail(&format!("{e:#}")).await;
            let mut err = e.context(format!(
                "filling spares stopped after {} of {count}; the one being filled was dropped",
                made.len()
            ));
            if !left.is_empty() {
                err = err.context(left.join("; "));
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_names_parse_exactly() {
        assert_eq!(spare_template("vmspare_base_0a1b2c3d"), Some("base"));
        assert_eq!(spare_template("vmspare_base_x_0a1b2c3d"), Some("base_x"));
        assert_eq!(
            spare_template("vmspare_base_0a1b2c3d_0a1b2c3d"),
            Some("base_0a1b2c3d")
        );
        for bad in [
            "vmspare_base_0A1B2C3D",
            "vmspare_base_0a1b2c3",
            "vmspare__0a1b2c3d",
            "vmspare_Base_0a1b2c3d",
            "vmtpl_base",
            "vmspare_base",
        ] {
            assert_eq!(spare_template(bad), None, "{bad}");
        }
    }
}
