//! `vmoodle settings show|get|set`.

use anyhow::{bail, Result};
use std::path::Path;
use vmoodle_core::settings::{set_in_document, SECRET_KEYS};
use vmoodle_core::Secret;
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Show every setting and its value (secrets as ****).
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Print one setting's value, e.g. `vmoodle settings get schema.wwwroot`.
    Get { key: String },
    /// Change one setting; the whole file is checked before it is saved.
    ///
    /// Examples:
    ///   vmoodle settings set schema.wwwroot 'https://<%%INSTANCE%%>.moodle.example.org'
    ///   vmoodle settings set schema.db_type pgsql
    ///   vmoodle settings set web.group apache
    ///   vmoodle settings set schema.db_password --stdin   (secrets only from stdin)
    #[command(verbatim_doc_comment)]
    Set {
        key: String,
        /// The new value (not for secrets: use --stdin).
        value: Option<String>,
        /// Read the value from standard input.
        #[arg(long, conflicts_with = "value")]
        stdin: bool,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        match self {
            Cmd::Show { json } => {
                let home = Home::open(root).await?;
                let flat = home.settings.flatten();
                if json {
                    let map: serde_json::Map<String, serde_json::Value> =
                        flat.into_iter().collect();
                    output::json(&map)?;
                } else {
                    output::table(
                        &["setting", "value"],
                        flat.into_iter()
                            .map(|(k, v)| vec![k, display(&v)])
                            .collect(),
                    );
                }
            }
            Cmd::Get { key } => {
                let home = Home::open(root).await?;
                println!("{}", display(&home.settings.get(&key)?));
            }
            Cmd::Set { key, value, stdin } => {
                let mut home = super::open_locked(root).await?;
                let is_secret = SECRET_KEYS.contains(&key.as_str());
                let raw = match (value, stdin) {
                    (Some(_), _) if is_secret => {
                        return Err(
                            vmoodle_core::settings::SettingsError::SecretOnCommandLine(key).into(),
                        )
                    }
                    (Some(v), _) if key == "registry" && vmoodle_core::settings::url_has_password(&v) => bail!(
                        "the register URL `{}` holds a password, which would show on the command line and in vmoodle.toml\nhint: `vmoodle init --registry URL --registry-password-stdin` keeps the password sealed in the home",
                        vmoodle_core::settings::redact_url(&v)
                    ),
                    (Some(v), _) => v,
                    (None, true) => vmoodle_ops::read_password_stdin()?.expose().to_string(),
                    (None, false) => bail!("give the new value of `{key}` (or --stdin)"),
                };
                let stored = if is_secret && !raw.is_empty() {
                    home.secrets
                        .seal(&Secret::new(raw), &vmoodle_core::Binding::setting(&key))?
                } else {
                    raw
                };
                let text = set_in_document(&home.settings_text()?, &key, &stored)?;
                home.save_settings(&text)?;
                if key.starts_with("web.") {
                    vmoodle_ops::publish::publish_all(&home).await?;
                }
                eprintln!("{key} = {}", display(&home.settings.get(&key)?));
            }
        }
        Ok(exit::OK)
    }
}

fn display(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
