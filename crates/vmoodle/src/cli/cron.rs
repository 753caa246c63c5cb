//! `vmoodle cron [INSTANCE..]`, `vmoodle cron status`, `vmoodle cron history INSTANCE`.

use super::fleet::{report, shorten, FleetProgress, RunArgs, SelectArgs};
use super::output;
use std::path::Path;
use vmoodle_ops::fleet::{cron, Selection};

/// `vmoodle cron`: one pass of Moodle's cron for each selected instance.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "\
Runs one pass of Moodle's own cron (admin/cli/cron.php --keep-alive=0) for each selected
instance, as the web server's user, under the instance's host. A site whose cron is already
running (another `vmoodle cron`, the daemon, or a daemon on another node) is skipped, never run
twice at once: each pass holds the site's lock in the register. Every pass is recorded (see
`vmoodle cron status` and `vmoodle cron history`).

The daemon (`vmoodle serve`) runs cron for every enabled instance every cron.interval seconds
when cron.enabled is true; without the daemon, put `vmoodle cron --all` in the system's crontab.

A pass that exits 0 is ok even when some of Moodle's tasks failed inside it (Moodle retries them
itself): the message says how many (\"ok; 2 tasks failed: ...\").

Examples:
  vmoodle cron --all
  vmoodle cron school1 school2
  vmoodle cron --dbserver db1 --parallel 8 --timeout 15m
  vmoodle cron status
  vmoodle cron history school1 --limit 5

Exit codes: 0 every site ok or skipped (busy), 3 some failed, timed out or were not started,
1 nothing could run."
)]
pub struct Cmd {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Last pass, gap since the last success, failures in a row, overdue and failing sites.
    Status(StatusCmd),
    /// The recorded cron passes of one instance, newest first.
    History(HistoryCmd),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
For each instance (default: every enabled one): when its last pass started, how long it took,
how it ended and its exit code, the gap since its last successful pass, failures in a row, and
whose pass runs now. Flags: `overdue` (no successful pass within 2 x cron.interval, or never) and
`failing` (the last pass was not ok).

Exit codes: 0 all well, 3 some instance is overdue or failing (for monitoring), 1 error.

Examples:
  vmoodle cron status
  vmoodle cron status --match 'school-*' --json")]
struct StatusCmd {
    #[command(flatten)]
    select: SelectArgs,
    /// The status as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The register keeps the last 50 passes of each instance.

Examples:
  vmoodle cron history school1
  vmoodle cron history school1 --limit 5 --json")]
struct HistoryCmd {
    /// The instance (shortname or host).
    instance: String,
    /// How many passes, newest first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=1000))]
    limit: i64,
    /// The passes as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        match self.sub {
            Some(Sub::Status(c)) => c.run(home).await,
            Some(Sub::History(c)) => c.run(home).await,
            None => {
                let home = vmoodle_ops::Home::open(home).await?;
                let progress = FleetProgress::new(false);
                let c = &home.settings.cron;
                let opts = self.run.options_or(
                    c.parallel as usize,
                    std::time::Duration::from_secs(u64::from(c.timeout)),
                );
                let r = cron::cron_pass(&home, &self.select.selection(), &opts, &|e| {
                    progress.event(e)
                })
                .await;
                progress.finish();
                report(&r?, self.run.json)
            }
        }
    }
}

impl StatusCmd {
    async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        let mut sel = self.select.selection();
        if sel.is_empty() {
            sel = Selection { all: true, ..sel };
        }
        let st = cron::status(&home, &sel).await?;
        let bad = st.iter().filter(|s| s.overdue || s.failing).count();
        if self.json {
            output::json(&st)?;
        } else {
            let rows = st
                .iter()
                .map(|s| {
                    let mut flags = Vec::new();
                    if s.overdue {
                        flags.push("overdue");
                    }
                    if s.failing {
                        flags.push("failing");
                    }
                    vec![
                        s.instance.clone(),
                        s.last_started_at
                            .map(output::time)
                            .unwrap_or("never".into()),
                        s.last_duration_ms
                            .map(|d| format!("{:.1} s", d as f64 / 1000.0))
                            .unwrap_or_default(),
                        s.last_status.clone().unwrap_or_default(),
                        s.last_exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        s.gap_s.map(cron::gap_words).unwrap_or("never ok".into()),
                        s.failures_in_a_row.to_string(),
                        s.running.clone().map(|_| "yes".into()).unwrap_or_default(),
                        flags.join(","),
                    ]
                })
                .collect();
            output::table(
                &[
                    "instance", "last", "took", "status", "exit", "gap", "fails", "running",
                    "flags",
                ],
                rows,
            );
            eprintln!(
                "{} instance{}, {bad} overdue or failing (interval {} s)",
                st.len(),
                if st.len() == 1 { "" } else { "s" },
                home.settings.cron.interval
            );
        }
        Ok(if bad > 0 { 3 } else { 0 })
    }
}

impl HistoryCmd {
    async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        let sel = Selection {
            names: vec![self.instance.clone()],
            include_disabled: true,
            ..Default::default()
        };
        let inst = sel
            .resolve(&home)
            .await?
            .instances
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no such instance: `{}`", self.instance))?;
        let runs = home.registry.cron_runs(inst.id, self.limit).await?;
        if self.json {
            output::json(&runs)?;
        } else {
            let rows = runs
                .iter()
                .map(|r| {
                    vec![
                        output::time(r.started_at),
                        r.duration_ms
                            .map(|d| format!("{:.1} s", d as f64 / 1000.0))
                            .unwrap_or_default(),
                        r.status.clone(),
                        r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        r.started_by.clone(),
                        shorten(r.output_tail.lines().last().unwrap_or(""), 80),
                    ]
                })
                .collect();
            output::table(
                &["started", "took", "status", "exit", "by", "last output"],
                rows,
            );
        }
        Ok(0)
    }
}
