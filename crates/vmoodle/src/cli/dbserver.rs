//! `vmoodle dbserver add|list|show|check|remove`.

use anyhow::{anyhow, Result};
use std::path::Path;
use vmoodle_core::DbKind;
use vmoodle_ops::{dbservers, Home};

use super::{exit, output, PasswordArgs};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Register a database server with an administrator account that can create databases and
    /// users. The password is read from a file or stdin, stored encrypted, and never printed.
    ///
    /// Example: echo -n 'secret' | vmoodle dbserver add db1 --type mariadb --host 127.0.0.1 --user root --password-stdin
    Add {
        /// A name for the server (letters, digits, `_ . -`).
        name: String,
        #[arg(long = "type", value_name = "mariadb|mysql|pgsql")]
        kind: DbKind,
        #[arg(long)]
        host: String,
        /// Default: 3306 for mariadb/mysql, 5432 for pgsql.
        #[arg(long)]
        port: Option<u16>,
        /// Connect through this Unix socket (for PostgreSQL: its directory).
        #[arg(long)]
        socket: Option<String>,
        /// The administrator account.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// Register without connecting first.
        #[arg(long)]
        no_check: bool,
    },
    /// List registered database servers.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one database server.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Connect and report the server version and what the account may do.
    Check {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Unregister a database server (refused while instances use it).
    Remove { name: String },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        match self {
            Cmd::Add {
                name,
                kind,
                host,
                port,
                socket,
                user,
                password,
                no_check,
            } => {
                let home = super::open_locked(root).await?;
                let password = password
                    .read()?
                    .ok_or_else(|| anyhow!("give the administrator password with --password-file FILE or --password-stdin"))?;
                let (s, report) = dbservers::add(
                    &home,
                    dbservers::AddDbServer {
                        name,
                        kind,
                        host,
                        port,
                        socket,
                        user,
                        password,
                        check: !no_check,
                    },
                )
                .await?;
                eprintln!(
                    "registered database server `{}` ({} at {}:{})",
                    s.name, s.kind, s.host, s.port
                );
                if let Some(r) = report {
                    print_check(&r);
                }
            }
            Cmd::List { json } => {
                let home = Home::open(root).await?;
                let servers = home.registry.dbservers().await?;
                let instances = home.registry.instances().await?;
                if json {
                    output::json(&servers)?;
                } else {
                    output::table(
                        &["name", "type", "address", "admin user", "instances"],
                        servers
                            .iter()
                            .map(|s| {
                                vec![
                                    s.name.clone(),
                                    s.kind.to_string(),
                                    s.socket
                                        .clone()
                                        .unwrap_or_else(|| format!("{}:{}", s.host, s.port)),
                                    s.admin_user.clone(),
                                    instances
                                        .iter()
                                        .filter(|i| i.dbserver_id == s.id)
                                        .count()
                                        .to_string(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Cmd::Show { name, json } => {
                let home = Home::open(root).await?;
                let s = home.registry.dbserver(&name).await?;
                let cluster = home.registry.cluster_of_dbserver(s.id).await?;
                if json {
                    output::json(&serde_json::json!({"server": s, "cluster": cluster}))?;
                } else {
                    output::fields(&[
                        ("name", s.name.clone()),
                        ("type", s.kind.to_string()),
                        ("host", s.host.clone()),
                        ("port", s.port.to_string()),
                        ("socket", s.socket.clone().unwrap_or_else(|| "-".into())),
                        ("admin user", s.admin_user.clone()),
                        ("password", "**** (encrypted)".into()),
                        ("topology", s.topology.clone()),
                        (
                            "reads",
                            match (&s.reader_host, s.reader_port) {
                                (Some(h), Some(p)) => {
                                    format!("{h}:{p} (Moodle's read-only replica option)")
                                }
                                _ => "the same server".into(),
                            },
                        ),
                        ("registered", output::time(s.created_at)),
                    ]);
                    if let Some(c) = cluster {
                        eprintln!(
                            "cluster `{}` ({}): VIP {} writer :{} reader :{}; was {}:{}",
                            c.name,
                            c.state,
                            c.vip,
                            c.writer_port,
                            c.reader_port,
                            c.orig_host,
                            c.orig_port
                        );
                        for m in &c.members {
                            eprintln!("  {:<8} {}", m.role, m.node);
                        }
                        eprintln!(
                            "`vmoodle cluster status {}` asks every node how it is",
                            c.name
                        );
                    }
                }
            }
            Cmd::Check { name, json } => {
                let home = Home::open(root).await?;
                let r = dbservers::check(&home, &name).await?;
                if json {
                    output::json(&r)?;
                } else {
                    print_check(&r);
                }
                if !r.can_deploy() {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Remove { name } => {
                let home = super::open_locked(root).await?;
                home.registry.remove_dbserver(&name).await?;
                eprintln!("removed database server `{name}` from the register (the server itself is untouched)");
            }
        }
        Ok(exit::OK)
    }
}

fn print_check(r: &vmoodle_dbserver::CheckReport) {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    output::fields(&[
        ("server", r.server.clone()),
        ("address", r.address.clone()),
        ("version", r.version.clone()),
        ("account", r.user.clone()),
        ("create databases", yes(r.can_create_databases)),
        ("create users", yes(r.can_create_users)),
        ("grant rights", yes(r.can_grant)),
        ("read accounts", yes(r.can_read_accounts)),
        ("superuser", yes(r.superuser)),
        (
            "databases",
            if r.only_databases.is_empty() {
                "any name".to_string()
            } else {
                format!("only names like {}", r.only_databases.join(", "))
            },
        ),
    ]);
    if !r.can_deploy() {
        eprintln!("warning: this account cannot create databases and users with rights, or cannot read other accounts, so deploys to this server will fail (see the README: least privileges of the administrator account)");
    }
}
