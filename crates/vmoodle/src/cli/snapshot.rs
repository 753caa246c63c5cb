//! `vmoodle snapshot SOURCE --template NAME`.

use std::path::Path;
use vmoodle_ops::templates;

use super::{exit, output, progress::Progress};

#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The master or an instance (shortname or host).
    source: String,
    /// The template's name (lowercase letters, digits, underscores).
    #[arg(long)]
    template: String,
    #[arg(long)]
    json: bool,
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        let home = super::open_locked(root).await?;
        let p = Progress::new(0);
        let t = templates::snapshot(&home, &self.source, &self.template, &|e| p.event(e)).await;
        p.finish();
        let t = t?;
        let (m, dir) = templates::open(&t)?;
        if self.json {
            output::json(&m)?;
        } else {
            eprintln!(
                "template `{}` made from `{}` in {}",
                t.name,
                t.source,
                dir.display()
            );
            output::fields(&[
                (
                    "moodle",
                    format!("{} ({})", m.moodle.release, m.moodle.version),
                ),
                (
                    "database",
                    format!(
                        "{} tables, {} ({} bytes)",
                        m.tables, m.database.file, m.database.bytes
                    ),
                ),
                (
                    "dataroot",
                    format!(
                        "{} files, {} bytes, {} hard-linked",
                        m.dataroot.files, m.dataroot.bytes, m.dataroot.linked
                    ),
                ),
                (
                    "timings",
                    m.timings_ms
                        .iter()
                        .map(|(s, ms)| format!("{s} {ms} ms"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ]);
        }
        Ok(exit::OK)
    }
}
