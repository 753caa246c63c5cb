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
/// How many seconds a command waits for the home's lock before giving up (default 120).
/// Overridden by `--lock-wait`.
pub const VMOODLE_LOCK_WAIT: &str = "VMOODLE_LOCK_WAIT";
/// Tests only (debug builds): the name of a job pause point (`KIND:STEP:start`, `...:intended`,
/// `...:made`; `NAME#K` for the K-th time)
/// where the process stops and waits to be killed, so crash recovery can be tested at every step.
pub const VMOODLE_TEST_PAUSE: &str = "VMOODLE_TEST_PAUSE";
/// Tests only: the file a paused process writes its pid into when it reaches the pause point.
pub const VMOODLE_TEST_PAUSE_FILE: &str = "VMOODLE_TEST_PAUSE_FILE";
/// Tests only (debug builds): `KIND:STEP` makes a job of that kind fail when it reaches that
/// step, so a test can prove everything before it is undone.
pub const VMOODLE_TEST_FAIL_STEP: &str = "VMOODLE_TEST_FAIL_STEP";
