//! `vmoodle instance add|list|show|edit|enable|disable|forget`.

use anyhow::{bail, Result};
use std::path::Path;
use vmoodle_ops::instances::{self, InstanceEdit, InstanceInput};
use vmoodle_ops::Home;
use vmoodle_registry::Instance;

use super::{exit, output, PasswordArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Register an existing Moodle (its database and dataroot already exist).
    ///
    /// With the naming schema automated, `--token school1` fills wwwroot, database name, user,
    /// dataroot and the database server from the schema; flags override single values.
    ///
    /// Examples:
    ///   printf '%s' "$PW" | vmoodle instance add --token school1 --password-stdin
    ///   vmoodle instance add --wwwroot https://lms.example.org --shortname lms --dbserver db1 \
    ///       --dbname lms --dbuser lms --dataroot /srv/lms/data --password-file /root/lms.pw
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
    /// List instances (a table on a terminal; --json for scripts).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one instance, named by shortname or host.
    Show {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Change an instance's register entry; its host file is rewritten.
    Edit(EditArgs),
    /// Serve the instance again.
    Enable { instance: String },
    /// Stop serving the instance: its host answers 503 with Retry-After.
    Disable { instance: String },
    /// Unregister the instance; its database and dataroot are left untouched.
    Forget { instance: String },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Fill the rest from the naming schema with this token.
    #[arg(long)]
    token: Option<String>,
    /// The instance's address, e.g. https://school1.moodle.example.org
    #[arg(long)]
    wwwroot: Option<String>,
    /// The registered database server holding its database.
    #[arg(long)]
    dbserver: Option<String>,
    /// Its database name.
    #[arg(long)]
    dbname: Option<String>,
    /// The instance's own database account.
    #[arg(long)]
    dbuser: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
    /// Table prefix (default mdl_ or the schema's).
    #[arg(long)]
    prefix: Option<String>,
    /// Its dataroot (moodledata), an absolute path.
    #[arg(long)]
    dataroot: Option<String>,
    /// Site name (default: the shortname).
    #[arg(long)]
    name: Option<String>,
    /// The name commands use for it (default: the token).
    #[arg(long)]
    shortname: Option<String>,
    /// A description of the site.
    #[arg(long)]
    description: Option<String>,
    /// MNET: -1 none, 0 free, N member of subnetwork N.
    #[arg(long, allow_hyphen_values = true)]
    mnet: Option<i64>,
    /// Persistent database connections.
    #[arg(long)]
    persist: Option<bool>,
    /// Register it disabled (503 until enabled).
    #[arg(long)]
    disabled: bool,
    /// Extra $CFG value for this instance, NAME=VALUE (repeatable).
    #[arg(long = "cfg", value_name = "NAME=VALUE", value_parser = parse_kv)]
    cfg: Vec<(String, String)>,
    /// Accept a database account that is the server's administrator or has server-wide
    /// privileges (refused by default: its password would sit in a host file the web server reads).
    #[arg(long)]
    force_admin_account: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EditArgs {
    /// The instance: shortname or host.
    instance: String,
    /// New address; the host file moves with the host.
    #[arg(long)]
    wwwroot: Option<String>,
    #[arg(long)]
    shortname: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    dbserver: Option<String>,
    #[arg(long)]
    dbname: Option<String>,
    #[arg(long)]
    dbuser: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
    #[arg(long)]
    prefix: Option<String>,
    #[arg(long)]
    dataroot: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    mnet: Option<i64>,
    #[arg(long)]
    persist: Option<bool>,
    /// Set an extra $CFG value, NAME=VALUE (repeatable).
    #[arg(long = "cfg", value_name = "NAME=VALUE", value_parser = parse_kv)]
    cfg: Vec<(String, String)>,
    /// Remove an extra $CFG value (repeatable).
    #[arg(long = "unset-cfg", value_name = "NAME")]
    unset_cfg: Vec<String>,
    /// Accept a database account that is the server's administrator or has server-wide
    /// privileges (refused by default: its password would sit in a host file the web server reads).
    #[arg(long)]
    force_admin_account: bool,
    #[arg(long)]
    json: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE"))
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        match self {
            Cmd::Add(a) => {
                let home = super::open_locked(root).await?;
                let inp = InstanceInput {
                    token: a.token,
                    wwwroot: a.wwwroot,
                    dbserver: a.dbserver,
                    dbname: a.dbname,
                    dbuser: a.dbuser,
                    password: a.password.read()?,
                    prefix: a.prefix,
                    dataroot: a.dataroot,
                    name: a.name,
                    shortname: a.shortname,
                    description: a.description,
                    mnet: a.mnet,
                    persist: a.persist,
                    enabled: Some(!a.disabled),
                    config: a.cfg,
                    force_admin_account: a.force_admin_account,
                };
                let f = instances::resolve_new(&home, &inp).await?;
                let i = instances::add(&home, &f).await?;
                if a.json {
                    output::json(&i)?;
                } else {
                    eprintln!(
                        "registered instance `{}` at {} and published its host file",
                        i.shortname, i.wwwroot
                    );
                }
            }
            Cmd::List { json } => {
                let home = Home::open(root).await?;
                let all = home.registry.instances().await?;
                if json {
                    output::json(&all)?;
                } else {
                    output::table(
                        &[
                            "shortname",
                            "wwwroot",
                            "state",
                            "database",
                            "dataroot",
                            "mnet",
                        ],
                        all.iter()
                            .map(|i| {
                                vec![
                                    i.shortname.clone(),
                                    i.wwwroot.clone(),
                                    state(i).into(),
                                    format!("{}/{} ({})", i.dbserver, i.dbname, i.prefix),
                                    i.dataroot.clone(),
                                    vmoodle_core::MnetMode(i.mnet).describe(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Cmd::Show { instance, json } => {
                let home = Home::open(root).await?;
                let i = home.registry.instance(&instance).await?;
                if json {
                    output::json(&i)?;
                } else {
                    show(&i);
                }
            }
            Cmd::Edit(a) => {
                let home = super::open_locked(root).await?;
                let e = InstanceEdit {
                    wwwroot: a.wwwroot,
                    shortname: a.shortname,
                    name: a.name,
                    description: a.description,
                    dbserver: a.dbserver,
                    dbname: a.dbname,
                    dbuser: a.dbuser,
                    password: a.password.read()?,
                    prefix: a.prefix,
                    dataroot: a.dataroot,
                    mnet: a.mnet,
                    persist: a.persist,
                    set_config: a.cfg,
                    unset_config: a.unset_cfg,
                    force_admin_account: false,
                };
                if e == InstanceEdit::default() {
                    bail!("nothing to change: give at least one option (see `vmoodle instance edit --help`)");
                }
                let e = InstanceEdit {
                    force_admin_account: a.force_admin_account,
                    ..e
                };
                let i = instances::edit(&home, &a.instance, &e).await?;
                if a.json {
                    output::json(&i)?;
                } else {
                    eprintln!("updated instance `{}`", i.shortname);
                }
            }
            Cmd::Enable { instance } => {
                let home = super::open_locked(root).await?;
                let i = instances::set_enabled(&home, &instance, true).await?;
                eprintln!(
                    "instance `{}` is enabled: {} is served",
                    i.shortname, i.host
                );
            }
            Cmd::Disable { instance } => {
                let home = super::open_locked(root).await?;
                let i = instances::set_enabled(&home, &instance, false).await?;
                eprintln!(
                    "instance `{}` is disabled: {} answers 503",
                    i.shortname, i.host
                );
            }
            Cmd::Forget { instance } => {
                let home = super::open_locked(root).await?;
                let (i, peers) = instances::forget(&home, &instance).await?;
                if !peers.is_empty() {
                    eprintln!("MNET: its peer rows were removed from {}", peers.join(", "));
                }
                eprintln!(
                    "instance `{}` is no longer registered; its database `{}` and dataroot {} were left untouched",
                    i.shortname, i.dbname, i.dataroot
                );
            }
        }
        Ok(exit::OK)
    }
}

fn state(i: &Instance) -> &'static str {
    match (i.is_master, i.enabled) {
        (true, _) => "master",
        (false, true) => "enabled",
        (false, false) => "disabled",
    }
}

pub fn show(i: &Instance) {
    let mut pairs = vec![
        ("shortname", i.shortname.clone()),
        ("name", i.name.clone()),
        ("wwwroot", i.wwwroot.clone()),
        ("host", i.host.clone()),
        ("state", state(i).into()),
        ("description", i.description.clone()),
        ("db server", i.dbserver.clone()),
        ("dbtype", i.dbtype.clone()),
        ("dbname", i.dbname.clone()),
        ("dbuser", i.dbuser.clone()),
        ("dbpass", "**** (encrypted)".into()),
        ("prefix", i.prefix.clone()),
        ("persistent", i.dbpersist.to_string()),
        ("dataroot", i.dataroot.clone()),
        ("mnet", vmoodle_core::MnetMode(i.mnet).describe()),
        ("registered", output::time(i.created_at)),
        ("updated", output::time(i.updated_at)),
    ];
    if let Some(t) = &i.template {
        pairs.push(("template", t.clone()));
    }
    for (k, v) in &i.config {
        pairs.push(("cfg", format!("{k} = {v}")));
    }
    output::fields(&pairs);
}
