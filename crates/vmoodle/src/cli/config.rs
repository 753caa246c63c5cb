//! `vmoodle config get|set|unset`: a Moodle setting across the fleet, through Moodle's own
//! admin/cli/cfg.php.

use super::fleet::{print_footer, report, FleetProgress, RunArgs, SelectArgs};
use super::output;
use std::io::Read;
use std::path::Path;
use vmoodle_ops::fleet::config::{self, Change, Setting};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Show a setting's value on each selected instance; the odd ones are marked.
    #[command(after_help = "\
The value is read by Moodle itself (admin/cli/cfg.php --name=NAME [--component=PLUGIN]), so
settings forced in config.php show as Moodle sees them. The most common value across the
sites is the norm; the others are marked `*`. `(not set)` (no such setting on that site) is
not the same as an empty value.

Examples:
  vmoodle config get theme --all
  vmoodle config get autohide --plugin tool_recyclebin --match 'school-*'
  vmoodle config get forcelogin --dbserver db1 --json

Exit codes: 0 read everywhere, 3 some site could not be read, 1 nothing could run.")]
    Get(GetCmd),
    /// Set a setting on each selected instance (Moodle's cfg.php --set: caches and config log
    /// stay right).
    #[command(after_help = "\
Each site is set through Moodle (cfg.php --set, i.e. set_config and add_to_config_log), as a
job `fleet-config-set` with a log per site. Sites that already have the value are skipped.
--dry-run reads every site and shows `current -> new`, changing nothing.

The VALUE argument is passed to cfg.php on its command line (visible in a process list and
in the run's logs). For a value that must not be seen there, use --value-stdin: vmoodle reads
the value from its stdin and feeds php a small program on php's stdin doing what cfg.php
--set does, with the value inside it; the value is never on a command line or in the logs.

Examples:
  vmoodle config set forcelogin 1 --all --dry-run
  vmoodle config set theme classic school1 school2
  vmoodle config set autohide 0 --plugin tool_recyclebin --match 'school-*'
  printf %s \"$KEY\" | vmoodle config set recaptchaprivatekey --value-stdin --all

Exit codes: 0 every site ok, 3 some failed or were not started, 1 nothing could run.")]
    Set(SetCmd),
    /// Remove a setting on each selected instance (cfg.php --unset).
    #[command(after_help = "\
Examples:
  vmoodle config unset noemailever --all --dry-run
  vmoodle config unset autohide --plugin tool_recyclebin school1

Exit codes: 0 every site ok, 3 some failed or were not started, 1 nothing could run.")]
    Unset(UnsetCmd),
}

#[derive(Debug, clap::Args)]
pub struct GetCmd {
    /// The setting's name (letters, digits, `_`, `-`).
    #[arg(value_name = "NAME")]
    name: String,
    /// The plugin (frankenstyle component, e.g. tool_recyclebin); core when absent.
    #[arg(long, value_name = "PLUGIN")]
    plugin: Option<String>,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub struct SetCmd {
    /// The setting's name (letters, digits, `_`, `-`).
    #[arg(value_name = "NAME")]
    name: String,
    /// The new value (with --value-stdin there is none: the instances follow NAME).
    #[arg(value_name = "VALUE", required_unless_present = "value_stdin")]
    value: Option<String>,
    /// Read the value from stdin (all of it; one trailing newline is dropped).
    #[arg(long)]
    value_stdin: bool,
    /// The plugin (frankenstyle component); core when absent.
    #[arg(long, value_name = "PLUGIN")]
    plugin: Option<String>,
    /// Show current -> new for each site; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub struct UnsetCmd {
    #[arg(value_name = "NAME")]
    name: String,
    #[arg(long, value_name = "PLUGIN")]
    plugin: Option<String>,
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    run: RunArgs,
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        match self {
            Cmd::Get(c) => {
                let setting = Setting::new(&c.name, c.plugin.as_deref())?;
                let r =
                    config::get(&home, &c.select.selection(), &setting, &c.run.options()).await?;
                if c.run.json {
                    output::json(&r)?;
                } else {
                    let rows = r
                        .sites
                        .iter()
                        .map(|s| {
                            let value = match (&s.error, &s.value) {
                                (Some(e), _) => format!("({})", super::fleet::shorten(e, 80)),
                                (None, _) if s.status.is_failure() => {
                                    format!("({})", s.status.word())
                                }
                                (None, None) => "(not set)".into(),
                                (None, Some(v)) if v.is_empty() => "(empty)".into(),
                                (None, Some(v)) => v.clone(),
                            };
                            vec![
                                s.instance.clone(),
                                value,
                                if s.differs { "*".into() } else { String::new() },
                            ]
                        })
                        .collect();
                    output::table(&["instance", &r.setting.label(), "differs"], rows);
                    let odd = r.sites.iter().filter(|s| s.differs).count();
                    if odd > 0 {
                        eprintln!(
                            "{odd} of {} sites differ from the most common value ({})",
                            r.sites.len(),
                            match &r.norm {
                                Some(v) => format!("{:?}", config::clip(v)),
                                None => "(not set)".into(),
                            }
                        );
                    }
                    if !r.disabled_left_out.is_empty() {
                        eprintln!(
                            "left out (disabled; add --include-disabled): {}",
                            r.disabled_left_out.join(", ")
                        );
                    }
                }
                Ok(r.exit_code() as u8)
            }
            Cmd::Set(mut c) => {
                if c.value_stdin {
                    // `config set NAME --value-stdin school1`: the first positional after NAME
                    // is an instance.
                    if let Some(first) = c.value.take() {
                        c.select.names.insert(0, first);
                    }
                }
                let setting = Setting::new(&c.name, c.plugin.as_deref())?;
                let change = if c.value_stdin {
                    let mut v = String::new();
                    std::io::stdin().read_to_string(&mut v)?;
                    if v.ends_with('\n') {
                        v.pop();
                        if v.ends_with('\r') {
                            v.pop();
                        }
                    }
                    Change::Set {
                        value: v,
                        from_stdin: true,
                    }
                } else {
                    Change::Set {
                        value: c.value.clone().unwrap_or_default(),
                        from_stdin: false,
                    }
                };
                apply(&home, &c.select, &c.run, &setting, &change, c.dry_run).await
            }
            Cmd::Unset(c) => {
                let setting = Setting::new(&c.name, c.plugin.as_deref())?;
                apply(
                    &home,
                    &c.select,
                    &c.run,
                    &setting,
                    &Change::Unset,
                    c.dry_run,
                )
                .await
            }
        }
    }
}

async fn apply(
    home: &vmoodle_ops::Home,
    select: &SelectArgs,
    run: &RunArgs,
    setting: &Setting,
    change: &Change,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let progress = FleetProgress::new(false);
    let r = config::set(
        home,
        &select.selection(),
        setting,
        change,
        dry_run,
        &run.options(),
        &|e| progress.event(e),
    )
    .await;
    progress.finish();
    let r = r?;
    if dry_run && !run.json {
        let rows = r
            .sites
            .iter()
            .map(|o| {
                vec![
                    o.instance.clone(),
                    o.status.word().to_string(),
                    super::fleet::shorten(&o.message, 120),
                ]
            })
            .collect();
        output::table(&["instance", "status", "change (dry run)"], rows);
        print_footer(&r);
        return Ok(r.exit_code() as u8);
    }
    report(&r, run.json)
}
