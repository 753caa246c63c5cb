//! What the PHP that runs Moodle offers, asked of php-cli itself: its version and php.ini, the
//! extensions Moodle 5.1 needs, `max_input_vars`, and whether OpenSSL lets PHP use RC4, which
//! Moodle's MNET seals every XML-RPC message with (OpenSSL 3 keeps RC4 in its legacy provider,
//! off by default: every MNET call then fails with "OpenSSL unable to seal data"). `vmoodle
//! doctor` and `vmoodle mnet status` print the fixes given here.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmoodle_exec::{ExecError, Tool};

/// Extensions Moodle 5.1 needs whatever the database (the database's own, `mysqli` or `pgsql`,
/// come on top).
pub const REQUIRED_EXTENSIONS: &[&str] = &[
    "xml", "mbstring", "curl", "zip", "gd", "intl", "soap", "sodium", "opcache",
];

/// Moodle 5.1 refuses to install or upgrade with less.
pub const MIN_MAX_INPUT_VARS: i64 = 5000;

/// The exact change to /etc/ssl/openssl.cnf that gives PHP (php-fpm included, which starts with
/// a cleared environment and so never sees OPENSSL_CONF) RC4 through the legacy provider.
pub const RC4_FIX: &str = "\
In /etc/ssl/openssl.cnf, keep `openssl_conf = openssl_init` near the top and, in the
[openssl_init] section, set (uncomment) the line
    providers = provider_sect
then add these sections right after [openssl_init]:
    [provider_sect]
    default = default_sect
    legacy = legacy_sect

    [default_sect]
    activate = 1

    [legacy_sect]
    activate = 1
and restart php-fpm (e.g. `systemctl restart php8.2-fpm`). The default provider must stay
active, or nothing else in OpenSSL works.";

/// A whole OpenSSL configuration with the default and legacy providers active: what
/// `OPENSSL_CONF` can point php-cli at (tests, one-off CLI scripts).
pub const LEGACY_OPENSSL_CONF: &str = "\
openssl_conf = openssl_init

[openssl_init]
providers = provider_sect

[provider_sect]
default = default_sect
legacy = legacy_sect

[default_sect]
activate = 1

[legacy_sect]
activate = 1
";

/// Whether PHP's openssl can use RC4.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rc4 {
    /// `openssl_get_cipher_methods()` lists rc4.
    pub listed: bool,
    /// A real `openssl_seal(..., 'RC4')` and `openssl_open` round trip worked.
    pub seals: bool,
    /// OpenSSL's version as PHP sees it.
    pub openssl: String,
    /// OpenSSL's error when sealing failed.
    pub error: Option<String>,
}

impl Rc4 {
    pub fn ok(&self) -> bool {
        self.listed && self.seals
    }
}

/// What php-cli reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhpEnv {
    pub version: String,
    /// The php.ini it loaded (none: built-in defaults).
    pub ini: Option<String>,
    /// Lowercase names of the extensions loaded (Zend OPcache as `opcache`).
    pub extensions: Vec<String>,
    pub max_input_vars: i64,
    pub rc4: Rc4,
}

impl PhpEnv {
    pub fn has(&self, ext: &str) -> bool {
        self.extensions.iter().any(|e| e == ext)
    }
}

/// How to run php for a probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// A php.ini to load instead of php-cli's own (`php -c FILE`), e.g. php-fpm's.
    pub ini: Option<PathBuf>,
    /// An OpenSSL configuration for the child (`OPENSSL_CONF`); none: the system's, as php-fpm
    /// sees it (vmoodle clears the environment of every child).
    pub openssl_conf: Option<PathBuf>,
}

const PROBE: &str = r#"<?php
$errors = static function () {
    $all = [];
    while (($e = openssl_error_string()) !== false) { $all[] = $e; }
    return implode('; ', $all);
};
$rc4 = ['listed' => false, 'seals' => false, 'openssl' => defined('OPENSSL_VERSION_TEXT') ? OPENSSL_VERSION_TEXT : '', 'error' => null];
if (function_exists('openssl_get_cipher_methods')) {
    $rc4['listed'] = in_array('rc4', array_map('strtolower', openssl_get_cipher_methods()), true);
    $errors();
    $key = @openssl_pkey_new(['private_key_bits' => 2048, 'private_key_type' => OPENSSL_KEYTYPE_RSA]);
    if ($key === false) {
        $rc4['error'] = 'openssl_pkey_new: ' . $errors();
    } else {
        $pub = openssl_pkey_get_public(openssl_pkey_get_details($key)['key']);
        $sealed = null; $ekeys = null; $plain = null;
        $errors();
        if (@openssl_seal('vmoodle rc4 probe', $sealed, $ekeys, [$pub], 'RC4') === false) {
            $rc4['error'] = 'openssl_seal: ' . $errors();
        } else if (@openssl_open($sealed, $plain, $ekeys[0], $key, 'RC4') && $plain === 'vmoodle rc4 probe') {
            $rc4['seals'] = true;
        } else {
            $rc4['error'] = 'openssl_open: ' . $errors();
        }
    }
} else {
    $rc4['error'] = 'the openssl extension is not loaded';
}
$ext = array_map('strtolower', get_loaded_extensions());
if (function_exists('opcache_get_status') || extension_loaded('Zend OPcache')) { $ext[] = 'opcache'; }
echo json_encode([
    'version' => PHP_VERSION,
    'ini' => php_ini_loaded_file() ?: null,
    'extensions' => array_values(array_unique($ext)),
    'max_input_vars' => (int)ini_get('max_input_vars'),
    'rc4' => $rc4,
], JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
"#;

/// Asks php-cli (`php`) about itself (extensions, max_input_vars, RC4).
pub async fn probe(php: &Path, opts: &ProbeOptions) -> Result<PhpEnv, ExecError> {
    // [OPENSSL_CONF=FILE] php [-c FILE] -d display_errors=stderr   (probe script on stdin)
    let mut tool = Tool::new(php);
    if let Some(ini) = &opts.ini {
        tool = tool.arg("-c").arg(ini.as_os_str());
    }
    tool = tool.args(["-d", "display_errors=stderr"]);
    if let Some(conf) = &opts.openssl_conf {
        tool = tool.env("OPENSSL_CONF", conf.as_os_str());
    }
    let out = tool
        .stdin(PROBE)
        .timeout(Duration::from_secs(60))
        .run()
        .await?;
    serde_json::from_slice(&out.stdout).map_err(|e| ExecError::Failed {
        program: "php".into(),
        status: "unexpected output".into(),
        stderr_tail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        stdout: out.stdout,
    })
}

/// Whether PHP's openssl can seal with RC4 (what MNET needs); `openssl_conf` as in
/// `ProbeOptions`. For `mnet status` and `doctor`.
pub async fn rc4(php: &Path, openssl_conf: Option<&Path>) -> Result<Rc4, ExecError> {
    let opts = ProbeOptions {
        ini: None,
        openssl_conf: openssl_conf.map(Path::to_path_buf),
    };
    Ok(probe(php, &opts).await?.rc4)
}

/// The Debian package that provides a PHP extension (`php8.2-intl`), for fixes.
pub fn debian_package(php_version: &str, ext: &str) -> String {
    let mut parts = php_version.split('.');
    let v = match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}"),
        _ => String::new(),
    };
    let pkg = match ext {
        "mysqli" => "mysql",
        "sodium" => "common",
        other => other,
    };
    format!("php{v}-{pkg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn php() -> PathBuf {
        vmoodle_exec::find_on_path(&["php"]).expect("php-cli on PATH")
    }

    /// RC4 through OPENSSL_CONF: available with the legacy provider, not without it.
    #[tokio::test]
    async fn rc4_follows_the_legacy_provider() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("legacy.cnf");
        std::fs::write(&legacy, LEGACY_OPENSSL_CONF).unwrap();
        let plain = dir.path().join("default-only.cnf");
        std::fs::write(
            &plain,
            "openssl_conf = openssl_init\n\n[openssl_init]\nproviders = provider_sect\n\n[provider_sect]\ndefault = default_sect\n\n[default_sect]\nactivate = 1\n",
        )
        .unwrap();
        let with = rc4(&php(), Some(&legacy)).await.unwrap();
        assert!(with.ok(), "{with:?}");
        let without = rc4(&php(), Some(&plain)).await.unwrap();
        assert!(!without.ok(), "{without:?}");
        assert!(!without.listed && !without.seals, "{without:?}");
        assert!(without.error.is_some(), "{without:?}");
    }

    #[tokio::test]
    async fn probe_reports_extensions_and_ini() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("php.ini");
        std::fs::write(&ini, "max_input_vars = 5123\n").unwrap();
        let env = probe(
            &php(),
            &ProbeOptions {
                ini: Some(ini.clone()),
                openssl_conf: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(env.max_input_vars, 5123);
        assert_eq!(env.ini.as_deref(), ini.to_str());
        assert!(env.has("json") || env.has("core"), "{:?}", env.extensions);
        assert!(env.version.starts_with('8'), "{}", env.version);
        assert_eq!(debian_package("8.2.36", "intl"), "php8.2-intl");
        assert_eq!(debian_package("8.2.36", "mysqli"), "php8.2-mysql");
    }
}
