//! `vmoodle hook snippet|install|publish|check`.

use std::path::{Path, PathBuf};
use vmoodle_ops::Home;
use vmoodle_site::hook::{self, InstallOutcome};

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Print the lines to add to Moodle's config.php, just before its
    /// `require_once(__DIR__ . '/lib/setup.php');` line.
    Snippet,
    /// Add the hook to a Moodle's config.php (idempotent; keeps a backup of config.php).
    /// Works with the Moodle 4.x layout and with 5.x, where the code is under public/ and
    /// config.php sits above it (give either directory).
    Install {
        #[arg(long, value_name = "DIR")]
        moodle_dir: PathBuf,
    },
    /// Rewrite hook.php and every host file from the register.
    Publish {
        #[arg(long)]
        json: bool,
    },
    /// Ask the published hook (through php-cli) what a request for HOST gets: the status and
    /// the resulting $CFG (password masked).
    Check {
        host: String,
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        match self {
            Cmd::Snippet => {
                let home = Home::open(root).await?;
                print!("{}", hook::snippet(&home.hook_path()));
            }
            Cmd::Install { moodle_dir } => {
                let home = super::open_locked(root).await?;
                vmoodle_ops::publish::publish_all(&home).await?;
                match hook::install(&moodle_dir, &hook::snippet(&home.hook_path()))? {
                    InstallOutcome::Installed { config, backup } => {
                        eprintln!(
                            "hook added to {} (backup: {})",
                            config.display(),
                            backup.display()
                        )
                    }
                    InstallOutcome::Updated { config, backup } => {
                        eprintln!(
                            "hook updated in {} (backup: {})",
                            config.display(),
                            backup.display()
                        )
                    }
                    InstallOutcome::AlreadyInstalled { config } => {
                        eprintln!("hook already in {}; nothing changed", config.display())
                    }
                }
            }
            Cmd::Publish { json } => {
                let home = super::open_locked(root).await?;
                let r = vmoodle_ops::publish::publish_all(&home).await?;
                if json {
                    output::json(&r)?;
                } else {
                    eprintln!(
                        "published {} and {} host file(s){}",
                        r.hook,
                        r.written.len(),
                        if r.removed.is_empty() {
                            String::new()
                        } else {
                            format!("; removed stale: {}", r.removed.join(", "))
                        }
                    );
                }
            }
            Cmd::Check { host, json } => {
                let home = Home::open(root).await?;
                let php = home.executable("php")?;
                let p = vmoodle_site::probe::probe(&php, &home.hook_path(), &host).await?;
                if json {
                    output::json(&p)?;
                } else {
                    println!("status  {}", p.status);
                    if !p.body.trim().is_empty() {
                        println!("page    {}", p.body.trim());
                    }
                    for (k, v) in &p.cfg {
                        let v = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        println!("$CFG->{k} = {v}");
                    }
                }
                if p.status != 200 {
                    return Ok(exit::PARTIAL);
                }
            }
        }
        Ok(exit::OK)
    }
}
