//! Pure text work for PostgreSQL: quoting in configuration files, libpq connection strings and
//! password files, the probe's row, and the replication lines `pg_basebackup -R` leaves behind.

use crate::protocol::{DbState, Role};

/// The field separator of the agent's psql output (`psql -F`): a unit separator, which no
/// setting, LSN or host name contains.
pub const SEP: char = '\u{1f}';

/// Quotes a value for postgresql.conf: `'...'` with `\` and `'` escaped.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The value of a postgresql.conf line's right-hand side: a quoted string (with `''` and
/// backslash escapes) or a bare word; a trailing `#` comment is dropped.
pub fn conf_unquote(raw: &str) -> String {
    let raw = raw.trim();
    let Some(body) = raw.strip_prefix('\'') else {
        return raw.split('#').next().unwrap_or("").trim().to_string();
    };
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => break,
            },
            o => out.push(o),
        }
    }
    out
}

/// The name of a `name = value` line of a configuration file (lower-cased), if it is one.
fn conf_key(line: &str) -> Option<String> {
    let l = line.trim_start();
    if l.starts_with('#') || l.is_empty() {
        return None;
    }
    let end = l.find(|c: char| c == '=' || c.is_whitespace())?;
    Some(l[..end].to_ascii_lowercase())
}

/// The value of `key` in a configuration file's text (the last line wins, as in PostgreSQL).
pub fn conf_get(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter(|l| conf_key(l).as_deref() == Some(key))
        .find_map(|l| l.split_once('=').map(|(_, v)| conf_unquote(v)))
}

/// The text without the lines that set any of `keys`.
pub fn conf_without(text: &str, keys: &[&str]) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| !conf_key(l).is_some_and(|k| keys.contains(&k.as_str())))
        .collect::<Vec<_>>()
        .join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Parses a libpq `key=value ...` connection string (values bare or single-quoted, with
/// backslash escapes). None when it is malformed.
pub fn conninfo_parse(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next()? {
                    '\'' => break,
                    '\\' => val.push(chars.next()?),
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    val.push(chars.next()?);
                } else {
                    val.push(c);
                }
            }
        }
        out.push((key, val));
    }
}

/// Renders a connection string, every value single-quoted.
pub fn conninfo_render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `key` to `value` in a parsed connection string (replacing, or appending).
pub fn conninfo_set(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(p) => p.1 = value.to_string(),
        None => pairs.push((key.to_string(), value.to_string())),
    }
}

/// One line of a libpq password file (`host:port:database:user:password`), with `:` and `\`
/// escaped as libpq reads them.
pub fn passfile_line(host: &str, port: u16, user: &str, password: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!("{}:{port}:*:{}:{}\n", esc(host), esc(user), esc(password))
}

/// Whether a name is safe as a replication slot name (PostgreSQL allows lower-case letters,
/// digits and underscores, at most 63).
pub fn valid_slot(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The probe's SQL: one row, fields separated by [`SEP`].
pub const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
 CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END, \
 pg_last_wal_receive_lsn()::text, \
 CASE WHEN NOT pg_is_in_recovery() THEN NULL \
      WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
      ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END, \
 EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'), \
 CASE WHEN pg_is_in_recovery() THEN NOT pg_is_wal_replay_paused() END, \
 (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver LIMIT 1), \
 current_setting('primary_conninfo') <> ''";

/// Reads the probe's row into a state (role, LSN, lag, receiver and replay status).
pub fn parse_probe(out: &str) -> Option<DbState> {
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let f: Vec<&str> = line.split(SEP).collect();
    if f.len() != 8 {
        return None;
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let boolean = |s: &str| match s {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    };
    let in_recovery = boolean(f[0])?;
    let has_conninfo = boolean(f[7]).unwrap_or(false);
    let role = match (in_recovery, has_conninfo) {
        (false, _) => Role::Primary,
        (true, true) => Role::Replica,
        (true, false) => Role::Readonly,
    };
    Some(DbState {
        role: Some(role),
        read_only: Some(in_recovery),
        io_running: in_recovery.then(|| boolean(f[4]).unwrap_or(false)),
        sql_running: in_recovery.then(|| boolean(f[5]).unwrap_or(false)),
        lag_seconds: f[3].parse::<f64>().ok().map(|l| l.max(0.0)),
        position: opt(f[1]),
        source: if in_recovery { opt(f[6]) } else { None },
        error: None,
        probed_at: vmoodle_core::now_unix(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_quoting_round_trips() {
        for s in [
            "plain",
            "it's",
            "back\\slash",
            "user=repl passfile='/x y/p'",
        ] {
            let q = conf_quote(s);
            assert_eq!(conf_unquote(&q), s, "{q}");
        }
        assert_eq!(conf_unquote(" on   # comment"), "on");
        assert_eq!(conf_unquote("'a\\'b' # c"), "a'b");
    }

    #[test]
    fn reads_and_strips_the_lines_basebackup_writes() {
        let auto = "# Do not edit this file manually!\nshared_buffers = '64MB'\n\
            primary_conninfo = 'user=repl passfile=''/tmp/x/pgpass'' host=127.0.0.1 port=5433 sslmode=prefer'\n\
            primary_slot_name = 'vm_pg2'\n";
        let ci = conf_get(auto, "primary_conninfo").unwrap();
        assert_eq!(
            ci,
            "user=repl passfile='/tmp/x/pgpass' host=127.0.0.1 port=5433 sslmode=prefer"
        );
        assert_eq!(conf_get(auto, "primary_slot_name").unwrap(), "vm_pg2");
        let stripped = conf_without(auto, &["primary_conninfo", "primary_slot_name"]);
        assert_eq!(
            stripped,
            "# Do not edit this file manually!\nshared_buffers = '64MB'\n"
        );
        assert_eq!(
            conf_get("#port = 5\nport=6\nPort = 7\n", "port").unwrap(),
            "7"
        );
    }

    #[test]
    fn conninfo_parses_and_renders() {
        let mut p = conninfo_parse(
            "user=repl passfile='/tmp/x y/pg\\'pass' host=127.0.0.1 port = 5433 a=b\\ c",
        )
        .unwrap();
        assert_eq!(p[1], ("passfile".into(), "/tmp/x y/pg'pass".into()));
        assert_eq!(p[3], ("port".into(), "5433".into()));
        assert_eq!(p[4], ("a".into(), "b c".into()));
        conninfo_set(&mut p, "passfile", "/var/lib/pg.pass");
        conninfo_set(&mut p, "application_name", "pg 2");
        let s = conninfo_render(&p);
        assert_eq!(conninfo_parse(&s).unwrap(), p);
        assert!(
            s.contains("passfile='/var/lib/pg.pass'") && s.ends_with("application_name='pg 2'")
        );
        assert!(conninfo_parse("user='unterminated").is_none());
        assert!(conninfo_parse("novalue").is_none());
        assert_eq!(conninfo_parse("  ").unwrap(), vec![]);
    }

    #[test]
    fn passfile_escapes_colons_and_backslashes() {
        assert_eq!(
            passfile_line("127.0.0.1", 5433, "repl", "a:b\\c"),
            "127.0.0.1:5433:*:repl:a\\:b\\\\c\n"
        );
        assert_eq!(passfile_line("::1", 5432, "r", "p"), "\\:\\:1:5432:*:r:p\n");
    }

    #[test]
    fn slot_names() {
        assert!(valid_slot("vm_pg2"));
        assert!(!valid_slot("Vm"));
        assert!(!valid_slot("a-b"));
        assert!(!valid_slot(""));
        assert!(!valid_slot(&"a".repeat(64)));
    }

    #[test]
    fn probe_rows() {
        let row = |f: [&str; 8]| f.join(&SEP.to_string());
        let p = parse_probe(&row(["f", "0/3000280", "", "", "f", "", "", "f"])).unwrap();
        assert_eq!(p.role, Some(Role::Primary));
        assert_eq!(p.read_only, Some(false));
        assert_eq!(p.position.as_deref(), Some("0/3000280"));
        assert_eq!((p.io_running, p.sql_running, p.source), (None, None, None));

        let r = parse_probe(&row([
            "t",
            "0/3000280",
            "0/3000280",
            "0",
            "t",
            "t",
            "127.0.0.1:5433",
            "t",
        ]))
        .unwrap();
        assert_eq!(r.role, Some(Role::Replica));
        assert_eq!((r.io_running, r.sql_running), (Some(true), Some(true)));
        assert_eq!(r.lag_seconds, Some(0.0));
        assert_eq!(r.source.as_deref(), Some("127.0.0.1:5433"));

        let ro = parse_probe(&row(["t", "0/1", "", "", "f", "f", "", "f"])).unwrap();
        assert_eq!(ro.role, Some(Role::Readonly));
        assert_eq!((ro.io_running, ro.sql_running), (Some(false), Some(false)));
        assert_eq!(ro.lag_seconds, None);
        assert!(parse_probe("garbage").is_none());
    }
}
