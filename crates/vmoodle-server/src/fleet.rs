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
}

impl FleetOperation {
    /// The operation's name in job kinds (`fleet-NAME`) and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FleetOperation::Run { .. } => "run",
        }
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
        match &self.operation {
            FleetOperation::Run { script, .. } => {
                vmoodle_ops::fleet::moodle::MoodleCode::from_home(home)?.cli_script(script)?;
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
        }
    }
}
