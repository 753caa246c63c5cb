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
use crate::journal::{Events, Journal, Undo};
use crate::templates;
use crate::{dbservers, instances, publish, Home};

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

/// What a delete past its point of no return still has to do; kept in the job's journal so
/// that `jobs recover` can finish it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletePlan {
    pub instance_id: i64,
    pub shortname: String,
    pub host: String,
    pub server_id: i64,
    pub dbname: String,
    pub dbuser: String,
    pub drop_database: bool,
    pub drop_user: bool,
    /// The dataroot to remove (None: outside the dataroot base, kept).
    pub dataroot: Option<PathBuf>,
    pub archive: Option<String>,
    pub kept: Vec<String>,
}

const DELETE_STEPS: [&str; 5] = [
    "remove MNET peerings",
    "drop database",
    "drop database user",
    "remove dataroot",
    "unregister",
];

/// Deletes an instance as a journaled job (archiving it first unless `archive` is false):
/// archive, take the site offline (its host file answers 503), then, past the point of no
/// return, remove the MNET peerings vmoodle made, drop the database and user, remove the
/// dataroot and unregister it. A failure before the point of no return undoes everything (the
/// archive is removed, the site is back online); after it, the job is finished by
/// `vmoodle jobs recover` (and by the next command that takes the home's lock if the process died).
pub async fn delete(
    home: &Home,
    key: &str,
    archive: bool,
    events: Events<'_>,
) -> Result<DeleteReport> {
    let inst = home.registry.instance(key).await?;
    if inst.is_master {
        bail!("`{}` is the master; vmoodle does not delete it (use `vmoodle instance forget` to unregister it)", inst.shortname);
    }
    let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
    let others: Vec<Instance> = home
        .registry
        .instances()
        .await?
        .into_iter()
        .filter(|i| i.dbserver_id == inst.dbserver_id && i.id != inst.id)
        .collect();
    let mut plan = DeletePlan {
        instance_id: inst.id,
        shortname: inst.shortname.clone(),
        host: inst.host.clone(),
        server_id: server.id,
        dbname: inst.dbname.clone(),
        dbuser: inst.dbuser.clone(),
        drop_database: true,
        drop_user: true,
        dataroot: None,
        archive: None,
        kept: Vec::new(),
    };
    if others.iter().any(|i| i.dbname == inst.dbname) {
        plan.drop_database = false;
        plan.kept.push(format!(
            "database `{}` (another instance uses it)",
            inst.dbname
        ));
    }
    if inst.dbuser == server.admin_user {
        plan.drop_user = false;
        plan.kept.push(format!(
            "database user `{}` (the server's administrator)",
            inst.dbuser
        ));
    } else if others.iter().any(|i| i.dbuser == inst.dbuser) {
        plan.drop_user = false;
        plan.kept.push(format!(
            "database user `{}` (another instance uses it)",
            inst.dbuser
        ));
    }
    let dataroot = PathBuf::from(&inst.dataroot);
    let base = deploy::dataroot_base(home);
    if dataroot.starts_with(&base)
        && dataroot != base
        && validate::abs_path("dataroot", &inst.dataroot).is_ok()
    {
        plan.dataroot = Some(dataroot);
    } else {
        plan.kept.push(format!(
            "dataroot {} (outside the dataroot base {})",
            dataroot.display(),
            base.display()
        ));
    }
    let total = DELETE_STEPS.len() + 1 + usize::from(archive);
    let mut j = Journal::start(home, "delete", &inst.shortname, total, events).await?;
    let r = async {
        // The site stops being served (503) first: the archive then holds everything its users
        // wrote, and it stays registered until everything is removed, so a failure leaves
        // nothing that nobody can find.
        j.step("take offline").await?;
        j.intend(Undo::SetEnabled {
            instance_id: inst.id,
            enabled: inst.enabled,
        })
        .await?;
        instances::set_enabled(home, &inst.shortname, false).await?;
        j.made().await?;
        if archive {
            j.step("archive").await?;
            let dir = home.root.join("archives").join(format!(
                "{}-{}-{}",
                inst.shortname,
                vmoodle_core::now_unix(),
                j.id
            ));
            j.intend(Undo::RemoveDir { path: dir.clone() }).await?;
            let cb = |n: usize, t: usize, what: &str| j.count(n as u64, t as u64, what);
            templates::capture(home, &inst, &inst.shortname, &dir, &cb).await?;
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
            j.made().await?;
            plan.archive = Some(dir.display().to_string());
        }
        j.go_forward(&plan).await?;
        delete_forward(home, &mut j, &plan).await
    }
    .await;
    match r {
        Ok(()) => {
            j.finish().await?;
            Ok(report_of(&plan))
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let left = j.fail(&msg).await;
            let mut err = e.context(format!("delete of `{}` failed", inst.shortname));
            if !left.is_empty() {
                err = err.context(left.join("; "));
            }
            Err(err)
        }
    }
}

fn report_of(plan: &DeletePlan) -> DeleteReport {
    DeleteReport {
        shortname: plan.shortname.clone(),
        archive: plan.archive.clone(),
        dropped_database: plan.drop_database,
        dropped_user: plan.drop_user,
        removed_dataroot: plan.dataroot.is_some(),
        kept: plan.kept.clone(),
    }
}

/// The steps after the point of no return; each is idempotent and skipped when a previous run
/// of the job already did it.
async fn delete_forward(home: &Home, j: &mut Journal<'_>, plan: &DeletePlan) -> Result<()> {
    let server = home.registry.dbserver_by_id(plan.server_id).await?;
    let spec = dbservers::admin_spec(home, &server)?;
    for step in DELETE_STEPS {
        if j.did_step(step) {
            continue;
        }
        j.step(step).await?;
        match step {
            "remove MNET peerings" => {
                crate::mnet::remove_peerings_of(home, plan.instance_id).await?;
            }
            "drop database" if plan.drop_database => {
                admin::drop_database(&spec, &plan.dbname).await?;
            }
            "drop database user" if plan.drop_user => {
                admin::drop_user(&spec, &plan.dbuser).await?;
            }
            "remove dataroot" => {
                if let Some(d) = &plan.dataroot {
                    crate::journal::remove_managed_dir(home, d)
                        .with_context(|| format!("removing {}", d.display()))?;
                }
            }
            "unregister" => {
                match home.registry.remove_instance(plan.instance_id).await {
                    Ok(()) | Err(vmoodle_registry::RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                publish::remove_host_file(home, &plan.host)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Finishes a delete found past its point of no return (`jobs recover`).
pub async fn finish_delete(home: &Home, mut j: Journal<'_>) -> Result<()> {
    let Some(plan) = j.forward_plan::<DeletePlan>() else {
        let msg = "the delete job has no readable plan";
        j.fail(msg).await;
        bail!(msg);
    };
    match delete_forward(home, &mut j, &plan).await {
        Ok(()) => {
            j.finish().await?;
            Ok(())
        }
        Err(e) => {
            j.fail(&format!("{e:#}")).await;
            Err(e)
        }
    }
}

/// Restores an archive as a live instance (with its own names, or those of a new token).
pub async fn restore(
    home: &Home,
    archive: &Path,
    token: Option<&str>,
    events: Events<'_>,
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
    deploy::execute(home, plan, events).await
}
