//! Deploying new instances from a template, one or many at a time, each all-or-nothing:
//! 1. checks (token, names, host, database, user and dataroot all free; template intact; server
//!    up) before anything is created;
//! 2. a database and a dedicated user with rights on it only (random password, stored sealed);
//! 3. the database filled by the fastest path: PostgreSQL `CREATE DATABASE ... TEMPLATE` of the
//!    live template; MariaDB a warm spare renamed into place, else a parallel server-side copy
//!    (`CREATE TABLE ... LIKE` + `INSERT ... SELECT`) from the live template; else the dump;
//! 4. Moodle fix-ups (vmoodle-site::fixups); 5. the dataroot (filedir hard-linked);
//! 6. registered and its host file published.
//!
//! Every step is journaled; on failure everything done so far is undone.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use vmoodle_core::{schema, validate, MnetMode, Secret};
use vmoodle_dbserver::{admin, quote_ident, quote_literal, tools, ConnSpec};
use vmoodle_registry::{DbServer, InstanceFields, Template};
use vmoodle_site::{dataroot, fixups};

use crate::journal::{Events, Journal, Undo};
use crate::templates::{self, Manifest};
use crate::{dbservers, instances, Home};

/// How the database is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The fastest path available.
    #[default]
    Auto,
    /// Load the template's dump with the client tool.
    Dump,
}

/// What a deploy was asked.
#[derive(Debug, Clone, Default)]
pub struct DeployRequest {
    pub template: String,
    pub token: String,
    pub name: Option<String>,
    pub shortname: Option<String>,
    pub description: Option<String>,
    /// A host name or a full wwwroot.
    pub host: Option<String>,
    pub dbserver: Option<String>,
    pub dataroot: Option<String>,
    pub prefix: Option<String>,
    /// Database name and user (default: from the schema, else vm_TOKEN).
    pub dbname: Option<String>,
    pub dbuser: Option<String>,
    pub mnet: Option<i64>,
    pub admin_password: Option<Secret>,
    pub admin_email: Option<String>,
    pub method: Method,
    /// Extra `$CFG` values written into the host file (VMoodle's `config_NAME` columns).
    pub cfg: Vec<(String, String)>,
    /// Plugin settings written into config_plugins (VMoodle's `plugin|setting` columns).
    pub plugin_config: Vec<(String, String, String)>,
}

/// Everything checked and resolved; nothing created yet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub req: DeployRequest,
    pub fields: InstanceFields,
    pub password: Secret,
    pub server: DbServer,
    pub spec: ConnSpec,
    pub template: Template,
    pub manifest: Manifest,
    pub dataroot: PathBuf,
    /// The code's Moodle version when the template is behind it (moodle.dir known): the new
    /// site is upgraded (`upgrade.php --non-interactive`) before the deploy ends, in CLI
    /// maintenance until then.
    pub upgrade_to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub shortname: String,
    pub wwwroot: String,
    pub dbserver: String,
    pub dbname: String,
    pub dbuser: String,
    pub dataroot: String,
    pub method: String,
    pub ms: u128,
    pub steps: Vec<crate::journal::StepRecord>,
    pub fixups: fixups::FixupReport,
}

/// The directory that holds every dataroot made from the schema (the pattern's fixed part).
pub fn dataroot_base(home: &Home) -> PathBuf {
    let pattern = &home.settings.schema.dataroot;
    let fixed = pattern.split(schema::PLACEHOLDER).next().unwrap_or("/");
    let fixed = fixed.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    PathBuf::from(if fixed.is_empty() { "/" } else { fixed })
}

/// Checks a deploy and resolves every value; creates nothing.
pub async fn plan(home: &Home, req: &DeployRequest) -> Result<Plan> {
    validate::token(&req.token)?;
    let template = home.registry.template(&req.template).await?;
    plan_from(home, req, template).await
}

/// Like `plan`, from a template given directly (an archive being restored).
pub async fn plan_from(home: &Home, req: &DeployRequest, template: Template) -> Result<Plan> {
    validate::token(&req.token)?;
    let (manifest, _) = templates::open(&template)?;
    let problems = templates::verify(&template, false)?;
    if !problems.is_empty() {
        bail!(
            "template `{}` no longer matches its manifest: {}\nhint: `vmoodle template verify {}` shows every problem; snapshot again",
            template.name,
            problems.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
            template.name
        );
    }
    let s = &home.settings.schema;
    let exp = if s.automate {
        Some(schema::expand(s, &req.token)?)
    } else {
        None
    };
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| anyhow!("missing --{what}: the naming schema is not automated (`vmoodle settings set schema.automate true`), so give it"))
    };
    let wwwroot = match &req.host {
        Some(h) if h.contains("://") => h.clone(),
        Some(h) => format!(
            "{}://{h}",
            if exp
                .as_ref()
                .is_some_and(|e| e.wwwroot.starts_with("https://"))
            {
                "https"
            } else {
                "http"
            }
        ),
        None => need(exp.as_ref().map(|e| e.wwwroot.clone()), "host")?,
    };
    let www = validate::wwwroot(&wwwroot)?;
    let server = match &req.dbserver {
        Some(n) => home.registry.dbserver(n).await?,
        None => {
            let kind = exp
                .as_ref()
                .map(|e| e.db_type)
                .unwrap_or(manifest.source.kind);
            let (host, port) = exp
                .as_ref()
                .map(|e| (e.db_host.clone(), Some(e.db_port)))
                .unwrap_or(("127.0.0.1".into(), None));
            dbservers::find_matching(home, kind, &host, port)
                .await?
                .ok_or_else(|| anyhow!("no registered database server matches the schema ({kind} at {host}); give --dbserver NAME"))?
        }
    };
    if server.kind.is_mysql_family() != manifest.source.kind.is_mysql_family() {
        bail!(
            "template `{}` holds a {} database, but database server `{}` is {}; deploy it to a server of the same family",
            template.name,
            manifest.source.kind,
            server.name,
            server.kind
        );
    }
    let dbname = req
        .dbname
        .clone()
        .or(exp.as_ref().map(|e| e.db_name.clone()))
        .unwrap_or_else(|| format!("vm_{}", req.token));
    let dbuser = req
        .dbuser
        .clone()
        .or(exp.as_ref().map(|e| e.db_user.clone()))
        .unwrap_or_else(|| format!("vm_{}", req.token));
    validate::db_name(&dbname)?;
    validate::db_user(&dbuser)?;
    let prefix = req
        .prefix
        .clone()
        .or(exp.as_ref().map(|e| e.prefix.clone()))
        .unwrap_or_else(|| manifest.source.prefix.clone());
    validate::prefix(&prefix)?;
    let dataroot = match &req.dataroot {
        Some(d) => validate::abs_path("dataroot", d)?,
        None => PathBuf::from(need(
            exp.as_ref().map(|e| e.dataroot.display().to_string()),
            "dataroot",
        )?),
    };
    let base = dataroot_base(home);
    if !dataroot.starts_with(&base) || dataroot == base {
        bail!(
            "dataroot {} is outside the dataroot base {} (the fixed part of schema.dataroot); vmoodle only creates and removes dataroots inside it",
            dataroot.display(),
            base.display()
        );
    }
    if dataroot.exists() {
        bail!(
            "dataroot {} already exists; vmoodle will not deploy over it",
            dataroot.display()
        );
    }
    let shortname = req.shortname.clone().unwrap_or_else(|| req.token.clone());
    let name = req.name.clone().unwrap_or_else(|| shortname.clone());
    let mut fields = InstanceFields {
        shortname,
        host: www.host.clone(),
        wwwroot: www.url.clone(),
        name,
        description: req.description.clone().unwrap_or_default(),
        is_master: false,
        enabled: true,
        dbserver_id: server.id,
        dbtype: if server.kind == manifest.source.kind {
            manifest.source.dbtype.clone()
        } else {
            server.kind.moodle_dbtype().into()
        },
        dbname: dbname.clone(),
        dbuser: dbuser.clone(),
        dbpass_sealed: String::new(),
        prefix,
        dbpersist: exp.as_ref().map(|e| e.db_persist).unwrap_or(false),
        dataroot: dataroot.display().to_string(),
        mnet: req.mnet.unwrap_or(-1),
        template: Some(template.name.clone()),
        config: req.cfg.iter().cloned().collect(),
    };
    MnetMode::new(fields.mnet)?;
    for (k, _) in &req.cfg {
        if !vmoodle_site::hostfile::extra_name_ok(k) {
            bail!("invalid $CFG name `{}` (lowercase letters, digits, underscores; not one the hook sets)", validate::printable(k));
        }
    }
    for (plugin, setting, _) in &req.plugin_config {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_/".contains(&b))
        };
        if !(plugin.is_empty() || ok(plugin)) || !ok(setting) {
            bail!(
                "invalid plugin setting `{}|{}`",
                validate::printable(plugin),
                validate::printable(setting)
            );
        }
    }
    instances::check_fields(&mut fields)?;
    // Free in the register?
    for i in home.registry.instances().await? {
        if i.host == fields.host {
            bail!(
                "host {} is already used by instance `{}`",
                fields.host,
                i.shortname
            );
        }
        if i.shortname == fields.shortname {
            bail!("shortname `{}` is already used", fields.shortname);
        }
        if i.dataroot == fields.dataroot {
            bail!(
                "dataroot {} is already used by instance `{}`",
                fields.dataroot,
                i.shortname
            );
        }
    }
    // A deploy makes the instance its own account; never the server's administrator.
    if dbuser == server.admin_user {
        bail!(
            "the new instance's database user `{dbuser}` is the administrator account of server `{}`: a deploy creates a dedicated account with rights on its database only, and the administrator's password must never reach a host file the web server reads\nhint: set another `schema.db_login` or give --dbuser",
            server.name
        );
    }
    // Free on the server? (This also tells whether the server is up.)
    let spec = dbservers::admin_spec(home, &server)?;
    if admin::database_exists(&spec, &dbname).await? {
        bail!(
            "database `{dbname}` already exists on server `{}`",
            server.name
        );
    }
    if admin::user_exists(&spec, &dbuser).await? {
        bail!(
            "database user `{dbuser}` already exists on server `{}`",
            server.name
        );
    }
    if let Some(e) = &req.admin_email {
        if !e.contains('@')
            || e.len() > 100
            || e.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bail!("invalid admin e-mail `{}`", validate::printable(e));
        }
    }
    let password = if home.settings.schema.db_password.is_empty() {
        Secret::random_password()
    } else {
        home.secrets.open(
            &home.settings.schema.db_password,
            &vmoodle_core::Binding::setting("schema.db_password"),
        )?
    };
    let upgrade_to = crate::fleet::upgrade::template_behind(home, &manifest).map(|c| c.version);
    Ok(Plan {
        upgrade_to,
        req: req.clone(),
        fields,
        password,
        server,
        spec,
        template,
        manifest,
        dataroot,
    })
}

const STEPS: usize = 6;

/// Runs a checked plan as a journaled job; on failure (or SIGINT/SIGTERM at a step boundary)
/// undoes every step done and says which step failed.
pub async fn execute(home: &Home, plan: Plan, events: Events<'_>) -> Result<Outcome> {
    let steps = if plan.fields.mnet >= 0 {
        STEPS
    } else {
        STEPS - 1
    } + usize::from(plan.upgrade_to.is_some());
    let mut j = Journal::start(home, "deploy", &plan.fields.shortname, steps, events).await?;
    let mut method = String::new();
    let mut report = fixups::FixupReport::default();
    let mut current = "database and user";
    let r = run_steps(home, &plan, &mut j, &mut method, &mut report, &mut current).await;
    match r {
        Ok(()) => {
            let ms = j.elapsed_ms();
            let steps = j
                .finish()
                .await
                .with_context(|| format!("deploy of `{}`", plan.fields.shortname))?;
            Ok(Outcome {
                shortname: plan.fields.shortname.clone(),
                wwwroot: plan.fields.wwwroot.clone(),
                dbserver: plan.server.name.clone(),
                dbname: plan.fields.dbname.clone(),
                dbuser: plan.fields.dbuser.clone(),
                dataroot: plan.fields.dataroot.clone(),
                method,
                ms,
                steps,
                fixups: report,
            })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let id = j.id;
            let left = j.fail(&msg).await;
            let mut err = e.context(format!(
                "deploy of `{}` failed at step \"{current}\"; {} (job {id})",
                plan.fields.shortname,
                if left.is_empty() {
                    "everything done before it was undone"
                } else {
                    "what it did was undone, except what is listed"
                }
            ));
            if !left.is_empty() {
                err = err.context(format!(
                    "some steps could not be undone, clean up by hand (`vmoodle jobs show {id}`): {}",
                    left.join("; ")
                ));
            }
            Err(err)
        }
    }
}

/// Runs a create action under an undo record written first: the record is marked made when it
/// succeeds, and cancelled (never undone) when it failed because the thing already existed.
async fn create<F>(j: &mut Journal<'_>, undo: Undo, action: F) -> Result<()>
where
    F: std::future::Future<Output = std::result::Result<(), vmoodle_dbserver::DbError>>,
{
    j.intend(undo).await?;
    match action.await {
        Ok(()) => j.made().await,
        Err(e) if e.already_exists() => {
            j.cancel_intent().await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

async fn run_steps(
    home: &Home,
    plan: &Plan,
    j: &mut Journal<'_>,
    method: &mut String,
    report: &mut fixups::FixupReport,
    current: &mut &'static str,
) -> Result<()> {
    let spec = &plan.spec;
    let kind = plan.server.kind;
    let f = &plan.fields;
    let sid = plan.server.id;
    let tpl_prefix = plan.manifest.source.prefix.clone();
    let drop_db = || Undo::DropDatabase {
        server_id: sid,
        database: f.dbname.clone(),
    };

    // 1. Database and dedicated user.
    *current = "database and user";
    j.step(current).await?;
    if kind.is_mysql_family() {
        create(j, drop_db(), admin::create_database(spec, &f.dbname)).await?;
    }
    create(
        j,
        Undo::DropUser {
            server_id: sid,
            user: f.dbuser.clone(),
        },
        async {
            if kind.is_mysql_family() {
                admin::create_user(spec, &f.dbuser, &plan.password, &f.dbname).await
            } else {
                admin::create_role(spec, &f.dbuser, &plan.password).await
            }
        },
    )
    .await?;

    // 2. Fill it.
    *current = "fill the database";
    j.step(current).await?;
    if kind.is_mysql_family() {
        if plan.req.method == Method::Auto
            && crate::spares::take_spare(
                spec,
                &plan.template,
                plan.manifest.tables,
                &f.dbname,
                &tpl_prefix,
                &f.prefix,
            )
            .await?
        {
            *method = "warm spare".into();
        } else if plan.req.method == Method::Auto {
            templates::ensure_live(home, &plan.template, &plan.server).await?;
            copy_tables(
                spec,
                &templates::live_db_name(&plan.template.name),
                &f.dbname,
                &tpl_prefix,
                &f.prefix,
            )
            .await?;
            *method = "server-side copy".into();
        } else {
            load_dump(home, plan).await?;
            rename_prefix(spec, &f.dbname, &tpl_prefix, &f.prefix).await?;
            *method = "dump load".into();
        }
    } else {
        if plan.req.method == Method::Auto {
            templates::ensure_live(home, &plan.template, &plan.server).await?;
            j.intend(drop_db()).await?;
            match pg_clone(
                spec,
                &templates::live_db_name(&plan.template.name),
                &f.dbname,
                &f.dbuser,
            )
            .await
            {
                Ok(()) => j.made().await?,
                Err(e)
                    if e.downcast_ref::<vmoodle_dbserver::DbError>()
                        .is_some_and(|d| d.already_exists()) =>
                {
                    // Someone else's database of that name appeared meanwhile.
                    j.cancel_intent().await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            *method = "database template".into();
        } else {
            create(j, drop_db(), admin::create_database(spec, &f.dbname)).await?;
            load_dump(home, plan).await?;
            *method = "dump load".into();
        }
        pg_hand_over(spec, &f.dbname, &f.dbuser, &tpl_prefix, &f.prefix).await?;
    }

    // 3. Moodle fix-ups.
    *current = "Moodle fix-ups";
    j.step(current).await?;
    let admin_password_hash = match &plan.req.admin_password {
        Some(p) => Some(php_password_hash(home, p).await?),
        None => None,
    };
    let fx = fixups::Fixups {
        kind,
        prefix: f.prefix.clone(),
        old_wwwroot: plan.manifest.source.wwwroot.clone(),
        new_wwwroot: f.wwwroot.clone(),
        new_host: f.host.clone(),
        fullname: f.name.clone(),
        shortname: f.shortname.clone(),
        summary: plan.req.description.clone(),
        sessioncookie: plan.req.token.clone(),
        admin_password_hash,
        admin_email: plan.req.admin_email.clone(),
        now: vmoodle_core::now_unix(),
    };
    let mut conn = vmoodle_dbserver::connect(spec, Some(&f.dbname)).await?;
    let res = fixups::apply(&mut conn, &fx).await;
    let res2 = match &res {
        Ok(_) => apply_plugin_config(&mut conn, kind, &f.prefix, &plan.req.plugin_config).await,
        Err(_) => Ok(()),
    };
    vmoodle_dbserver::close(conn).await;
    *report = res.map_err(|(step, e)| anyhow!("{step}: {e}"))?;
    res2?;

    // 4. Dataroot: built in a staging directory that only this job uses, then renamed into
    // place (never over an existing directory), so an interrupted copy never leaves a
    // half-made dataroot under the instance's name, and a directory that appeared meanwhile
    // (someone else's) is never taken into the job's undo records.
    *current = "dataroot";
    j.step(current).await?;
    let src = templates::dataroot_dir(&plan.template)?;
    let dst = plan.dataroot.clone();
    let parent = dst
        .parent()
        .ok_or_else(|| anyhow!("dataroot {} has no parent directory", dst.display()))?
        .to_path_buf();
    make_parents(&parent)?;
    let staging = parent.join(format!(
        ".vmoodle-staging-{}-{}",
        j.id,
        dst.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("dataroot")
    ));
    let owner = web_owner(home)?;
    let modes = dataroot::Modes {
        dir: 0o2770,
        file: 0o660,
        owner,
    };
    j.intend(Undo::RemoveDir {
        path: staging.clone(),
    })
    .await?;
    let (s2, st2) = (src.clone(), staging.clone());
    // The staging directory is this job's own: the copy builds it directly (root-only until
    // complete) and never follows a link.
    tokio::task::spawn_blocking(move || dataroot::copy_into(&s2, &st2, true, modes))
        .await?
        .context("copying the template's dataroot")?;
    if plan.upgrade_to.is_some() {
        // Moodle's CLI maintenance (pages answer 503) until the site is upgraded.
        crate::fleet::upgrade::write_cli_maintenance(&staging, owner)?;
    }
    j.made().await?;
    j.intend(Undo::RemoveDir { path: dst.clone() }).await?;
    match rename_noreplace(&staging, &dst) {
        Ok(()) => j.made().await?,
        Err(e) => {
            j.cancel_intent().await?;
            return Err(e);
        }
    }

    // 5. Register and publish.
    *current = "register and publish";
    j.step(current).await?;
    let mut fields = f.clone();
    fields.dbpass_sealed = home.secrets.seal(
        &plan.password,
        &vmoodle_core::Binding::instance_dbpass(&fields.shortname),
    )?;
    j.intend(Undo::Unregister {
        shortname: f.shortname.clone(),
        host: f.host.clone(),
    })
    .await?;
    let inst = instances::add(home, &fields).await?;
    j.made().await?;

    // 6. MNET: its own key (a template's key is never shared) and its subnetwork's peers.
    if f.mnet >= 0 {
        *current = "MNET key and peers";
        j.step(current).await?;
        j.intend(Undo::RemovePeerings {
            instance_id: inst.id,
        })
        .await?;
        crate::mnet::setup_new(home, &f.shortname).await?;
        j.made().await?;
    }

    // 7. The template is behind the code: Moodle's upgrade of the new site.
    if let Some(to) = &plan.upgrade_to {
        *current = "Moodle upgrade";
        j.step(current).await?;
        crate::fleet::upgrade::upgrade_new_site(home, &inst, to).await?;
    }
    Ok(())
}

/// Renames `from` to `to`, failing (AlreadyExists) if `to` exists, even as an empty directory.
pub(crate) fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    nix::fcntl::renameat2(
        None,
        from,
        None,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| {
        anyhow!(
            "cannot move the new dataroot into place at {}: {e}",
            to.display()
        )
    })
}

/// Creates the parents of a dataroot, traversable (not listable) by the web server.
fn make_parents(parent: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut missing = Vec::new();
    let mut p = parent.to_path_buf();
    while !p.exists() {
        missing.push(p.clone());
        if !p.pop() {
            break;
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => fs_err::set_permissions(d, std::fs::Permissions::from_mode(0o711))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow!("cannot create {}: {e}", d.display())),
        }
    }
    Ok(())
}

/// Loads the template's dump into the new (empty) database with the client tool.
async fn load_dump(home: &Home, plan: &Plan) -> Result<()> {
    let dump = PathBuf::from(&plan.template.path).join(&plan.manifest.database.file);
    tools::load(
        &templates::clients(home)?,
        &plan.spec,
        &plan.fields.dbname,
        &dump,
    )
    .await?;
    Ok(())
}

/// The web server's user and group ids (for dataroots).
fn web_owner(home: &Home) -> Result<Option<(nix::unistd::Uid, nix::unistd::Gid)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(&home.settings.web.user)
        .ok()
        .flatten()
        .ok_or_else(|| anyhow!("the web server user `{}` does not exist\nhint: `vmoodle settings set web.user NAME`", home.settings.web.user))?;
    Ok(Some((user.uid, home.web_gid()?)))
}

/// Moodle's password hash (PHP's password_hash, PASSWORD_DEFAULT) computed by php-cli; the
/// password goes through stdin.
async fn php_password_hash(home: &Home, p: &Secret) -> Result<String> {
    let out = vmoodle_exec::Tool::new(home.executable("php")?)
        .args([
            "-n",
            "-r",
            "echo password_hash(stream_get_contents(STDIN), PASSWORD_DEFAULT);",
        ])
        .stdin(p.expose().as_bytes().to_vec())
        .run()
        .await
        .context("hashing the admin password with php")?;
    let h = String::from_utf8(out.stdout)?;
    if !h.starts_with('$') {
        bail!("php gave no password hash");
    }
    Ok(h)
}

/// Settings from a node list: an empty plugin means a core setting (the config table).
async fn apply_plugin_config(
    conn: &mut vmoodle_dbserver::Conn,
    kind: vmoodle_core::DbKind,
    prefix: &str,
    settings: &[(String, String, String)],
) -> Result<()> {
    for (plugin, name, value) in settings {
        let plugin = Some(plugin.as_str()).filter(|p| !p.is_empty());
        fixups::set_setting(conn, kind, prefix, plugin, name, value)
            .await
            .with_context(|| format!("setting {}|{name}", plugin.unwrap_or("core")))?;
    }
    Ok(())
}

/// Server-side parallel copy of every `from_prefix` table of `from_db` into `to_db` (MariaDB).
pub async fn copy_tables(
    spec: &ConnSpec,
    from_db: &str,
    to_db: &str,
    from_prefix: &str,
    to_prefix: &str,
) -> Result<()> {
    let kind = spec.kind;
    let mut c = vmoodle_dbserver::connect(spec, Some(from_db)).await?;
    let rows = c
        .rows(
            "SELECT CAST(TABLE_NAME AS CHAR), CAST(DATA_LENGTH + INDEX_LENGTH AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'",
            &[],
        )
        .await?;
    vmoodle_dbserver::close(c).await;
    let mut tables: Vec<(String, u64)> = rows
        .into_iter()
        .filter_map(|r| {
            Some((
                r[0].clone()?,
                r[1].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
            ))
        })
        .filter(|(t, _)| t.starts_with(from_prefix) && !crate::spares::is_bookkeeping(t))
        .collect();
    if tables.is_empty() {
        bail!("the live template `{from_db}` has no `{from_prefix}` tables");
    }
    tables.sort_by_key(|b| std::cmp::Reverse(b.1));
    const WORKERS: usize = 4;
    let mut buckets: Vec<(u64, Vec<String>)> = vec![(0, Vec::new()); WORKERS];
    for (t, size) in tables {
        let b = buckets.iter_mut().min_by_key(|b| b.0).expect("workers");
        b.0 += size + 16_384;
        b.1.push(t);
    }
    let mut set = tokio::task::JoinSet::new();
    for (_, bucket) in buckets.into_iter().filter(|b| !b.1.is_empty()) {
        let spec = spec.clone();
        let (from_db, to_db, from_prefix, to_prefix) = (
            from_db.to_string(),
            to_db.to_string(),
            from_prefix.to_string(),
            to_prefix.to_string(),
        );
        set.spawn(async move {
            let mut c = vmoodle_dbserver::connect(&spec, Some(&to_db)).await?;
            let r = async {
                for t in bucket {
                    let new = format!("{to_prefix}{}", &t[from_prefix.len()..]);
                    let (src, dst) = (
                        format!("{}.{}", quote_ident(kind, &from_db), quote_ident(kind, &t)),
                        quote_ident(kind, &new),
                    );
                    c.exec(&format!("CREATE TABLE {dst} LIKE {src}"), &[])
                        .await
                        .with_context(|| format!("copying table {t}"))?;
                    c.exec(&format!("INSERT INTO {dst} SELECT * FROM {src}"), &[])
                        .await
                        .with_context(|| format!("copying table {t}"))?;
                }
                anyhow::Ok(())
            }
            .await;
            vmoodle_dbserver::close(c).await;
            r
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Renames every `from` table of `db` to the `to` prefix (MariaDB, one atomic statement).
async fn rename_prefix(spec: &ConnSpec, db: &str, from: &str, to: &str) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let tables = admin::tables(spec, db, from).await?;
    let k = spec.kind;
    let pairs: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "{} TO {}",
                quote_ident(k, t),
                quote_ident(k, &format!("{to}{}", &t[from.len()..]))
            )
        })
        .collect();
    admin::run(
        spec,
        Some(db),
        "renaming tables to the new prefix",
        &[format!("RENAME TABLE {}", pairs.join(", "))],
    )
    .await?;
    Ok(())
}

/// PostgreSQL: the new database as a copy of the live template (retrying while another clone of
/// the same template is being made, which PostgreSQL refuses).
async fn pg_clone(spec: &ConnSpec, template_db: &str, db: &str, owner: &str) -> Result<()> {
    let k = spec.kind;
    let sql = format!(
        "CREATE DATABASE {} OWNER {} TEMPLATE {}",
        quote_ident(k, db),
        quote_ident(k, owner),
        quote_ident(k, template_db)
    );
    let mut tries = 0;
    loop {
        match admin::run(
            spec,
            None,
            &format!("creating database `{db}` from the live template"),
            std::slice::from_ref(&sql),
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(vmoodle_dbserver::DbError::Query {
                source: sqlx::Error::Database(d),
                ..
            }) if d.code().as_deref() == Some("55006") && tries < 300 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// PostgreSQL: the instance's role owns its database and every table and sequence in it, nobody
/// else may connect, and the tables carry the instance's prefix.
pub(crate) async fn pg_hand_over(
    spec: &ConnSpec,
    db: &str,
    owner: &str,
    from_prefix: &str,
    to_prefix: &str,
) -> Result<()> {
    let k = spec.kind;
    let o = quote_literal(k, owner);
    let (fp, tp) = (quote_literal(k, from_prefix), quote_literal(k, to_prefix));
    let rename = if from_prefix == to_prefix {
        String::new()
    } else {
        format!(
            "FOR r IN SELECT c.relname::text AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
               WHERE s.nspname = current_schema() AND c.relkind IN ('r', 'S') AND left(c.relname, length({fp})) = {fp} LOOP \
               EXECUTE format('ALTER TABLE %I RENAME TO %I', r.n, {tp} || substr(r.n, length({fp}) + 1)); \
             END LOOP;"
        )
    };
    let block = format!(
        "DO $vm$ DECLARE r record; BEGIN \
           {rename} \
           FOR r IN SELECT tablename::text AS n FROM pg_tables WHERE schemaname = current_schema() LOOP \
             EXECUTE format('ALTER TABLE %I OWNER TO %I', r.n, {o}); \
           END LOOP; \
           FOR r IN SELECT c.relname::text AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
             WHERE s.nspname = current_schema() AND c.relkind = 'S' AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = {o}) LOOP \
             EXECUTE format('ALTER SEQUENCE %I OWNER TO %I', r.n, {o}); \
           END LOOP; \
         END $vm$"
    );
    admin::run(
        spec,
        Some(db),
        "handing the database over to its user",
        &[block],
    )
    .await?;
    admin::run(
        spec,
        None,
        "closing the database to other users",
        &[
            format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote_ident(k, db),
                quote_ident(k, owner)
            ),
            format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", quote_ident(k, db)),
            format!(
                "GRANT ALL ON DATABASE {} TO {}",
                quote_ident(k, db),
                quote_ident(k, owner)
            ),
        ],
    )
    .await?;
    Ok(())
}

/// The result of one deploy in a bulk run.
#[derive(Debug, Serialize)]
pub struct BulkItem {
    pub token: String,
    pub ok: bool,
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
}

/// Deploys many instances, `parallel` at a time; each is all-or-nothing. Plans are checked
/// first, one by one, so two requests for the same name are caught before anything starts.
pub async fn deploy_many(
    home: &Home,
    reqs: Vec<DeployRequest>,
    parallel: usize,
    events: Events<'_>,
) -> Vec<BulkItem> {
    use futures::stream::StreamExt;
    let mut seen = std::collections::HashSet::new();
    let mut planned = Vec::new();
    let mut results = Vec::new();
    for r in reqs {
        if !seen.insert(r.token.clone()) {
            results.push(BulkItem {
                token: r.token.clone(),
                ok: false,
                outcome: None,
                error: Some("the same token is asked twice".into()),
            });
            continue;
        }
        match plan(home, &r).await {
            Ok(p) => planned.push(p),
            Err(e) => results.push(BulkItem {
                token: r.token.clone(),
                ok: false,
                outcome: None,
                error: Some(format!("{e:#}")),
            }),
        }
    }
    // Two plans must not claim the same host, database or dataroot.
    let mut hosts = std::collections::HashSet::new();
    let mut keep = Vec::new();
    for p in planned {
        let key = (
            p.fields.host.clone(),
            p.fields.dbname.clone(),
            p.fields.dataroot.clone(),
        );
        if hosts.insert(key.0.clone())
            && hosts.insert(format!("db:{}:{}", p.server.name, key.1))
            && hosts.insert(format!("dr:{}", key.2))
        {
            keep.push(p);
        } else {
            results.push(BulkItem {
                token: p.req.token.clone(),
                ok: false,
                outcome: None,
                error: Some("its host, database or dataroot is also asked by another token".into()),
            });
        }
    }
    let done: Vec<BulkItem> = futures::stream::iter(keep)
        .map(|p| async move {
            let token = p.req.token.clone();
            match execute(home, p, events).await {
                Ok(o) => BulkItem {
                    token,
                    ok: true,
                    outcome: Some(o),
                    error: None,
                },
                Err(e) => BulkItem {
                    token,
                    ok: false,
                    outcome: None,
                    error: Some(format!("{e:#}")),
                },
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.extend(done);
    results
}
