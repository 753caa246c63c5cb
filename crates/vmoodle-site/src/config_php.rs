//! Reading a Moodle config.php's `$CFG` without running Moodle: php-cli evaluates the file with
//! its `require ... lib/setup.php` line and any vmoodle hook block taken out, and prints `$CFG`
//! as JSON on a pipe (it holds the database password, so it is never logged).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use vmoodle_core::Secret;
use vmoodle_exec::{ExecError, Tool};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path} with php: {source}")]
    Php { path: String, source: ExecError },
    #[error("{path} did not give a usable $CFG: {why}")]
    Bad { path: String, why: String },
}

/// The values of a config.php that vmoodle records.
#[derive(Debug, Clone)]
pub struct MoodleConfig {
    pub wwwroot: String,
    pub dataroot: String,
    pub dbtype: String,
    pub dbhost: String,
    pub dbname: String,
    pub dbuser: String,
    pub dbpass: Secret,
    pub prefix: String,
    pub dbport: Option<u16>,
    pub dbsocket: Option<String>,
    pub dbpersist: bool,
    /// The directories and session prefixes it sets itself (`hostfile::layout_names`).
    pub layout: BTreeMap<String, String>,
}

const READER: &str = r#"<?php
$path = $argv[1];
$src = @file_get_contents($path);
if ($src === false) { fwrite(STDERR, "cannot read $path\n"); exit(2); }
$src = preg_replace('~^[ \t]*// BEGIN vmoodle config hook.*?// END vmoodle config hook[^\n]*~ms', '', $src);
$n = 0;
$src = preg_replace('~^[ \t]*(require|include)(_once)?\b[^;\n]*lib/setup\.php[^;\n]*;~m', '/* setup skipped by vmoodle */', $src, -1, $n);
if ($n === 0) { fwrite(STDERR, "no require of lib/setup.php found; vmoodle will not run Moodle to read this file\n"); exit(3); }
$src = str_replace(['__DIR__', '__FILE__'], [var_export(dirname($path), true), var_export($path, true)], $src);
eval('?>' . $src);
if (!isset($CFG) || !is_object($CFG)) { fwrite(STDERR, "the file does not define \$CFG\n"); exit(4); }
$o = isset($CFG->dboptions) && is_array($CFG->dboptions) ? $CFG->dboptions : [];
echo json_encode([
    'wwwroot' => $CFG->wwwroot ?? null,
    'dataroot' => $CFG->dataroot ?? null,
    'dbtype' => $CFG->dbtype ?? null,
    'dbhost' => $CFG->dbhost ?? null,
    'dbname' => $CFG->dbname ?? null,
    'dbuser' => $CFG->dbuser ?? null,
    'dbpass' => isset($CFG->dbpass) ? (string)$CFG->dbpass : '',
    'prefix' => $CFG->prefix ?? null,
    'dbport' => isset($o['dbport']) ? (string)$o['dbport'] : '',
    'dbsocket' => isset($o['dbsocket']) && is_string($o['dbsocket']) ? $o['dbsocket'] : '',
    'dbpersist' => !empty($o['dbpersist']),
    'layout' => (object)array_filter(array_map(
        static fn($n) => (isset($CFG->$n) && is_scalar($CFG->$n)) ? (string)$CFG->$n : null,
        array_combine(LAYOUT, LAYOUT)
    ), 'is_string'),
]);
"#;

/// The reader script with the layout names it reports.
fn reader() -> String {
    let names: Vec<String> = crate::hostfile::layout_names()
        .map(crate::php::string)
        .collect();
    READER.replacen(
        "<?php\n",
        &format!("<?php\nconst LAYOUT = [{}];\n", names.join(", ")),
        1,
    )
}

#[derive(Deserialize)]
struct Raw {
    wwwroot: Option<String>,
    dataroot: Option<String>,
    dbtype: Option<String>,
    dbhost: Option<String>,
    dbname: Option<String>,
    dbuser: Option<String>,
    dbpass: String,
    prefix: Option<String>,
    dbport: String,
    dbsocket: String,
    dbpersist: bool,
    #[serde(default)]
    layout: BTreeMap<String, String>,
}

/// Reads config.php at `path` with the php executable `php`.
pub async fn read(php: &Path, path: &Path) -> Result<MoodleConfig, ConfigError> {
    let p = path.display().to_string();
    // php -n -d display_errors=stderr -- /path/config.php   (script on stdin)
    let out = Tool::new(php)
        .args([
            "-n",
            "-d",
            "display_errors=stderr",
            "-d",
            "error_reporting=E_ALL & ~E_DEPRECATED",
            "--",
        ])
        .arg(path.as_os_str())
        .stdin(reader())
        .timeout(Duration::from_secs(30))
        .run()
        .await
        .map_err(|source| ConfigError::Php {
            path: p.clone(),
            source,
        })?;
    let raw: Raw = serde_json::from_slice(&out.stdout).map_err(|e| ConfigError::Bad {
        path: p.clone(),
        why: format!("unexpected output from php ({e})"),
    })?;
    let need = |name: &str, v: Option<String>| {
        v.filter(|s| !s.is_empty()).ok_or_else(|| ConfigError::Bad {
            path: p.clone(),
            why: format!("$CFG->{name} is not set"),
        })
    };
    let dbport = match raw.dbport.trim() {
        "" | "0" => None,
        s => Some(s.parse::<u16>().map_err(|_| ConfigError::Bad {
            path: p.clone(),
            why: format!("$CFG->dboptions['dbport'] `{s}` is not a port number"),
        })?),
    };
    Ok(MoodleConfig {
        wwwroot: need("wwwroot", raw.wwwroot)?,
        dataroot: need("dataroot", raw.dataroot)?,
        dbtype: need("dbtype", raw.dbtype)?,
        dbhost: raw.dbhost.unwrap_or_default(),
        dbname: need("dbname", raw.dbname)?,
        dbuser: need("dbuser", raw.dbuser)?,
        dbpass: Secret::new(raw.dbpass),
        prefix: raw.prefix.unwrap_or_default(),
        dbport,
        dbsocket: Some(raw.dbsocket).filter(|s| !s.is_empty()),
        dbpersist: raw.dbpersist,
        layout: raw.layout,
    })
}
