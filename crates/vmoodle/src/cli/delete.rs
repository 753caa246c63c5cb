//! `vmoodle delete X` and `vmoodle restore ARCHIVE`.

use anyhow::Result;
use std::path::{Path, PathBuf};
use vmoodle_ops::archive;

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
        let home = super::open_locked(root).await?;
        let inst = home.registry.instance(&self.instance).await?;
        let what = format!(
            "Delete instance `{}` ({}): database `{}`, user `{}`, dataroot {}{}",
            inst.shortname,
            inst.wwwroot,
            inst.dbname,
            inst.dbuser,
            inst.dataroot,
            if self.no_archive {
                " WITHOUT an archive"
            } else {
                " (archived first)"
            }
        );
        if !super::confirm(self.yes, &what, &inst.shortname)? {
            return Ok(exit::ERROR);
        }
        let p = Progress::new(0);
        let r = archive::delete(&home, &inst.shortname, !self.no_archive, &|e| p.event(e)).await;
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
        let home = super::open_locked(root).await?;
        let p = Progress::new(0);
        let r =
            archive::restore(&home, &self.archive, self.token.as_deref(), &|e| p.event(e)).await;
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
