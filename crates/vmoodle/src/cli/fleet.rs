//! What every fleet command shares: the selection flags, the run flags (`--parallel`,
//! `--timeout`, `--max-failures`, `--json`), progress bars, and the report (a table, or JSON) with
//! its exit code (3 when some site failed or was not started). And `vmoodle run`.

use super::{output, progress::Progress};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use vmoodle_ops::fleet::{FleetEvent, FleetOptions, FleetReport, Selection};

/// Which instances: names, or --all, narrowed by filters.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Instances by shortname or host.
    #[arg(value_name = "INSTANCE")]
    pub names: Vec<String>,
    /// Every instance in the register (the master included).
    #[arg(long)]
    pub all: bool,
    /// Instances of this MNET subnetwork.
    #[arg(long, value_name = "N")]
    pub subnetwork: Option<i64>,
    /// Instances whose database is on this server.
    #[arg(long, value_name = "SERVER")]
    pub dbserver: Option<String>,
    /// Instances deployed from this template.
    #[arg(long, value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// Instances whose shortname or host matches this pattern (`*`, `?`, `[a-z]`); repeatable.
    #[arg(long = "match", value_name = "GLOB")]
    pub matches: Vec<String>,
    /// Leave these instances out (shortnames or hosts).
    #[arg(long, value_name = "INSTANCE", num_args = 1.., value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Disabled instances too (they are left out otherwise).
    #[arg(long)]
    pub include_disabled: bool,
}

impl SelectArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            names: self.names.clone(),
            all: self.all,
            subnetwork: self.subnetwork,
            dbserver: self.dbserver.clone(),
            template: self.template.clone(),
            matches: self.matches.clone(),
            exclude: self.exclude.clone(),
            include_disabled: self.include_disabled,
        }
    }
}

/// How the run goes and how it is reported.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Sites worked on at once [default: 4; for cron, the setting cron.parallel].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: Option<u16>,
    /// Time limit per site (e.g. 90s, 10m, 1h); a site past it is killed and reported
    /// [default: 10m; for cron, the setting cron.timeout].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Start no new site once this many failed (the rest are reported `not started`).
    #[arg(long, value_name = "N")]
    pub max_failures: Option<usize>,
    /// The report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl RunArgs {
    pub fn options(&self) -> FleetOptions {
        self.options_or(4, Duration::from_secs(600))
    }

    /// The options, with these defaults for what the command line left out.
    pub fn options_or(&self, parallel: usize, timeout: Duration) -> FleetOptions {
        FleetOptions {
            parallel: self.parallel.map_or(parallel, usize::from),
            timeout: self.timeout.unwrap_or(timeout),
            max_failures: self.max_failures,
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 90s, 10m or 1h"))?;
    if d.is_zero() {
        return Err(format!("`{s}`: the time limit must be more than zero"));
    }
    Ok(d)
}

/// Bars on a terminal (one per running site and an overall one), a line per site otherwise.
#[derive(Default)]
pub struct FleetProgress {
    bars: OnceLock<Progress>,
    quiet: bool,
}

impl FleetProgress {
    pub fn new(quiet: bool) -> Self {
        Self {
            bars: OnceLock::new(),
            quiet,
        }
    }

    pub fn event(&self, e: &FleetEvent) {
        if self.quiet {
            return;
        }
        match e {
            FleetEvent::Started { total } => {
                let _ = self.bars.set(Progress::new(*total as u64));
            }
            FleetEvent::SiteStarted { instance } => {
                if let Some(p) = self.bars.get() {
                    p.step(instance, 0, 1, "running");
                }
            }
            FleetEvent::SiteDone(o) => {
                if let Some(p) = self.bars.get() {
                    p.item_done(&o.instance);
                    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                        eprintln!(
                            "{}: {} ({:.1} s)",
                            o.instance,
                            o.status.word(),
                            o.duration_ms as f64 / 1000.0
                        );
                    }
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(p) = self.bars.get() {
            p.finish();
        }
    }
}

/// Prints the report (table or JSON) and returns the exit code.
pub fn report(r: &FleetReport, json: bool) -> anyhow::Result<u8> {
    if json {
        output::json(r)?;
    } else {
        let rows = r
            .sites
            .iter()
            .map(|o| {
                vec![
                    o.instance.clone(),
                    o.status.word().to_string(),
                    format!("{:.1} s", o.duration_ms as f64 / 1000.0),
                    o.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    shorten(&o.message, 100),
                ]
            })
            .collect();
        output::table(&["instance", "status", "time", "exit", "message"], rows);
    }
    print_footer(r);
    Ok(r.exit_code() as u8)
}

/// The summary, the disabled instances left out, and where the logs are (stderr).
pub fn print_footer(r: &FleetReport) {
    eprintln!(
        "{}: {} in {:.1} s{}; logs in {}",
        r.operation,
        r.summary(),
        r.elapsed_ms as f64 / 1000.0,
        r.job.map(|j| format!(" (job {j})")).unwrap_or_default(),
        r.log_dir.display()
    );
    if !r.disabled_left_out.is_empty() {
        eprintln!(
            "left out (disabled; add --include-disabled): {}",
            r.disabled_left_out.join(", ")
        );
    }
}

pub fn shorten(s: &str, max: usize) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        format!("{}…", one.chars().take(max - 1).collect::<String>())
    }
}

/// `vmoodle run SCRIPT [INSTANCE...] [-- ARGS]`
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Runs one of Moodle's own admin/cli scripts, unmodified, for each selected instance: php-cli on
the master's code (moodle.dir) with VMOODLE_HOST set to the instance's host, as the web server's
user (web.user) when vmoodle runs as root. Each site's output goes to its own log file under the
home's logs/fleet/.

Examples:
  vmoodle run purge_caches.php --all
  vmoodle run maintenance.php school1 school2 -- --enable
  vmoodle run scheduled_task.php --match 'school-*' -- --execute='\\core\\task\\session_cleanup_task'
  vmoodle run cfg.php --dbserver db1 --json -- --name=theme

The script's arguments are recorded with the job and in the logs (as they sit on php's command
line): never pass a password there; for a secret setting use `vmoodle config set NAME
--value-stdin`.

Exit codes: 0 every site ok, 3 some failed or were not started, 1 nothing could run.")]
pub struct RunCmd {
    /// The script, by name (`purge_caches.php`, `purge_caches`, `admin/cli/purge_caches.php`).
    #[arg(value_name = "SCRIPT")]
    script: String,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Arguments for the script, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

impl RunCmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        let progress = FleetProgress::new(false);
        let r = vmoodle_ops::fleet::run::run_script(
            &home,
            &self.select.selection(),
            &self.script,
            &self.args,
            &self.run.options(),
            &|e| progress.event(e),
        )
        .await;
        progress.finish();
        report(&r?, self.run.json)
    }
}
