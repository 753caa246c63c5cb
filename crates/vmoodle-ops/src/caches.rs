//! Invalidating a live instance's Moodle caches after vmoodle wrote into its cached tables (see
//! vmoodle_site::caches). Runs php-cli with the master's Moodle code (`moodle.dir`) under each
//! instance's host, one process per instance, as the web server's account when vmoodle runs as
//! root (so the cache files Moodle rewrites stay the web server's). What cannot be done is
//! reported per instance with the exact command an administrator must run; it is never skipped
//! silently.

use anyhow::{anyhow, Result};
use serde::Serialize;
use std::path::PathBuf;
use vmoodle_registry::Instance;
use vmoodle_site::caches::{self, Definition, MoodleCli};

use crate::Home;

/// What happened to each instance's caches.
#[derive(Debug, Default, Serialize)]
pub struct CacheReport {
    /// Instances whose caches were invalidated.
    pub invalidated: Vec<String>,
    pub failed: Vec<CacheFailure>,
}

/// An instance whose caches vmoodle could not invalidate.
#[derive(Debug, Serialize)]
pub struct CacheFailure {
    pub instance: String,
    pub error: String,
    /// What the administrator must run instead.
    pub command: String,
}

impl CacheReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Lines for stderr: each failure with its cause and the command to run.
    pub fn failure_lines(&self) -> Vec<String> {
        self.failed
            .iter()
            .map(|f| {
                format!(
                    "the caches of `{}` were not invalidated: {}\n  the site keeps serving its old MNET key until you run: {}",
                    f.instance, f.error, f.command
                )
            })
            .collect()
    }
}

/// The account php runs as: the web server's when vmoodle runs as root, else vmoodle's own.
pub(crate) fn run_as(home: &Home) -> Result<Option<(u32, u32, String)>> {
    if !nix::unistd::geteuid().is_root() || home.settings.web.user == "root" {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(&home.settings.web.user)
        .ok()
        .flatten()
        .ok_or_else(|| {
            anyhow!(
                "the web server user `{}` does not exist\nhint: `vmoodle settings set web.user NAME`",
                home.settings.web.user
            )
        })?;
    Ok(Some((
        user.uid.as_raw(),
        user.gid.as_raw(),
        home.settings.web.user.clone(),
    )))
}

/// Invalidates Moodle's `core/config` cache (config and config_plugins) of each instance.
pub async fn invalidate_config(home: &Home, instances: &[Instance]) -> CacheReport {
    invalidate(home, instances, &[caches::CONFIG]).await
}

/// Purges `definitions` on each instance (once per instance, all definitions in one process;
/// a few instances at a time, as many as the machine has cores, at most 4).
pub async fn invalidate(
    home: &Home,
    instances: &[Instance],
    definitions: &[Definition],
) -> CacheReport {
    use futures::StreamExt;
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&Instance> = instances.iter().filter(|i| seen.insert(i.id)).collect();
    let php = home.executable("php");
    let dir =
        (!home.settings.moodle.dir.is_empty()).then(|| PathBuf::from(&home.settings.moodle.dir));
    let user = run_as(home);
    let shown_user = match &user {
        Ok(Some((_, _, name))) => Some(name.clone()),
        _ => None,
    };
    let parallel = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let ctx = Ctx {
        php: &php,
        dir: dir.as_deref(),
        user: &user,
        shown_user: shown_user.as_deref(),
        definitions,
    };
    let results: Vec<_> = futures::stream::iter(unique.iter().map(|inst| ctx.purge_one(inst)))
        .buffered(parallel)
        .collect()
        .await;
    let mut report = CacheReport::default();
    for (inst, result, command) in results {
        match result {
            Ok(()) => report.invalidated.push(inst.shortname.clone()),
            Err(e) => report.failed.push(CacheFailure {
                instance: inst.shortname.clone(),
                error: format!("{e:#}"),
                command,
            }),
        }
    }
    report
}

/// What every instance's purge shares.
struct Ctx<'a> {
    php: &'a Result<PathBuf, vmoodle_exec::ExecError>,
    dir: Option<&'a std::path::Path>,
    user: &'a Result<Option<(u32, u32, String)>>,
    shown_user: Option<&'a str>,
    definitions: &'a [Definition],
}

impl Ctx<'_> {
    /// One php process for one instance; the result, and the command to run by hand.
    async fn purge_one<'i>(&self, inst: &'i Instance) -> (&'i Instance, Result<()>, String) {
        let command = caches::manual_command(
            &self
                .php
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "php".into()),
            self.dir,
            &inst.host,
            self.shown_user,
        );
        let result: Result<()> = async {
            let Some(dir) = self.dir else {
                return Err(anyhow!(
                    "the Moodle code directory is not known (set it with `vmoodle master set --moodle-dir DIR` or `vmoodle settings set moodle.dir DIR`)"
                ));
            };
            let config = vmoodle_site::hook::locate_config(dir)?;
            let php = self.php.as_ref().map_err(|e| anyhow!("{e}"))?;
            let user = self.user.as_ref().map_err(|e| anyhow!("{e:#}"))?;
            let cli = MoodleCli {
                php,
                config_php: &config,
                user: user.as_ref().map(|(u, g, _)| (*u, *g)),
            };
            caches::purge(&cli, &inst.host, self.definitions).await?;
            Ok(())
        }
        .await;
        (inst, result, command)
    }
}
