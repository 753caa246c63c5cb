//! The per-host file: one PHP file per instance under the home's hosts/, returning the values
//! the config hook puts into `$CFG`. A disabled instance's file holds no credentials at all.

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
    pub dataroot: String,
    /// Extra `$CFG` values (name -> string value).
    pub extras: BTreeMap<String, String>,
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
        kv(
            "dboptions",
            format!(
                "[\n            'dbpersist' => {},\n            'dbport' => {},\n            'dbsocket' => {socket},\n        ]",
                php::bool(self.dbpersist),
                self.dbport
            ),
        );
        for (k, v) in &self.extras {
            kv(k, php::string(v));
        }
        s.push_str("    ],\n];\n");
        s
    }
}
