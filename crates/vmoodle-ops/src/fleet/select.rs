//! Which instances a fleet command acts on: names (shortnames or hosts), or the whole register
//! with `--all`, narrowed by `--subnetwork`, `--dbserver`, `--template`, `--match GLOB` and
//! `--exclude`; disabled instances are left out unless `--include-disabled`. Every name, server,
//! template and pattern is checked before anything runs.

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use vmoodle_registry::Instance;

use crate::Home;

/// Which instances a fleet command acts on.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Selection {
    /// Shortnames or hosts.
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub all: bool,
    /// MNET subnetwork number.
    #[serde(default)]
    pub subnetwork: Option<i64>,
    #[serde(default)]
    pub dbserver: Option<String>,
    #[serde(default)]
    pub template: Option<String>,
    /// Shell-style patterns (`*`, `?`, `[a-z]`) matched against shortname and host.
    #[serde(default)]
    pub matches: Vec<String>,
    /// Shortnames or hosts left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub include_disabled: bool,
}

/// What a selection resolved to.
#[derive(Debug, Clone, Serialize)]
pub struct Selected {
    pub instances: Vec<Instance>,
    /// Disabled instances the selection matched but left out (no `--include-disabled`).
    pub disabled_left_out: Vec<String>,
}

impl Selection {
    /// Whether anything at all was asked for.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
            && !self.all
            && self.subnetwork.is_none()
            && self.dbserver.is_none()
            && self.template.is_none()
            && self.matches.is_empty()
    }

    /// A short description for job targets and logs (`--all`, `a1,a2`, `dbserver=maria`...).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.names.is_empty() {
            let mut n = self.names[..self.names.len().min(3)].join(",");
            if self.names.len() > 3 {
                n.push_str(&format!(",+{}", self.names.len() - 3));
            }
            parts.push(n);
        }
        if self.all {
            parts.push("all".into());
        }
        if let Some(s) = self.subnetwork {
            parts.push(format!("subnetwork={s}"));
        }
        if let Some(s) = &self.dbserver {
            parts.push(format!("dbserver={s}"));
        }
        if let Some(t) = &self.template {
            parts.push(format!("template={t}"));
        }
        for m in &self.matches {
            parts.push(format!("match={m}"));
        }
        if !self.exclude.is_empty() {
            parts.push(format!("exclude={}", self.exclude.join(",")));
        }
        parts.join(" ")
    }

    /// The instances selected, in register order (master first, then by shortname). Every name,
    /// server, template and pattern is checked first; an unknown one is an error naming it.
    pub async fn resolve(&self, home: &Home) -> Result<Selected> {
        if self.is_empty() {
            bail!(
                "no instances selected: name them (shortnames or hosts), or select with --all, \
                 --subnetwork N, --dbserver NAME, --template NAME or --match GLOB"
            );
        }
        let reg = &home.registry;
        let patterns = self
            .matches
            .iter()
            .map(|m| {
                glob::Pattern::new(m).map_err(|e| {
                    anyhow!("--match `{m}` is not a valid pattern ({e}); use *, ? and [a-z], e.g. --match 'school-*'")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(s) = &self.dbserver {
            if reg.find_dbserver(s).await?.is_none() {
                let known: Vec<String> =
                    reg.dbservers().await?.into_iter().map(|d| d.name).collect();
                bail!(
                    "--dbserver `{s}`: no such database server; registered: {}",
                    list_or_none(&known)
                );
            }
        }
        if let Some(t) = &self.template {
            if reg.find_template(t).await?.is_none() {
                let known: Vec<String> =
                    reg.templates().await?.into_iter().map(|t| t.name).collect();
                bail!(
                    "--template `{t}`: no such template; registered: {}",
                    list_or_none(&known)
                );
            }
        }
        if let Some(n) = self.subnetwork {
            if n < 1 {
                bail!("--subnetwork {n}: subnetworks are numbered from 1 (see `vmoodle mnet subnetworks`)");
            }
        }
        let all = reg.instances().await?;
        let find = |key: &str| -> Option<&Instance> {
            let k = key.trim().to_ascii_lowercase();
            all.iter().find(|i| {
                i.shortname.eq_ignore_ascii_case(&k)
                    || i.host.eq_ignore_ascii_case(&k)
                    || i.wwwroot
                        .trim_end_matches('/')
                        .eq_ignore_ascii_case(k.trim_end_matches('/'))
            })
        };
        let mut unknown = Vec::new();
        let mut candidates: Vec<&Instance> = Vec::new();
        if self.names.is_empty() {
            candidates.extend(all.iter());
        } else {
            for n in &self.names {
                match find(n) {
                    Some(i) if !candidates.iter().any(|c| c.id == i.id) => candidates.push(i),
                    Some(_) => {}
                    None => unknown.push(n.clone()),
                }
            }
        }
        for n in &self.exclude {
            if find(n).is_none() {
                unknown.push(n.clone());
            }
        }
        if !unknown.is_empty() {
            bail!(
                "no such instance: {} (see `vmoodle instance list`)",
                unknown
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let excluded: Vec<i64> = self
            .exclude
            .iter()
            .filter_map(|n| find(n).map(|i| i.id))
            .collect();
        let mut out = Selected {
            instances: Vec::new(),
            disabled_left_out: Vec::new(),
        };
        for i in candidates {
            if excluded.contains(&i.id)
                || self.dbserver.as_ref().is_some_and(|s| &i.dbserver != s)
                || self
                    .template
                    .as_ref()
                    .is_some_and(|t| i.template.as_ref() != Some(t))
                || self.subnetwork.is_some_and(|n| i.mnet != n)
                || (!patterns.is_empty()
                    && !patterns
                        .iter()
                        .any(|p| p.matches(&i.shortname) || p.matches(&i.host)))
            {
                continue;
            }
            if !i.enabled && !self.include_disabled {
                out.disabled_left_out.push(i.shortname.clone());
                continue;
            }
            out.instances.push(i.clone());
        }
        Ok(out)
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
