//! `vmoodle.toml`: every setting with its default and a comment, read with unknown keys refused,
//! and changed one key at a time without losing the administrator's comments.
//!
//! Precedence, lowest first: built-in defaults < vmoodle.toml < environment (`VMOODLE_HOME`
//! only chooses the home) < command-line flags.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::schema::{self, PLACEHOLDER};
use crate::validate::{self, ValidationError};
use crate::DbKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `sqlite` or a `postgres://` URL.
    pub registry: String,
    pub schema: SchemaSettings,
    pub executables: Executables,
    pub web: WebSettings,
    pub mnet: MnetSettings,
    pub moodle: MoodleSettings,
    pub spares: SparesSettings,
    pub cron: CronSettings,
}

/// Moodle's cron for every instance, run by the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CronSettings {
    /// The daemon runs admin/cli/cron.php for every enabled instance.
    pub enabled: bool,
    /// Seconds between two passes of one site (at least 10).
    pub interval: u32,
    /// Sites whose cron runs at once on one node (1 to 64).
    pub parallel: u32,
    /// Seconds one site's pass may take before it is killed.
    pub timeout: u32,
}

impl Default for CronSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: 60,
            parallel: 2,
            timeout: 600,
        }
    }
}

/// The Moodle code that serves every instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoodleSettings {
    /// The directory holding config.php (for Moodle 5.x, the parent of public/); empty when
    /// unknown. `master set --moodle-dir` records it. vmoodle runs Moodle's own PHP from it under
    /// an instance's host, e.g. to invalidate Moodle's caches after it changed a site's keys.
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaSettings {
    pub automate: bool,
    pub wwwroot: String,
    pub db_type: DbKind,
    pub db_host: String,
    pub db_port: u16,
    pub db_login: String,
    /// Sealed with the secret key (`v1:...`), or empty for a random password per instance.
    pub db_password: String,
    pub db_name: String,
    pub prefix: String,
    pub db_persist: bool,
    pub dataroot: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Executables {
    pub mariadb: String,
    pub mariadb_dump: String,
    pub mariabackup: String,
    pub psql: String,
    pub pg_dump: String,
    pub pg_restore: String,
    pub php: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    pub user: String,
    pub group: String,
    pub retry_after: u32,
    /// Where `vmoodle serve` listens (ADDR:PORT).
    pub listen: String,
    /// TLS certificate chain and private key (PEM) for `vmoodle serve`; empty: plain HTTP
    /// (behind nginx, or on loopback).
    pub tls_cert: String,
    pub tls_key: String,
}

/// Warm spares the daemon keeps filled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparesSettings {
    /// Spares kept per template and MariaDB server (0: the daemon fills none).
    pub keep: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            registry: "sqlite".into(),
            schema: SchemaSettings::default(),
            executables: Executables::default(),
            web: WebSettings::default(),
            mnet: MnetSettings::default(),
            moodle: MoodleSettings::default(),
            spares: SparesSettings::default(),
            cron: CronSettings::default(),
        }
    }
}

impl Default for SchemaSettings {
    fn default() -> Self {
        Self {
            automate: true,
            wwwroot: format!("http://{PLACEHOLDER}.moodle.example.org"),
            db_type: DbKind::Mariadb,
            db_host: "127.0.0.1".into(),
            db_port: 0,
            db_login: format!("vm_{PLACEHOLDER}"),
            db_password: String::new(),
            db_name: format!("vm_{PLACEHOLDER}"),
            prefix: "mdl_".into(),
            db_persist: false,
            dataroot: format!("/srv/moodledata/{PLACEHOLDER}"),
        }
    }
}

/// MNET key renewal, as VMoodle had it (and now working).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MnetSettings {
    pub autorenew: bool,
    pub lookforward_hours: u32,
    /// HH:MM (UTC) when the renewal window opens.
    pub renew_time: String,
    pub renew_window_minutes: u32,
    pub key_lifetime_days: u32,
}

impl Default for MnetSettings {
    fn default() -> Self {
        Self {
            autorenew: true,
            lookforward_hours: 72,
            renew_time: "03:00".into(),
            renew_window_minutes: 120,
            key_lifetime_days: 28,
        }
    }
}

impl MnetSettings {
    /// The window's start as minutes after midnight UTC.
    pub fn renew_minute(&self) -> Option<u32> {
        let (h, m) = self.renew_time.split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && self.renew_time.len() == 5).then_some(h * 60 + m)
    }

    /// Whether `unix` (seconds, UTC) falls inside the renewal window.
    pub fn in_window(&self, unix: i64) -> bool {
        let Some(start) = self.renew_minute() else {
            return false;
        };
        let minute = ((unix.rem_euclid(86_400)) / 60) as u32;
        let since = (minute + 1440 - start) % 1440;
        since < self.renew_window_minutes.min(1440)
    }
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            user: "www-data".into(),
            group: "www-data".into(),
            retry_after: 300,
            listen: "127.0.0.1:8700".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// Each executable setting and the names looked up on PATH when it is empty.
pub const EXECUTABLES: &[(&str, &[&str])] = &[
    ("mariadb", &["mariadb", "mysql"]),
    ("mariadb_dump", &["mariadb-dump", "mysqldump"]),
    ("mariabackup", &["mariabackup", "mariadb-backup"]),
    ("psql", &["psql"]),
    ("pg_dump", &["pg_dump"]),
    ("pg_restore", &["pg_restore"]),
    ("php", &["php"]),
];

/// Keys whose values are secrets: set from stdin only, shown as `****`.
pub const SECRET_KEYS: &[&str] = &["schema.db_password"];

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("vmoodle.toml is not valid: {0}\nhint: every setting is listed with its comment in a fresh file: `vmoodle init --home /tmp/x` then read /tmp/x/vmoodle.toml")]
    Parse(String),
    #[error("unknown setting `{0}`; known settings: {1}")]
    UnknownKey(String, String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("`{0}` is a secret: give it on standard input (`vmoodle settings set {0} --stdin`), never on the command line")]
    SecretOnCommandLine(String),
}

impl Settings {
    pub fn parse(text: &str) -> Result<Self, SettingsError> {
        let s: Settings = toml::from_str(text).map_err(|e| SettingsError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every value; the first problem is returned with the key it belongs to.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let r = &self.registry;
        if r != "sqlite" && !(r.starts_with("postgres://") || r.starts_with("postgresql://")) {
            return Err(ValidationError::new(
                "registry",
                redact_url(r),
                "`sqlite` (registry.sqlite in the home) or a postgres:// URL",
            ));
        }
        let s = &self.schema;
        schema::check_pattern("schema.wwwroot", &s.wwwroot, |v| {
            validate::wwwroot(v).map(|_| ())
        })?;
        schema::check_pattern("schema.db_name", &s.db_name, |v| {
            validate::db_name(v).map(|_| ())
        })?;
        schema::check_pattern("schema.db_login", &s.db_login, |v| {
            validate::db_user(v).map(|_| ())
        })?;
        schema::check_pattern("schema.dataroot", &s.dataroot, |v| {
            validate::abs_path("schema.dataroot", v).map(|_| ())
        })?;
        validate::db_host(&s.db_host).map_err(|e| ValidationError {
            field: "schema.db_host".into(),
            ..e
        })?;
        validate::prefix(&s.prefix).map_err(|e| ValidationError {
            field: "schema.prefix".into(),
            ..e
        })?;
        if !(s.db_password.is_empty()
            || s.db_password.starts_with("v1:")
            || s.db_password.starts_with("v2:"))
        {
            return Err(ValidationError::new(
                "schema.db_password",
                "****",
                "a value sealed by `vmoodle settings set schema.db_password --stdin`, or empty",
            ));
        }
        for (key, _) in EXECUTABLES {
            let v = self.executable(key);
            if !v.is_empty() {
                validate::abs_path(&format!("executables.{key}"), v)?;
            }
        }
        for (key, v) in [("web.user", &self.web.user), ("web.group", &self.web.group)] {
            let ok = !v.is_empty()
                && v.len() <= 32
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                return Err(ValidationError::new(key, v, "a system user or group name"));
            }
        }
        if self.mnet.renew_minute().is_none() {
            return Err(ValidationError::new(
                "mnet.renew_time",
                &self.mnet.renew_time,
                "a time of day HH:MM (UTC), e.g. 03:00",
            ));
        }
        if self.mnet.renew_window_minutes == 0 || self.mnet.renew_window_minutes > 1440 {
            return Err(ValidationError::new(
                "mnet.renew_window_minutes",
                self.mnet.renew_window_minutes.to_string(),
                "minutes between 1 and 1440",
            ));
        }
        if self.mnet.lookforward_hours == 0 || self.mnet.lookforward_hours > 24 * 365 {
            return Err(ValidationError::new(
                "mnet.lookforward_hours",
                self.mnet.lookforward_hours.to_string(),
                "hours between 1 and 8760",
            ));
        }
        if self.mnet.key_lifetime_days == 0 || self.mnet.key_lifetime_days > 3650 {
            return Err(ValidationError::new(
                "mnet.key_lifetime_days",
                self.mnet.key_lifetime_days.to_string(),
                "days between 1 and 3650",
            ));
        }
        if !self.moodle.dir.is_empty() {
            validate::abs_path("moodle.dir", &self.moodle.dir)?;
        }
        if self.web.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ValidationError::new(
                "web.listen",
                &self.web.listen,
                "an address and port, e.g. 127.0.0.1:8700 or [::]:8700",
            ));
        }
        if self.web.tls_cert.is_empty() != self.web.tls_key.is_empty() {
            return Err(ValidationError::new(
                "web.tls_cert",
                &self.web.tls_cert,
                "both web.tls_cert and web.tls_key, or neither",
            ));
        }
        for (key, v) in [
            ("web.tls_cert", &self.web.tls_cert),
            ("web.tls_key", &self.web.tls_key),
        ] {
            if !v.is_empty() {
                validate::abs_path(key, v)?;
            }
        }
        if self.spares.keep > 100 {
            return Err(ValidationError::new(
                "spares.keep",
                self.spares.keep.to_string(),
                "a number of spares between 0 and 100",
            ));
        }
        if self.cron.interval < 10 || self.cron.interval > 86_400 {
            return Err(ValidationError::new(
                "cron.interval",
                self.cron.interval.to_string(),
                "seconds between 10 and 86400 (Moodle's own advice is a pass every minute: 60)",
            ));
        }
        if self.cron.parallel == 0 || self.cron.parallel > 64 {
            return Err(ValidationError::new(
                "cron.parallel",
                self.cron.parallel.to_string(),
                "a number of sites at once between 1 and 64",
            ));
        }
        if self.cron.timeout < 10 || self.cron.timeout > 86_400 {
            return Err(ValidationError::new(
                "cron.timeout",
                self.cron.timeout.to_string(),
                "seconds between 10 and 86400",
            ));
        }
        if self.web.retry_after == 0 || self.web.retry_after > 86_400 {
            return Err(ValidationError::new(
                "web.retry_after",
                self.web.retry_after.to_string(),
                "seconds between 1 and 86400",
            ));
        }
        Ok(())
    }

    pub fn executable(&self, key: &str) -> &str {
        let e = &self.executables;
        match key {
            "mariadb" => &e.mariadb,
            "mariadb_dump" => &e.mariadb_dump,
            "mariabackup" => &e.mariabackup,
            "psql" => &e.psql,
            "pg_dump" => &e.pg_dump,
            "pg_restore" => &e.pg_restore,
            "php" => &e.php,
            _ => "",
        }
    }

    /// All settings as flat `key = value` pairs (secrets as `****`).
    pub fn flatten(&self) -> Vec<(String, serde_json::Value)> {
        let v = serde_json::to_value(self).expect("settings serialize");
        let mut out = Vec::new();
        flatten_into("", &v, &mut out);
        for (k, v) in &mut out {
            if SECRET_KEYS.contains(&k.as_str()) && v.as_str().is_some_and(|s| !s.is_empty()) {
                *v = serde_json::Value::String("****".into());
            }
            // A register URL written with its password (homes made before
            // --registry-password-file) never prints it.
            if k == "registry" {
                if let Some(s) = v.as_str() {
                    *v = serde_json::Value::String(redact_url(s));
                }
            }
        }
        out
    }

    pub fn get(&self, key: &str) -> Result<serde_json::Value, SettingsError> {
        self.flatten()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .ok_or_else(|| SettingsError::UnknownKey(key.into(), self.key_list()))
    }

    fn key_list(&self) -> String {
        self.flatten()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn flatten_into(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// Sets one key in the text of vmoodle.toml, keeping comments, and returns the new text after
/// checking that the whole file is still valid. `value` is the raw text the user gave (already
/// sealed for secrets).
pub fn set_in_document(text: &str, key: &str, value: &str) -> Result<String, SettingsError> {
    let current = Settings::parse(text)?;
    let old = current.get(key)?;
    let new_item = match old {
        serde_json::Value::Bool(_) => match value {
            "true" | "on" | "yes" | "1" => toml_edit::value(true),
            "false" | "off" | "no" | "0" => toml_edit::value(false),
            _ => return Err(ValidationError::new(key, value, "true or false").into()),
        },
        serde_json::Value::Number(_) => {
            let n: i64 = value
                .trim()
                .parse()
                .map_err(|_| ValidationError::new(key, value, "a whole number"))?;
            toml_edit::value(n)
        }
        _ => toml_edit::value(value),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| SettingsError::Parse(e.to_string()))?;
    match key.split_once('.') {
        Some((table, leaf)) => {
            if doc.get(table).is_none() {
                doc[table] = toml_edit::table();
            }
            let t = doc[table]
                .as_table_like_mut()
                .ok_or_else(|| SettingsError::Parse(format!("`{table}` is not a table")))?;
            match t.get_mut(leaf) {
                Some(item) => {
                    // Keep the comment that decorates the existing value.
                    let decor = item.as_value().map(|v| v.decor().clone());
                    *item = new_item;
                    if let (Some(d), Some(v)) = (decor, item.as_value_mut()) {
                        *v.decor_mut() = d;
                    }
                }
                None => {
                    t.insert(leaf, new_item);
                }
            }
        }
        None => {
            let decor = doc
                .get(key)
                .and_then(|i| i.as_value())
                .map(|v| v.decor().clone());
            doc[key] = new_item;
            if let (Some(d), Some(v)) = (decor, doc[key].as_value_mut()) {
                *v.decor_mut() = d;
            }
        }
    }
    let out = doc.to_string();
    Settings::parse(&out)?;
    Ok(out)
}

/// The documented vmoodle.toml written by `vmoodle init`.
pub fn default_toml() -> String {
    format!(
        r#"# vmoodle settings. Every setting is listed here with its default value and what it does.
# Change them with `vmoodle settings set KEY VALUE` (checked before saving) or by editing this
# file (checked when vmoodle next reads it). Precedence: defaults < this file < flags.

# Where the register of instances lives: "sqlite" keeps it in registry.sqlite in this home;
# a PostgreSQL URL ("postgres://user@host:5432/dbname") shares it between several control nodes.
registry = "sqlite"

# The naming schema (VMoodle's "define a naming schema"). Patterns hold {p}, replaced by an
# instance token. Tokens are 1-20 lowercase letters and digits starting with a letter, because the
# same token becomes part of a host name, a database name, a database user and a directory.
# `vmoodle schema expand TOKEN` shows what a token gives.
[schema]
# Preset new instances from the token alone (deploy --token X is enough).
automate = true
# The new instance's address (its wwwroot; the host part is what the config hook matches).
wwwroot = "http://{p}.moodle.example.org"
# Database type of new instances: mariadb, mysql or pgsql.
db_type = "mariadb"
# Database server address of new instances (a registered `vmoodle dbserver` with this host).
db_host = "127.0.0.1"
# Its port; 0 means the type's default (3306 for mariadb/mysql, 5432 for pgsql).
db_port = 0
# Database user of each new instance (a dedicated account with rights on its own database only).
db_login = "vm_{p}"
# Password preset for new instance users, sealed with secret.key. Empty: a random password per
# instance (recommended). Set with `vmoodle settings set schema.db_password --stdin`.
db_password = ""
# Database name of each new instance.
db_name = "vm_{p}"
# Moodle table prefix of new instances.
prefix = "mdl_"
# Persistent database connections ($CFG->dboptions['dbpersist']).
db_persist = false
# Dataroot (moodledata) of each new instance.
dataroot = "/srv/moodledata/{p}"

# Paths of the tools vmoodle runs. Empty: looked up on PATH (the first name found):
# mariadb|mysql, mariadb-dump|mysqldump, mariabackup|mariadb-backup, psql, pg_dump, pg_restore, php.
[executables]
mariadb = ""
mariadb_dump = ""
mariabackup = ""
psql = ""
pg_dump = ""
pg_restore = ""
php = ""

# The web server account that runs Moodle: host files are made readable by its group (0640) and
# dataroots writable by its user.
[web]
user = "www-data"
group = "www-data"
# Seconds announced in Retry-After on the 503 page of a disabled instance.
retry_after = 300
# Where the daemon (`vmoodle serve`: web admin, API, metrics) listens.
listen = "127.0.0.1:8700"
# TLS for the daemon: a PEM certificate chain and its private key (both, or neither for plain
# HTTP on loopback or behind nginx). Session cookies are marked Secure under TLS.
tls_cert = ""
tls_key = ""

# Warm spares (MariaDB): the daemon keeps this many per template and server filled, so a burst
# of deploys only renames databases. 0: none (fill them by hand with `vmoodle spares fill`).
[spares]
keep = 0

# Moodle's cron (admin/cli/cron.php --keep-alive=0, one pass) for every enabled instance, run by
# the daemon (`vmoodle serve`), each site at its own offset within the interval so hundreds of
# sites do not all start at once. Several daemons on one PostgreSQL register share the work: a
# per-site lock in the register means no site's cron ever runs twice at once. By hand:
# `vmoodle cron --all`; watch it with `vmoodle cron status` (exit 3 when a site is overdue or
# failing).
[cron]
# The daemon runs cron (false: run `vmoodle cron --all` from the system's crontab instead).
enabled = true
# Seconds between two passes of one site (at least 10). A site with no successful pass within
# twice this is reported overdue.
interval = 60
# Sites whose cron runs at once on this node (1-64).
parallel = 2
# Seconds one site's pass may take; past it the pass is killed and recorded as `timeout`.
timeout = 600

# Moodle Network keys. A site's MNET key expires (28 days by default) and its peers must learn
# the new one; `vmoodle mnet renew --due`, run from cron every few minutes, renews what is due
# inside the renewal window and updates every peer.
[mnet]
# Renew keys automatically (`mnet renew --due` does nothing when off).
autorenew = true
# Renew a key when it expires within this many hours.
lookforward_hours = 72
# The renewal window opens at this time of day (HH:MM, UTC) ...
renew_time = "03:00"
# ... and stays open this many minutes, so renewals happen at a quiet hour.
renew_window_minutes = 120
# Lifetime of new keys in days (Moodle's $CFG->mnetkeylifetime, default 28).
key_lifetime_days = 28

# The Moodle code that serves every instance.
[moodle]
# The directory holding config.php (for Moodle 5.x, the parent of public/). `vmoodle master set
# --moodle-dir` records it. vmoodle runs Moodle's own PHP from there under an instance's host
# (as the web.user account when it runs as root) to invalidate Moodle's caches after it changed
# a live site's keys or settings. Empty: unknown, and vmoodle prints the command to run instead.
dir = ""
"#,
        p = PLACEHOLDER
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_is_the_default_settings() {
        assert_eq!(
            Settings::parse(&default_toml()).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn every_setting_is_in_the_default_file() {
        let text = default_toml();
        for (k, _) in Settings::default().flatten() {
            let leaf = k.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("\n{leaf} = ")),
                "{k} missing from vmoodle.toml"
            );
        }
    }

    #[test]
    fn renewal_window() {
        let m = MnetSettings {
            renew_time: "23:30".into(),
            renew_window_minutes: 60,
            ..Default::default()
        };
        let at = |h: i64, mi: i64| 19_000 * 86_400 + h * 3600 + mi * 60;
        assert!(m.in_window(at(23, 45)));
        assert!(m.in_window(at(0, 15)));
        assert!(!m.in_window(at(0, 45)));
        assert!(!m.in_window(at(12, 0)));
        assert!(Settings::parse(&default_toml().replace("\"03:00\"", "\"3am\"")).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Settings::parse("[schema]\nautomat = true\n").unwrap_err();
        assert!(e.to_string().contains("automat"), "{e}");
    }

    #[test]
    fn set_keeps_comments_and_validates() {
        let text = default_toml();
        let out =
            set_in_document(&text, "schema.wwwroot", "https://<%%INSTANCE%%>.school.org").unwrap();
        assert!(out.contains("# The new instance's address"));
        assert_eq!(
            Settings::parse(&out).unwrap().schema.wwwroot,
            "https://<%%INSTANCE%%>.school.org"
        );
        let out = set_in_document(&out, "schema.automate", "off").unwrap();
        assert!(!Settings::parse(&out).unwrap().schema.automate);
        let e = set_in_document(&text, "schema.db_name", "vm_fixed").unwrap_err();
        assert!(e.to_string().contains("exactly once"), "{e}");
        let e = set_in_document(&text, "schema.dataroot", "relative/<%%INSTANCE%%>").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        assert!(matches!(
            set_in_document(&text, "nope", "1"),
            Err(SettingsError::UnknownKey(..))
        ));
        let e = set_in_document(&text, "web.retry_after", "abc").unwrap_err();
        assert!(e.to_string().contains("whole number"));
    }
}

/// The user-info part of a URL (`scheme://USERINFO@host...`), if any.
fn url_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some((scheme, &rest[..at], &rest[at + 1..]))
}

/// Whether a URL carries a password (`scheme://user:password@host`).
pub fn url_has_password(url: &str) -> bool {
    url_userinfo(url).is_some_and(|(_, u, _)| u.contains(':'))
        || query_params(url).any(|(k, _)| k.eq_ignore_ascii_case("password"))
}

/// The `key=value` pairs of a URL's query string.
fn query_params(url: &str) -> impl Iterator<Item = (&str, &str)> {
    url.split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The query string's `password=` values shown as `****`.
fn redact_query(url: &str) -> String {
    let Some((head, q)) = url.split_once('?') else {
        return url.to_string();
    };
    let pairs: Vec<String> = q
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
            _ => p.to_string(),
        })
        .collect();
    format!("{head}?{}", pairs.join("&"))
}

/// A URL with its password shown as `****`.
pub fn redact_url(url: &str) -> String {
    let url = match url_userinfo(url) {
        Some((scheme, userinfo, tail)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:****@{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    redact_query(&url)
}

/// The URL with `password` put in (percent-encoded); None if the URL names no user.
pub fn url_with_password(url: &str, password: &str) -> Option<String> {
    let (scheme, userinfo, tail) = url_userinfo(url)?;
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let mut enc = String::with_capacity(password.len() * 3);
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    Some(format!("{scheme}://{user}:{enc}@{tail}"))
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn register_urls() {
        let u = "postgres://vm:p@ss:w%2Frd@db.example.org:5432/reg";
        assert!(url_has_password(u));
        assert_eq!(redact_url(u), "postgres://vm:****@db.example.org:5432/reg");
        assert!(!url_has_password("postgres://vm@db/reg"));
        assert!(!url_has_password("postgres://db/reg?x=a@b"));
        assert_eq!(
            url_with_password("postgres://vm@db:5432/reg", "a b@:/%").unwrap(),
            "postgres://vm:a%20b%40%3A%2F%25@db:5432/reg"
        );
        assert_eq!(url_with_password("postgres://db/reg", "x"), None);
        // libpq also takes the password as a query parameter.
        let q = "postgres://vm@db/reg?sslmode=require&password=s3cret";
        assert!(url_has_password(q));
        assert_eq!(
            redact_url(q),
            "postgres://vm@db/reg?sslmode=require&password=****"
        );
    }
}
