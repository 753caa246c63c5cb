//! Deleting an instance, archiving it first (database dump, dataroot, register entry) into the
//! home's archives/, and restoring an archive as a live instance again. Deletion never removes a
//! dataroot outside the configured base, never drops the server's administrator account, and
//! never drops a database or user another registered instance still uses.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use vmoodle_core::validate;
use vmoodle_dbserver::admin;
use vmoodle_registry::{Instance, Template};

use crate::deploy::{self, DeployRequest, Method, Outcome};
use crate::templates::{self, Progress};
use crate::{dbservers, publish, Home};

pub const ENTRY: &str = "instance.json";
/// HMAC-SHA256 with the home's key over manifest.json and instance.json, in hex.
pub const MAC: &str = "archive.mac";
const MAC_PURPOSE: &str = "archive";

/// The home's archives/ directory.
pub fn archives_dir(home: &Home) -> PathBuf {
    home.root.join("archives")
}

fn mac_of(home: &Home, manifest: &[u8], entry: &[u8]) -> Result<String> {
    Ok(home.secrets.mac(MAC_PURPOSE, &[manifest, entry])?)
}

/// Seals a finished archive: writes archive.mac, the MAC of its manifest.json and instance.json
/// made with the home's key, so that `restore` can trust it wherever it is later found.
pub fn seal(home: &Home, dir: &Path) -> Result<()> {
    let manifest = fs_err::read(dir.join(templates::MANIFEST))?;
    let entry = fs_err::read(dir.join(ENTRY))?;
    fs_err::write(dir.join(MAC), mac_of(home, &manifest, &entry)? + "\n")?;
    Ok(())
}

/// Reads a regular file of an archive, refusing a symbolic link.
fn read_member(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    let md = fs_err::symlink_metadata(&p)?;
    if !md.is_file() {
        bail!(
            "{} is not a regular file; refusing the archive",
            p.display()
        );
    }
    Ok(fs_err::read(&p)?)
}

/// Decides whether an archive may be restored: it must carry a MAC made with this home's key
/// that matches its manifest.json and instance.json, or (archives made before MACs existed) lie
/// in the home's archives/ directory, which only root writes. A MAC that does not match is
/// refused wherever the archive lies. Returns the manifest's text and the checked entry.
pub fn check(home: &Home, dir: &Path) -> Result<(String, ArchivedEntry)> {
    let manifest = read_member(dir, templates::MANIFEST)?;
    let entry_bytes = read_member(dir, ENTRY)?;
    match fs_err::symlink_metadata(dir.join(MAC)) {
        Ok(md) if md.is_file() => {
            let mac = fs_err::read_to_string(dir.join(MAC))?;
            if !home
                .secrets
                .mac_matches(MAC_PURPOSE, &[&manifest, &entry_bytes], mac.trim())
            {
                bail!(
                    "archive {}: {MAC} does not match its {} and {ENTRY}: they were changed after the archive was made, or another home made it; refusing to restore it",
                    dir.display(),
                    templates::MANIFEST
                );
            }
        }
        _ => {
            let archives = archives_dir(home);
            let inside = archives
                .canonicalize()
                .is_ok_and(|a| dir.starts_with(&a) && dir != a);
            if !inside {
                bail!(
                    "archive {} carries no {MAC} made with this home's key and is not in {}; vmoodle restores only archives it made\nhint: an archive made by this home's `delete` has {MAC}; move an older one into {} to restore it",
                    dir.display(),
                    archives.display(),
                    archives.display()
                );
            }
        }
    }
    let manifest = String::from_utf8(manifest)
        .with_context(|| format!("{} in {} is not UTF-8", templates::MANIFEST, dir.display()))?;
    let entry: ArchivedEntry = serde_json::from_slice(&entry_bytes)
        .with_context(|| format!("{} is not a vmoodle archive ({ENTRY})", dir.display()))?;
    check_manifest(&manifest).with_context(|| format!("archive {}", dir.display()))?;
    entry
        .validate(home)
        .with_context(|| format!("{ENTRY} of archive {}", dir.display()))?;
    Ok((manifest, entry))
}

/// The manifest names the archive's own files only (no path leads out of it).
fn check_manifest(text: &str) -> Result<()> {
    let m: templates::Manifest =
        serde_json::from_str(text).context("manifest.json is not a vmoodle manifest")?;
    if !["database.sql.zst", "database.pgdump"].contains(&m.database.file.as_str()) {
        bail!(
            "manifest.json names the dump `{}`; allowed: database.sql.zst, database.pgdump",
            validate::printable(&m.database.file)
        );
    }
    if m.dataroot.dir != "dataroot" || m.dataroot.checksums.file != templates::CHECKSUMS {
        bail!(
            "manifest.json names the dataroot `{}` and checksums `{}`; allowed: dataroot, {}",
            validate::printable(&m.dataroot.dir),
            validate::printable(&m.dataroot.checksums.file),
            templates::CHECKSUMS
        );
    }
    Ok(())
}

impl ArchivedEntry {
    /// Checks every field before any is used: names, wwwroot, database names, prefix, a
    /// dataroot inside the dataroot base, `$CFG` names and values.
    pub fn validate(&self, home: &Home) -> Result<()> {
        validate::object_name("shortname", &self.shortname)?;
        validate::text("name", &self.name, 255, false)?;
        validate::text("description", &self.description, 10_000, true)?;
        validate::wwwroot(&self.wwwroot)?;
        validate::object_name("database server", &self.dbserver)?;
        validate::db_name(&self.dbname)?;
        validate::db_user(&self.dbuser)?;
        validate::prefix(&self.prefix)?;
        let dataroot = validate::abs_path("dataroot", &self.dataroot)?;
        let base = deploy::dataroot_base(home);
        if !dataroot.starts_with(&base) || dataroot == base {
            bail!(
                "dataroot {} is outside the dataroot base {}",
                dataroot.display(),
                base.display()
            );
        }
        vmoodle_core::MnetMode::new(self.mnet)?;
        if let Some(t) = &self.template {
            if !t.starts_with("archive:") {
                templates::check_name(t)?;
            }
        }
        for (k, v) in &self.config {
            if !vmoodle_site::hostfile::extra_name_ok(k) {
                bail!(
                    "invalid $CFG name `{}`: lowercase letters, digits and underscores, starting with a letter, and not one the hook sets itself",
                    validate::printable(k)
                );
            }
            validate::text(&format!("value of $CFG->{k}"), v, 4096, true)?;
        }
        Ok(())
    }
}

/// The register entry kept in an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedEntry {
    pub shortname: String,
    pub name: String,
    pub description: String,
    pub wwwroot: String,
    pub dbserver: String,
    pub dbname: String,
    pub dbuser: String,
    pub prefix: String,
    pub dataroot: String,
    pub mnet: i64,
    pub template: Option<String>,
    pub config: std::collections::BTreeMap<String, String>,
    pub archived_at: i64,
}

#[derive(Debug, Serialize)]
pub struct DeleteReport {
    pub shortname: String,
    pub archive: Option<String>,
    pub dropped_database: bool,
    pub dropped_user: bool,
    pub removed_dataroot: bool,
    pub kept: Vec<String>,
}

/// Deletes an instance (archiving it first unless `archive` is false).
pub async fn delete(
    home: &Home,
    key: &str,
    archive: bool,
    progress: Progress<'_>,
) -> Result<DeleteReport> {
    let inst = home.registry.instance(key).await?;
    if inst.is_master {
        bail!("`{}` is the master; vmoodle does not delete it (use `vmoodle instance forget` to unregister it)", inst.shortname);
    }
    let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
    let spec = dbservers::admin_spec(home, &server)?;
    let mut report = DeleteReport {
        shortname: inst.shortname.clone(),
        archive: None,
        dropped_database: false,
        dropped_user: false,
        removed_dataroot: false,
        kept: Vec::new(),
    };
    if archive {
        let dir = home.root.join("archives").join(format!(
            "{}-{}",
            inst.shortname,
            vmoodle_core::now_unix()
        ));
        templates::capture(home, &inst, &inst.shortname, &dir, progress).await?;
        let entry = ArchivedEntry {
            shortname: inst.shortname.clone(),
            name: inst.name.clone(),
            description: inst.description.clone(),
            wwwroot: inst.wwwroot.clone(),
            dbserver: server.name.clone(),
            dbname: inst.dbname.clone(),
            dbuser: inst.dbuser.clone(),
            prefix: inst.prefix.clone(),
            dataroot: inst.dataroot.clone(),
            mnet: inst.mnet,
            template: inst.template.clone(),
            config: inst.config.clone(),
            archived_at: vmoodle_core::now_unix(),
        };
        fs_err::write(dir.join(ENTRY), serde_json::to_string_pretty(&entry)?)?;
        seal(home, &dir)?;
        report.archive = Some(dir.display().to_string());
    }
    // Unregister first: the host stops being served before its data goes.
    home.registry.remove_instance(inst.id).await?;
    publish::remove_host_file(home, &inst.host)?;
    let others: Vec<Instance> = home
        .registry
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.dbserver_id == inst.dbserver_id)
        .collect();
    if others.iter().any(|i| i.dbname == inst.dbname) {
        report.kept.push(format!(
            "database `{}` (another instance uses it)",
            inst.dbname
        ));
    } else {
        admin::drop_database(&spec, &inst.dbname).await?;
        report.dropped_database = true;
    }
    if inst.dbuser == server.admin_user {
        report.kept.push(format!(
            "database user `{}` (the server's administrator)",
            inst.dbuser
        ));
    } else if others.iter().any(|i| i.dbuser == inst.dbuser) {
        report.kept.push(format!(
            "database user `{}` (another instance uses it)",
            inst.dbuser
        ));
    } else {
        admin::drop_user(&spec, &inst.dbuser).await?;
        report.dropped_user = true;
    }
    let dataroot = PathBuf::from(&inst.dataroot);
    let base = deploy::dataroot_base(home);
    if dataroot.starts_with(&base)
        && dataroot != base
        && validate::abs_path("dataroot", &inst.dataroot).is_ok()
    {
        match std::fs::remove_dir_all(&dataroot) {
            Ok(()) => report.removed_dataroot = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dataroot.display())),
        }
    } else {
        report.kept.push(format!(
            "dataroot {} (outside the dataroot base {})",
            dataroot.display(),
            base.display()
        ));
    }
    Ok(report)
}

/// Restores an archive as a live instance (with its own names, or those of a new token).
pub async fn restore(
    home: &Home,
    archive: &Path,
    token: Option<&str>,
    progress: deploy::StepProgress<'_>,
) -> Result<Outcome> {
    let dir = archive
        .canonicalize()
        .with_context(|| format!("archive {}", archive.display()))?;
    let (manifest, entry) = check(home, &dir)?;
    let tpl = Template {
        id: 0,
        name: format!("archive:{}", entry.shortname),
        source: entry.shortname.clone(),
        path: dir.display().to_string(),
        manifest,
        created_at: entry.archived_at,
    };
    let problems = templates::verify(&tpl, false)?;
    if !problems.is_empty() {
        bail!(
            "archive {} is damaged: {}",
            dir.display(),
            problems.join("; ")
        );
    }
    let req = match token {
        Some(t) => DeployRequest {
            template: tpl.name.clone(),
            token: t.to_string(),
            name: Some(entry.name.clone()),
            description: Some(entry.description.clone()),
            dbserver: Some(entry.dbserver.clone()),
            prefix: Some(entry.prefix.clone()),
            mnet: Some(entry.mnet),
            method: Method::Dump,
            cfg: entry.config.clone().into_iter().collect(),
            ..Default::default()
        },
        None => {
            let token = validate::token(&entry.shortname)
                .map(str::to_string)
                .map_err(|_| {
                    anyhow::anyhow!(
                        "`{}` is not usable as a token; give --token",
                        entry.shortname
                    )
                })?;
            DeployRequest {
                template: tpl.name.clone(),
                token,
                name: Some(entry.name.clone()),
                shortname: Some(entry.shortname.clone()),
                description: Some(entry.description.clone()),
                host: Some(entry.wwwroot.clone()),
                dbserver: Some(entry.dbserver.clone()),
                dataroot: Some(entry.dataroot.clone()),
                prefix: Some(entry.prefix.clone()),
                dbname: Some(entry.dbname.clone()),
                dbuser: Some(entry.dbuser.clone()),
                mnet: Some(entry.mnet),
                method: Method::Dump,
                cfg: entry.config.clone().into_iter().collect(),
                ..Default::default()
            }
        }
    };
    let mut plan = deploy::plan_from(home, &req, tpl).await?;
    plan.fields.template = entry.template.clone();
    deploy::execute(home, plan, progress).await
}
