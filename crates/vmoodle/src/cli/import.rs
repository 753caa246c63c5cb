//! `vmoodle import vmoodle|csv`.

use std::path::{Path, PathBuf};
use vmoodle_ops::import::{self, ImportReport};

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Register every instance of a VMoodle register table (local_vmoodle, or the older
    /// block_vmoodle) read from the master's database.
    Vmoodle {
        /// The registered database server holding the VMoodle master's database.
        #[arg(long)]
        dbserver: String,
        /// The VMoodle master's database.
        #[arg(long)]
        database: String,
        #[arg(long, default_value = "mdl_")]
        prefix: String,
        /// Accept a database account that is the server's administrator or has server-wide
        /// privileges (refused by default: its password would sit in a host file the web server reads).
        #[arg(long)]
        force_admin_account: bool,
        #[arg(long)]
        json: bool,
    },
    /// Register the instances of a VMoodle node list (semicolon-separated; columns vhostname;
    /// name;shortname;vdatapath;vdbname;vdblogin;vdbpass and optionally description;vdbtype;
    /// vdbhost;vdbprefix;vdbpersist;enabled;mnet).
    Csv {
        file: PathBuf,
        /// Accept a database account that is the server's administrator or has server-wide
        /// privileges (refused by default: its password would sit in a host file the web server reads).
        #[arg(long)]
        force_admin_account: bool,
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        let home = super::open_locked(root).await?;
        let (report, json) = match self {
            Cmd::Vmoodle {
                dbserver,
                database,
                prefix,
                force_admin_account,
                json,
            } => (
                import::from_vmoodle_table(
                    &home,
                    &dbserver,
                    &database,
                    &prefix,
                    force_admin_account,
                )
                .await?,
                json,
            ),
            Cmd::Csv {
                file,
                force_admin_account,
                json,
            } => (
                import::from_csv(&home, &file, force_admin_account).await?,
                json,
            ),
        };
        print(&report, json)?;
        Ok(if report.refused.is_empty() {
            exit::OK
        } else {
            exit::PARTIAL
        })
    }
}

fn print(r: &ImportReport, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(r);
    }
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    if !r.taken.is_empty() {
        println!("registered {}:", r.taken.len());
        output::table(
            &["row", "shortname", "host"],
            r.taken
                .iter()
                .map(|t| vec![t.row.clone(), t.shortname.clone(), t.host.clone()])
                .collect(),
        );
    }
    if !r.refused.is_empty() {
        println!("refused {}:", r.refused.len());
        output::table(
            &["row", "reason"],
            r.refused
                .iter()
                .map(|t| vec![t.row.clone(), t.reason.clone()])
                .collect(),
        );
    }
    if r.taken.is_empty() && r.refused.is_empty() {
        println!("nothing to import: the source has no rows");
    }
    Ok(())
}
