//! Templates: snapshots of a live Moodle (the master or an instance) in three visible steps, as
//! the VMoodle wizard had them (storage directories, database dump, dataroot copy), with a
//! manifest of checksums; listing, verifying and deleting them; and the live template databases
//! kept on database servers for fast clones (`vmtpl_<name>`, used by nobody but vmoodle).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vmoodle_core::{validate, DbKind};
use vmoodle_dbserver::{admin, tools, ConnSpec};
use vmoodle_registry::{DbServer, Template};
use vmoodle_site::dataroot;

use crate::{dbservers, Home};

pub const MANIFEST: &str = "manifest.json";
pub const CHECKSUMS: &str = "dataroot.sha256";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub source: SourceInfo,
    pub moodle: MoodleInfo,
    pub tables: u64,
    pub database: Artifact,
    pub dataroot: DatarootInfo,
    pub created_at: i64,
    pub timings_ms: Vec<(String, u128)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    pub shortname: String,
    pub wwwroot: String,
    pub dbtype: String,
    pub kind: DbKind,
    pub prefix: String,
    pub dbserver: String,
    pub server_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoodleInfo {
    pub version: String,
    pub release: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatarootInfo {
    pub dir: String,
    pub files: u64,
    pub bytes: u64,
    pub linked: u64,
    /// The checksum list (dataroot.sha256) and its own checksum.
    pub checksums: Artifact,
    /// What the copy left out of the source and why (symbolic links, special files, hard links
    /// that may lead outside the dataroot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

const TEMPLATE_RULE: &str = "1 to 40 characters: lowercase letters, digits and underscores, starting with a letter (it names a database `vmtpl_NAME`)";

pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(validate::ValidationError::new("template name", name, TEMPLATE_RULE).into());
    }
    Ok(())
}

/// The live template database for a template.
pub fn live_db_name(template: &str) -> String {
    format!("vmtpl_{template}")
}

pub fn templates_dir(home: &Home) -> PathBuf {
    home.root.join("templates")
}

pub fn clients(home: &Home) -> Result<tools::Clients> {
    Ok(tools::Clients {
        mariadb: home.executable("mariadb")?,
        mariadb_dump: home.executable("mariadb_dump")?,
        psql: home.executable("psql")?,
        pg_dump: home.executable("pg_dump")?,
        pg_restore: home.executable("pg_restore")?,
    })
}

/// Progress of a long operation: (step number, total, what).
pub type Progress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);

/// Snapshots the instance `source` (shortname or host; the master too) as template `name`, as
/// a journaled job: the capture goes into a directory of its own job, renamed into place when
/// complete, then registered; an interruption at any point is undone (`jobs recover`).
pub async fn snapshot(
    home: &Home,
    source: &str,
    name: &str,
    events: crate::journal::Events<'_>,
) -> Result<Template> {
    use crate::journal::{Journal, Undo};
    check_name(name)?;
    let inst = home.registry.instance(source).await?;
    if home.registry.find_template(name).await?.is_some() {
        bail!("template `{name}` already exists\nhint: `vmoodle template delete {name}` first, or choose another name");
    }
    let final_dir = templates_dir(home).join(name);
    if final_dir.exists() {
        bail!(
            "{} exists but is not a registered template; remove it or choose another name",
            final_dir.display()
        );
    }
    let mut j = Journal::start(home, "snapshot", name, 2, events).await?;
    let r = async {
        j.step("capture").await?;
        let partial = templates_dir(home).join(format!(".{name}.partial-{}", j.id));
        j.intend(Undo::RemoveDir {
            path: partial.clone(),
        })
        .await?;
        let cb = |n: usize, t: usize, what: &str| j.count(n as u64, t as u64, what);
        let manifest_text = capture(home, &inst, name, &partial, &cb).await?;
        j.made().await?;
        j.step("register").await?;
        j.intend(Undo::RemoveDir {
            path: final_dir.clone(),
        })
        .await?;
        if let Err(e) = crate::deploy::rename_noreplace(&partial, &final_dir) {
            j.cancel_intent().await?;
            return Err(e);
        }
        j.made().await?;
        // A live template database of an older template of the same name would be stale.
        drop_live_databases(home, name).await?;
        j.intend(Undo::RemoveTemplate { name: name.into() }).await?;
        let t = home
            .registry
            .add_template(
                name,
                &inst.shortname,
                &final_dir.display().to_string(),
                &manifest_text,
            )
            .await?;
        j.made().await?;
        anyhow::Ok(t)
    }
    .await;
    match r {
        Ok(t) => {
            j.finish().await?;
            Ok(t)
        }
        Err(e) => {
            let left = j.fail(&format!("{e:#}")).await;
            let mut err = e.context(format!(
                "snapshot `{name}` of `{}` failed; undone",
                inst.shortname
            ));
            if !left.is_empty() {
                err = err.context(left.join("; "));
            }
            Err(err)
        }
    }
}

/// Captures an instance into `dir` (created here; removed again on failure): the database dump,
/// the dataroot copy (a copy, never links to the tenant's files, and no symbolic link
/// followed) and checksums, and manifest.json. Returns the manifest's text.
pub async fn capture(
    home: &Home,
    inst: &vmoodle_registry::Instance,
    name: &str,
    dir: &Path,
    progress: Progress<'_>,
) -> Result<String> {
    let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
    let spec = dbservers::admin_spec(home, &server)?;
    let src_dataroot = PathBuf::from(&inst.dataroot);
    // A symbolic link is refused here, before anything is made.
    dataroot::check_root(&src_dataroot)
        .with_context(|| format!("the dataroot of `{}`", inst.shortname))?;
    let clients = clients(home)?;
    // 1/3 storage directories.
    progress(1, 3, "storage directories");
    let t0 = Instant::now();
    let mut timings = Vec::new();
    if dir.exists() {
        fs_err::remove_dir_all(dir)?;
    }
    fs_err::create_dir_all(dir)?;
    let partial = dir;
    let result = async {
        timings.push(("storage".to_string(), t0.elapsed().as_millis()));
        // 2/3 database dump.
        progress(2, 3, "database dump");
        let t = Instant::now();
        let info = read_moodle_info(&spec, &inst.dbname, &inst.prefix).await?;
        let dump_name = if server.kind.is_mysql_family() {
            "database.sql.zst"
        } else {
            "database.pgdump"
        };
        let dump_path = partial.join(dump_name);
        tools::dump(&clients, &spec, &inst.dbname, &dump_path).await?;
        let database = Artifact {
            file: dump_name.into(),
            bytes: fs_err::metadata(&dump_path)?.len(),
            sha256: dataroot::sha256_file(&dump_path)?,
        };
        timings.push(("database dump".to_string(), t.elapsed().as_millis()));
        // 3/3 dataroot copy.
        progress(3, 3, "dataroot copy");
        let t = Instant::now();
        let dst = partial.join("dataroot");
        // The source is a tenant's: copied, never hard-linked (a shared inode would let the
        // tenant rewrite the template). The copy is root's and read-only to everyone else, so
        // deploys can hard-link its filedir and the web server reads it.
        let modes = dataroot::Modes {
            dir: 0o750,
            file: 0o644,
            owner: None,
        };
        let (src2, dst2) = (src_dataroot.clone(), dst.clone());
        let stats = tokio::task::spawn_blocking(move || dataroot::copy(&src2, &dst2, false, modes))
            .await??;
        let dst3 = dst.clone();
        let list = tokio::task::spawn_blocking(move || dataroot::checksum_list(&dst3)).await??;
        fs_err::write(partial.join(CHECKSUMS), &list)?;
        timings.push(("dataroot copy".to_string(), t.elapsed().as_millis()));
        let manifest = Manifest {
            format: 1,
            name: name.to_string(),
            source: SourceInfo {
                shortname: inst.shortname.clone(),
                wwwroot: inst.wwwroot.clone(),
                dbtype: inst.dbtype.clone(),
                kind: server.kind,
                prefix: inst.prefix.clone(),
                dbserver: server.name.clone(),
                server_version: info.server_version,
            },
            moodle: MoodleInfo {
                version: info.version,
                release: info.release,
            },
            tables: info.tables,
            database,
            dataroot: DatarootInfo {
                dir: "dataroot".into(),
                files: stats.files,
                bytes: stats.bytes,
                linked: stats.linked,
                checksums: Artifact {
                    file: CHECKSUMS.into(),
                    bytes: list.len() as u64,
                    sha256: dataroot::sha256_bytes(list.as_bytes()),
                },
                skipped: stats.skipped,
            },
            created_at: vmoodle_core::now_unix(),
            timings_ms: timings.clone(),
        };
        let text = serde_json::to_string_pretty(&manifest)?;
        fs_err::write(partial.join(MANIFEST), &text)?;
        anyhow::Ok(text)
    }
    .await;
    match result {
        Ok(t) => Ok(t),
        Err(e) => {
            let _ = std::fs::remove_dir_all(partial);
            Err(e.context(format!(
                "capture of `{}` failed; nothing was kept",
                inst.shortname
            )))
        }
    }
}

struct DbInfo {
    version: String,
    release: String,
    tables: u64,
    server_version: String,
}

async fn read_moodle_info(spec: &ConnSpec, db: &str, prefix: &str) -> Result<DbInfo> {
    let mut c = vmoodle_dbserver::connect(spec, Some(db)).await?;
    let t = vmoodle_dbserver::quote_ident(spec.kind, &format!("{prefix}config"));
    let cast = if spec.kind.is_mysql_family() {
        "CAST(value AS CHAR)"
    } else {
        "value::text"
    };
    let mut get = async |name: &str| -> Result<String> {
        Ok(c.column(&format!("SELECT {cast} FROM {t} WHERE name = ?"), &[name.into()])
            .await
            .with_context(|| format!("reading `{name}` from {prefix}config in `{db}`: is this a Moodle database with prefix `{prefix}`?"))?
            .into_iter()
            .next()
            .unwrap_or_default())
    };
    let version = get("version").await?;
    let release = get("release").await?;
    let server_version = if spec.kind.is_mysql_family() {
        c.column("SELECT VERSION()", &[]).await?
    } else {
        c.column("SHOW server_version", &[]).await?
    }
    .into_iter()
    .next()
    .unwrap_or_default();
    vmoodle_dbserver::close(c).await;
    let tables = admin::tables(spec, db, prefix).await?.len() as u64;
    Ok(DbInfo {
        version,
        release,
        tables,
        server_version,
    })
}

/// A template's manifest and directory.
pub fn open(t: &Template) -> Result<(Manifest, PathBuf)> {
    let m: Manifest = serde_json::from_str(&t.manifest)
        .with_context(|| format!("the manifest of template `{}`", t.name))?;
    Ok((m, PathBuf::from(&t.path)))
}

/// Checks a template's artifacts against its manifest; `deep` re-hashes every dataroot file.
pub fn verify(t: &Template, deep: bool) -> Result<Vec<String>> {
    let (m, dir) = open(t)?;
    let mut problems = Vec::new();
    if !dir.is_dir() {
        problems.push(format!("{} is missing", dir.display()));
        return Ok(problems);
    }
    for a in [&m.database, &m.dataroot.checksums] {
        let p = dir.join(&a.file);
        match dataroot::sha256_file(&p) {
            Ok(h) if h == a.sha256 => {}
            Ok(_) => problems.push(format!("{} does not match its checksum", a.file)),
            Err(e) => problems.push(format!("{}: {e}", a.file)),
        }
    }
    if let Ok(list) = std::fs::read_to_string(dir.join(CHECKSUMS)) {
        problems.extend(dataroot::check_list(
            &dir.join(&m.dataroot.dir),
            &list,
            deep,
        ));
    }
    Ok(problems)
}

/// Deletes a template: its files, its live databases, its register entry.
pub async fn delete(home: &Home, name: &str) -> Result<()> {
    let t = home.registry.template(name).await?;
    drop_live_databases(home, name).await?;
    let dir = PathBuf::from(&t.path);
    // Only ever remove what lies inside the home's templates/ directory.
    if dir.starts_with(templates_dir(home)) && dir.exists() {
        fs_err::remove_dir_all(&dir)?;
    }
    home.registry.remove_template(name).await?;
    Ok(())
}

async fn drop_live_databases(home: &Home, name: &str) -> Result<()> {
    for s in home.registry.dbservers().await? {
        let spec = dbservers::admin_spec(home, &s)?;
        match admin::database_exists(&spec, &live_db_name(name)).await {
            Ok(true) => admin::drop_database(&spec, &live_db_name(name)).await?,
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "could not check server `{}` for a live copy of template `{name}`: {e}",
                s.name
            ),
        }
        if s.kind.is_mysql_family() {
            for spare in crate::spares::spare_databases(&spec, name)
                .await
                .unwrap_or_default()
            {
                admin::drop_database(&spec, &spare).await?;
            }
        }
    }
    Ok(())
}

/// The mark of a complete live template, and of which version of the template it holds: the
/// checksum of its manifest (`spares::template_stamp`), in a table without the Moodle prefix in
/// MariaDB (never copied), in the database comment in PostgreSQL (read without connecting to
/// the template, which would block its clones). A live database whose stamp is not the
/// template's (a template of the same name snapshotted again) is rebuilt.
const READY_COMMENT: &str = "vmoodle live template";

fn ready_comment(stamp: &str) -> String {
    format!("{READY_COMMENT} {stamp}")
}

async fn live_is_ready(spec: &ConnSpec, db: &str, stamp: &str) -> Result<bool> {
    if spec.kind.is_mysql_family() {
        return Ok(crate::spares::read_stamp(spec, db).await?.as_deref() == Some(stamp));
    }
    let mut c = vmoodle_dbserver::connect(spec, None).await?;
    let r = c
        .column(
            "SELECT datname::text FROM pg_database WHERE datname = ? AND shobj_description(oid, 'pg_database') = ?",
            &[db.into(), ready_comment(stamp).into()],
        )
        .await;
    vmoodle_dbserver::close(c).await;
    Ok(!r?.is_empty())
}

/// Makes sure the live template database exists, complete, on `server` (loading the dump if
/// not). A server-side named lock makes concurrent deploys wait for one load; a copy left
/// incomplete by an interrupted load is dropped and made again.
pub async fn ensure_live(home: &Home, t: &Template, server: &DbServer) -> Result<bool> {
    let (m, dir) = open(t)?;
    if m.source.kind.is_mysql_family() != server.kind.is_mysql_family() {
        bail!(
            "template `{}` holds a {} database; it can only be deployed to a {} server, and `{}` is {}",
            t.name,
            m.source.kind,
            if m.source.kind.is_mysql_family() { "mariadb/mysql" } else { "pgsql" },
            server.name,
            server.kind
        );
    }
    let spec = dbservers::admin_spec(home, server)?;
    let db = live_db_name(&t.name);
    let k = server.kind;
    let stamp = crate::spares::template_stamp(t);
    // Fast path: complete already, and of this version of the template.
    if live_is_ready(&spec, &db, &stamp).await? {
        return Ok(false);
    }
    let mut lock = vmoodle_dbserver::connect(&spec, None).await?;
    let got = if k.is_mysql_family() {
        lock.column(
            "SELECT CAST(GET_LOCK(?, 900) AS CHAR)",
            &[db.as_str().into()],
        )
        .await?
    } else {
        lock.column(
            "SELECT pg_advisory_lock(hashtext(?))::text",
            &[db.as_str().into()],
        )
        .await?
        .into_iter()
        .map(|_| "1".to_string())
        .collect()
    };
    if got.first().map(String::as_str) != Some("1") {
        vmoodle_dbserver::close(lock).await;
        bail!(
            "timed out waiting for another vmoodle loading template `{}` onto `{}`",
            t.name,
            server.name
        );
    }
    let r = async {
        if live_is_ready(&spec, &db, &stamp).await? {
            return anyhow::Ok(false);
        }
        admin::drop_database(&spec, &db).await?;
        admin::create_database(&spec, &db).await?;
        tools::load(&clients(home)?, &spec, &db, &dir.join(&m.database.file)).await?;
        let qdb = vmoodle_dbserver::quote_ident(k, &db);
        if k.is_mysql_family() {
            crate::spares::write_stamp(&spec, &db, &stamp).await?;
        } else {
            admin::run(
                &spec,
                None,
                "marking the live template complete",
                &[
                    format!("REVOKE ALL ON DATABASE {qdb} FROM PUBLIC"),
                    format!(
                        "COMMENT ON DATABASE {qdb} IS {}",
                        vmoodle_dbserver::quote_literal(k, &ready_comment(&stamp))
                    ),
                ],
            )
            .await?;
        }
        anyhow::Ok(true)
    }
    .await;
    vmoodle_dbserver::close(lock).await;
    match r {
        Ok(made) => Ok(made),
        Err(e) => {
            let _ = admin::drop_database(&spec, &db).await;
            Err(e.context(format!(
                "loading template `{}` onto `{}`",
                t.name, server.name
            )))
        }
    }
}

/// Where the template's dataroot copy is.
pub fn dataroot_dir(t: &Template) -> Result<PathBuf> {
    let (m, dir) = open(t)?;
    Ok(dir.join(m.dataroot.dir))
}

pub fn exists_on_disk(p: &Path) -> bool {
    p.exists()
}
