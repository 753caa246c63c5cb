//! The per-host file: one PHP file per instance under the home's hosts/, returning the values
//! the config hook puts into `$CFG`. A disabled instance's file holds no credentials at all.
//!
//! The hook runs after the master's config.php, so every `$CFG` value the master sets applies to
//! the instance unless the host file sets its own. Directories and session prefixes must never
//! be shared between sites (one site would serve another's caches, sessions and temporary
//! files), so each host file sets them for its instance: under the master's directory with the
//! instance's short name when the master's config.php sets one (recorded by `master set`), else
//! where Moodle would put them under the instance's dataroot.

use std::collections::BTreeMap;
use vmoodle_core::Secret;

use crate::php;

/// Everything a host file says about one instance.
#[derive(Debug, Clone)]
pub struct HostFile {
    pub shortname: String,
    pub host: String,
    pub enabled: bool,
    pub wwwroot: String,
    pub dbtype: String,
    pub dbhost: String,
    pub dbport: u16,
    pub dbsocket: Option<String>,
    pub dbname: String,
    pub dbuser: String,
    pub dbpass: Secret,
    pub prefix: String,
    pub dbpersist: bool,
    /// Where reads go (a cluster's reader port): Moodle's own read-replica option,
    /// `dboptions['readonly']` (Moodle keeps sessions, locks and anything written in the last
    /// `latency` seconds on the primary).
    pub readonly: Option<(String, u16)>,
    pub dataroot: String,
    /// Per-instance directories and session prefixes (see `instance_layout`).
    pub layout: BTreeMap<String, String>,
    /// Extra `$CFG` values (name -> string value); these win over `layout`.
    pub extras: BTreeMap<String, String>,
}

/// Directories, relative to the dataroot, that Moodle uses when `$CFG` does not name them
/// (lib/setup.php); `None`: Moodle's default does not depend on the site (`localrequestdir` is
/// sys_get_temp_dir()/requestdir, subdivided by siteidentifier), so it is set only to move a
/// master's own directory.
/// (`backuptempdir` comes after `tempdir`: Moodle's default is the site's tempdir/backup.)
pub const LAYOUT_DIRS: &[(&str, Option<&str>)] = &[
    ("cachedir", Some("cache")),
    ("localcachedir", Some("localcache")),
    ("tempdir", Some("temp")),
    ("backuptempdir", Some("backup")),
    ("localrequestdir", None),
    ("session_file_save_path", Some("sessions")),
];

/// Session key prefixes and Moodle's default for each (config-dist.php).
pub const LAYOUT_PREFIXES: &[(&str, &str)] = &[
    ("session_redis_prefix", ""),
    ("session_memcached_prefix", "memc.sess.key."),
];

/// Every `$CFG` name `instance_layout` may set (what `master set` records from a config.php).
pub fn layout_names() -> impl Iterator<Item = &'static str> {
    LAYOUT_DIRS
        .iter()
        .map(|(n, _)| *n)
        .chain(LAYOUT_PREFIXES.iter().map(|(n, _)| *n))
}

/// The directories and session prefixes of one instance: `master` holds the master's own values
/// (those its config.php sets); a master directory `D` becomes `D/<shortname>`, a master prefix
/// `P` becomes `P<shortname>_`, and what the master leaves unset goes where Moodle puts it for a
/// site with this dataroot.
pub fn instance_layout(
    dataroot: &str,
    shortname: &str,
    master: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let root = dataroot.trim_end_matches('/');
    let mut out = BTreeMap::new();
    for (name, under) in LAYOUT_DIRS {
        let v = match (master.get(*name).filter(|v| !v.is_empty()), under) {
            (Some(m), _) => format!("{}/{shortname}", m.trim_end_matches('/')),
            (None, Some(rel)) if *name == "backuptempdir" => format!("{}/{rel}", out["tempdir"]),
            (None, Some(rel)) => format!("{root}/{rel}"),
            (None, None) => continue,
        };
        out.insert(name.to_string(), v);
    }
    for (name, default) in LAYOUT_PREFIXES {
        let base = master.get(*name).map_or(*default, String::as_str);
        out.insert(name.to_string(), format!("{base}{shortname}_"));
    }
    out
}

/// The file name for a host: the host itself, with `:port` written `_port` (`_` never occurs in
/// a valid host, so the mapping is one-to-one), plus `.php`.
pub fn file_name(host: &str) -> String {
    format!("{}.php", host.replace(':', "_"))
}

/// Whether `name` is a file name `file_name` could have produced (so publish may remove it).
pub fn is_host_file_name(name: &str) -> bool {
    name.strip_suffix(".php").is_some_and(|h| {
        vmoodle_core::validate::host(&h.replacen('_', ":", 1))
            .is_ok_and(|v| v == h.replacen('_', ":", 1))
    })
}

/// Names extras may not use: the hook sets these from the register, and the rest would break
/// Moodle or bypass the hook.
pub const RESERVED_CFG: &[&str] = &[
    "wwwroot",
    "dataroot",
    "dbtype",
    "dbhost",
    "dbname",
    "dbuser",
    "dbpass",
    "prefix",
    "dboptions",
    "dirroot",
    "libdir",
    "admin",
    "dblibrary",
];

/// Whether `name` may be set as an extra `$CFG` value.
pub fn extra_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !RESERVED_CFG.contains(&name)
}

impl HostFile {
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("<?php\n");
        s.push_str(&format!(
            "// vmoodle host file for instance `{}` ({}). Generated from the register: do not edit,\n\
             // `vmoodle hook publish` rewrites it. Read by the vmoodle config hook only.\n",
            self.shortname.replace(['\n', '\r'], " "),
            self.host
        ));
        s.push_str("defined('VMOODLE_HOOK') || exit(1);\n");
        if !self.enabled {
            s.push_str("return ['enabled' => false];\n");
            return s;
        }
        s.push_str("return [\n    'enabled' => true,\n    'cfg' => [\n");
        let mut kv =
            |k: &str, v: String| s.push_str(&format!("        {} => {v},\n", php::string(k)));
        kv("wwwroot", php::string(&self.wwwroot));
        kv("dataroot", php::string(&self.dataroot));
        kv("dbtype", php::string(&self.dbtype));
        kv("dblibrary", php::string("native"));
        kv("dbhost", php::string(&self.dbhost));
        kv("dbname", php::string(&self.dbname));
        kv("dbuser", php::string(&self.dbuser));
        kv("dbpass", php::string(self.dbpass.expose()));
        kv("prefix", php::string(&self.prefix));
        let socket = match &self.dbsocket {
            Some(p) => php::string(p),
            None => "false".into(),
        };
        let readonly = match &self.readonly {
            Some((host, port)) => format!(
                "            'readonly' => [\n                'instance' => [['dbhost' => {}, 'dbport' => {port}]],\n                'connecttimeout' => 2,\n                'latency' => 1,\n            ],\n",
                php::string(host)
            ),
            None => String::new(),
        };
        kv(
            "dboptions",
            format!(
                "[\n            'dbpersist' => {},\n            'dbport' => {},\n            'dbsocket' => {socket},\n{readonly}        ]",
                php::bool(self.dbpersist),
                self.dbport
            ),
        );
        for (k, v) in &self.layout {
            if !self.extras.contains_key(k) {
                kv(k, php::string(v));
            }
        }
        for (k, v) in &self.extras {
            kv(k, php::string(v));
        }
        s.push_str("    ],\n];\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(master: &BTreeMap<String, String>, extras: &[(&str, &str)]) -> HostFile {
        HostFile {
            shortname: "school1".into(),
            host: "school1.moodle.example.org".into(),
            enabled: true,
            wwwroot: "https://school1.moodle.example.org".into(),
            dbtype: "mariadb".into(),
            dbhost: "db1.example.org".into(),
            dbport: 3306,
            readonly: None,
            dbsocket: None,
            dbname: "vm_school1".into(),
            dbuser: "vm_school1".into(),
            dbpass: Secret::new("it's-secret"),
            prefix: "mdl_".into(),
            dbpersist: false,
            dataroot: "/srv/moodledata/school1".into(),
            layout: instance_layout("/srv/moodledata/school1/", "school1", master),
            extras: extras
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn host_file_snapshot() {
        // A master that keeps Moodle's defaults: everything under the instance's dataroot.
        insta::assert_snapshot!(sample(&BTreeMap::new(), &[("theme", "boost")]).render());
        // A master with its own cache, temp and request directories and a Redis prefix: the
        // instance gets its own directory inside each; an extra of the instance still wins.
        let master: BTreeMap<String, String> = [
            ("cachedir", "/var/cache/moodle"),
            ("localcachedir", "/var/local/cache/"),
            ("tempdir", "/var/tmp/moodle"),
            ("localrequestdir", "/tmp"),
            ("session_redis_prefix", "mdl_"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        insta::assert_snapshot!(sample(&master, &[("tempdir", "/fast/tmp/school1")]).render());
    }

    /// A clustered server's host file gives Moodle its read replica the way config-dist.php
    /// documents, and PHP reads it back as that array.
    #[test]
    fn readonly_replica_option_is_what_moodle_reads() {
        let mut hf = sample(&BTreeMap::new(), &[]);
        hf.dbhost = "10.0.0.100".into();
        hf.dbport = 3306;
        hf.readonly = Some(("10.0.0.100".into(), 3307));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("h.php");
        std::fs::write(&f, hf.render()).unwrap();
        let out = std::process::Command::new("php")
            .arg("-r")
            .arg(format!(
                "define('VMOODLE_HOOK', 1); $r = include '{}'; echo json_encode($r['cfg']['dboptions']);",
                f.display()
            ))
            .output()
            .expect("php");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["dbport"], 3306);
        assert_eq!(v["readonly"]["instance"][0]["dbhost"], "10.0.0.100");
        assert_eq!(v["readonly"]["instance"][0]["dbport"], 3307);
        assert_eq!(v["readonly"]["connecttimeout"], 2);
        assert_eq!(v["readonly"]["latency"], 1);
    }
}
