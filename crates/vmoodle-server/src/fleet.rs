//! Fleet operations started from the web admin or the API: a Moodle CLI script, a cron pass,
//! an upgrade or a setting change, for a selection of instances. Each is one job (kind
//! `fleet-OP`) whose log gets one line per site as it finishes, so its page shows per-site
//! progress live. Fleet jobs do not take the home's lock: they change sites, not the home, and a
//! cron pass or an upgrade of hundreds of sites must not keep every other change waiting; each
//! site is guarded by its own lock in the register instead.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;
use vmoodle_ops::fleet::config::{self, Change, Setting};
use vmoodle_ops::fleet::upgrade::UpgradeOptions;
use vmoodle_ops::fleet::{FleetEvent, FleetOptions, FleetReport, Selection};
use vmoodle_ops::Home;

/// Which instances (as `vmoodle` fleet commands select them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct FleetSelection {
    /// Instances by shortname or host.
    pub names: Vec<String>,
    /// Every instance in the register.
    pub all: bool,
    /// MNET subnetwork number.
    pub subnetwork: Option<i64>,
    /// Instances whose database is on this server.
    pub dbserver: Option<String>,
    /// Instances deployed from this template.
    pub template: Option<String>,
    /// Shell-style patterns on shortname and host.
    pub matches: Vec<String>,
    /// Instances left out.
    pub exclude: Vec<String>,
    /// Disabled instances too.
    pub include_disabled: bool,
}

impl FleetSelection {
    pub fn selection(&self) -> Selection {
        let clean = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let some = |s: &Option<String>| {
            s.as_ref()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Selection {
            names: clean(&self.names),
            all: self.all,
            subnetwork: self.subnetwork,
            dbserver: some(&self.dbserver),
            template: some(&self.template),
            matches: clean(&self.matches),
            exclude: clean(&self.exclude),
            include_disabled: self.include_disabled,
        }
    }
}

/// What to do on each selected instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum FleetOperation {
    /// One of Moodle's admin/cli scripts with its arguments.
    Run {
        script: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// Set a Moodle setting (through admin/cli/cfg.php, so caches and the config log stay right).
    ConfigSet {
        name: String,
        /// The plugin (component) of a plugin setting; empty or absent for core.
        #[serde(default)]
        plugin: Option<String>,
        /// The new value (write-only when `secret`: never stored with the job, shown or logged).
        #[serde(default)]
        value: String,
        /// The value is a secret: it is handed to Moodle on stdin and never shown or logged.
        #[serde(default)]
        secret: bool,
    },
    /// One pass of Moodle's cron (admin/cli/cron.php --keep-alive=0) per site, under the
    /// site's cron lock (a busy site is skipped).
    Cron,
    /// Upgrade the sites whose database is behind the code: maintenance on, optional snapshot,
    /// upgrade.php, purge caches, maintenance off; a failed site stays in maintenance.
    Upgrade {
        /// A pre-upgrade snapshot of each site (for `vmoodle upgrade rollback`).
        #[serde(default)]
        snapshot: bool,
        /// This many sites first; the rest only when all of them succeeded.
        #[serde(default)]
        canary: usize,
    },
    /// Remove a Moodle setting.
    ConfigUnset {
        name: String,
        #[serde(default)]
        plugin: Option<String>,
    },
}

impl FleetOperation {
    /// The operation's name in job kinds (`fleet-NAME`) and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FleetOperation::Run { .. } => "run",
            FleetOperation::ConfigSet { .. } => "config-set",
            FleetOperation::ConfigUnset { .. } => "config-unset",
            FleetOperation::Upgrade { .. } => "upgrade",
            FleetOperation::Cron => "cron",
        }
    }

    /// Whether it needs the home's lock: a pre-upgrade snapshot makes templates.
    pub fn takes_home_lock(&self) -> bool {
        matches!(self, FleetOperation::Upgrade { snapshot: true, .. })
    }
}

impl FleetParams {
    /// The request as the job records it: a secret value left out (a retry of such a job asks
    /// for the value again).
    pub fn for_record(&self) -> Self {
        let mut p = self.clone();
        if let FleetOperation::ConfigSet {
            value,
            secret: true,
            ..
        } = &mut p.operation
        {
            value.clear();
        }
        p
    }
}

/// A fleet operation on a selection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetParams {
    pub operation: FleetOperation,
    #[serde(default)]
    pub selection: FleetSelection,
    /// Sites worked on at once (1 to 64).
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Time limit per site, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Start no new site once this many failed.
    #[serde(default)]
    pub max_failures: Option<usize>,
}

fn default_parallel() -> usize {
    4
}
fn default_timeout() -> u64 {
    600
}

impl FleetParams {
    pub fn options(&self) -> FleetOptions {
        FleetOptions {
            parallel: self.parallel,
            timeout: Duration::from_secs(self.timeout_secs),
            max_failures: self.max_failures,
        }
    }

    /// The job's target: the operation and the selection.
    pub fn target(&self) -> String {
        let what = match &self.operation {
            FleetOperation::Run { script, .. } => script.clone(),
            FleetOperation::ConfigSet {
                name,
                plugin,
                value,
                secret,
            } => format!(
                "{}{name} = {}",
                plugin
                    .as_deref()
                    .map(|p| format!("{p}/"))
                    .unwrap_or_default(),
                if *secret {
                    "(hidden)".to_string()
                } else {
                    vmoodle_ops::fleet::config::clip(value)
                }
            ),
            FleetOperation::ConfigUnset { name, plugin } => format!(
                "unset {}{name}",
                plugin
                    .as_deref()
                    .map(|p| format!("{p}/"))
                    .unwrap_or_default()
            ),
            FleetOperation::Upgrade { .. } | FleetOperation::Cron => String::new(),
        };
        format!("{what} {}", self.selection.selection().describe())
            .trim()
            .to_string()
    }

    /// Checks what can be checked before the job is queued: the numbers, the operation's own
    /// values and the selection (names, servers, templates, patterns).
    pub async fn check(&self, home: &Home) -> Result<()> {
        if self.parallel == 0 || self.parallel > 64 {
            bail!("parallel must be between 1 and 64, not {}", self.parallel);
        }
        if self.timeout_secs == 0 || self.timeout_secs > 86_400 {
            bail!(
                "the time limit must be between 1 and 86400 seconds, not {}",
                self.timeout_secs
            );
        }
        let code = vmoodle_ops::fleet::moodle::MoodleCode::from_home(home)?;
        match &self.operation {
            FleetOperation::Run { script, .. } => {
                code.cli_script(script)?;
            }
            FleetOperation::ConfigSet {
                name,
                plugin,
                value,
                secret,
            } => {
                Setting::new(name, plugin.as_deref())?;
                if *secret && value.is_empty() {
                    bail!("the value of a secret setting is not kept with a job: give it again");
                }
            }
            FleetOperation::ConfigUnset { name, plugin } => {
                Setting::new(name, plugin.as_deref())?;
            }
            FleetOperation::Upgrade { .. } => {
                code.code_version()?;
            }
            FleetOperation::Cron => {
                code.cli_script("cron.php")?;
            }
        }
        self.selection.selection().resolve(home).await?;
        Ok(())
    }

    /// Runs it (on an unlocked home; see the module's comment).
    pub async fn run(
        &self,
        home: &Home,
        events: &(dyn Fn(&FleetEvent) + Sync),
    ) -> Result<FleetReport> {
        let sel = self.selection.selection();
        let opts = self.options();
        match &self.operation {
            FleetOperation::Run { script, args } => {
                vmoodle_ops::fleet::run::run_script(home, &sel, script, args, &opts, events).await
            }
            FleetOperation::ConfigSet {
                name,
                plugin,
                value,
                secret,
            } => {
                let change = Change::Set {
                    value: value.clone(),
                    from_stdin: *secret,
                };
                let setting = Setting::new(name, plugin.as_deref())?;
                config::set(home, &sel, &setting, &change, false, &opts, events).await
            }
            FleetOperation::ConfigUnset { name, plugin } => {
                let setting = Setting::new(name, plugin.as_deref())?;
                config::set(home, &sel, &setting, &Change::Unset, false, &opts, events).await
            }
            FleetOperation::Cron => {
                vmoodle_ops::fleet::cron::cron_pass(home, &sel, &opts, events).await
            }
            FleetOperation::Upgrade { snapshot, canary } => {
                let o = UpgradeOptions {
                    fleet: opts,
                    snapshot: *snapshot,
                    canary: *canary,
                    dry_run: false,
                };
                vmoodle_ops::fleet::upgrade::upgrade(home, &sel, &o, events).await
            }
        }
    }
}
