//! `vmoodle schema expand TOKEN`.

use std::path::Path;
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Show what a token gives under the naming schema (wwwroot, database, user, dataroot).
    ///
    /// Tokens are 1-20 lowercase letters and digits, starting with a letter: the same token
    /// becomes part of a host name, a database name, a database user and a directory name, so
    /// only characters valid in all four are allowed.
    Expand {
        token: String,
        #[arg(long)]
        json: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        let Cmd::Expand { token, json } = self;
        let home = Home::open(root).await?;
        let e = vmoodle_core::schema::expand(&home.settings.schema, &token)?;
        if json {
            output::json(&e)?;
        } else {
            output::fields(&[
                ("token", e.token.clone()),
                ("wwwroot", e.wwwroot.clone()),
                ("host", e.host.clone()),
                ("db type", e.db_type.to_string()),
                ("db server", format!("{}:{}", e.db_host, e.db_port)),
                ("db name", e.db_name.clone()),
                ("db user", e.db_user.clone()),
                ("prefix", e.prefix.clone()),
                ("persistent", e.db_persist.to_string()),
                ("dataroot", e.dataroot.display().to_string()),
            ]);
            if !home.settings.schema.automate {
                eprintln!(
                    "note: schema.automate is off, so deploys and `instance add` do not use it"
                );
            }
        }
        Ok(exit::OK)
    }
}
