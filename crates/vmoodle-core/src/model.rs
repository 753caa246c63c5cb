//! Domain types shared by the register, the operations and the CLI.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::validate::ValidationError;

/// The kind of a database server. MariaDB and MySQL share the MySQL protocol and tools but Moodle
/// has a driver for each (`mariadb` and `mysqli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    Mariadb,
    Mysql,
    Pgsql,
}

impl DbKind {
    pub const ALLOWED: &'static str = "mariadb, mysql, pgsql";

    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Mariadb => "mariadb",
            DbKind::Mysql => "mysql",
            DbKind::Pgsql => "pgsql",
        }
    }

    /// The value of Moodle's `$CFG->dbtype` for this kind.
    pub fn moodle_dbtype(self) -> &'static str {
        match self {
            DbKind::Mariadb => "mariadb",
            DbKind::Mysql => "mysqli",
            DbKind::Pgsql => "pgsql",
        }
    }

    /// Kind from Moodle's `$CFG->dbtype` (or VMoodle's `vdbtype`).
    pub fn from_moodle_dbtype(s: &str) -> Result<Self, ValidationError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mariadb" => Ok(DbKind::Mariadb),
            "mysqli" | "mysql" | "auroramysql" => Ok(DbKind::Mysql),
            "pgsql" | "postgres" | "postgresql" => Ok(DbKind::Pgsql),
            _ => Err(ValidationError::new(
                "database type",
                s,
                "mariadb, mysqli (MySQL) or pgsql (PostgreSQL); vmoodle does not manage sqlsrv or oci",
            )),
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            DbKind::Mariadb | DbKind::Mysql => 3306,
            DbKind::Pgsql => 5432,
        }
    }

    pub fn is_mysql_family(self) -> bool {
        matches!(self, DbKind::Mariadb | DbKind::Mysql)
    }
}

impl fmt::Display for DbKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DbKind {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mariadb" => Ok(DbKind::Mariadb),
            "mysql" => Ok(DbKind::Mysql),
            "pgsql" => Ok(DbKind::Pgsql),
            _ => Err(ValidationError::new("database type", s, Self::ALLOWED)),
        }
    }
}

/// An instance's place in Moodle Network, as VMoodle had it: -1 none, 0 free (MNET on, no
/// subnetwork), N member of subnetwork N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MnetMode(pub i64);

impl MnetMode {
    pub const NONE: MnetMode = MnetMode(-1);

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let n: i64 = s.trim().parse().map_err(|_| {
            ValidationError::new(
                "MNET subnetwork",
                s,
                "-1 (no MNET), 0 (MNET on, no subnetwork) or a subnetwork number 1..=9999",
            )
        })?;
        Self::new(n).map_err(|_| {
            ValidationError::new(
                "MNET subnetwork",
                s,
                "-1 (no MNET), 0 (MNET on, no subnetwork) or a subnetwork number 1..=9999",
            )
        })
    }

    pub fn new(n: i64) -> Result<Self, ValidationError> {
        if (-1..=9999).contains(&n) {
            Ok(MnetMode(n))
        } else {
            Err(ValidationError::new(
                "MNET subnetwork",
                n.to_string(),
                "-1 (no MNET), 0 (MNET on, no subnetwork) or a subnetwork number 1..=9999",
            ))
        }
    }

    pub fn describe(self) -> String {
        match self.0 {
            -1 => "none".into(),
            0 => "free".into(),
            n => format!("subnetwork {n}"),
        }
    }
}
