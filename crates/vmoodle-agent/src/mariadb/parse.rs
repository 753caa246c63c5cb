//! Pure parsing and rendering for the MariaDB steps: the client's vertical (`-E`) output, the
//! GTID of a backup, SQL string literals, the managed configuration of a replica.

use std::collections::BTreeMap;

use crate::protocol::{DbState, Role};

/// One row of `mariadb -E` output: column name -> value.
pub type Row = BTreeMap<String, String>;

/// Splits the vertical output of the client (`*** N. row ***` headers, then `name: value` lines
/// with the names right-aligned) into rows, in order. A value spanning several lines (an error
/// text with a newline) is joined back with `\n`.
pub fn vertical_rows(text: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("***") && line.trim_end().ends_with("***") && line.contains(". row ") {
            rows.push(Row::new());
            last_key = None;
            continue;
        }
        let Some(row) = rows.last_mut() else {
            continue;
        };
        let trimmed = line.trim_start();
        // A field line is "<spaces>Name: value" (or "Name:" when the value is empty); the name
        // has no spaces. Anything else continues the previous value.
        let field = trimmed.split_once(": ").or_else(|| {
            trimmed
                .strip_suffix(':')
                .map(|name| (name, ""))
                .filter(|(name, _)| !name.is_empty())
        });
        match field {
            Some((name, value)) if !name.contains(' ') && !name.is_empty() => {
                row.insert(name.to_string(), value.to_string());
                last_key = Some(name.to_string());
            }
            _ => {
                if let Some(k) = &last_key {
                    if let Some(v) = row.get_mut(k) {
                        v.push('\n');
                        v.push_str(line);
                    }
                }
            }
        }
    }
    rows
}

/// The state a probe reports from the rows of
/// `SELECT @@read_only AS read_only, @@gtid_current_pos AS gtid_current_pos; SHOW SLAVE STATUS`.
pub fn state_from_rows(rows: &[Row], probed_at: i64) -> DbState {
    let vars = rows.iter().find(|r| r.contains_key("read_only"));
    let slave = rows.iter().find(|r| r.contains_key("Slave_IO_Running"));
    let Some(vars) = vars else {
        return DbState {
            role: Some(Role::Down),
            probed_at,
            ..DbState::default()
        };
    };
    let read_only = vars.get("read_only").map(|v| v.trim() != "0");
    let yes = |r: &Row, k: &str| r.get(k).map(|v| v.trim() == "Yes");
    let configured = slave.is_some_and(|s| s.get("Master_Host").is_some_and(|h| !h.is_empty()));
    let role = match read_only {
        // Writable but replicating from a source: never a primary HAProxy may send writes to.
        Some(false) if configured => Role::Readonly,
        Some(false) => Role::Primary,
        Some(true) if configured => Role::Replica,
        Some(true) => Role::Readonly,
        None => Role::Down,
    };
    let mut st = DbState {
        role: Some(role),
        read_only,
        position: vars.get("gtid_current_pos").cloned(),
        probed_at,
        ..DbState::default()
    };
    if let Some(s) = slave.filter(|_| configured) {
        st.io_running = yes(s, "Slave_IO_Running");
        st.sql_running = yes(s, "Slave_SQL_Running");
        st.lag_seconds = s
            .get("Seconds_Behind_Master")
            .and_then(|v| v.trim().parse::<f64>().ok());
        st.source = match (s.get("Master_Host"), s.get("Master_Port")) {
            (Some(h), Some(p)) => Some(format!("{h}:{p}")),
            (Some(h), None) => Some(h.clone()),
            _ => None,
        };
        let errors: Vec<String> = ["Last_IO_Error", "Last_SQL_Error"]
            .iter()
            .filter_map(|k| s.get(*k).filter(|v| !v.trim().is_empty()))
            .map(|v| v.trim().to_string())
            .collect();
        if !errors.is_empty() {
            st.error = Some(errors.join("; "));
        }
    }
    st
}

/// The GTID position a backup was taken at: the third field of `xtrabackup_binlog_info`
/// ("mysql-bin.000001\t1656\t0-1-7", several domains comma-separated). None when the primary
/// wrote no binary log.
pub fn backup_gtid(binlog_info: &str) -> Option<String> {
    let line = binlog_info.lines().find(|l| !l.trim().is_empty())?;
    let gtid: String = line.split_whitespace().skip(2).collect::<Vec<_>>().join("");
    let ok = !gtid.is_empty()
        && gtid
            .chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == ',');
    ok.then_some(gtid)
}

/// A single-quoted SQL string literal (backslashes and quotes escaped, NUL and newlines spelled
/// out), safe with MariaDB's default sql_mode.
pub fn sql_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x1a' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The SQL that points a freshly seeded replica at its primary and starts it.
pub fn replication_sql(gtid: &str, host: &str, port: u16, user: &str, password: &str) -> String {
    format!(
        "SET SESSION sql_mode='';\nSET GLOBAL gtid_slave_pos={};\nCHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={port}, \
         MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, \
         MASTER_CONNECT_RETRY=1;\nSTART SLAVE;\n",
        sql_literal(gtid),
        sql_literal(host),
        sql_literal(user),
        sql_literal(password),
    )
}

/// The managed configuration of a replica.
pub fn replica_config(server_id: u32) -> String {
    format!(
        "# Written by vmoodle-agent (seeded as a replica); the agent rewrites this file.\n\
         [mysqld]\n\
         server_id={server_id}\n\
         log_bin=mysql-bin\n\
         binlog_format=ROW\n\
         log_slave_updates=ON\n\
         gtid_strict_mode=ON\n\
         read_only=ON\n\
         relay_log=relay-bin\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = "\
*************************** 1. row ***************************
       read_only: 1
gtid_current_pos: 0-1-8
*************************** 1. row ***************************
                Slave_IO_State: Waiting for master to send event
                   Master_Host: 10.251.0.11
                   Master_User: repl
                   Master_Port: 3306
              Slave_IO_Running: Yes
             Slave_SQL_Running: No
                 Last_IO_Error: 
                Last_SQL_Error: Could not execute Write_rows
 on table t.x
         Seconds_Behind_Master: NULL
                    Using_Gtid: Slave_Pos
";

    #[test]
    fn parses_vertical_output_and_role() {
        let rows = vertical_rows(PROBE);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["Master_Port"], "3306");
        assert_eq!(rows[1]["Last_IO_Error"], "");
        let st = state_from_rows(&rows, 7);
        assert_eq!(st.role, Some(Role::Replica));
        assert_eq!(st.read_only, Some(true));
        assert_eq!(st.io_running, Some(true));
        assert_eq!(st.sql_running, Some(false));
        assert_eq!(st.lag_seconds, None);
        assert_eq!(st.position.as_deref(), Some("0-1-8"));
        assert_eq!(st.source.as_deref(), Some("10.251.0.11:3306"));
        assert_eq!(
            st.error.as_deref(),
            Some("Could not execute Write_rows\n on table t.x")
        );
        assert_eq!(st.probed_at, 7);
    }

    #[test]
    fn roles_without_a_slave() {
        let primary = vertical_rows("*** 1. row ***\n       read_only: 0\ngtid_current_pos: \n");
        let st = state_from_rows(&primary, 1);
        assert_eq!(st.role, Some(Role::Primary));
        assert_eq!(st.position.as_deref(), Some(""));
        assert_eq!(st.io_running, None);
        let ro = vertical_rows("*** 1. row ***\nread_only: 1\ngtid_current_pos: 0-1-2\n");
        assert_eq!(state_from_rows(&ro, 1).role, Some(Role::Readonly));
        assert_eq!(state_from_rows(&[], 1).role, Some(Role::Down));
    }

    #[test]
    fn gtid_of_a_backup() {
        assert_eq!(
            backup_gtid("mysql-bin.000001\t1656\t0-1-7\n").as_deref(),
            Some("0-1-7")
        );
        assert_eq!(
            backup_gtid("mysql-bin.000003\t385\t0-1-7,1-2-9\n").as_deref(),
            Some("0-1-7,1-2-9")
        );
        assert_eq!(backup_gtid("mysql-bin.000001\t1656\n"), None);
        assert_eq!(backup_gtid(""), None);
        assert_eq!(backup_gtid("a\tb\t0-1-7'; DROP\n"), None);
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(sql_literal("a'b\\c"), r"'a\'b\\c'");
        let sql = replication_sql("0-1-7", "db1", 3306, "repl", "p'w");
        assert!(sql.contains("MASTER_PASSWORD='p\\'w'"), "{sql}");
        assert!(sql.contains("MASTER_PORT=3306,"), "{sql}");
        assert!(sql.starts_with("SET SESSION sql_mode='';\nSET GLOBAL gtid_slave_pos='0-1-7';"));
        assert!(replica_config(2).contains("\nserver_id=2\n"));
    }
}
