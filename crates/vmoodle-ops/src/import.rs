//! Importing what VMoodle users already have: the `local_vmoodle` register table of a master
//! Moodle, and VMoodle's semicolon-separated node list. Each row is registered on its own; the
//! report says what was taken and what was refused, and why.

use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use vmoodle_core::{validate, DbKind, Secret};
use vmoodle_registry::InstanceFields;

use crate::{dbservers, instances, Home};

/// The columns of VMoodle's `local_vmoodle` table that vmoodle reads.
pub const VMOODLE_COLUMNS: &[&str] = &[
    "id",
    "vhostname",
    "vdbtype",
    "vdbhost",
    "vdblogin",
    "vdbpass",
    "vdbname",
    "vdbprefix",
    "vdbpersist",
    "vdatapath",
    "mnet",
    "enabled",
    "name",
    "shortname",
    "description",
];

/// Columns a node list must have (as VMoodle's bulk tool required).
pub const CSV_REQUIRED: &[&str] = &[
    "vhostname",
    "name",
    "shortname",
    "vdatapath",
    "vdbname",
    "vdblogin",
    "vdbpass",
];

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub taken: Vec<Taken>,
    pub refused: Vec<Refused>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Taken {
    pub row: String,
    pub shortname: String,
    pub host: String,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub row: String,
    pub reason: String,
}

pub type RowMap = BTreeMap<String, Option<String>>;

/// Imports the rows of a VMoodle register table.
pub async fn from_vmoodle_table(
    home: &Home,
    dbserver: &str,
    database: &str,
    prefix: &str,
    force_admin_account: bool,
) -> Result<ImportReport> {
    validate::prefix(prefix)?;
    validate::db_name(database)?;
    let server = home.registry.dbserver(dbserver).await?;
    let spec = dbservers::admin_spec(home, &server)?;
    let mut last_err = None;
    let mut rows = None;
    for table in ["local_vmoodle", "block_vmoodle"] {
        match vmoodle_dbserver::read_table(
            &spec,
            database,
            &format!("{prefix}{table}"),
            VMOODLE_COLUMNS,
        )
        .await
        {
            Ok(r) => {
                rows = Some(r);
                break;
            }
            Err(e @ vmoodle_dbserver::DbError::NoTable { .. }) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(rows) = rows else {
        return Err(last_err.expect("a table was tried").into());
    };
    let mut report = ImportReport::default();
    for (n, row) in rows.iter().enumerate() {
        let label = match row.get("id").cloned().flatten() {
            Some(id) => format!("id {id}"),
            None => format!("row {}", n + 1),
        };
        import_row(
            home,
            &label,
            row,
            Some(&server),
            force_admin_account,
            &mut report,
        )
        .await;
    }
    Ok(report)
}

/// Imports VMoodle's node list (semicolon-separated, header line first; lines starting with
/// `#`, `/`, `(`, `[` or `-` are comments).
pub async fn from_csv(home: &Home, path: &Path, force_admin_account: bool) -> Result<ImportReport> {
    let (headers, records) = read_nodelist(path, CSV_REQUIRED)?;
    let mut report = ImportReport::default();
    let deploy_only: Vec<&String> = headers
        .iter()
        .filter(|h| {
            h.starts_with("config_") || h.contains('|') || *h == "vtemplate" || *h == "services"
        })
        .collect();
    if !deploy_only.is_empty() {
        report.notes.push(format!(
            "column(s) {} set up new instances when deploying from a template; `import csv` registers existing Moodles and leaves them aside",
            deploy_only.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let known: Vec<&str> = VMOODLE_COLUMNS.to_vec();
    for h in &headers {
        if !known.contains(&h.as_str()) && !deploy_only.contains(&h) {
            report.notes.push(format!("unknown column `{h}` ignored"));
        }
    }
    let mut next_subnet = next_free_subnetwork(home).await?;
    for (line, rec) in records {
        let mut row = match rec {
            Ok(r) => r,
            Err(e) => {
                report.refused.push(Refused {
                    row: line,
                    reason: e,
                });
                continue;
            }
        };
        if row.get("mnet").cloned().flatten().as_deref() == Some("NEW") {
            row.insert("mnet".into(), Some(next_subnet.to_string()));
            next_subnet += 1;
        }
        import_row(home, &line, &row, None, force_admin_account, &mut report).await;
    }
    Ok(report)
}

/// Reads VMoodle's node list: semicolon-separated, the first non-comment line the header,
/// comment lines starting with `#`, `/`, `(`, `[` or `-`, `&#44` standing for a semicolon.
/// Returns the header and each record (line label, fields or why it is unreadable).
#[allow(clippy::type_complexity)]
pub fn read_nodelist(
    path: &Path,
    required: &[&str],
) -> Result<(
    Vec<String>,
    Vec<(String, std::result::Result<RowMap, String>)>,
)> {
    let text = fs_err::read_to_string(path)?;
    let mut lines: Vec<(usize, &str)> = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let t = l.trim_end_matches('\r');
        if !t.trim().is_empty() && !t.starts_with(['#', '/', '(', '[', '-']) {
            lines.push((n + 1, t));
        }
    }
    let data: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(b';')
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(data.as_bytes());
    let headers: Vec<String> = rdr.headers()?.iter().map(|h| h.to_string()).collect();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|c| !headers.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks the column(s) {}; a node list needs {} (semicolon-separated, header line first)",
            path.display(),
            missing.join(", "),
            required.join(";")
        );
    }
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let label = format!(
            "line {}",
            lines.get(i + 1).map(|(n, _)| *n).unwrap_or(i + 2)
        );
        out.push((
            label,
            rec.map(|rec| {
                headers
                    .iter()
                    .zip(rec.iter())
                    .map(|(h, v)| {
                        (
                            h.clone(),
                            Some(v.replace("&#44", ";")).filter(|s| !s.is_empty()),
                        )
                    })
                    .collect()
            })
            .map_err(|e| format!("not a valid CSV record: {e}")),
        ));
    }
    Ok((headers, out))
}

async fn next_free_subnetwork(home: &Home) -> Result<i64> {
    Ok(home
        .registry
        .instances()
        .await?
        .iter()
        .map(|i| i.mnet)
        .max()
        .unwrap_or(0)
        .max(0)
        + 1)
}

async fn import_row(
    home: &Home,
    label: &str,
    row: &RowMap,
    source: Option<&vmoodle_registry::DbServer>,
    force_admin_account: bool,
    report: &mut ImportReport,
) {
    match row_fields(home, row, source, force_admin_account).await {
        Ok(f) => match instances::add(home, &f).await {
            Ok(i) => report.taken.push(Taken {
                row: label.into(),
                shortname: i.shortname,
                host: i.host,
            }),
            Err(e) => report.refused.push(Refused {
                row: label.into(),
                reason: format!("{e:#}"),
            }),
        },
        Err(e) => report.refused.push(Refused {
            row: label.into(),
            reason: format!("{e:#}"),
        }),
    }
}

async fn row_fields(
    home: &Home,
    row: &RowMap,
    source: Option<&vmoodle_registry::DbServer>,
    force_admin_account: bool,
) -> Result<InstanceFields> {
    let get = |k: &str| row.get(k).cloned().flatten().unwrap_or_default();
    let need = |k: &str| {
        let v = get(k);
        if v.trim().is_empty() {
            bail!("`{k}` is empty");
        }
        Ok(v)
    };
    let vhost = need("vhostname")?;
    let www = validate::wwwroot(&vhost)?;
    if let Some(existing) = home.registry.find_instance(&www.host).await? {
        bail!(
            "host {} is already registered as instance `{}`",
            www.host,
            existing.shortname
        );
    }
    let vdbtype = row
        .get("vdbtype")
        .cloned()
        .flatten()
        .unwrap_or_else(|| "mariadb".into());
    let kind = DbKind::from_moodle_dbtype(&vdbtype)?;
    let vdbhost = row
        .get("vdbhost")
        .cloned()
        .flatten()
        .unwrap_or_else(|| "localhost".into());
    let (dbhost, dbport) = match vdbhost.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), Some(validate::port(p)?)),
        _ => (vdbhost.clone(), None),
    };
    let server = match source {
        Some(s)
            if s.kind.is_mysql_family() == kind.is_mysql_family()
                && validate::same_db_host(&s.host, &dbhost)
                && dbport.is_none_or(|p| p == s.port) =>
        {
            s.clone()
        }
        _ => dbservers::find_matching(home, kind, &dbhost, dbport).await?.ok_or_else(|| {
            anyhow::anyhow!(
                "no registered database server for {kind} at {vdbhost}; register it with `vmoodle dbserver add NAME --type {kind} --host {dbhost} ...` and import again"
            )
        })?,
    };
    let shortname = need("shortname")?;
    let flag = |k: &str, default: bool| match get(k).trim() {
        "" => Ok(default),
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => bail!("`{k}` is `{other}`, expected 0 or 1"),
    };
    let mnet_raw = get("mnet");
    let mnet = if mnet_raw.trim().is_empty() {
        -1
    } else {
        vmoodle_core::MnetMode::parse(&mnet_raw)?.0
    };
    let dbtype = if kind == DbKind::Pgsql {
        "pgsql".to_string()
    } else if vdbtype == "mariadb" {
        "mariadb".into()
    } else {
        server.kind.moodle_dbtype().into()
    };
    let dbpass_sealed = home.secrets.seal(
        &Secret::new(get("vdbpass")),
        &vmoodle_core::Binding::instance_dbpass(&shortname),
    )?;
    let mut f = InstanceFields {
        name: Some(get("name"))
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| shortname.clone()),
        shortname,
        host: www.host,
        wwwroot: www.url,
        description: get("description"),
        is_master: false,
        enabled: flag("enabled", true)?,
        dbserver_id: server.id,
        dbtype,
        dbname: need("vdbname")?,
        dbuser: need("vdblogin")?,
        dbpass_sealed,
        prefix: Some(get("vdbprefix"))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "mdl_".into()),
        dbpersist: flag("vdbpersist", false)?,
        dataroot: need("vdatapath")?,
        mnet,
        template: None,
        config: BTreeMap::new(),
    };
    instances::check_fields(&mut f)?;
    dbservers::refuse_privileged_account(home, &server, &f.dbuser, force_admin_account).await?;
    Ok(f)
}
