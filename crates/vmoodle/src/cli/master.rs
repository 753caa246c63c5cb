//! `vmoodle master set|show`.

use std::path::{Path, PathBuf};
use vmoodle_ops::instances::{self, MasterInput};
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Record the master from its config.php (read with php-cli; Moodle's setup is not run).
    Set {
        /// The Moodle directory: the one holding config.php (for Moodle 5.x, the parent of public/).
        #[arg(long, value_name = "DIR")]
        moodle_dir: PathBuf,
        /// The registered database server of the master's database (default: the one matching
        /// $CFG->dbtype, dbhost and dbport).
        #[arg(long)]
        dbserver: Option<String>,
        /// Default: master.
        #[arg(long)]
        shortname: Option<String>,
        /// Default: the site's full name from its database.
        #[arg(long)]
        name: Option<String>,
        /// Accept a database account that is the server's administrator or has server-wide
        /// privileges (refused by default: its password would sit in a host file the web server reads).
        #[arg(long)]
        force_admin_account: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the master.
    Show {
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        match self {
            Cmd::Set {
                moodle_dir,
                dbserver,
                shortname,
                name,
                force_admin_account,
                json,
            } => {
                let mut home = super::open_locked(root).await?;
                let i = instances::set_master(
                    &home,
                    &moodle_dir,
                    &MasterInput {
                        dbserver,
                        shortname,
                        name,
                        force_admin_account,
                    },
                )
                .await?;
                instances::remember_moodle_dir(&mut home, &moodle_dir)?;
                if json {
                    output::json(&i)?;
                } else {
                    eprintln!(
                        "master `{}` recorded: {} (database {} on {})",
                        i.shortname, i.wwwroot, i.dbname, i.dbserver
                    );
                }
            }
            Cmd::Show { json } => {
                let home = Home::open(root).await?;
                match home.registry.master().await? {
                    Some(i) if json => output::json(&i)?,
                    Some(i) => super::instance::show(&i),
                    None => anyhow::bail!(
                        "no master is recorded\nhint: `vmoodle master set --moodle-dir DIR`"
                    ),
                }
            }
        }
        Ok(exit::OK)
    }
}
