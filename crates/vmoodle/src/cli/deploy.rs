//! `vmoodle deploy`: one instance, or many (`--tokens`, `--count`, `--csv`) in parallel.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use vmoodle_ops::deploy::{self, DeployRequest, Method};
use vmoodle_ops::import;

use super::{exit, output, progress::Progress};

const EXAMPLES: &str = "\
With the naming schema automated, a token is enough: host, database, user and dataroot come from
the schema (`vmoodle schema expand TOKEN` shows them). Each deploy is a job: a failure, Ctrl-C or
a crash undoes it completely (`vmoodle jobs show ID`).

Examples:
  vmoodle deploy --template base --token school1
  vmoodle deploy --template base --tokens school1,school2,school3 --parallel 3
  vmoodle deploy --template base --count 50 --token-pattern 'school{N}'
  vmoodle deploy --template base --csv nodelist.csv      (VMoodle's node list)";

/// Deploy new instances from a template.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Cmd {
    /// The template to deploy from (a node list's vtemplate column overrides it per row).
    #[arg(long)]
    template: Option<String>,
    /// One instance's token.
    #[arg(long, conflicts_with_all = ["tokens", "count", "csv"])]
    token: Option<String>,
    /// Several tokens, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["count", "csv"])]
    tokens: Vec<String>,
    /// How many instances, named by --token-pattern.
    #[arg(long, requires = "token_pattern", conflicts_with = "csv")]
    count: Option<usize>,
    /// A pattern for --count with {N} where the number goes, e.g. school{N}.
    #[arg(long)]
    token_pattern: Option<String>,
    /// First number for --count.
    #[arg(long, default_value_t = 1)]
    start: usize,
    /// VMoodle's node list (semicolon-separated; config_NAME and plugin|setting columns applied).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Deploys running at once.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Site name (single deploy).
    #[arg(long)]
    name: Option<String>,
    /// Shortname (single deploy; default: the token).
    #[arg(long)]
    shortname: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Host name or wwwroot (single deploy; default: from the schema).
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    dbserver: Option<String>,
    #[arg(long)]
    dataroot: Option<String>,
    #[arg(long)]
    prefix: Option<String>,
    /// MNET: -1 none, 0 free, N subnetwork N.
    #[arg(long, allow_hyphen_values = true)]
    mnet: Option<i64>,
    /// Read a new admin password from stdin.
    #[arg(long)]
    admin_password_stdin: bool,
    #[arg(long)]
    admin_email: Option<String>,
    /// Load the template's dump with the client tool instead of cloning a live template.
    #[arg(long)]
    from_dump: bool,
    #[arg(long)]
    json: bool,
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        let home = super::open_locked(root).await?;
        let admin_password = if self.admin_password_stdin {
            Some(vmoodle_ops::read_password_stdin()?)
        } else {
            None
        };
        let method = if self.from_dump {
            Method::Dump
        } else {
            Method::Auto
        };
        let base = DeployRequest {
            template: self.template.clone().unwrap_or_default(),
            admin_password,
            admin_email: self.admin_email.clone(),
            method,
            dbserver: self.dbserver.clone(),
            prefix: self.prefix.clone(),
            mnet: self.mnet,
            ..Default::default()
        };
        let single = self.token.is_some();
        let mut reqs = Vec::new();
        if let Some(t) = &self.token {
            reqs.push(DeployRequest {
                token: t.clone(),
                name: self.name.clone(),
                shortname: self.shortname.clone(),
                description: self.description.clone(),
                host: self.host.clone(),
                dataroot: self.dataroot.clone(),
                ..base.clone()
            });
        } else if !self.tokens.is_empty() {
            reqs.extend(self.tokens.iter().map(|t| DeployRequest {
                token: t.trim().to_string(),
                ..base.clone()
            }));
        } else if let Some(n) = self.count {
            let pattern = self.token_pattern.clone().unwrap_or_default();
            if !pattern.contains("{n}") && !pattern.contains("{N}") {
                bail!("--token-pattern `{pattern}` has no {{N}} where the number goes, e.g. school{{N}}");
            }
            reqs.extend((self.start..self.start + n).map(|i| {
                DeployRequest {
                    token: pattern
                        .replace("{n}", &i.to_string())
                        .replace("{N}", &i.to_string()),
                    ..base.clone()
                }
            }));
        } else if let Some(csv) = &self.csv {
            reqs.extend(from_nodelist(csv, &base)?);
        } else {
            bail!("say what to deploy: --token X, --tokens a,b,c, --count N --token-pattern 'x{{N}}', or --csv nodelist.csv");
        }
        if reqs.iter().any(|r| r.template.is_empty()) {
            bail!("missing --template (vmoodle template list shows them)");
        }
        if !single
            && (self.name.is_some()
                || self.host.is_some()
                || self.dataroot.is_some()
                || self.shortname.is_some())
        {
            bail!("--name, --shortname, --host and --dataroot apply to a single --token deploy");
        }
        let progress = Progress::new(reqs.len() as u64);
        let results = deploy::deploy_many(&home, reqs, self.parallel, &|e| progress.event(e)).await;
        progress.finish();
        let failed = results.iter().filter(|r| !r.ok).count();
        if single && failed == 1 && !self.json {
            bail!("{}", results[0].error.clone().unwrap_or_default());
        }
        if self.json {
            output::json(&results)?;
        } else {
            output::table(
                &["token", "result", "wwwroot", "database", "method", "time"],
                results
                    .iter()
                    .map(|r| match &r.outcome {
                        Some(o) => vec![
                            r.token.clone(),
                            "deployed".into(),
                            o.wwwroot.clone(),
                            format!("{}/{}", o.dbserver, o.dbname),
                            o.method.clone(),
                            format!("{} ms", o.ms),
                        ],
                        None => vec![
                            r.token.clone(),
                            "FAILED".into(),
                            r.error.clone().unwrap_or_default(),
                            String::new(),
                            String::new(),
                            String::new(),
                        ],
                    })
                    .collect(),
            );
            // What the fix-ups changed beyond db_replace() (the same for every deploy of one
            // template, so said once).
            if let Some(o) = results.iter().find_map(|r| r.outcome.as_ref()) {
                let fx = &o.fixups;
                if !fx.settings_rewritten.is_empty() {
                    eprintln!(
                        "settings that named the template's host now name the new one: {}",
                        fx.settings_rewritten.join(", ")
                    );
                }
                for s in &fx.settings_skipped {
                    eprintln!("warning: setting not rewritten: {s}");
                }
            }
            if failed > 0 {
                eprintln!(
                    "{failed} of {} deploy(s) failed; each failed one was undone (its error lists anything that could not be; `vmoodle jobs list --state failed`)",
                    results.len()
                );
            }
        }
        Ok(match (failed, results.len()) {
            (0, _) => exit::OK,
            (f, n) if f == n => exit::ERROR,
            _ => exit::PARTIAL,
        })
    }
}

/// Deploy requests from VMoodle's node list: shortname is the token; vhostname, name,
/// description, vdbname, vdblogin, vdatapath, vdbprefix, mnet and vtemplate preset each one;
/// `config_NAME` columns set core settings and `plugin|setting` columns plugin settings.
fn from_nodelist(path: &Path, base: &DeployRequest) -> Result<Vec<DeployRequest>> {
    let (headers, rows) = import::read_nodelist(path, &["shortname"])?;
    let mut out = Vec::new();
    for (line, row) in rows {
        let row = row.map_err(|e| anyhow::anyhow!("{}: {line}: {e}", path.display()))?;
        let get = |k: &str| row.get(k).cloned().flatten();
        let mut r = DeployRequest {
            token: get("shortname").unwrap_or_default(),
            name: get("name"),
            description: get("description"),
            host: get("vhostname"),
            dbname: get("vdbname"),
            dbuser: get("vdblogin"),
            dataroot: get("vdatapath"),
            prefix: get("vdbprefix").or(base.prefix.clone()),
            mnet: get("mnet").and_then(|m| m.parse().ok()).or(base.mnet),
            template: get("vtemplate").unwrap_or_else(|| base.template.clone()),
            ..base.clone()
        };
        for h in &headers {
            let Some(v) = get(h) else { continue };
            if let Some(name) = h.strip_prefix("config_") {
                r.plugin_config.push((String::new(), name.to_string(), v));
            } else if let Some((plugin, setting)) = h.split_once('|') {
                r.plugin_config
                    .push((plugin.to_string(), setting.to_string(), v));
            }
        }
        out.push(r);
    }
    Ok(out)
}
