//! `vmoodle compare plugins|config A B [C..]`: side by side, what differs between instances
//! (like VMoodle's plugin comparison), read from each instance's own database with its own
//! account.
//!
//! - plugins: every plugin's `version` in config_plugins (absent on a site = not installed),
//!   and Moodle itself (`core`, config.version);
//! - config: core settings (the config table), without the volatile ones (identifiers, caches'
//!   revisions, timestamps of housekeeping); settings whose name holds `password`, `secret` or
//!   `key` are compared but never shown: a site's cell says `(hidden)`.

use anyhow::{bail, Result};
use futures::StreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use super::sitedb::SiteDb;
use super::Selection;
use crate::Home;

/// What is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    Plugins,
    Config,
}

/// Core settings that change by themselves (revisions, identifiers, housekeeping times).
pub const VOLATILE: &[&str] = &[
    "siteidentifier",
    "themerev",
    "jsrev",
    "templaterev",
    "langrev",
    "localcachedirpurged",
    "allversionshash",
    "scheduledtaskreset",
    "fileslastcleanup",
    "digestmailtimelast",
    "registrationpending",
    "site_is_public",
    "upgraderunning",
    "cronlastrun",
    "lastcroninterval",
];

/// A setting whose value is never shown.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password") || n.contains("secret") || n.contains("key")
}

/// One compared item across the sites.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The plugin (`mod_forum`) or setting name.
    pub key: String,
    /// Per instance, in the order given: the value, None when absent (not installed, not set).
    pub values: Vec<Option<String>>,
    pub differs: bool,
    /// A secret setting: values are `(hidden)`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub what: What,
    pub instances: Vec<String>,
    /// Rows shown (only the differing ones unless all rows were asked for).
    pub rows: Vec<Row>,
    /// How many items were compared, and how many differ.
    pub compared: usize,
    pub differing: usize,
    /// Instances that could not be read, with why.
    pub errors: BTreeMap<String, String>,
}

impl Comparison {
    pub fn exit_code(&self) -> i32 {
        if self.errors.is_empty() {
            0
        } else {
            3
        }
    }
}

/// Compares `what` across the selected instances (at least two).
pub async fn compare(
    home: &Home,
    selection: &Selection,
    what: What,
    all_rows: bool,
) -> Result<Comparison> {
    let selected = selection.resolve(home).await?;
    if selected.instances.len() < 2 {
        bail!(
            "compare needs at least two instances; the selection gave {} ({})",
            selected.instances.len(),
            selected
                .instances
                .iter()
                .map(|i| i.shortname.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let read: Vec<Result<BTreeMap<String, String>>> =
        futures::stream::iter(selected.instances.iter())
            .map(|inst| async move {
                let db = SiteDb::new(home, inst).await?;
                let mut c = db.conn().await?;
                let sql = match what {
                    What::Plugins => format!(
                        "SELECT plugin, {} FROM {} WHERE name = 'version' \
                         UNION ALL SELECT 'core', {} FROM {} WHERE name = 'version'",
                        db.cast("value"),
                        db.t("config_plugins"),
                        db.cast("value"),
                        db.t("config")
                    ),
                    What::Config => {
                        format!("SELECT name, {} FROM {}", db.cast("value"), db.t("config"))
                    }
                };
                let rows = c.rows(&sql, &[]).await;
                vmoodle_dbserver::close(c).await;
                let mut m = BTreeMap::new();
                for r in rows? {
                    let mut it = r.into_iter();
                    if let (Some(Some(k)), Some(v)) = (it.next(), it.next()) {
                        m.insert(k, v.unwrap_or_default());
                    }
                }
                Ok(m)
            })
            .buffered(4)
            .collect()
            .await;
    let mut errors = BTreeMap::new();
    let mut maps = Vec::new();
    for (inst, r) in selected.instances.iter().zip(read) {
        match r {
            Ok(m) => maps.push(Some(m)),
            Err(e) => {
                errors.insert(inst.shortname.clone(), format!("{e:#}"));
                maps.push(None);
            }
        }
    }
    let keys: BTreeSet<&String> = maps.iter().flatten().flat_map(|m| m.keys()).collect();
    let mut rows = Vec::new();
    let mut compared = 0;
    let mut differing = 0;
    for k in keys {
        if what == What::Config && VOLATILE.contains(&k.as_str()) {
            continue;
        }
        compared += 1;
        let values: Vec<Option<String>> = maps
            .iter()
            .filter_map(|m| m.as_ref())
            .map(|m| m.get(k).cloned())
            .collect();
        let differs = values.iter().any(|v| *v != values[0]);
        if differs {
            differing += 1;
        }
        if !differs && !all_rows {
            continue;
        }
        let hidden = what == What::Config && is_secret(k);
        let values = maps
            .iter()
            .map(|m| match m {
                None => Some("(unreadable)".to_string()),
                Some(m) => match m.get(k) {
                    None => None,
                    Some(_) if hidden => Some("(hidden)".into()),
                    Some(v) => Some(v.clone()),
                },
            })
            .collect();
        rows.push(Row {
            key: k.clone(),
            values,
            differs,
            hidden,
        });
    }
    Ok(Comparison {
        what,
        instances: selected
            .instances
            .iter()
            .map(|i| i.shortname.clone())
            .collect(),
        rows,
        compared,
        differing,
        errors,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_recognised() {
        assert!(super::is_secret("smtppass_password"));
        assert!(super::is_secret("recaptchaprivatekey"));
        assert!(super::is_secret("SecretPhrase"));
        assert!(!super::is_secret("theme"));
    }
}
