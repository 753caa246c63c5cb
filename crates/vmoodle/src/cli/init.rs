//! `vmoodle init`: create the home.

use anyhow::bail;
use std::path::{Path, PathBuf};
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// Keep the register in PostgreSQL instead of the home's SQLite file, e.g.
    /// postgres://vmoodle@db.example.org:5432/vmoodle (no password in the URL: give it with
    /// --registry-password-file or --registry-password-stdin).
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Read the register's password from the first line of this file; it is kept sealed in the
    /// home (registry.pw, 0600).
    #[arg(
        long,
        value_name = "FILE",
        requires = "registry",
        conflicts_with = "registry_password_stdin"
    )]
    registry_password_file: Option<PathBuf>,
    /// Read the register's password from standard input.
    #[arg(long, requires = "registry")]
    registry_password_stdin: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        if let Some(url) = &self.registry {
            if vmoodle_core::settings::url_has_password(url) {
                bail!(
                    "the register URL `{}` holds a password, which would be visible to every user of this machine on the command line (ps, /proc) and kept in vmoodle.toml\nhint: give the URL without it and the password on its own: `vmoodle init --registry {} --registry-password-stdin` (or --registry-password-file FILE)",
                    vmoodle_core::settings::redact_url(url),
                    strip_password(url)
                );
            }
        }
        let password = if let Some(f) = &self.registry_password_file {
            Some(vmoodle_ops::read_password_file(f)?)
        } else if self.registry_password_stdin {
            Some(vmoodle_ops::read_password_stdin()?)
        } else {
            None
        };
        let r = Home::init(home, self.registry.as_deref(), password.as_ref()).await?;
        if self.json {
            output::json(&r)?;
        } else {
            println!("vmoodle home: {}", r.home.display());
            println!("register:     {}", r.registry);
            if !r.created.is_empty() {
                println!("created:      {}", r.created.join(", "));
            }
            if !r.kept.is_empty() {
                println!("kept:         {}", r.kept.join(", "));
            }
            println!("\nnext: register a database server, e.g.\n  vmoodle dbserver add db1 --type mariadb --host 127.0.0.1 --user root --password-stdin");
        }
        Ok(exit::OK)
    }
}

/// The URL without its password (`postgres://user@host/db`), for the hint.
fn strip_password(url: &str) -> String {
    vmoodle_core::settings::redact_url(url).replacen(":****@", "@", 1)
}
