//! `vmoodle upgrade`, `vmoodle upgrade status`, `vmoodle upgrade rollback`.

use super::fleet::{report, shorten, FleetProgress, RunArgs, SelectArgs};
use super::{exit, output};
use std::path::Path;
use vmoodle_ops::fleet::{rollback, upgrade};

/// `vmoodle upgrade [INSTANCE..|--all|...]`, or one of its subcommands.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "\
After the shared Moodle code (moodle.dir) was updated, upgrades each selected site whose database
is behind it (Moodle's own `admin/cli/upgrade.php --is-pending` tells), in steps recorded in the
register: its upgrade and cron locks (no cron pass meanwhile; a busy site is skipped), CLI
maintenance on, with --snapshot a pre-upgrade snapshot as a template (for `upgrade rollback`),
`upgrade.php --non-interactive`, `purge_caches.php`, maintenance off. A site whose upgrade failed
stays in maintenance with its log and error recorded. An upgrade whose process died is shown as
interrupted by `upgrade status` and finished by the next `vmoodle upgrade`.

Examples:
  vmoodle upgrade --all --dry-run            which sites are behind the code
  vmoodle upgrade --all --canary 2 --parallel 8 --snapshot
  vmoodle upgrade school1 school2 --timeout 30m
  vmoodle upgrade status
  vmoodle upgrade rollback school1 --yes

Exit codes: 0 every site upgraded or up to date, 3 some failed or were not started, 1 error."
)]
pub struct Cmd {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Snapshot each site (as template `pre_SHORTNAME_STAMP`) before upgrading it.
    #[arg(long)]
    snapshot: bool,
    /// Upgrade this many sites first; the others only start when all of them succeeded.
    #[arg(long, value_name = "N", default_value_t = 0)]
    canary: usize,
    /// Only list the sites whose upgrade is pending.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// The code's version, each site's database version, what is pending, each site's last upgrade.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Restore a site's database from its pre-upgrade snapshot (`vmoodle upgrade --snapshot`).
    #[command(after_help = "\
The site is put in maintenance, its database emptied and loaded from the snapshot (its own
database user and password are kept). When the code is still ahead of the restored database the
site stays in maintenance: revert the code, or fix what failed and run `vmoodle upgrade` again.

Example:
  vmoodle upgrade rollback school1 --yes")]
    Rollback {
        /// The instance (shortname or host).
        instance: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        match self.sub {
            Some(Sub::Status { json }) => status(root, json).await,
            Some(Sub::Rollback {
                instance,
                yes,
                json,
            }) => {
                if !super::confirm(
                    yes,
                    &format!("Replace the database of `{instance}` with its pre-upgrade snapshot"),
                    &instance,
                )? {
                    return Ok(exit::ERROR);
                }
                let home = super::open_locked(root).await?;
                let r =
                    rollback::rollback(&home, &instance, &vmoodle_ops::journal::no_events).await?;
                if json {
                    output::json(&r)?;
                } else {
                    println!("{}", r.message);
                    eprintln!("job {}; log {}", r.job, r.log.display());
                }
                Ok(exit::OK)
            }
            None => {
                // A snapshot is a journaled change of the home: it takes the home's lock.
                let home = if self.snapshot && !self.dry_run {
                    super::open_locked(root).await?
                } else {
                    vmoodle_ops::Home::open(root).await?
                };
                let opts = upgrade::UpgradeOptions {
                    fleet: self.run.options(),
                    snapshot: self.snapshot,
                    canary: self.canary,
                    dry_run: self.dry_run,
                };
                let progress = FleetProgress::new(self.dry_run);
                let r = upgrade::upgrade(&home, &self.select.selection(), &opts, &|e| {
                    progress.event(e)
                })
                .await;
                progress.finish();
                report(&r?, self.run.json)
            }
        }
    }
}

async fn status(root: &Path, json: bool) -> anyhow::Result<u8> {
    let home = vmoodle_ops::Home::open(root).await?;
    let s = rollback::status(&home).await?;
    if json {
        output::json(&s)?;
        return Ok(exit::OK);
    }
    println!("code: {} ({})", s.code.version, s.code.release);
    let rows = s
        .sites
        .iter()
        .map(|x| {
            let l = x.last.as_ref();
            vec![
                x.instance.clone(),
                x.db_version.clone(),
                match x.pending {
                    Some(true) => "yes".into(),
                    Some(false) => "no".into(),
                    None => "?".into(),
                },
                l.map(|u| u.state.clone()).unwrap_or_default(),
                l.map(|u| u.step.clone()).unwrap_or_default(),
                l.and_then(|u| u.snapshot.clone()).unwrap_or_default(),
                shorten(
                    x.error
                        .as_deref()
                        .or(l.and_then(|u| u.error.as_deref()))
                        .unwrap_or(""),
                    80,
                ),
            ]
        })
        .collect();
    output::table(
        &[
            "instance",
            "database",
            "pending",
            "last upgrade",
            "step",
            "snapshot",
            "error",
        ],
        rows,
    );
    Ok(exit::OK)
}
