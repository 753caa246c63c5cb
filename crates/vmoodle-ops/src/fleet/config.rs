//! `vmoodle config get|set|unset`: a Moodle setting on each selected instance, read and written
//! by Moodle itself (admin/cli/cfg.php: `get_config`, `set_config` and `add_to_config_log`), so
//! Moodle's caches and its config changes log stay right.
//!
//! A value given on vmoodle's command line goes to cfg.php's `--set=VALUE`. A value read from
//! stdin (`--value-stdin`, for values that must not be seen in a process list) never goes on a
//! command line: vmoodle feeds php a small program on its stdin that does what cfg.php's `--set`
//! does (refuse a setting forced in config.php with exit 4, `get_config`, `set_config`,
//! `add_to_config_log`), the value inside it hex-encoded. Neither the value nor that program
//! is written to the logs.

use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use vmoodle_registry::Instance;

use super::moodle::MoodleCode;
use super::{FleetEvent, FleetOptions, FleetReport, FleetRun, Selection, SiteOutcome, SiteStatus};
use crate::Home;

/// A setting: its name, and its plugin (None: core).
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub name: String,
    pub plugin: Option<String>,
}

impl Setting {
    /// Checks NAME and PLUGIN against Moodle's rules: a name is PARAM_ALPHANUMEXT (letters,
    /// digits, `_`, `-`), a plugin a frankenstyle component (`mod_forum`, `tool_recyclebin`,
    /// `moodlecourse`, `core_admin`).
    pub fn new(name: &str, plugin: Option<&str>) -> Result<Self> {
        let ok_name = !name.is_empty()
            && name.len() <= 100
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_name {
            bail!(
                "`{name}` is not a Moodle setting name: letters, digits, `_` and `-` only (at most 100), e.g. `theme` or `forcelogin`"
            );
        }
        let plugin = match plugin.map(str::trim) {
            None | Some("") | Some("core") | Some("moodle") => None,
            Some(p) => {
                let ok = p.len() <= 100
                    && p.as_bytes()[0].is_ascii_lowercase()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !p.ends_with('_');
                if !ok {
                    bail!(
                        "--plugin `{p}` is not a Moodle component: lowercase letters, digits and `_`, e.g. `mod_forum`, `tool_recyclebin`, `moodlecourse`"
                    );
                }
                Some(p.to_string())
            }
        };
        Ok(Self {
            name: name.to_string(),
            plugin,
        })
    }

    /// `forcelogin` or `tool_recyclebin/autohide`.
    pub fn label(&self) -> String {
        match &self.plugin {
            Some(p) => format!("{p}/{}", self.name),
            None => self.name.clone(),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![format!("--name={}", self.name)];
        if let Some(p) = &self.plugin {
            a.push(format!("--component={p}"));
        }
        a
    }
}

/// One site's value.
#[derive(Debug, Clone, Serialize)]
pub struct SiteValue {
    pub instance: String,
    pub host: String,
    pub status: SiteStatus,
    /// None: not set on this site (cfg.php exit 3).
    pub value: Option<String>,
    /// Not the most common value across the sites read.
    pub differs: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A setting's value across the selection.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub setting: Setting,
    /// The most common value (None: most sites do not have it set).
    pub norm: Option<String>,
    pub sites: Vec<SiteValue>,
    pub disabled_left_out: Vec<String>,
    pub log_dir: std::path::PathBuf,
}

impl ConfigReport {
    pub fn exit_code(&self) -> i32 {
        if self.sites.iter().any(|s| s.status.is_failure()) {
            3
        } else {
            0
        }
    }
}

/// What cfg.php said: Ok(Some(value)), Ok(None) when not set, Err otherwise.
async fn read_value(
    code: &MoodleCode,
    inst: &Instance,
    setting: &Setting,
    timeout: Duration,
    log: &Path,
) -> Result<(SiteStatus, Option<String>), String> {
    let script = code.cli_script("cfg.php").map_err(|e| format!("{e:#}"))?;
    let mut args = setting.args();
    args.push("--json".into());
    let r = code
        .run(&inst.host, &script, &args, timeout, log)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if r.timed_out {
        return Ok((SiteStatus::Timeout, None));
    }
    match r.exit_code {
        Some(0) => {
            let out = r.stdout_text();
            let line = out
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let v = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(serde_json::Value::Null) => String::new(),
                Ok(other) => other.to_string(),
                Err(_) => out.trim_end_matches('\n').to_string(),
            };
            Ok((SiteStatus::Ok, Some(v)))
        }
        Some(3) => Ok((SiteStatus::Ok, None)),
        other => Err(format!(
            "cfg.php failed (exit {}): {}",
            other.map(|c| c.to_string()).unwrap_or("-".into()),
            r.tail.lines().last().unwrap_or("")
        )),
    }
}

/// The value of `setting` on every selected instance, with the odd ones flagged.
pub async fn get(
    home: &Home,
    selection: &Selection,
    setting: &Setting,
    opts: &FleetOptions,
) -> Result<ConfigReport> {
    let code = MoodleCode::from_home(home)?;
    code.cli_script("cfg.php")?;
    let selected = selection.resolve(home).await?;
    let run = FleetRun::unjournaled(home, "config-get")?;
    let (code, run_ref) = (&code, &run);
    let outcomes = run
        .for_each(
            home,
            &selected.instances,
            opts,
            &|_| {},
            |inst| async move {
                let log = run_ref.log_path(inst);
                let mut o = SiteOutcome::new(inst, SiteStatus::Failed, "");
                match read_value(code, inst, setting, opts.timeout, &log).await {
                    Ok((status, v)) => {
                        o.status = status;
                        o.data = serde_json::json!({ "value": v });
                    }
                    Err(e) => o.message = e,
                }
                o
            },
        )
        .await;
    let mut sites: Vec<SiteValue> = outcomes
        .into_iter()
        .map(|o| SiteValue {
            instance: o.instance,
            host: o.host,
            status: o.status,
            value: o.data["value"].as_str().map(str::to_string),
            differs: false,
            error: (!o.message.is_empty()).then_some(o.message),
        })
        .collect();
    let norm = mark_differences(&mut sites);
    Ok(ConfigReport {
        setting: setting.clone(),
        norm,
        sites,
        disabled_left_out: selected.disabled_left_out,
        log_dir: run.log_dir,
    })
}

/// Flags the values that are not the most common one (sites read successfully only); returns
/// that value. Ties go to the value seen first.
pub fn mark_differences(sites: &mut [SiteValue]) -> Option<String> {
    let mut counts: Vec<(Option<String>, usize)> = Vec::new();
    for s in sites.iter().filter(|s| s.status == SiteStatus::Ok) {
        match counts.iter_mut().find(|(v, _)| *v == s.value) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.value.clone(), 1)),
        }
    }
    let mut best: Option<(Option<String>, usize)> = None;
    for (v, n) in counts {
        if best.as_ref().is_none_or(|(_, b)| n > *b) {
            best = Some((v, n));
        }
    }
    let norm = best.map(|(v, _)| v).unwrap_or(None);
    for s in sites.iter_mut() {
        s.differs = s.status == SiteStatus::Ok && s.value != norm;
    }
    norm
}

/// The change to make: a new value, or unset.
#[derive(Debug, Clone)]
pub enum Change {
    /// The value, and whether it came from stdin (then it never goes on a command line).
    Set {
        value: String,
        from_stdin: bool,
    },
    Unset,
}

/// The PHP program that does what `cfg.php --set` does, with the value inside it (fed on stdin).
fn set_program(setting: &Setting, value: &str) -> String {
    let b64 = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let component = match &setting.plugin {
        Some(p) => format!("hex2bin('{}')", b64(p)),
        None => "null".into(),
    };
    format!(
        r#"<?php
define('CLI_SCRIPT', true);
require($argv[1]);
$name = hex2bin('{name}');
$component = {component};
$new = hex2bin('{value}');
if (!empty($component)) {{
    $forced = array_key_exists($name, $CFG->forced_plugin_settings[$component] ?? []);
}} else {{
    $forced = array_key_exists($name, $CFG->config_php_settings);
}}
if ($forced) {{
    fwrite(STDERR, "The configuration variable {{$name}} is set in config.php, unable to change.\n");
    exit(4);
}}
$old = get_config($component, $name);
if ($new !== $old) {{
    set_config($name, $new, $component);
    add_to_config_log($name, $old, $new, $component);
}}
exit(0);
"#,
        name = b64(&setting.name),
        value = b64(value),
    )
}

/// Sets (or unsets) `setting` on every selected instance through Moodle; with `dry_run`, only
/// reads each site's current value and reports `current -> new`. Each site's data holds `old`
/// and `new` (null: not set).
pub async fn set(
    home: &Home,
    selection: &Selection,
    setting: &Setting,
    change: &Change,
    dry_run: bool,
    opts: &FleetOptions,
    events: &(dyn Fn(&FleetEvent) + Sync),
) -> Result<FleetReport> {
    let code = MoodleCode::from_home(home)?;
    let script = code.cli_script("cfg.php")?;
    let selected = selection.resolve(home).await?;
    let op = match (change, dry_run) {
        (Change::Unset, false) => "config-unset",
        (Change::Unset, true) => "config-unset-dry-run",
        (_, false) => "config-set",
        (_, true) => "config-set-dry-run",
    };
    let run = if dry_run {
        FleetRun::unjournaled(home, op)?
    } else {
        FleetRun::start(
            home,
            op,
            &format!("{} {}", setting.label(), selection.describe()),
        )
        .await?
    };
    let new = match change {
        Change::Set { value, .. } => Some(value.clone()),
        Change::Unset => None,
    };
    let (code, script, run_ref, new) = (&code, &script, &run, &new);
    let sites = run
        .for_each(home, &selected.instances, opts, events, |inst| async move {
            // A value from stdin is never shown (nor the one it replaces): not in the report,
            // not in the job's log, not in the site's log (what php prints while reading or
            // setting it goes nowhere; the outcome says how it ended).
            let hide = matches!(
                change,
                Change::Set {
                    from_stdin: true,
                    ..
                }
            );
            let site_log = run_ref.log_path(inst);
            let log = if hide {
                std::path::PathBuf::from("/dev/null")
            } else {
                site_log.clone()
            };
            let mut o = SiteOutcome::new(inst, SiteStatus::Failed, "");
            o.log = (!hide).then(|| site_log.clone());
            let old = match read_value(code, inst, setting, opts.timeout, &log).await {
                Ok((SiteStatus::Ok, v)) => v,
                Ok((status, _)) => {
                    o.status = status;
                    o.message = "reading the current value timed out".into();
                    return o;
                }
                Err(e) => {
                    o.message = if hide {
                        "reading the current value failed (its output is not kept: the value is a secret)".into()
                    } else {
                        e
                    };
                    return o;
                }
            };
            let shown = |v: &Option<String>| match v {
                Some(_) if hide => Some("(hidden)".to_string()),
                other => other.clone(),
            };
            o.data = serde_json::json!({ "old": shown(&old), "new": shown(new) });
            let show = |v: &Option<String>| match v {
                Some(_) if hide => "(hidden)".into(),
                Some(v) => format!("{:?}", clip(v)),
                None => "(not set)".into(),
            };
            if old == *new {
                o.status = SiteStatus::Skipped;
                o.message = format!("already {}", show(new));
                return o;
            }
            if dry_run {
                o.status = SiteStatus::Ok;
                o.message = format!("would change {} -> {}", show(&old), show(new));
                return o;
            }
            let r = match change {
                Change::Set {
                    value,
                    from_stdin: false,
                } => {
                    let mut args = setting.args();
                    args.push(format!("--set={value}"));
                    code.run(&inst.host, script, &args, opts.timeout, &log)
                        .await
                }
                Change::Set {
                    value,
                    from_stdin: true,
                } => {
                    let config = code.dir.join("config.php").display().to_string();
                    code.run_with_stdin(
                        &inst.host,
                        Path::new("--"),
                        &[config],
                        opts.timeout,
                        &log,
                        Some(&set_program(setting, value)),
                    )
                    .await
                }
                Change::Unset => {
                    let mut args = setting.args();
                    args.push("--unset".into());
                    code.run(&inst.host, script, &args, opts.timeout, &log)
                        .await
                }
            };
            match r {
                Ok(r) => {
                    o.exit_code = r.exit_code;
                    if r.timed_out {
                        o.status = SiteStatus::Timeout;
                        o.message = format!("killed after {} s", opts.timeout.as_secs());
                    } else if r.ok() {
                        o.status = SiteStatus::Ok;
                        o.message = format!("{} -> {}", show(&old), show(new));
                    } else if r.exit_code == Some(4) {
                        o.message = "set in config.php: Moodle will not change it".into();
                    } else if hide {
                        // What php printed may hold the value: only how it ended.
                        o.message = format!(
                            "Moodle refused the change ({})",
                            r.exit_code
                                .map(|c| format!("exit code {c}"))
                                .unwrap_or_else(|| "killed".into())
                        );
                    } else {
                        o.message = r.tail.lines().last().unwrap_or("").to_string();
                    }
                }
                Err(e) => o.message = format!("{e:#}"),
            }
            o
        })
        .await;
    run.finish(home, sites, selected.disabled_left_out).await
}

/// A value cut to 60 characters for one-line messages.
pub fn clip(v: &str) -> String {
    if v.chars().count() <= 60 {
        v.to_string()
    } else {
        format!("{}…", v.chars().take(59).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_moodles_rules() {
        assert!(Setting::new("forcelogin", None).is_ok());
        assert!(Setting::new("auth_instructions", Some("core"))
            .unwrap()
            .plugin
            .is_none());
        assert_eq!(
            Setting::new("autohide", Some("tool_recyclebin"))
                .unwrap()
                .label(),
            "tool_recyclebin/autohide"
        );
        assert!(Setting::new("x;drop", None).is_err());
        assert!(Setting::new("", None).is_err());
        assert!(Setting::new("a", Some("Mod_Forum")).is_err());
        assert!(Setting::new("a", Some("../x")).is_err());
    }

    #[test]
    fn the_most_common_value_is_the_norm() {
        let v = |i: &str, x: Option<&str>| SiteValue {
            instance: i.into(),
            host: i.into(),
            status: SiteStatus::Ok,
            value: x.map(str::to_string),
            differs: false,
            error: None,
        };
        let mut s = vec![
            v("a", Some("1")),
            v("b", None),
            v("c", Some("1")),
            v("d", Some("")),
        ];
        assert_eq!(mark_differences(&mut s), Some("1".into()));
        let d: Vec<bool> = s.iter().map(|s| s.differs).collect();
        assert_eq!(d, vec![false, true, false, true]);
    }
}
