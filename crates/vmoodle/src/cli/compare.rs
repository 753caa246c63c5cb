//! `vmoodle compare plugins|config A B [C..]`: what differs between instances.

use super::fleet::SelectArgs;
use super::output;
use std::path::Path;
use vmoodle_ops::fleet::compare::{compare, What};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Compares instances side by side, read from each one's own database:
  plugins  every plugin's version (config_plugins `version`; `(missing)` = not installed on
           that site), and Moodle's own (`core`);
  config   core settings (the config table), without volatile ones (siteidentifier, cache
           revisions, housekeeping times); settings whose name holds password, secret or key
           are compared but shown as `(hidden)`.
Only what differs is shown unless --all-rows.

Examples:
  vmoodle compare plugins school1 school2
  vmoodle compare config school1 school2 school3 --json
  vmoodle compare plugins --match 'school-*' --all-rows

Exit codes: 0 compared, 3 some instance could not be read, 1 nothing could run.")]
pub struct Cmd {
    /// What to compare.
    #[arg(value_enum, value_name = "WHAT")]
    what: WhatArg,
    #[command(flatten)]
    select: SelectArgs,
    /// Every row, the identical ones too.
    #[arg(long)]
    all_rows: bool,
    /// The comparison as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WhatArg {
    Plugins,
    Config,
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let home = vmoodle_ops::Home::open(home).await?;
        let what = match self.what {
            WhatArg::Plugins => What::Plugins,
            WhatArg::Config => What::Config,
        };
        let r = compare(&home, &self.select.selection(), what, self.all_rows).await?;
        if self.json {
            output::json(&r)?;
        } else {
            let mut headers = vec![match what {
                What::Plugins => "plugin".to_string(),
                What::Config => "setting".to_string(),
            }];
            headers.extend(r.instances.iter().cloned());
            headers.push("differs".into());
            let h: Vec<&str> = headers.iter().map(String::as_str).collect();
            let rows = r
                .rows
                .iter()
                .map(|row| {
                    let mut line = vec![row.key.clone()];
                    line.extend(row.values.iter().map(|v| match v {
                        None if what == What::Plugins => "(missing)".to_string(),
                        None => "(not set)".to_string(),
                        Some(v) => super::fleet::shorten(v, 60),
                    }));
                    line.push(if row.differs {
                        "*".into()
                    } else {
                        String::new()
                    });
                    line
                })
                .collect();
            output::table(&h, rows);
            eprintln!(
                "{} of {} {} differ",
                r.differing,
                r.compared,
                match what {
                    What::Plugins => "plugins",
                    What::Config => "settings",
                }
            );
        }
        for (i, e) in &r.errors {
            eprintln!("{i}: cannot be read: {e}");
        }
        Ok(r.exit_code() as u8)
    }
}
