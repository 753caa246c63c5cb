//! Moodle's own caches (MUC). vmoodle writes some values straight into a live instance's
//! database (MNET keys and the dispatcher mode in `config_plugins` and `config`), and a running
//! Moodle serves those tables from its `core/config` cache: until that cache is invalidated the
//! site keeps signing and decrypting with its old key ("mnet/encryption-invalid", "No key match").
//! The cache must be invalidated through Moodle itself, since its stores are configurable (file
//! store under the dataroot by default, Redis or memcached elsewhere). One php-cli process per
//! instance runs Moodle's setup under the instance's host (the config hook picks the instance from
//! `VMOODLE_HOST`) and purges every named cache definition in one go.
//!
//! Moodle 5.1 reads `mnet_host` and `mnet_host2service` (peer rows) without a MUC cache, so rows
//! written into peers need no invalidation; `config` and `config_plugins` do.

use std::path::Path;
use std::time::Duration;
use vmoodle_exec::{ExecError, Tool};

/// A MUC cache definition: component and area, as in Moodle's db/caches.php.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    pub component: &'static str,
    pub area: &'static str,
}

/// `core/config`: the config and config_plugins tables.
pub const CONFIG: Definition = Definition {
    component: "core",
    area: "config",
};

/// Printed by the script once Moodle's setup ran and every definition was purged.
const DONE_MARK: &str = "vmoodle: caches purged";

/// The script php-cli reads on stdin: argv[1] is the Moodle config.php, then component/area pairs.
const SCRIPT: &str = r#"<?php
define('CLI_SCRIPT', true);
$vmoodleconfig = $argv[1];
$vmoodledefinitions = array_slice($argv, 2);
require($vmoodleconfig);
foreach ($vmoodledefinitions as $vmoodledefinition) {
    [$component, $area] = explode('/', $vmoodledefinition, 2);
    \cache_helper::purge_by_definition($component, $area);
}
echo "@DONE@ ", count($vmoodledefinitions), "\n";
"#;

/// How php-cli runs Moodle for an instance.
#[derive(Debug, Clone)]
pub struct MoodleCli<'a> {
    pub php: &'a Path,
    /// The Moodle config.php that includes the config hook.
    pub config_php: &'a Path,
    /// Run as this uid/gid (the web server's account) instead of the current user.
    pub user: Option<(u32, u32)>,
}

/// Purges `definitions` of the instance served at `host`, in one php-cli process.
pub async fn purge(
    cli: &MoodleCli<'_>,
    host: &str,
    definitions: &[Definition],
) -> Result<(), ExecError> {
    // VMOODLE_HOST=HOST php -- /moodle/config.php core/config ...   (script on stdin)
    let mut t = Tool::new(cli.php)
        .arg("--")
        .arg(cli.config_php.as_os_str())
        .args(
            definitions
                .iter()
                .map(|d| format!("{}/{}", d.component, d.area)),
        )
        .env("VMOODLE_HOST", host)
        .stdin(SCRIPT.replace("@DONE@", DONE_MARK))
        .timeout(Duration::from_secs(120));
    if let Some(dir) = cli.config_php.parent() {
        t = t.current_dir(dir);
    }
    if let Some((uid, gid)) = cli.user {
        t = t.user(uid, gid);
    }
    let out = t.run().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains(DONE_MARK) {
        Ok(())
    } else {
        Err(ExecError::Failed {
            program: "php".into(),
            status: "Moodle's setup did not complete".into(),
            stderr_tail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                text.trim()
            ),
            stdout: out.stdout,
        })
    }
}

/// The command an administrator runs to do the same by hand (Moodle's own purge_caches.php).
/// `moodle_dir` None: the Moodle directory is unknown and shown as a placeholder.
pub fn manual_command(
    php: &str,
    moodle_dir: Option<&Path>,
    host: &str,
    web_user: Option<&str>,
) -> String {
    let script = match moodle_dir {
        Some(d) => shell_quote(&d.join("admin/cli/purge_caches.php").display().to_string()),
        None => "MOODLE_DIR/admin/cli/purge_caches.php".into(),
    };
    let env = format!("VMOODLE_HOST={}", shell_quote(host));
    match web_user {
        Some(u) => format!(
            "sudo -u {} env {env} {} {script} --muc",
            shell_quote(u),
            shell_quote(php)
        ),
        None => format!("{env} {} {script} --muc", shell_quote(php)),
    }
}

/// Quotes a word for sh when it holds anything but safe characters.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_commands() {
        assert_eq!(
            manual_command(
                "/usr/bin/php",
                Some(Path::new("/srv/moodle")),
                "a1.example.org",
                Some("www-data")
            ),
            "sudo -u www-data env VMOODLE_HOST=a1.example.org /usr/bin/php /srv/moodle/admin/cli/purge_caches.php --muc"
        );
        assert_eq!(
            manual_command("php", Some(Path::new("/srv/my moodle")), "a1.example.org:8080", None),
            "VMOODLE_HOST=a1.example.org:8080 php '/srv/my moodle/admin/cli/purge_caches.php' --muc"
        );
        assert!(manual_command("php", None, "h", None).contains("MOODLE_DIR/admin/cli"));
    }
}
