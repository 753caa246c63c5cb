//! Reading an instance's own database with the instance's own account (the one in its host
//! file, which has rights on that database only): what vmoodle reads of a site's Moodle (version,
//! release, counts) never uses a server administrator's account. Tenants' databases are hostile:
//! table names are built from the registered prefix and quoted, values are bound.

use anyhow::{Context, Result};
use vmoodle_core::DbKind;
use vmoodle_dbserver::{quote_ident, Conn, ConnSpec};
use vmoodle_registry::Instance;

use super::moodle::MoodleVersion;
use crate::Home;

/// The time limit of one statement on a site's database (seconds).
pub const STATEMENT_SECS: u64 = 60;

/// An instance's database, reached with its own account.
#[derive(Debug, Clone)]
pub struct SiteDb {
    pub inst: Instance,
    pub kind: DbKind,
    pub spec: ConnSpec,
}

impl SiteDb {
    /// The instance's connection spec: its server's address, its own user and password.
    pub async fn new(home: &Home, inst: &Instance) -> Result<Self> {
        let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
        let password = home
            .secrets
            .open(
                &inst.dbpass_sealed,
                &vmoodle_core::Binding::instance_dbpass(&inst.shortname),
            )
            .with_context(|| format!("the database password of `{}`", inst.shortname))?;
        Ok(Self {
            inst: inst.clone(),
            kind: server.kind,
            spec: ConnSpec {
                server: server.name.clone(),
                kind: server.kind,
                host: server.host.clone(),
                port: server.port,
                socket: server.socket.clone(),
                user: inst.dbuser.clone(),
                password,
            },
        })
    }

    /// Connects to the instance's database, with a time limit on every statement: the tables
    /// are the tenant's (a view that sleeps, a held lock) and must not hang vmoodle.
    pub async fn conn(&self) -> Result<Conn> {
        let mut c = vmoodle_dbserver::connect(&self.spec, Some(&self.inst.dbname)).await?;
        let limit = if self.kind.is_mysql_family() {
            // MariaDB's name (seconds); MySQL's max_execution_time (ms) covers SELECTs only.
            format!("SET SESSION max_statement_time = {STATEMENT_SECS}")
        } else {
            format!("SET statement_timeout = {}", STATEMENT_SECS * 1000)
        };
        if c.batch(&limit).await.is_err() && self.kind.is_mysql_family() {
            let _ = c
                .batch(&format!(
                    "SET SESSION max_execution_time = {}",
                    STATEMENT_SECS * 1000
                ))
                .await;
        }
        Ok(c)
    }

    /// A Moodle table of this instance, prefixed and quoted (`config` -> `"mdl_config"`).
    pub fn t(&self, table: &str) -> String {
        quote_ident(self.kind, &format!("{}{table}", self.inst.prefix))
    }

    /// An expression as text, for [`Conn::rows`].
    pub fn cast(&self, expr: &str) -> String {
        if self.kind.is_mysql_family() {
            format!("CAST({expr} AS CHAR)")
        } else {
            format!("({expr})::text")
        }
    }

    /// `config.version` and `config.release` of the site.
    pub async fn version(&self, c: &mut Conn) -> Result<MoodleVersion> {
        let rows = c
            .rows(
                &format!(
                    "SELECT name, {} FROM {} WHERE name IN ('version', 'release')",
                    self.cast("value"),
                    self.t("config")
                ),
                &[],
            )
            .await
            .with_context(|| format!("reading the Moodle version of `{}`", self.inst.shortname))?;
        let mut v = MoodleVersion {
            version: String::new(),
            release: String::new(),
        };
        for r in rows {
            match (
                r.first().cloned().flatten().as_deref(),
                r.get(1).cloned().flatten(),
            ) {
                (Some("version"), Some(x)) => v.version = x,
                (Some("release"), Some(x)) => v.release = x,
                _ => {}
            }
        }
        Ok(v)
    }
}

/// Reads the Moodle version of each instance (a few at a time) and records it in the register's
/// site facts; returns what was read, or why not, per instance.
pub async fn refresh_versions(
    home: &Home,
    instances: &[Instance],
) -> Vec<(String, Result<MoodleVersion>)> {
    use futures::StreamExt;
    futures::stream::iter(instances.iter())
        .map(|inst| async move {
            let r =
                tokio::time::timeout(std::time::Duration::from_secs(STATEMENT_SECS + 15), async {
                    let db = SiteDb::new(home, inst).await?;
                    let mut c = db.conn().await?;
                    let v = db.version(&mut c).await;
                    vmoodle_dbserver::close(c).await;
                    let v = v?;
                    home.registry
                        .set_site_facts(inst.id, &v.version, &v.release, vmoodle_core::now_unix())
                        .await?;
                    Ok(v)
                })
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("its database did not answer in time")));
            (inst.shortname.clone(), r)
        })
        .buffer_unordered(8)
        .collect()
        .await
}
