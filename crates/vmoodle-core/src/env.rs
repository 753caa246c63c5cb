//! Every environment variable vmoodle reads, declared once with what it does.

/// Directory of the vmoodle home (settings, register, secret key, host files). Overridden by
/// `--home`.
pub const VMOODLE_HOME: &str = "VMOODLE_HOME";
/// Log filter for vmoodle's own diagnostics on stderr (tracing `EnvFilter` syntax, e.g. `debug`).
pub const VMOODLE_LOG: &str = "VMOODLE_LOG";
/// Read by the PHP config hook in CLI scripts (admin/cli/cron.php ...) to pick the instance.
pub const VMOODLE_HOST: &str = "VMOODLE_HOST";
/// Disables colours in terminal output.
pub const NO_COLOR: &str = "NO_COLOR";
