//! What a new Moodle needs after its database was cloned from a template, following Moodle's own
//! code: the site course's names, the template's wwwroot replaced in text columns with the rules
//! of `db_replace()` (lib/adminlib.php: tables config, config_plugins, filter_config, sessions,
//! events_queue, repository_instance_config, block_instances, files and log tables skipped,
//! columns ending in `hash` skipped, char columns cut to their length), a new siteidentifier
//! (`random_string(32) . host`), a unique sessioncookie (alphanumeric), sessions, logs and MNET
//! sessions/logs purged, the local `mnet_host` row moved to the new wwwroot with its key cleared
//! and other peers removed, and the cache revisions bumped as `theme_reset_all_caches()` does.
//!
//! db_replace() leaves `config` and `config_plugins` alone, yet settings there name the site
//! (`noreplyaddress` = noreply@HOST, `auth_shibboleth/auth_instructions` links to the wwwroot):
//! those values get the template's wwwroot, then its bare host, replaced (exact matches only,
//! never inside a longer host), and the report names each setting rewritten. A clone shares no
//! secrets and no queued work with its template: web-service, OAuth2, LTI, backpack and
//! password-reset tokens, private keys, the site registration, ad-hoc tasks and locks are
//! emptied. The admin password goes to the site administrators (`$CFG->siteadmins`).

use serde::Serialize;
use vmoodle_core::DbKind;
use vmoodle_dbserver::{quote_ident, quote_literal, Conn, Param};

/// db_replace()'s skipped tables (without prefix).
pub const REPLACE_SKIP_TABLES: &[&str] = &[
    "config",
    "config_plugins",
    "filter_config",
    "sessions",
    "events_queue",
    "repository_instance_config",
    "block_instances",
    "files",
];

/// Tables emptied in a new instance (without prefix); those missing are ignored.
pub const PURGE_TABLES: &[&str] = &[
    "sessions",
    "logstore_standard_log",
    "log",
    "mnet_session",
    "mnet_log",
];

/// Tables holding secrets or queued work of the template (without prefix), emptied in a new
/// instance; those missing are ignored. Moodle 5.1: web-service tokens, user keys (RSS, calendar
/// export...), OAuth2 tokens (issuers' and the system account's), tokens issued to LTI tools,
/// Open Badges backpack tokens, pending password resets, inbound-mail keys, the site's
/// registration on moodle.net (a clone is another site), LTI 2 nonces, ad-hoc tasks and locks.
pub const SECRET_TABLES: &[&str] = &[
    "external_tokens",
    "user_private_key",
    "oauth2_access_token",
    "oauth2_refresh_token",
    "oauth2_system_account",
    "lti_access_tokens",
    "badge_backpack_oauth2",
    "user_password_resets",
    "messageinbound_datakeys",
    "registration_hubs",
    "enrol_lti_lti2_nonce",
    "task_adhoc",
    "lock_db",
];

/// Settings never rewritten by the host replacement (set or removed by later fix-ups).
const REWRITE_SKIP: &[(&str, &str)] = &[
    ("", "siteidentifier"),
    ("mnet", "openssl"),
    ("mnet", "openssl_history"),
];

/// Cache revisions bumped so no stale cache is served.
pub const CACHE_REVISIONS: &[&str] = &["themerev", "jsrev", "templaterev", "langrev"];

#[derive(Debug, Clone)]
pub struct Fixups {
    pub kind: DbKind,
    pub prefix: String,
    pub old_wwwroot: String,
    pub new_wwwroot: String,
    pub new_host: String,
    pub fullname: String,
    pub shortname: String,
    pub summary: Option<String>,
    pub sessioncookie: String,
    /// A PHP password_hash() of the new admin password.
    pub admin_password_hash: Option<String>,
    pub admin_email: Option<String>,
    /// Unix time to base cache revisions on.
    pub now: i64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FixupReport {
    pub columns_scanned: u64,
    pub rows_rewritten: u64,
    pub purged: Vec<String>,
    pub siteidentifier: String,
    /// Settings whose value named the template's wwwroot or host and now name the new one:
    /// `name` (config) or `plugin/name` (config_plugins).
    pub settings_rewritten: Vec<String>,
    /// Settings that name the template's host but were left alone, with the reason.
    pub settings_skipped: Vec<String>,
    /// The user ids that got the new admin password or email (`$CFG->siteadmins`).
    pub site_admins: Vec<i64>,
}

/// The host part (with its port, if any) of a wwwroot: `http://h:8080/moodle` -> `h:8080`.
pub fn wwwroot_host(wwwroot: &str) -> &str {
    let rest = wwwroot.split_once("://").map_or(wwwroot, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether a match ending at `end` of `hay` ends there: what follows does not continue a host
/// name (`master.test.org`, `master.testing`), a port (`:8080`) or a path segment.
fn ends_at(hay: &[u8], end: usize) -> bool {
    match hay.get(end) {
        None => true,
        Some(&b) if host_char(b) => false,
        Some(b'.') | Some(b':') => !hay.get(end + 1).is_some_and(|&n| host_char(n)),
        Some(_) => true,
    }
}

/// The value with the template's wwwroot replaced by the new one, then the template's bare host
/// by the new host, in one pass (so nothing is replaced twice), ASCII case-insensitively, only
/// where the match is not part of a longer host (`x.master.test`, `master.test.org`), a port or
/// a path; `None` when nothing matched.
pub fn rewrite_value(
    value: &str,
    old_wwwroot: &str,
    new_wwwroot: &str,
    old_host: &str,
    new_host: &str,
) -> Option<String> {
    let old_www = old_wwwroot.trim_end_matches('/').to_ascii_lowercase();
    let new_www = new_wwwroot.trim_end_matches('/');
    let old_host = old_host.to_ascii_lowercase();
    if old_host.is_empty() {
        return None;
    }
    let lower = value.to_ascii_lowercase();
    let (hay, src) = (lower.as_bytes(), value.as_bytes());
    let mut out: Vec<u8> = Vec::with_capacity(value.len());
    let (mut i, mut changed) = (0, false);
    while i < hay.len() {
        let rest = &hay[i..];
        if !old_www.is_empty()
            && rest.starts_with(old_www.as_bytes())
            && ends_at(hay, i + old_www.len())
        {
            out.extend_from_slice(new_www.as_bytes());
            i += old_www.len();
            changed = true;
            continue;
        }
        let starts = i == 0 || !(host_char(hay[i - 1]) || hay[i - 1] == b'.');
        if starts && rest.starts_with(old_host.as_bytes()) && ends_at(hay, i + old_host.len()) {
            out.extend_from_slice(new_host.as_bytes());
            i += old_host.len();
            changed = true;
            continue;
        }
        out.push(src[i]);
        i += 1;
    }
    // Only ASCII sequences were replaced, so the bytes are still UTF-8.
    changed.then(|| String::from_utf8(out).expect("ASCII replaced in UTF-8"))
}

/// Whether a setting's value is PHP-serialized (its string lengths would break if rewritten).
fn php_serialized(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() > 3
        && matches!(b[0], b'a' | b'O' | b's' | b'C')
        && b[1] == b':'
        && b[2].is_ascii_digit()
        && (v.ends_with('}') || v.ends_with(';'))
}

/// Whether db_replace() would touch this table (name without prefix).
pub fn replace_table(table: &str) -> bool {
    if REPLACE_SKIP_TABLES.contains(&table) {
        return false;
    }
    // preg_match('/(^|_)logs?($|_)/', $table)
    !table.split('_').any(|part| part == "log" || part == "logs")
}

/// Whether db_replace() would touch this column.
pub fn replace_column(column: &str) -> bool {
    !column.ends_with("hash")
}

fn random_alnum(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf).expect("random");
    buf.iter()
        .map(|b| A[*b as usize % A.len()] as char)
        .collect()
}

/// Applies every fix-up on a connection to the new instance's database.
pub async fn apply(conn: &mut Conn, f: &Fixups) -> Result<FixupReport, (String, sqlx::Error)> {
    let mut report = FixupReport::default();
    let t = |name: &str| quote_ident(f.kind, &format!("{}{name}", f.prefix));
    let step = |s: &str| {
        let s = s.to_string();
        move |e| (s, e)
    };

    // Tables present (those of this prefix).
    let tables: Vec<String> = if f.kind.is_mysql_family() {
        conn.column("SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()", &[]).await
    } else {
        conn.column("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()", &[]).await
    }
    .map_err(step("listing tables"))?
    .into_iter()
    .filter_map(|n| n.strip_prefix(&f.prefix).map(str::to_string))
    .collect();
    let has = |name: &str| tables.iter().any(|t| t == name);

    // 1. The template's wwwroot becomes the new one (db_replace rules).
    if f.old_wwwroot != f.new_wwwroot {
        let cols_sql = if f.kind.is_mysql_family() {
            "SELECT CAST(TABLE_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR), CAST(CHARACTER_MAXIMUM_LENGTH AS CHAR) \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND DATA_TYPE IN ('char', 'varchar', 'tinytext', 'text', 'mediumtext', 'longtext') ORDER BY TABLE_NAME, ORDINAL_POSITION"
        } else {
            "SELECT table_name::text, column_name::text, data_type::text, character_maximum_length::text \
             FROM information_schema.columns WHERE table_schema = current_schema() \
             AND data_type IN ('character varying', 'character', 'text') ORDER BY table_name, ordinal_position"
        };
        let cols = conn
            .rows(cols_sql, &[])
            .await
            .map_err(step("listing text columns"))?;
        let mut by_table: std::collections::BTreeMap<String, Vec<(String, Option<u64>)>> =
            Default::default();
        for r in cols {
            let (Some(table), Some(col)) = (r[0].clone(), r[1].clone()) else {
                continue;
            };
            let Some(bare) = table.strip_prefix(&f.prefix) else {
                continue;
            };
            if !replace_table(bare) || !replace_column(&col) {
                continue;
            }
            let maxlen = if r[2].as_deref().is_some_and(|d| d.contains("char")) {
                r[3].as_deref().and_then(|m| m.parse().ok())
            } else {
                None
            };
            by_table.entry(table).or_default().push((col, maxlen));
        }
        let like = format!(
            "%{}%",
            f.old_wwwroot
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let grows = f.new_wwwroot.chars().count() > f.old_wwwroot.chars().count();
        // One statement per table, all sent in one round trip (values as quoted literals).
        let (old, new, pat) = (
            quote_literal(f.kind, &f.old_wwwroot),
            quote_literal(f.kind, &f.new_wwwroot),
            quote_literal(f.kind, &like),
        );
        let mut batch = Vec::new();
        for (table, cols) in &by_table {
            report.columns_scanned += cols.len() as u64;
            let sets: Vec<String> = cols
                .iter()
                .map(|(col, maxlen)| {
                    let qc = quote_ident(f.kind, col);
                    let replaced = format!("REPLACE({qc}, {old}, {new})");
                    match maxlen {
                        Some(n) if grows => format!("{qc} = SUBSTRING({replaced}, 1, {n})"),
                        _ => format!("{qc} = {replaced}"),
                    }
                })
                .collect();
            let wheres: Vec<String> = cols
                .iter()
                .map(|(col, _)| {
                    let qc = quote_ident(f.kind, col);
                    if f.kind.is_mysql_family() {
                        format!("{qc} LIKE {pat}")
                    } else {
                        format!("{qc} LIKE {pat} ESCAPE '\\'")
                    }
                })
                .collect();
            batch.push(format!(
                "UPDATE {} SET {} WHERE {}",
                quote_ident(f.kind, table),
                sets.join(", "),
                wheres.join(" OR ")
            ));
        }
        report.rows_rewritten += conn
            .batch(&batch.join(";\n"))
            .await
            .map_err(step("replacing the wwwroot"))?;
        if has("course") {
            conn.exec(
                &format!("UPDATE {} SET cacherev = cacherev + 1", t("course")),
                &[],
            )
            .await
            .map_err(step("rebuilding course caches"))?;
        }
    }

    // 1b. Settings naming the template's wwwroot or host (db_replace skips these tables).
    if f.old_wwwroot != f.new_wwwroot {
        rewrite_settings(conn, f, &mut report)
            .await
            .map_err(step("rewriting settings that name the template's host"))?;
    }

    // 2. The site course.
    let mut sql = format!("UPDATE {} SET fullname = ?, shortname = ?", t("course"));
    let mut params: Vec<Param> = vec![f.fullname.as_str().into(), f.shortname.as_str().into()];
    if let Some(s) = &f.summary {
        sql.push_str(", summary = ?");
        params.push(s.as_str().into());
    }
    sql.push_str(" WHERE format = 'site'");
    conn.exec(&sql, &params)
        .await
        .map_err(step("renaming the site course"))?;

    // 3. Site identity and cookie; 4. cache revisions.
    report.siteidentifier = format!(
        "{}{}",
        random_alnum(32),
        f.new_host.split(':').next().unwrap_or(&f.new_host)
    );
    set_config(conn, f, "siteidentifier", &report.siteidentifier)
        .await
        .map_err(step("setting siteidentifier"))?;
    set_config(conn, f, "sessioncookie", &f.sessioncookie)
        .await
        .map_err(step("setting sessioncookie"))?;
    for name in CACHE_REVISIONS {
        let old: Option<i64> = get_config(conn, f, name)
            .await
            .map_err(step("reading cache revisions"))?
            .and_then(|v| v.parse().ok());
        let next = match old {
            Some(o) if f.now <= o => o + 1,
            _ => f.now,
        };
        set_config(conn, f, name, &next.to_string())
            .await
            .map_err(step("bumping cache revisions"))?;
    }

    // 5. Sessions and logs.
    for name in PURGE_TABLES.iter().chain(SECRET_TABLES) {
        if has(name) {
            let sql = if f.kind.is_mysql_family() {
                format!("TRUNCATE TABLE {}", t(name))
            } else {
                format!("TRUNCATE {}", t(name))
            };
            conn.exec(&sql, &[])
                .await
                .map_err(step(&format!("purging {name}")))?;
            report.purged.push(format!("{}{name}", f.prefix));
        }
    }

    // 6. MNET: the local host moves to the new wwwroot with no key; the template's peers go.
    let local: Option<i64> = get_config(conn, f, "mnet_localhost_id")
        .await
        .map_err(step("reading MNET ids"))?
        .and_then(|v| v.parse().ok());
    let all: Option<i64> = get_config(conn, f, "mnet_all_hosts_id")
        .await
        .map_err(step("reading MNET ids"))?
        .and_then(|v| v.parse().ok());
    if let (Some(local), true) = (local, has("mnet_host")) {
        let all = all.unwrap_or(local);
        conn.exec(
            &format!("UPDATE {} SET wwwroot = ?, public_key = '', public_key_expires = 0, name = ? WHERE id = ?", t("mnet_host")),
            &[f.new_wwwroot.as_str().into(), f.fullname.as_str().into(), local.into()],
        )
        .await
        .map_err(step("moving the local MNET host"))?;
        if has("mnet_host2service") {
            conn.exec(
                &format!(
                    "DELETE FROM {} WHERE hostid <> ? AND hostid <> ?",
                    t("mnet_host2service")
                ),
                &[local.into(), all.into()],
            )
            .await
            .map_err(step("removing the template's MNET peers"))?;
        }
        conn.exec(
            &format!("DELETE FROM {} WHERE id <> ? AND id <> ?", t("mnet_host")),
            &[local.into(), all.into()],
        )
        .await
        .map_err(step("removing the template's MNET peers"))?;
        conn.exec(
            &format!(
                "DELETE FROM {} WHERE plugin = 'mnet' AND name IN ('openssl', 'openssl_history')",
                t("config_plugins")
            ),
            &[],
        )
        .await
        .map_err(step("clearing the template's MNET key"))?;
    }

    // 7. The site administrators ($CFG->siteadmins: comma-separated user ids).
    if f.admin_password_hash.is_some() || f.admin_email.is_some() {
        let listed = get_config(conn, f, "siteadmins")
            .await
            .map_err(step("reading siteadmins"))?
            .unwrap_or_default();
        let ids: Vec<i64> = listed
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let mut sets = Vec::new();
        let mut base: Vec<Param> = Vec::new();
        if let Some(h) = &f.admin_password_hash {
            sets.push("password = ?");
            base.push(h.as_str().into());
        }
        if let Some(e) = &f.admin_email {
            sets.push("email = ?");
            base.push(e.as_str().into());
        }
        for id in ids {
            let mut params = base.clone();
            params.push(id.into());
            let n = conn
                .exec(
                    &format!(
                        "UPDATE {} SET {} WHERE id = ? AND deleted = 0",
                        t("user"),
                        sets.join(", ")
                    ),
                    &params,
                )
                .await
                .map_err(step("setting the site administrators' account"))?;
            if n > 0 {
                report.site_admins.push(id);
            }
        }
        if report.site_admins.is_empty() {
            return Err((
                format!("setting the site administrators' account: $CFG->siteadmins (`{listed}`) names no existing user"),
                sqlx::Error::RowNotFound,
            ));
        }
    }
    Ok(report)
}

/// Rewrites `config` and `config_plugins` values that name the template's wwwroot or host.
async fn rewrite_settings(
    conn: &mut Conn,
    f: &Fixups,
    report: &mut FixupReport,
) -> Result<(), sqlx::Error> {
    let old_host = wwwroot_host(&f.old_wwwroot).to_ascii_lowercase();
    let new_host = wwwroot_host(&f.new_wwwroot).to_string();
    // Hosts hold no `%`, `_` or backslash (validated), so the pattern needs no escaping.
    let pattern = format!("%{old_host}%");
    let (cast_id, cast_v) = if f.kind.is_mysql_family() {
        ("CAST(id AS CHAR)", "CAST(value AS CHAR)")
    } else {
        ("id::text", "value::text")
    };
    for plugins in [false, true] {
        let table = quote_ident(
            f.kind,
            &format!(
                "{}{}",
                f.prefix,
                if plugins { "config_plugins" } else { "config" }
            ),
        );
        let plugin_col = if plugins { "plugin" } else { "''" };
        let rows = conn
            .rows(
                &format!("SELECT {cast_id}, {plugin_col}, name, {cast_v} FROM {table} WHERE LOWER(value) LIKE ? ORDER BY id"),
                &[pattern.as_str().into()],
            )
            .await?;
        for r in rows {
            let (Some(id), Some(name), Some(value)) = (
                r[0].as_deref().and_then(|v| v.parse::<i64>().ok()),
                r[2].clone(),
                r[3].clone(),
            ) else {
                continue;
            };
            let plugin = r[1].clone().unwrap_or_default();
            if REWRITE_SKIP.contains(&(plugin.as_str(), name.as_str())) {
                continue;
            }
            let label = if plugins {
                format!("{plugin}/{name}")
            } else {
                name.clone()
            };
            let Some(new) =
                rewrite_value(&value, &f.old_wwwroot, &f.new_wwwroot, &old_host, &new_host)
            else {
                continue;
            };
            if php_serialized(&value) {
                report
                    .settings_skipped
                    .push(format!("{label}: a PHP-serialized value, left as it was"));
                continue;
            }
            conn.exec(
                &format!("UPDATE {table} SET value = ? WHERE id = ?"),
                &[new.as_str().into(), id.into()],
            )
            .await?;
            report.settings_rewritten.push(label);
        }
    }
    Ok(())
}

async fn get_config(
    conn: &mut Conn,
    f: &Fixups,
    name: &str,
) -> Result<Option<String>, sqlx::Error> {
    let t = quote_ident(f.kind, &format!("{}config", f.prefix));
    let cast = if f.kind.is_mysql_family() {
        "CAST(value AS CHAR)"
    } else {
        "value::text"
    };
    Ok(conn
        .column(
            &format!("SELECT {cast} FROM {t} WHERE name = ?"),
            &[name.into()],
        )
        .await?
        .into_iter()
        .next())
}

async fn set_config(
    conn: &mut Conn,
    f: &Fixups,
    name: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    set_setting(conn, f.kind, &f.prefix, None, name, value).await
}

/// Sets a core setting (`plugin` None: the config table) or a plugin setting (config_plugins),
/// inserting it when absent.
pub async fn set_setting(
    conn: &mut Conn,
    kind: DbKind,
    prefix: &str,
    plugin: Option<&str>,
    name: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    let (t, cond, mut keys): (String, &str, Vec<Param>) = match plugin {
        None => (
            quote_ident(kind, &format!("{prefix}config")),
            "name = ?",
            vec![name.into()],
        ),
        Some(p) => (
            quote_ident(kind, &format!("{prefix}config_plugins")),
            "plugin = ? AND name = ?",
            vec![p.into(), name.into()],
        ),
    };
    // Whether the row exists (MariaDB reports 0 rows for an UPDATE that changes nothing).
    let exists = !conn
        .rows(&format!("SELECT name FROM {t} WHERE {cond}"), &keys)
        .await?
        .is_empty();
    if exists {
        let mut params = vec![Param::from(value)];
        params.extend(keys);
        conn.exec(&format!("UPDATE {t} SET value = ? WHERE {cond}"), &params)
            .await?;
    } else {
        let (cols, marks) = if plugin.is_some() {
            ("plugin, name, value", "?, ?, ?")
        } else {
            ("name, value", "?, ?")
        };
        keys.push(value.into());
        conn.exec(&format!("INSERT INTO {t} ({cols}) VALUES ({marks})"), &keys)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_replace_rules() {
        assert!(replace_table("course"));
        assert!(replace_table("mnet_host"));
        for skip in [
            "config",
            "files",
            "block_instances",
            "log",
            "logstore_standard_log",
            "log_display",
            "mnet_log",
            "stats_logs",
        ] {
            assert!(!replace_table(skip), "{skip}");
        }
        assert!(replace_table("logstore")); // `(^|_)logs?($|_)` does not match `logstore`... alone
        assert!(!replace_column("contenthash"));
        assert!(replace_column("summary"));
    }

    #[test]
    fn host_rewrite_is_exact() {
        let rw = |v: &str| {
            rewrite_value(
                v,
                "http://master.moodle.test",
                "https://new.example.org",
                "master.moodle.test",
                "new.example.org",
            )
        };
        assert_eq!(
            rw("noreply@master.moodle.test").as_deref(),
            Some("noreply@new.example.org")
        );
        assert_eq!(
            rw("<a href=\"http://master.moodle.test/auth/shibboleth/index.php\">").as_deref(),
            Some("<a href=\"https://new.example.org/auth/shibboleth/index.php\">")
        );
        // Upper case, end of sentence, twice.
        assert_eq!(
            rw("Mail Master.Moodle.Test. Or http://master.moodle.test").as_deref(),
            Some("Mail new.example.org. Or https://new.example.org")
        );
        // Never inside another host, a port or a longer name.
        for other in [
            "noreply@sub.master.moodle.test",
            "xmaster.moodle.test",
            "master.moodle.test.org",
            "master.moodle.testing",
            "master.moodle.test-2",
            "http://master.moodle.test:8080/",
        ] {
            assert_eq!(rw(other), None, "{other}");
        }
        // A new host that contains the old one is not rewritten again.
        assert_eq!(
            rewrite_value(
                "a master.moodle.test b",
                "http://master.moodle.test",
                "http://x.master.moodle.test",
                "master.moodle.test",
                "x.master.moodle.test"
            )
            .as_deref(),
            Some("a x.master.moodle.test b")
        );
        assert_eq!(wwwroot_host("http://h.test:8080/moodle"), "h.test:8080");
        assert!(php_serialized(
            "a:1:{s:1:\"x\";s:18:\"master.moodle.test\";}"
        ));
        assert!(!php_serialized("noreply@master.moodle.test"));
    }
}
