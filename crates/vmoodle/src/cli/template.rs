//! `vmoodle template list|show|verify|delete|load`.

use std::path::Path;
use vmoodle_ops::{templates, Home};

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// List templates.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a template's manifest.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Check every artifact against the manifest's checksums (re-hashes every file).
    Verify {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a template: its files and its live databases on every server.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Load the template as a live database on a server now (else the first deploy does it).
    Load {
        name: String,
        #[arg(long)]
        dbserver: String,
    },
}

impl Cmd {
    pub async fn run(self, root: &Path) -> anyhow::Result<u8> {
        match self {
            Cmd::List { json } => {
                let home = Home::open(root).await?;
                let all = home.registry.templates().await?;
                let mut rows = Vec::new();
                let mut js = Vec::new();
                for t in &all {
                    let (m, _) = templates::open(t)?;
                    let behind = vmoodle_ops::fleet::upgrade::template_behind(&home, &m);
                    rows.push(vec![
                        t.name.clone(),
                        t.source.clone(),
                        m.source.kind.to_string(),
                        match &behind {
                            Some(c) => format!(
                                "{} (behind the code {}: deploys upgrade)",
                                m.moodle.release, c.version
                            ),
                            None => m.moodle.release.clone(),
                        },
                        m.tables.to_string(),
                        output::time(t.created_at),
                    ]);
                    js.push(with_behind(&m, behind)?);
                }
                if json {
                    output::json(&js)?;
                } else {
                    output::table(
                        &["name", "source", "database", "moodle", "tables", "made"],
                        rows,
                    );
                }
            }
            Cmd::Show { name, json } => {
                let home = Home::open(root).await?;
                let t = home.registry.template(&name).await?;
                let (m, dir) = templates::open(&t)?;
                let behind = vmoodle_ops::fleet::upgrade::template_behind(&home, &m);
                if json {
                    output::json(&with_behind(&m, behind)?)?;
                } else {
                    output::fields(&[
                        ("name", t.name.clone()),
                        ("directory", dir.display().to_string()),
                        (
                            "source",
                            format!("{} ({})", m.source.shortname, m.source.wwwroot),
                        ),
                        (
                            "database",
                            format!(
                                "{} {} on `{}`, prefix {}",
                                m.source.kind,
                                m.source.server_version,
                                m.source.dbserver,
                                m.source.prefix
                            ),
                        ),
                        (
                            "moodle",
                            match &behind {
                                Some(c) => format!(
                                    "{} ({}), behind the code ({}): each deploy upgrades its new site",
                                    m.moodle.release, m.moodle.version, c.version
                                ),
                                None => format!("{} ({})", m.moodle.release, m.moodle.version),
                            },
                        ),
                        ("tables", m.tables.to_string()),
                        (
                            "dump",
                            format!(
                                "{} ({} bytes, sha256 {})",
                                m.database.file, m.database.bytes, m.database.sha256
                            ),
                        ),
                        (
                            "dataroot",
                            format!("{} files, {} bytes", m.dataroot.files, m.dataroot.bytes),
                        ),
                        ("made", output::time(t.created_at)),
                        (
                            "instances",
                            home.registry
                                .instances_of_template(&t.name)
                                .await?
                                .join(", "),
                        ),
                    ]);
                }
            }
            Cmd::Verify { name, json } => {
                let home = Home::open(root).await?;
                let t = home.registry.template(&name).await?;
                let problems = templates::verify(&t, true)?;
                if json {
                    output::json(
                        &serde_json::json!({ "template": name, "ok": problems.is_empty(), "problems": problems }),
                    )?;
                } else if problems.is_empty() {
                    println!("template `{name}`: every artifact matches its checksum");
                } else {
                    for p in &problems {
                        println!("{p}");
                    }
                }
                if !problems.is_empty() {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Delete { name, yes } => {
                let home = super::open_locked(root).await?;
                home.registry.template(&name).await?;
                let what = format!(
                    "Delete template `{name}`: its files and its live databases on every server"
                );
                if !super::confirm(yes, &what, &name)? {
                    return Ok(exit::ERROR);
                }
                templates::delete(&home, &name).await?;
                eprintln!("template `{name}` deleted (its files and live databases); instances deployed from it are untouched");
            }
            Cmd::Load { name, dbserver } => {
                let home = super::open_locked(root).await?;
                let t = home.registry.template(&name).await?;
                let s = home.registry.dbserver(&dbserver).await?;
                let made = templates::ensure_live(&home, &t, &s).await?;
                eprintln!(
                    "template `{name}` {} on `{dbserver}` as database `{}`",
                    if made { "loaded" } else { "was already live" },
                    templates::live_db_name(&name)
                );
            }
        }
        Ok(exit::OK)
    }
}

/// A manifest as JSON with `behind_code` (and the code's version when it is behind).
fn with_behind(
    m: &templates::Manifest,
    behind: Option<vmoodle_ops::fleet::moodle::MoodleVersion>,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(m)?;
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "behind_code".into(),
            serde_json::Value::Bool(behind.is_some()),
        );
        if let Some(c) = behind {
            o.insert("code_version".into(), serde_json::Value::String(c.version));
        }
    }
    Ok(v)
}
