//! `vmoodle report usage`: what each instance holds and takes.

use super::fleet::SelectArgs;
use super::output;
use std::path::Path;
use vmoodle_ops::fleet::report::{usage, Usage};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Users, active users, courses, database and dataroot sizes, last login, last cron and
    /// Moodle version of each selected instance, with the fleet's totals.
    #[command(after_help = "\
Read from each instance's own database with its own account: users (not deleted, not the guest
account), active users (an access in the last 30 days), courses (not the site course), the
most recent login, the database's size (MariaDB: its schema's tables and indexes;
PostgreSQL: pg_database_size) and Moodle's version (recorded in the register). The dataroot is
walked without following symlinks, each file counted once; filedir blobs hard-linked with other
instances or templates ARE counted, and `shared` says how much of the size they are. The last
cron run comes from the register (vmoodle cron / the scheduler).

Examples:
  vmoodle report usage --all
  vmoodle report usage --dbserver db1 --json
  vmoodle report usage --match 'school-*' --parallel 2

Exit codes: 0 every site read, 3 some site could not be read (reported), 1 nothing could run.")]
    Usage(UsageCmd),
}

#[derive(Debug, clap::Args)]
pub struct UsageCmd {
    #[command(flatten)]
    select: SelectArgs,
    /// Sites read at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

fn n<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

pub fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b < 1024 => format!("{b} B"),
        Some(b) => {
            let units = ["KiB", "MiB", "GiB", "TiB"];
            let mut x = b as f64 / 1024.0;
            let mut u = 0;
            while x >= 1024.0 && u < units.len() - 1 {
                x /= 1024.0;
                u += 1;
            }
            format!("{x:.1} {}", units[u])
        }
    }
}

fn when(t: Option<i64>) -> String {
    t.map(output::time).unwrap_or_else(|| "-".into())
}

fn row(u: &Usage) -> Vec<String> {
    vec![
        u.instance.clone(),
        n(u.users),
        n(u.active_users),
        n(u.courses),
        bytes(u.db_bytes.map(|b| b.max(0) as u64)),
        bytes(u.dataroot_bytes),
        bytes(u.shared_bytes),
        when(u.last_login),
        match (&u.last_cron, &u.last_cron_status) {
            (Some(t), Some(s)) => format!("{} ({s})", output::time(*t)),
            _ => "-".into(),
        },
        u.moodle_release.clone().unwrap_or_else(|| "-".into()),
    ]
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        match self {
            Cmd::Usage(c) => {
                let r = usage(&home, &c.select.selection(), c.parallel.into()).await?;
                if c.json {
                    output::json(&r)?;
                } else {
                    let mut rows: Vec<Vec<String>> = r.sites.iter().map(row).collect();
                    rows.push(row(&r.totals));
                    output::table(
                        &[
                            "instance",
                            "users",
                            "active 30d",
                            "courses",
                            "database",
                            "dataroot",
                            "shared",
                            "last login",
                            "last cron",
                            "moodle",
                        ],
                        rows,
                    );
                }
                for s in &r.sites {
                    if let Some(e) = &s.error {
                        eprintln!("{}: {e}", s.instance);
                    }
                }
                if !r.disabled_left_out.is_empty() {
                    eprintln!(
                        "left out (disabled; add --include-disabled): {}",
                        r.disabled_left_out.join(", ")
                    );
                }
                Ok(r.exit_code() as u8)
            }
        }
    }
}
