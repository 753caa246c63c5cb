//! Instances: register an existing Moodle (by hand or from the naming schema), edit, enable,
//! disable, forget (unregister; its database and files are left alone), and the master read from
//! its config.php. Every change rewrites the host file it touches.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use vmoodle_core::{schema, validate, Binding, DbKind, MnetMode, Secret};
use vmoodle_registry::{DbServer, Instance, InstanceFields};

use crate::{dbservers, publish, Home};

/// What `instance add` was given; anything left out comes from the naming schema and the token.
#[derive(Debug, Clone, Default)]
pub struct InstanceInput {
    pub token: Option<String>,
    pub wwwroot: Option<String>,
    pub dbserver: Option<String>,
    pub dbname: Option<String>,
    pub dbuser: Option<String>,
    pub password: Option<Secret>,
    pub prefix: Option<String>,
    pub dataroot: Option<String>,
    pub name: Option<String>,
    pub shortname: Option<String>,
    pub description: Option<String>,
    pub mnet: Option<i64>,
    pub persist: Option<bool>,
    pub enabled: Option<bool>,
    pub config: Vec<(String, String)>,
    /// Accept a database account with server-wide powers (see
    /// `dbservers::refuse_privileged_account`).
    pub force_admin_account: bool,
}

/// Resolves and validates the fields of a new instance.
pub async fn resolve_new(home: &Home, inp: &InstanceInput) -> Result<InstanceFields> {
    let exp = match &inp.token {
        Some(t) => {
            if !home.settings.schema.automate {
                bail!("--token needs the naming schema, which is off\nhint: `vmoodle settings set schema.automate true`, or give --wwwroot, --dbname, --dbuser and --dataroot");
            }
            Some(schema::expand(&home.settings.schema, t)?)
        }
        None => None,
    };
    let pick = |given: &Option<String>, from: Option<String>, what: &str| -> Result<String> {
        given.clone().or(from).ok_or_else(|| {
            anyhow!("missing --{what} (or give --token to take it from the naming schema)")
        })
    };
    let wwwroot = pick(
        &inp.wwwroot,
        exp.as_ref().map(|e| e.wwwroot.clone()),
        "wwwroot",
    )?;
    let www = validate::wwwroot(&wwwroot)?;
    let shortname = pick(&inp.shortname, inp.token.clone(), "shortname")?;
    validate::object_name("shortname", &shortname)?;
    let server = match &inp.dbserver {
        Some(n) => home.registry.dbserver(n).await?,
        None => {
            let e = exp.as_ref().ok_or_else(|| anyhow!("missing --dbserver"))?;
            dbservers::find_matching(home, e.db_type, &e.db_host, Some(e.db_port)).await?.ok_or_else(|| {
                anyhow!(
                    "no registered database server matches the schema ({} at {}:{})\nhint: give --dbserver NAME, or register it with `vmoodle dbserver add`",
                    e.db_type, e.db_host, e.db_port
                )
            })?
        }
    };
    let dbname = pick(
        &inp.dbname,
        exp.as_ref().map(|e| e.db_name.clone()),
        "dbname",
    )?;
    let dbuser = pick(
        &inp.dbuser,
        exp.as_ref().map(|e| e.db_user.clone()),
        "dbuser",
    )?;
    let prefix = inp
        .prefix
        .clone()
        .or(exp.as_ref().map(|e| e.prefix.clone()))
        .unwrap_or_else(|| "mdl_".into());
    let dataroot = pick(
        &inp.dataroot,
        exp.as_ref().map(|e| e.dataroot.display().to_string()),
        "dataroot",
    )?;
    let password = match &inp.password {
        Some(p) => p.clone(),
        None if !home.settings.schema.db_password.is_empty() && exp.is_some() => {
            home.secrets.open(
                &home.settings.schema.db_password,
                &Binding::setting("schema.db_password"),
            )?
        }
        None => {
            bail!("missing the database password: give --password-file FILE or --password-stdin")
        }
    };
    let name = inp.name.clone().unwrap_or_else(|| shortname.clone());
    let dbpass_sealed = home
        .secrets
        .seal(&password, &Binding::instance_dbpass(&shortname))?;
    let mut f = InstanceFields {
        shortname,
        host: www.host,
        wwwroot: www.url,
        name,
        description: inp.description.clone().unwrap_or_default(),
        is_master: false,
        enabled: inp.enabled.unwrap_or(true),
        dbserver_id: server.id,
        dbtype: server.kind.moodle_dbtype().into(),
        dbname,
        dbuser,
        dbpass_sealed,
        prefix,
        dbpersist: inp
            .persist
            .or(exp.as_ref().map(|e| e.db_persist))
            .unwrap_or(false),
        dataroot,
        mnet: inp.mnet.unwrap_or(-1),
        template: None,
        config: BTreeMap::new(),
    };
    apply_config(&mut f.config, &inp.config, &[])?;
    check_fields(&mut f)?;
    dbservers::refuse_privileged_account(home, &server, &f.dbuser, inp.force_admin_account).await?;
    Ok(f)
}

/// Validates every field of an instance before it reaches the register, normalizing the
/// wwwroot and dataroot spellings.
pub fn check_fields(f: &mut InstanceFields) -> Result<()> {
    validate::object_name("shortname", &f.shortname)?;
    let www = validate::wwwroot(&f.wwwroot)?;
    f.wwwroot = www.url;
    f.host = www.host;
    validate::db_name(&f.dbname)?;
    validate::db_user(&f.dbuser)?;
    validate::prefix(&f.prefix)?;
    f.dataroot = validate::abs_path("dataroot", &f.dataroot)?
        .display()
        .to_string();
    validate::text("name", &f.name, 255, false)?;
    validate::text("description", &f.description, 10_000, true)?;
    MnetMode::new(f.mnet)?;
    Ok(())
}

fn apply_config(
    cfg: &mut BTreeMap<String, String>,
    set: &[(String, String)],
    unset: &[String],
) -> Result<()> {
    for (k, v) in set {
        if !vmoodle_site::hostfile::extra_name_ok(k) {
            bail!(
                "invalid $CFG name `{}`: lowercase letters, digits and underscores, starting with a letter, and not one the hook sets itself ({})",
                validate::printable(k),
                vmoodle_site::hostfile::RESERVED_CFG.join(", ")
            );
        }
        validate::text(&format!("value of $CFG->{k}"), v, 4096, true)?;
        cfg.insert(k.clone(), v.clone());
    }
    for k in unset {
        cfg.remove(k);
    }
    Ok(())
}

/// Registers an instance and publishes its host file.
pub async fn add(home: &Home, f: &InstanceFields) -> Result<Instance> {
    let i = home.registry.add_instance(f).await?;
    if let Err(e) = publish::write_host_file(home, &i).await {
        // Keep the register and the host files in step: undo the registration.
        home.registry.remove_instance(i.id).await?;
        return Err(e.context(format!("instance `{}` was not registered", i.shortname)));
    }
    Ok(i)
}

/// What `instance edit` changes; None leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceEdit {
    pub wwwroot: Option<String>,
    pub shortname: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub dbserver: Option<String>,
    pub dbname: Option<String>,
    pub dbuser: Option<String>,
    pub password: Option<Secret>,
    pub prefix: Option<String>,
    pub dataroot: Option<String>,
    pub mnet: Option<i64>,
    pub persist: Option<bool>,
    pub set_config: Vec<(String, String)>,
    pub unset_config: Vec<String>,
    /// Accept a database account with server-wide powers.
    pub force_admin_account: bool,
}

pub async fn edit(home: &Home, key: &str, e: &InstanceEdit) -> Result<Instance> {
    let old = home.registry.instance(key).await?;
    let mut f = InstanceFields::from(&old);
    if let Some(w) = &e.wwwroot {
        let www = validate::wwwroot(w)?;
        f.wwwroot = www.url;
        f.host = www.host;
    }
    if let Some(s) = &e.dbserver {
        let server = home.registry.dbserver(s).await?;
        let old_server = home.registry.dbserver_by_id(old.dbserver_id).await?;
        if server.kind.is_mysql_family() != old_server.kind.is_mysql_family() {
            bail!(
                "database server `{s}` is {}, but instance `{}` uses {}",
                server.kind,
                old.shortname,
                old_server.kind
            );
        }
        f.dbserver_id = server.id;
        if server.kind != old_server.kind {
            f.dbtype = server.kind.moodle_dbtype().into();
        }
    }
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = &e.$field {
                f.$field = v.clone();
            }
        };
    }
    set!(shortname);
    set!(name);
    set!(description);
    set!(dbname);
    set!(dbuser);
    set!(prefix);
    set!(dataroot);
    if let Some(m) = e.mnet {
        f.mnet = m;
    }
    if let Some(p) = e.persist {
        f.dbpersist = p;
    }
    if let Some(p) = &e.password {
        f.dbpass_sealed = home
            .secrets
            .seal(p, &Binding::instance_dbpass(&f.shortname))?;
    } else if f.shortname != old.shortname {
        // The sealed password is bound to the shortname: re-seal it for the new one.
        let p = home
            .secrets
            .open(
                &old.dbpass_sealed,
                &Binding::instance_dbpass(&old.shortname),
            )
            .with_context(|| format!("the database password of instance `{}`", old.shortname))?;
        f.dbpass_sealed = home
            .secrets
            .seal(&p, &Binding::instance_dbpass(&f.shortname))?;
    }
    apply_config(&mut f.config, &e.set_config, &e.unset_config)?;
    check_fields(&mut f)?;
    if e.dbuser.is_some() || e.dbserver.is_some() || e.password.is_some() {
        let server = home.registry.dbserver_by_id(f.dbserver_id).await?;
        dbservers::refuse_privileged_account(home, &server, &f.dbuser, e.force_admin_account)
            .await?;
    }
    let new = home.registry.update_instance(old.id, &f).await?;
    if new.host != old.host {
        publish::remove_host_file(home, &old.host)?;
    }
    if new.is_master {
        publish::write_hook(home, &home.registry.instances().await?)?;
    } else {
        publish::write_host_file(home, &new).await?;
    }
    Ok(new)
}

pub async fn set_enabled(home: &Home, key: &str, enabled: bool) -> Result<Instance> {
    let i = home.registry.instance(key).await?;
    if i.is_master && !enabled {
        bail!("the master cannot be disabled through vmoodle: its own config.php serves it");
    }
    home.registry.set_enabled(i.id, enabled).await?;
    let i = home.registry.instance(&i.shortname).await?;
    publish::write_host_file(home, &i).await?;
    Ok(i)
}

/// Unregisters an instance and removes its host file; its database and dataroot are untouched.
/// The MNET peerings vmoodle made with it go first (its row in each peer's database), so no
/// peer keeps trusting a site vmoodle no longer manages; if a peer cannot be reached, nothing is
/// unregistered and the error says which.
pub async fn forget(home: &Home, key: &str) -> Result<(Instance, Vec<String>)> {
    let i = home.registry.instance(key).await?;
    let peers = crate::mnet::remove_peerings(home, &i).await?;
    home.registry.remove_instance(i.id).await?;
    if i.is_master {
        publish::write_hook(home, &home.registry.instances().await?)?;
    } else {
        publish::remove_host_file(home, &i.host)?;
    }
    Ok((i, peers))
}

/// Records the master's Moodle directory (`moodle.dir`), which vmoodle uses to run Moodle's own
/// PHP under an instance (cache invalidation).
pub fn remember_moodle_dir(home: &mut Home, moodle_dir: &Path) -> Result<()> {
    let config = vmoodle_site::hook::locate_config(moodle_dir)?;
    let dir = config
        .parent()
        .context("config.php has no directory")?
        .canonicalize()
        .with_context(|| format!("resolving {}", moodle_dir.display()))?;
    let dir = dir
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", dir.display()))?;
    let text = vmoodle_core::settings::set_in_document(&home.settings_text()?, "moodle.dir", dir)?;
    home.save_settings(&text)
}

/// What `master set` was given.
#[derive(Debug, Clone, Default)]
pub struct MasterInput {
    pub dbserver: Option<String>,
    pub shortname: Option<String>,
    pub name: Option<String>,
    /// Accept a database account with server-wide powers.
    pub force_admin_account: bool,
}

/// Reads the master's config.php (without running Moodle) and records it as the master.
pub async fn set_master(home: &Home, moodle_dir: &Path, inp: &MasterInput) -> Result<Instance> {
    let config = vmoodle_site::hook::locate_config(moodle_dir)?;
    let php = home.executable("php")?;
    let cfg = vmoodle_site::config_php::read(&php, &config).await?;
    let kind = DbKind::from_moodle_dbtype(&cfg.dbtype)?;
    for (name, value) in &cfg.layout {
        let what = format!("$CFG->{name} in {}", config.display());
        if name.ends_with("_prefix") {
            validate::text(&what, value, 255, true)?;
        } else {
            validate::abs_path(&what, value)?;
        }
    }
    let www = validate::wwwroot(&cfg.wwwroot)
        .with_context(|| format!("$CFG->wwwroot in {}", config.display()))?;
    let server: DbServer = match &inp.dbserver {
        Some(n) => {
            let s = home.registry.dbserver(n).await?;
            if s.kind.is_mysql_family() != kind.is_mysql_family() {
                bail!(
                    "database server `{n}` is {}, but the master's $CFG->dbtype is `{}`",
                    s.kind,
                    cfg.dbtype
                );
            }
            s
        }
        None => {
            let host = if cfg.dbhost.is_empty() {
                "localhost"
            } else {
                cfg.dbhost.as_str()
            };
            dbservers::find_matching(home, kind, host, cfg.dbport).await?.ok_or_else(|| {
                anyhow!(
                    "no registered database server matches the master's database ({} at {}:{})\nhint: register it first (`vmoodle dbserver add NAME --type {} --host {} --user ADMIN --password-stdin`) or give --dbserver NAME",
                    cfg.dbtype, host, cfg.dbport.unwrap_or(kind.default_port()), kind, host
                )
            })?
        }
    };
    let shortname = inp.shortname.clone().unwrap_or_else(|| "master".into());
    let dbpass_sealed = home
        .secrets
        .seal(&cfg.dbpass, &Binding::instance_dbpass(&shortname))?;
    let name = match &inp.name {
        Some(n) => n.clone(),
        None => site_name(home, &server, &cfg)
            .await
            .unwrap_or_else(|| www.host.clone()),
    };
    let mut f = InstanceFields {
        shortname,
        host: www.host,
        wwwroot: www.url,
        name,
        description: format!("Master Moodle ({})", config.display()),
        is_master: true,
        enabled: true,
        dbserver_id: server.id,
        dbtype: cfg.dbtype.clone(),
        dbname: cfg.dbname.clone(),
        dbuser: cfg.dbuser.clone(),
        dbpass_sealed,
        prefix: cfg.prefix.clone(),
        dbpersist: cfg.dbpersist,
        dataroot: cfg.dataroot.clone(),
        mnet: -1,
        template: None,
        // The directories and session prefixes the master's config.php sets: each host file
        // moves its instance into a directory of its own inside them (hostfile::instance_layout).
        config: cfg.layout.clone(),
    };
    check_fields(&mut f).with_context(|| format!("in {}", config.display()))?;
    dbservers::refuse_privileged_account(home, &server, &f.dbuser, inp.force_admin_account)
        .await
        .with_context(|| format!("$CFG->dbuser in {}", config.display()))?;
    let i = match home.registry.master().await? {
        Some(old) => home.registry.update_instance(old.id, &f).await?,
        None => home.registry.add_instance(&f).await?,
    };
    publish::write_hook(home, &home.registry.instances().await?)?;
    Ok(i)
}

/// The site's full name from its database, when reachable with the Moodle's own account.
async fn site_name(
    home: &Home,
    server: &DbServer,
    cfg: &vmoodle_site::config_php::MoodleConfig,
) -> Option<String> {
    let spec = vmoodle_dbserver::ConnSpec {
        server: server.name.clone(),
        kind: server.kind,
        host: server.host.clone(),
        port: server.port,
        socket: server.socket.clone(),
        user: cfg.dbuser.clone(),
        password: cfg.dbpass.clone(),
    };
    let _ = home;
    let rows = vmoodle_dbserver::read_table(
        &spec,
        &cfg.dbname,
        &format!("{}course", cfg.prefix),
        &["id", "fullname"],
    )
    .await
    .map_err(|e| tracing::warn!("could not read the site name: {e}"))
    .ok()?;
    rows.into_iter()
        .find(|r| r.get("id").and_then(|v| v.as_deref()) == Some("1"))
        .and_then(|r| r.get("fullname").cloned().flatten())
        .filter(|n| validate::text("name", n, 255, false).is_ok())
}
