//! The command line: `vmoodle <noun> <verb>`. Each noun has its own module with a `Cmd` whose
//! `run` calls the operations in vmoodle-ops and prints data on stdout (a table on a terminal,
//! JSON with `--json`) and diagnostics on stderr.

mod admin;
mod agent;
mod cluster;
mod compare;
mod config;
mod cron;
mod dbserver;
mod delete;
mod deploy;
mod doctor;
mod fleet;
mod hook;
mod import;
mod init;
mod instance;
mod jobs;
mod master;
mod mnet;
mod node;
mod output;
mod progress;
mod report;
mod schema;
mod serve;
mod settings;
mod snapshot;
mod spares;
mod sql;
mod template;
mod upgrade;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmoodle_core::env;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Everything asked was done.
    pub const OK: u8 = 0;
    /// The command failed; nothing or only what the message says was changed.
    pub const ERROR: u8 = 1;
    /// The command line was wrong (clap's own code).
    #[allow(dead_code)] // clap itself exits with it
    pub const USAGE: u8 = 2;
    /// Done in part: some items were refused (import), or a check found a problem.
    pub const PARTIAL: u8 = 3;
    /// Stopped by SIGINT/SIGTERM; what the job had done was undone.
    pub const INTERRUPTED: u8 = 130;
    /// Another vmoodle held the home's lock for longer than --lock-wait (EX_TEMPFAIL).
    pub const LOCKED: u8 = 75;
}

const AFTER_HELP: &str = "\
Getting started:
  vmoodle init                                   create the home (/var/lib/vmoodle or $VMOODLE_HOME)
  vmoodle dbserver add db1 --type mariadb --host 127.0.0.1 --user root --password-stdin
  vmoodle master set --moodle-dir /var/www/moodle
  vmoodle instance add --token school1 --password-stdin   (wwwroot, database, dataroot from the schema)
  vmoodle hook install --moodle-dir /var/www/moodle
  vmoodle instance list

Every change is a job with a journal: `vmoodle jobs list` shows them, `vmoodle jobs show ID`
what each did and undid. A job stopped by Ctrl-C or SIGTERM undoes itself at its next step
boundary; one whose process died is undone by the next command (or `vmoodle jobs recover`).

Exit codes: 0 done, 1 failed, 2 bad command line, 3 done in part (see the report),
75 the home is busy (another vmoodle held its lock past --lock-wait), 130 stopped by a signal.";

/// vmoodle turns one Moodle codebase into a fleet of virtual Moodle instances: a register of
/// instances, a config hook that picks the instance from the request host without a database
/// query, and the tools to manage them.
#[derive(Debug, Parser)]
#[command(name = "vmoodle", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// The vmoodle home: settings, register, secret key, host files.
    #[arg(long, global = true, env = env::VMOODLE_HOME, default_value = "/var/lib/vmoodle", value_name = "DIR")]
    home: PathBuf,

    /// Seconds to wait for another vmoodle that is changing the home before giving up.
    #[arg(long, global = true, env = env::VMOODLE_LOCK_WAIT, default_value_t = 120, value_name = "SECONDS")]
    lock_wait: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the home: vmoodle.toml, the register, the secret key, hosts/ (harmless to repeat).
    Init(init::Cmd),
    /// Show and change settings (vmoodle.toml).
    #[command(subcommand)]
    Settings(settings::Cmd),
    /// The naming schema: what a token gives.
    #[command(subcommand)]
    Schema(schema::Cmd),
    /// Database servers that hold instance databases.
    #[command(subcommand)]
    Dbserver(dbserver::Cmd),
    /// Machines of database clusters (database and proxy nodes), reached through their agents.
    #[command(subcommand)]
    Node(node::Cmd),
    /// Database clusters: a server scaled into primary + replicas behind HAProxy and a VIP.
    #[command(subcommand)]
    Cluster(cluster::Cmd),
    /// Run on a cluster node: the agent the control node and HAProxy talk to (HTTPS).
    Agent(agent::Cmd),
    /// Moodle instances in the register.
    #[command(subcommand)]
    Instance(Box<instance::Cmd>),
    /// The master: the Moodle installed by hand, served by its own config.php.
    #[command(subcommand)]
    Master(master::Cmd),
    /// Import what VMoodle users already have.
    #[command(subcommand)]
    Import(import::Cmd),
    /// The config hook in Moodle's config.php and its per-host files.
    #[command(subcommand)]
    Hook(hook::Cmd),
    /// Snapshot a live Moodle (the master or an instance) as a template.
    Snapshot(snapshot::Cmd),
    /// Templates: list, show, verify, delete, load onto a database server.
    #[command(subcommand)]
    Template(template::Cmd),
    /// Deploy new instances from a template (one, or many at a time).
    Deploy(Box<deploy::Cmd>),
    /// Warm spares: pre-cloned MariaDB databases that make deploys wait for renames only.
    #[command(subcommand)]
    Spares(spares::Cmd),
    /// Delete an instance (archived first unless --no-archive).
    Delete(delete::DeleteCmd),
    /// Bring an archived instance back.
    Restore(delete::RestoreCmd),
    /// Moodle Network: keys, peers, subnetworks, renewal, status and repair.
    #[command(subcommand)]
    Mnet(mnet::Cmd),
    /// Jobs: what every change did, step by step; recovery of interrupted ones.
    #[command(subcommand)]
    Jobs(jobs::Cmd),
    /// Check everything a working fleet needs (php, extensions, RC4, hook, files, servers) and
    /// print the fix for each failure; exit 3 when a check failed.
    Doctor(doctor::Cmd),
    /// Run the daemon: web admin, JSON API, scheduler, metrics.
    Serve(serve::Cmd),
    /// Administrators of the web admin and the API, and API tokens.
    #[command(subcommand)]
    Admin(admin::Cmd),
    /// Run one of Moodle's admin/cli scripts for each selected instance.
    Run(fleet::RunCmd),
    /// A Moodle setting across the fleet: get (differences marked), set, unset.
    #[command(subcommand)]
    Config(config::Cmd),
    /// One read-only SQL query on each selected instance's database (`{user}` for mdl_user).
    Sql(sql::Cmd),
    /// Reports across the fleet: usage.
    #[command(subcommand)]
    Report(report::Cmd),
    /// Compare instances: plugins and their versions, or core settings.
    Compare(compare::Cmd),
    /// Upgrade the sites behind the Moodle code; status and rollback of upgrades.
    Upgrade(Box<upgrade::Cmd>),
    /// Moodle's cron for each selected instance (one pass); `cron status`, `cron history`.
    Cron(cron::Cmd),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // Files vmoodle creates are never world-readable.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    // The daemon serves many clients and runs jobs alongside: it gets every core.
    let builder = if matches!(cli.command, Command::Serve(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let rt = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    vmoodle_ops::home::set_lock_wait(cli.lock_wait);
    let daemon = matches!(cli.command, Command::Serve(_));
    match rt.block_on(async {
        watch_signals(daemon);
        run(cli).await
    }) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            report_error(&e);
            if e.downcast_ref::<vmoodle_ops::home::LockTimeout>().is_some() {
                ExitCode::from(exit::LOCKED)
            } else if vmoodle_ops::cancel::requested().is_some() {
                ExitCode::from(exit::INTERRUPTED)
            } else {
                ExitCode::from(exit::ERROR)
            }
        }
    }
}

/// SIGINT/SIGTERM: the first asks the running job to stop at its next step boundary and undo
/// what it did; a second one exits at once (the next command recovers the job from its journal).
fn watch_signals(daemon: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, sig) in [
        (
            SignalKind::interrupt(),
            vmoodle_ops::cancel::Signal::Interrupt,
        ),
        (
            SignalKind::terminate(),
            vmoodle_ops::cancel::Signal::Terminate,
        ),
    ] {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if vmoodle_ops::cancel::request(sig) {
                    if daemon {
                        eprintln!("stopping: running jobs stop at their next step boundary and undo what they did (signal again to stop at once; the next vmoodle command then undoes them)");
                    } else {
                        eprintln!("\nstopping at the next step boundary and undoing what this job did (signal again to stop at once; the next vmoodle command then undoes it)");
                    }
                } else {
                    eprintln!(
                        "stopped at once; the next vmoodle command will undo the interrupted job"
                    );
                    std::process::exit(exit::INTERRUPTED.into());
                }
            }
        });
    }
}

/// Opens the home for a change (takes its lock) and tells what recovery of interrupted jobs did.
pub async fn open_locked(root: &std::path::Path) -> anyhow::Result<vmoodle_ops::Home> {
    let home = vmoodle_ops::Home::open_locked(root).await?;
    for r in &home.recovered {
        eprintln!(
            "recovered job {} ({} `{}`, interrupted): {}{}",
            r.id,
            r.kind,
            r.target,
            r.state,
            if r.undone.is_empty() {
                String::new()
            } else {
                format!("; undone: {}", r.undone.join("; "))
            }
        );
        for l in &r.left {
            eprintln!("  NOT undone: {l}");
        }
    }
    Ok(home)
}

/// Asks for confirmation of a destructive command: `--yes`, or the object's name typed on a
/// terminal. Without a terminal and without --yes, it refuses.
pub fn confirm(yes: bool, what: &str, name: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{what} needs confirmation: give --yes");
    }
    eprint!("{what}? Type `{name}` to confirm: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != name {
        eprintln!("not confirmed; nothing changed");
        return Ok(false);
    }
    Ok(true)
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let home = cli.home;
    match cli.command {
        Command::Init(c) => c.run(&home).await,
        Command::Settings(c) => c.run(&home).await,
        Command::Schema(c) => c.run(&home).await,
        Command::Dbserver(c) => c.run(&home).await,
        Command::Node(c) => c.run(&home).await,
        Command::Cluster(c) => c.run(&home).await,
        Command::Agent(c) => c.run().await,
        Command::Instance(c) => (*c).run(&home).await,
        Command::Master(c) => c.run(&home).await,
        Command::Import(c) => c.run(&home).await,
        Command::Hook(c) => c.run(&home).await,
        Command::Snapshot(c) => c.run(&home).await,
        Command::Template(c) => c.run(&home).await,
        Command::Deploy(c) => (*c).run(&home).await,
        Command::Spares(c) => c.run(&home).await,
        Command::Delete(c) => c.run(&home).await,
        Command::Restore(c) => c.run(&home).await,
        Command::Mnet(c) => c.run(&home).await,
        Command::Jobs(c) => c.run(&home).await,
        Command::Doctor(c) => c.run(&home).await,
        Command::Serve(c) => c.run(&home).await,
        Command::Admin(c) => c.run(&home).await,
        Command::Run(c) => c.run(&home).await,
        Command::Config(c) => c.run(&home).await,
        Command::Sql(c) => c.run(&home).await,
        Command::Report(c) => c.run(&home).await,
        Command::Compare(c) => c.run(&home).await,
        Command::Upgrade(c) => c.run(&home).await,
        Command::Cron(c) => c.run(&home).await,
    }
}

/// Prints an error with its causes, then its `hint:` lines last.
fn report_error(e: &anyhow::Error) {
    let mut hints = Vec::new();
    let mut previous = String::new();
    for (n, cause) in e.chain().enumerate() {
        let text = cause.to_string();
        // Errors that print their source already: don't say it twice.
        if n > 0 && previous.contains(text.lines().next().unwrap_or_default()) {
            continue;
        }
        previous = text.clone();
        let mut lines = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("hint: ") {
                hints.push(h.to_string());
            } else {
                lines.push(line);
            }
        }
        let msg = lines.join("\n  ");
        if n == 0 {
            eprintln!("error: {msg}");
        } else {
            eprintln!("  caused by: {msg}");
        }
    }
    for h in hints {
        eprintln!("hint: {h}");
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::VMOODLE_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os(env::NO_COLOR).is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .without_time()
        .try_init();
}

/// Password options shared by commands that take one: never a value on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct PasswordArgs {
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE", conflicts_with = "password_stdin")]
    password_file: Option<PathBuf>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    pub fn read(&self) -> anyhow::Result<Option<vmoodle_core::Secret>> {
        if let Some(f) = &self.password_file {
            return Ok(Some(vmoodle_ops::read_password_file(f)?));
        }
        if self.password_stdin {
            return Ok(Some(vmoodle_ops::read_password_stdin()?));
        }
        Ok(None)
    }
}
