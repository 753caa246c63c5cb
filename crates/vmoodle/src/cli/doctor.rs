//! `vmoodle doctor [--json]`: checks everything a working fleet needs (vmoodle-ops::doctor) and
//! prints, for each failure, the exact fix. Exit 0 when all is well, 3 when a check failed.

use std::path::{Path, PathBuf};
use vmoodle_ops::doctor::{self, Status};
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The master's Moodle directory (default: the one `master set` read).
    #[arg(long, value_name = "DIR")]
    moodle_dir: Option<PathBuf>,
    /// Check this php.ini instead of php-cli's own, e.g. php-fpm's /etc/php/8.2/fpm/php.ini.
    #[arg(long, value_name = "FILE")]
    php_ini: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        let home = Home::open(root).await?;
        let opts = doctor::Options {
            moodle_dir: self.moodle_dir,
            php_ini: self.php_ini,
        };
        let report = doctor::run(&home, &opts).await?;
        if self.json {
            output::json(&report)?;
        } else {
            for c in &report.checks {
                let mark = match c.status {
                    Status::Ok => "ok  ",
                    Status::Fail => "FAIL",
                    Status::Skip => "skip",
                };
                println!("{mark}  {}: {}", c.name, c.detail);
                if let Some(fix) = &c.fix {
                    for (n, line) in fix.lines().enumerate() {
                        let lead = if n == 0 { "fix:" } else { "    " };
                        println!("      {lead} {line}");
                    }
                }
            }
            let failed = report
                .checks
                .iter()
                .filter(|c| c.status == Status::Fail)
                .count();
            if failed == 0 {
                eprintln!("all {} checks passed", report.checks.len());
            } else {
                eprintln!("{failed} of {} checks failed", report.checks.len());
            }
        }
        Ok(if report.ok { exit::OK } else { exit::PARTIAL })
    }
}
