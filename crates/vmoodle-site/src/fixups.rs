//! What a new Moodle needs after its database was cloned from a template, following Moodle's own
//! code: the site course's names, the template's wwwroot replaced in text columns with the rules
//! of `db_replace()` (lib/adminlib.php: tables config, config_plugins, filter_config, sessions,
//! events_queue, repository_instance_config, block_instances, files and log tables skipped,
//! columns ending in `hash` skipped, char columns cut to their length), a new siteidentifier
//! (`random_string(32) . host`), a unique sessioncookie (alphanumeric), sessions, logs and MNET
//! sessions/logs purged, the local `mnet_host` row moved to the new wwwroot with its key cleared
//! and other peers removed, and the cache revisions bumped as `theme_reset_all_caches()` does.

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
    for name in PURGE_TABLES {
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

    // 7. The admin account.
    if f.admin_password_hash.is_some() || f.admin_email.is_some() {
        let mut sets = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        if let Some(h) = &f.admin_password_hash {
            sets.push("password = ?");
            params.push(h.as_str().into());
        }
        if let Some(e) = &f.admin_email {
            sets.push("email = ?");
            params.push(e.as_str().into());
        }
        let n = conn
            .exec(
                &format!(
                    "UPDATE {} SET {} WHERE username = 'admin' AND deleted = 0",
                    t("user"),
                    sets.join(", ")
                ),
                &params,
            )
            .await
            .map_err(step("setting the admin account"))?;
        if n == 0 {
            return Err(("setting the admin account".into(), sqlx::Error::RowNotFound));
        }
    }
    Ok(report)
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
}
