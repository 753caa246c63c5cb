//! `vmoodle delete X` and `vmoodle restore ARCHIVE`.

use anyhow::{bail, Result};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use vmoodle_ops::{archive, Home};

use super::{exit, output, progress::Progress};

#[derive(Debug, clap::Args)]
pub struct DeleteCmd {
    /// The instance (shortname or host).
    instance: String,
    /// Do not archive first (the database and dataroot are gone for good).
    #[arg(long)]
    no_archive: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
    #[arg(long)]
    json: bool,
}

impl DeleteCmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        let home = Home::open_locked(root).await?;
        let inst = home.registry.instance(&self.instance).await?;
        if !self.yes {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "deleting `{}` needs confirmation: give --yes",
                    inst.shortname
                );
            }
            eprint!(
                "Delete instance `{}` ({}): database `{}`, user `{}`, dataroot {}{}? Type the shortname to confirm: ",
                inst.shortname,
                inst.wwwroot,
                inst.dbname,
                inst.dbuser,
                inst.dataroot,
                if self.no_archive { " WITHOUT an archive" } else { " (archived first)" }
            );
            std::io::stderr().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if answer.trim() != inst.shortname {
                eprintln!("not confirmed; nothing changed");
                return Ok(exit::ERROR);
            }
        }
        let p = Progress::new(0);
        let cb = |n: usize, total: usize, what: &str| {
            p.step(&inst.shortname, n, total, &format!("archive: {what}"))
        };
        let r = archive::delete(&home, &inst.shortname, !self.no_archive, &cb).await;
        p.finish();
        let r = r?;
        if self.json {
            output::json(&r)?;
        } else {
            eprintln!("instance `{}` deleted", r.shortname);
            if let Some(a) = &r.archive {
                eprintln!("archive: {a}\nrestore it with: vmoodle restore {a}");
            }
            for k in &r.kept {
                eprintln!("kept: {k}");
            }
        }
        Ok(exit::OK)
    }
}

#[derive(Debug, clap::Args)]
pub struct RestoreCmd {
    /// An archive directory made by `vmoodle delete`.
    archive: PathBuf,
    /// Restore under a new token (names from the schema) instead of the original names.
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    json: bool,
}

impl RestoreCmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        let home = Home::open_locked(root).await?;
        let p = Progress::new(0);
        let cb = |n: usize, total: usize, what: &str| p.step("restore", n, total, what);
        let r = archive::restore(&home, &self.archive, self.token.as_deref(), &cb).await;
        p.finish();
        let o = r?;
        if self.json {
            output::json(&o)?;
        } else {
            eprintln!("restored `{}` at {} ({} ms)", o.shortname, o.wwwroot, o.ms);
        }
        Ok(exit::OK)
    }
}
