//! `vmoodle admin`: administrators of the web admin and the API, and their API tokens.

use anyhow::{bail, Result};
use clap::Subcommand;
use std::path::Path;
use vmoodle_ops::Home;

use super::output;

const EXAMPLES: &str = "\
Administrators log in to the web admin (`vmoodle serve`); API clients use tokens with a read or
write scope, sent as `Authorization: Bearer TOKEN`. Passwords are read from stdin only and kept as
argon2id hashes; a token is shown once, when it is created, and only its hash is kept.

Examples:
  printf '%s' \"$PASSWORD\" | vmoodle admin add alice --password-stdin
  vmoodle admin token create deploy-bot --admin alice --scope write
  vmoodle admin token list --json";

#[derive(Debug, Subcommand)]
#[command(after_help = EXAMPLES)]
pub enum Cmd {
    /// Add an administrator (password from stdin, at least 10 characters).
    Add {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Replace an administrator's password (ends their sessions).
    Password {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List administrators.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an administrator with their sessions and tokens.
    Remove {
        name: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once on stdout.
    Create {
        /// A name for the token (shown in jobs as api:NAME).
        name: String,
        /// The administrator it acts for.
        #[arg(long)]
        admin: String,
        /// read: look only; write: start jobs and change things.
        #[arg(long, value_parser = ["read", "write"], default_value = "read")]
        scope: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token.
    Revoke { name: String },
}

/// Administrator and token names: what a job's `started_by` shows.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if !ok {
        bail!("{what} `{name}` is not allowed: use 1 to 64 letters, digits, '.', '_', '-' or '@'");
    }
    Ok(())
}

fn read_new_password() -> Result<String> {
    let p = vmoodle_ops::read_password_stdin()?;
    let p = p.expose().to_string();
    if p.chars().count() < 10 {
        bail!("the password is too short: use at least 10 characters");
    }
    Ok(p)
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        match self {
            Cmd::Add { name, .. } => {
                check_name("administrator name", &name)?;
                let password = read_new_password()?;
                let home = Home::open(root).await?;
                let hash = vmoodle_server::auth::hash_password(&password)?;
                home.registry.add_admin(&name, &hash).await?;
                eprintln!("administrator {name} added");
            }
            Cmd::Password { name, .. } => {
                let password = read_new_password()?;
                let home = Home::open(root).await?;
                let hash = vmoodle_server::auth::hash_password(&password)?;
                home.registry.set_admin_password(&name, &hash).await?;
                eprintln!("password of {name} replaced; their sessions are ended");
            }
            Cmd::List { json } => {
                let home = Home::open(root).await?;
                let all = home.registry.admins().await?;
                if json {
                    output::json(&all)?;
                } else {
                    output::table(
                        &["name", "created", "last login"],
                        all.iter()
                            .map(|a| {
                                vec![
                                    a.name.clone(),
                                    output::time(a.created_at),
                                    a.last_login.map(output::time).unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Cmd::Remove { name, yes } => {
                let home = Home::open(root).await?;
                home.registry.admin(&name).await?;
                if !super::confirm(yes, "remove administrator", &name)? {
                    return Ok(super::exit::ERROR);
                }
                home.registry.remove_admin(&name).await?;
                eprintln!("administrator {name} removed");
            }
            Cmd::Token(t) => return t.run(root).await,
        }
        Ok(super::exit::OK)
    }
}

impl TokenCmd {
    async fn run(self, root: &Path) -> Result<u8> {
        let home = Home::open(root).await?;
        match self {
            TokenCmd::Create { name, admin, scope } => {
                check_name("token name", &name)?;
                let a = home.registry.admin(&admin).await?;
                let token = format!("vmt_{}", vmoodle_server::auth::random_token());
                home.registry
                    .add_token(
                        &name,
                        a.id,
                        &vmoodle_server::auth::token_hash(&token),
                        &scope,
                    )
                    .await?;
                println!("{token}");
                eprintln!("token {name} ({scope}) created for {admin}; it is shown only now");
            }
            TokenCmd::List { json } => {
                let all = home.registry.tokens().await?;
                if json {
                    output::json(&all)?;
                } else {
                    output::table(
                        &["name", "admin", "scope", "created", "last used"],
                        all.iter()
                            .map(|t| {
                                vec![
                                    t.name.clone(),
                                    t.admin.clone(),
                                    t.scope.clone(),
                                    output::time(t.created_at),
                                    t.last_used.map(output::time).unwrap_or_default(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            TokenCmd::Revoke { name } => {
                home.registry.remove_token(&name).await?;
                eprintln!("token {name} revoked");
            }
        }
        Ok(super::exit::OK)
    }
}
