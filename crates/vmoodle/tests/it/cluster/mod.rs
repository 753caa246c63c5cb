//! Database clusters in a lab of network namespaces on this machine (vmoodle_test::lab): real
//! MariaDB/PostgreSQL servers, HAProxy, keepalived and vmoodle agents on simulated hosts. Heavy:
//! run one at a time (.config/nextest.toml).

mod agents;
mod create;
mod lab;

use vmoodle_test::lab::{Engine, Lab, LabSpec};

/// Builds a lab for `engine`, or None (with the reason on stderr) when this machine cannot.
pub fn lab(engine: Engine) -> Option<Lab> {
    if let Some(why) = vmoodle_test::lab::unusable(engine) {
        eprintln!("skipped: {why}");
        return None;
    }
    let lab = Lab::new(engine, LabSpec::new(env!("CARGO_BIN_EXE_vmoodle")))
        .unwrap_or_else(|e| panic!("building the lab: {e:#}"));
    eprintln!(
        "lab {} ({}) on {}.0/24 built in {:.2} s",
        lab.prefix(),
        engine.as_str(),
        lab.net_prefix(),
        lab.built_in().as_secs_f64()
    );
    Some(lab)
}
