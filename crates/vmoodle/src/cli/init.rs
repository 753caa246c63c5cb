//! `vmoodle init`: create the home.

use std::path::Path;
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// Keep the register in PostgreSQL instead of the home's SQLite file, e.g.
    /// postgres://vmoodle@db.example.org:5432/vmoodle (vmoodle.toml is 0600 if the URL holds a password).
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Cmd {
    pub async fn run(self, home: &Path) -> anyhow::Result<u8> {
        let r = Home::init(home, self.registry.as_deref()).await?;
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
