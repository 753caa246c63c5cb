//! `vmoodle spares fill|list`.

use std::path::Path;
use vmoodle_ops::{dbservers, spares, Home};

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Pre-clone K databases of a template on a MariaDB server; a deploy then only renames one.
    Fill {
        #[arg(long)]
        template: String,
        #[arg(long)]
        dbserver: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// List the warm spares of every template on a server.
    List {
        #[arg(long)]
        dbserver: String,
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        match self {
            Cmd::Fill {
                template,
                dbserver,
                count,
            } => {
                let home = super::open_locked(root).await?;
                let made = spares::fill_spares(&home, &template, &dbserver, count).await?;
                eprintln!(
                    "made {} warm spare(s) of `{template}` on `{dbserver}`",
                    made.len()
                );
            }
            Cmd::List { dbserver, json } => {
                let home = Home::open(root).await?;
                let s = home.registry.dbserver(&dbserver).await?;
                let spec = dbservers::admin_spec(&home, &s)?;
                let mut rows = Vec::new();
                for t in home.registry.templates().await? {
                    for spare in spares::spare_databases(&spec, &t.name)
                        .await
                        .unwrap_or_default()
                    {
                        rows.push((t.name.clone(), spare));
                    }
                }
                if json {
                    output::json(
                        &rows
                            .iter()
                            .map(|(t, d)| serde_json::json!({"template": t, "database": d}))
                            .collect::<Vec<_>>(),
                    )?;
                } else {
                    output::table(
                        &["template", "database"],
                        rows.into_iter().map(|(t, d)| vec![t, d]).collect(),
                    );
                }
            }
        }
        Ok(exit::OK)
    }
}
