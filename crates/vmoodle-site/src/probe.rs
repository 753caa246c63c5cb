//! Asking the real hook which `$CFG` a host gets: php-cli includes hook.php as a web request for
//! that host would (HTTP_HOST set, output buffered) and reports the status, the page and the
//! resulting `$CFG`, with the database password masked.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use vmoodle_exec::{ExecError, Tool};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub host: String,
    pub status: u16,
    pub body: String,
    /// `$CFG` after the hook; the master's values when the hook let them stand.
    pub cfg: BTreeMap<String, serde_json::Value>,
    pub included: Vec<String>,
}

const PROBE: &str = r#"<?php
$hook = $argv[1];
$_SERVER['HTTP_HOST'] = $argv[2];
global $CFG;
$CFG = new stdClass();
$CFG->wwwroot = '(master)';
ob_start();
register_shutdown_function(static function () {
    global $CFG;
    $body = ob_get_clean();
    $cfg = (array)$CFG;
    if (isset($cfg['dbpass'])) { $cfg['dbpass'] = '****'; }
    $code = http_response_code();
    echo json_encode([
        'host' => $_SERVER['HTTP_HOST'],
        'status' => $code === false ? 200 : $code,
        'body' => (string)$body,
        'cfg' => $cfg,
        'included' => get_included_files(),
    ], JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
});
require $hook;
"#;

/// Runs hook.php for `host` with php-cli.
pub async fn probe(php: &Path, hook: &Path, host: &str) -> Result<Probe, ExecError> {
    // php -n -- /home/hook.php HOST   (probe script on stdin)
    let out = Tool::new(php)
        .args(["-n", "-d", "display_errors=stderr", "--"])
        .arg(hook.as_os_str())
        .arg(host)
        .stdin(PROBE)
        .timeout(Duration::from_secs(30))
        .run()
        .await?;
    serde_json::from_slice(&out.stdout).map_err(|e| ExecError::Failed {
        program: "php".into(),
        status: "unexpected output".into(),
        stderr_tail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        stdout: out.stdout,
    })
}
