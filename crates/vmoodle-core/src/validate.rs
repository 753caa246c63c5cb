//! The rules every value must follow before it reaches SQL, a host name, PHP source or the
//! filesystem. Each check names the bad value and says what is allowed, so an administrator can
//! fix the input at once.

use std::path::{Component, Path, PathBuf};
use thiserror::Error;

/// A value that broke a rule: which field, the value as given, and what is allowed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("invalid {field} `{value}`: {allowed}")]
pub struct ValidationError {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

impl ValidationError {
    pub fn new(
        field: impl Into<String>,
        value: impl AsRef<str>,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: printable(value.as_ref()),
            allowed: allowed.into(),
        }
    }
}

/// Shows a value with control characters escaped and long values cut, for error messages.
pub fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(|c| c.escape_debug()).collect();
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

/// Why tokens are so strict: a token ends up in a host name label (letters, digits, hyphen), in a
/// database and user name (where a hyphen needs quoting everywhere) and in a directory name.
pub const TOKEN_RULE: &str = "1 to 20 characters: lowercase letters a-z and digits 0-9, starting \
with a letter (a token becomes part of a host name, a database name, a database user name and a \
directory name, so only characters valid in all four are allowed)";

/// An instance token (VMoodle's `<%%INSTANCE%%>` value).
pub fn token(s: &str) -> Result<&str, ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 20
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(s)
    } else {
        let mut allowed = TOKEN_RULE.to_string();
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            allowed.push_str(&format!("; did you mean `{}`?", s.to_ascii_lowercase()));
        }
        Err(ValidationError::new("token", s, allowed))
    }
}

const HOST_RULE: &str = "a DNS host name: labels of letters, digits and inner hyphens (1-63 \
characters each) joined by dots, at most 253 characters, optionally followed by `:port` (1-65535)";

/// A normalized request host as the hook sees it: lowercase, optional non-default port.
pub fn host(s: &str) -> Result<String, ValidationError> {
    let lower = s.to_ascii_lowercase();
    let (name, port) = match lower.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (lower.as_str(), None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name_ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok);
    let port_ok = match port {
        None => true,
        Some(p) => {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
        }
    };
    if name_ok && port_ok && s.is_ascii() {
        Ok(lower)
    } else {
        Err(ValidationError::new("host", s, HOST_RULE))
    }
}

/// A Moodle wwwroot, normalized: scheme, lowercase host, non-default port, path without a
/// trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wwwroot {
    pub url: String,
    pub host: String,
    pub https: bool,
}

const WWWROOT_RULE: &str = "an absolute http:// or https:// address of a host name, with an \
optional port and path, and no user, query, fragment or trailing slash (e.g. \
https://school1.moodle.example.org)";

pub fn wwwroot(s: &str) -> Result<Wwwroot, ValidationError> {
    let bad = || ValidationError::new("wwwroot", s, WWWROOT_RULE);
    let trimmed = s.trim();
    if trimmed.is_empty() || trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    // The url crate resolves `.` and `..` segments; refuse them before it hides them.
    if let Some(rest) = trimmed.split_once("://").map(|(_, r)| r) {
        if rest.split(['/', '?', '#']).skip(1).any(|seg| {
            seg == "."
                || seg == ".."
                || seg.eq_ignore_ascii_case("%2e%2e")
                || seg.eq_ignore_ascii_case("%2e")
        }) {
            return Err(bad());
        }
    }
    let u = url::Url::parse(trimmed).map_err(|_| bad())?;
    let https = match u.scheme() {
        "http" => false,
        "https" => true,
        _ => return Err(bad()),
    };
    if !u.username().is_empty()
        || u.password().is_some()
        || u.query().is_some()
        || u.fragment().is_some()
    {
        return Err(bad());
    }
    let name = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        _ => return Err(bad()),
    };
    let hostport = match u.port() {
        Some(p) => format!("{name}:{p}"),
        None => name,
    };
    let host = host(&hostport).map_err(|_| bad())?;
    let path = u.path().trim_end_matches('/');
    if !path.is_empty() {
        let path_ok = path.split('/').skip(1).all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        });
        if !path_ok {
            return Err(bad());
        }
    }
    let url = format!("{}://{}{}", u.scheme(), host, path);
    Ok(Wwwroot { url, host, https })
}

const PREFIX_RULE: &str =
    "1 to 10 characters: lowercase letters, digits and underscores, starting \
with a letter and ending with an underscore (Moodle's usual prefix is mdl_)";

/// A Moodle table prefix.
pub fn prefix(s: &str) -> Result<&str, ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 10
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.ends_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(s)
    } else {
        Err(ValidationError::new("table prefix", s, PREFIX_RULE))
    }
}

const DBNAME_RULE: &str = "1 to 63 characters: letters, digits, underscores and hyphens, starting \
with a letter or underscore (PostgreSQL cuts names at 63 bytes; MariaDB allows 64)";

/// A database name (quoted as an identifier wherever it reaches SQL).
pub fn db_name(s: &str) -> Result<&str, ValidationError> {
    if ident_ok(s, 63) {
        Ok(s)
    } else {
        Err(ValidationError::new("database name", s, DBNAME_RULE))
    }
}

const DBUSER_RULE: &str = "1 to 32 characters: letters, digits, underscores and hyphens, starting \
with a letter or underscore (MySQL cuts user names at 32 characters)";

/// A database user name.
pub fn db_user(s: &str) -> Result<&str, ValidationError> {
    if ident_ok(s, 32) {
        Ok(s)
    } else {
        Err(ValidationError::new("database user", s, DBUSER_RULE))
    }
}

fn ident_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && (s.as_bytes()[0].is_ascii_alphabetic() || s.as_bytes()[0] == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const NAME_RULE: &str = "1 to 64 characters: letters, digits, `_`, `.` and `-`, starting with a \
letter or digit";

/// A name vmoodle uses as a command argument: instance shortnames, database server names,
/// template names.
pub fn object_name<'a>(field: &str, s: &'a str) -> Result<&'a str, ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(s)
    } else {
        Err(ValidationError::new(field, s, NAME_RULE))
    }
}

/// Free text stored in the register and written into PHP or Moodle (site name, description).
pub fn text<'a>(
    field: &str,
    s: &'a str,
    max: usize,
    allow_empty: bool,
) -> Result<&'a str, ValidationError> {
    let ok = (allow_empty || !s.trim().is_empty())
        && s.chars().count() <= max
        && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    if ok {
        Ok(s)
    } else {
        Err(ValidationError::new(
            field,
            s,
            format!(
                "{}at most {max} characters, no control characters",
                if allow_empty { "" } else { "not empty, " }
            ),
        ))
    }
}

const PATH_RULE: &str = "an absolute path without `.` or `..` components, made of letters, digits \
and `/ _ . - + @` (no spaces, quotes or control characters), and not `/` itself";

/// An absolute path vmoodle will write to or give to Moodle (dataroot, moodle directory).
pub fn abs_path(field: &str, s: &str) -> Result<PathBuf, ValidationError> {
    let bad = || ValidationError::new(field, s, PATH_RULE);
    let trimmed = if s.len() > 1 {
        s.trim_end_matches('/')
    } else {
        s
    };
    if !trimmed.starts_with('/')
        || trimmed == "/"
        || trimmed.len() > 1024
        || !trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-+@".contains(&b))
        || trimmed.contains("//")
    {
        return Err(bad());
    }
    // Path::components() drops `.` silently, so look at the raw segments.
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(bad());
    }
    let p = Path::new(trimmed);
    debug_assert!(p
        .components()
        .all(|c| !matches!(c, Component::CurDir | Component::ParentDir)));
    Ok(p.to_path_buf())
}

/// A TCP port; 0 is refused.
pub fn port(s: &str) -> Result<u16, ValidationError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ValidationError::new("port", s, "a TCP port number 1-65535")),
    }
}

/// A database server address: host name or IP address, no port, no path.
pub fn db_host(s: &str) -> Result<&str, ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && (host(s).is_ok() && !s.contains(':') || s.parse::<std::net::IpAddr>().is_ok());
    if ok {
        Ok(s)
    } else {
        Err(ValidationError::new(
            "database host",
            s,
            "a host name or IP address without a port (give the port with --port)",
        ))
    }
}

/// Whether two database host names point at this machine alike (`localhost`, `127.0.0.1`, `::1`).
pub fn same_db_host(a: &str, b: &str) -> bool {
    let local = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "::1" | "");
    a.eq_ignore_ascii_case(b) || (local(a) && local(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(token("school1").is_ok());
        assert!(token("a").is_ok());
        for bad in [
            "",
            "1abc",
            "a-b",
            "a_b",
            "a.b",
            "../x",
            "a b",
            "é",
            "abcdefghijklmnopqrstu",
            "x'; drop",
        ] {
            let e = token(bad).unwrap_err();
            assert_eq!(e.field, "token");
        }
        assert!(token("School1")
            .unwrap_err()
            .allowed
            .contains("did you mean `school1`"));
    }

    #[test]
    fn hosts() {
        assert_eq!(host("A.Example.org").unwrap(), "a.example.org");
        assert_eq!(host("a.example.org:8080").unwrap(), "a.example.org:8080");
        for bad in [
            "",
            "../etc",
            "a..b",
            "-a.b",
            "a.b:0",
            "a.b:99999",
            "a.b/x",
            "a\0b",
            "é.org",
            "a.b:",
            ":80",
        ] {
            assert!(host(bad).is_err(), "{bad:?} accepted");
        }
        assert!(host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn wwwroots() {
        let w = wwwroot("HTTPS://School1.Example.org/").unwrap();
        assert_eq!(w.url, "https://school1.example.org");
        assert_eq!(w.host, "school1.example.org");
        assert!(w.https);
        let w = wwwroot("http://x.example.org:80/moodle").unwrap();
        assert_eq!(w.url, "http://x.example.org/moodle");
        let w = wwwroot("http://x.example.org:8080").unwrap();
        assert_eq!(w.host, "x.example.org:8080");
        for bad in [
            "ftp://a.b",
            "http://u:p@a.b",
            "http://a.b/?q=1",
            "a.b",
            "http://a.b/../x",
            "http://[::1]/",
            "http://a b",
        ] {
            assert!(wwwroot(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefixes_names_paths() {
        assert!(prefix("mdl_").is_ok());
        assert!(prefix("mdl").is_err());
        assert!(prefix("MDL_").is_err());
        assert!(prefix("m;_").is_err());
        assert!(db_name("vm_school1").is_ok());
        assert!(db_name("a`b").is_err());
        assert!(db_name(&"a".repeat(64)).is_err());
        assert!(db_user("x'y").is_err());
        assert_eq!(
            abs_path("dataroot", "/srv/data/").unwrap(),
            PathBuf::from("/srv/data")
        );
        for bad in [
            "relative", "/", "/a/../b", "/a/./b", "/a b", "/a'b", "/a//b",
        ] {
            assert!(abs_path("dataroot", bad).is_err(), "{bad:?} accepted");
        }
        assert!(same_db_host("localhost", "127.0.0.1"));
        assert!(!same_db_host("db1", "127.0.0.1"));
    }
}
