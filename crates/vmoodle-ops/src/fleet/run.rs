//! `vmoodle run SCRIPT [-- ARGS]`: one of Moodle's admin/cli scripts, unmodified, for each
//! selected instance.

use anyhow::Result;

use super::moodle::MoodleCode;
use super::{FleetEvent, FleetOptions, FleetReport, FleetRun, Selection, SiteOutcome, SiteStatus};
use crate::Home;

/// Runs `script` with `args` for every selected instance.
pub async fn run_script(
    home: &Home,
    selection: &Selection,
    script: &str,
    args: &[String],
    opts: &FleetOptions,
    events: &(dyn Fn(&FleetEvent) + Sync),
) -> Result<FleetReport> {
    let code = MoodleCode::from_home(home)?;
    let path = code.cli_script(script)?;
    let selected = selection.resolve(home).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let run = FleetRun::start(home, "run", &format!("{name} {}", selection.describe())).await?;
    let code = &code;
    let path = &path;
    let run_ref = &run;
    let sites = run
        .for_each(home, &selected.instances, opts, events, |inst| async move {
            let log = run_ref.log_path(inst);
            let mut o = SiteOutcome::new(inst, SiteStatus::Failed, "");
            o.log = Some(log.clone());
            match code.run(&inst.host, path, args, opts.timeout, &log).await {
                Ok(r) => {
                    o.exit_code = r.exit_code;
                    o.duration_ms = r.duration.as_millis() as u64;
                    o.status = if r.timed_out {
                        SiteStatus::Timeout
                    } else if r.ok() {
                        SiteStatus::Ok
                    } else {
                        SiteStatus::Failed
                    };
                    o.message = if r.timed_out {
                        format!("killed after {} s", opts.timeout.as_secs())
                    } else {
                        r.tail.lines().last().unwrap_or("").to_string()
                    };
                }
                Err(e) => o.message = format!("{e:#}"),
            }
            o
        })
        .await;
    run.finish(home, sites, selected.disabled_left_out).await
}
