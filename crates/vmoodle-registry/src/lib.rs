//! The register: which database servers vmoodle manages and which Moodle instances live on them
//! (later: templates and jobs). One `Registry` type serves both backends through sqlx's `Any`
//! driver: the queries are written once in the SQL both SQLite and PostgreSQL speak, and each
//! backend has its own embedded migrations for the table definitions.

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::Path;
use thiserror::Error;
use vmoodle_core::{now_unix, DbKind};

mod cluster_nodes;
mod clusters;
mod daemon;
mod fleet;
mod pool;
mod stats;
mod upgrade;
pub use cluster_nodes::{ClusterNode, NewClusterNode};
pub use clusters::{Cluster, Member, NewCluster};
pub use daemon::{Admin, ApiToken, NodeRow, ScheduleRow, SessionRow};
pub use fleet::{CronRun, CronState, SiteFacts, SiteLock, CRON_HISTORY};
pub use pool::{PoolFilter, PoolSort};
pub use stats::JobCount;
pub use upgrade::{NewUpgrade, UpgradeRow};

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("cannot open the register at {location}: {source}")]
    Open {
        location: String,
        source: sqlx::Error,
    },
    #[error("cannot bring the register's tables up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} `{name}` is not in the register{hint}")]
    NotFound {
        what: &'static str,
        name: String,
        hint: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("register query failed ({context}): {source}")]
    Query {
        context: &'static str,
        source: sqlx::Error,
    },
}

pub type Result<T> = std::result::Result<T, RegistryError>;

fn q(context: &'static str) -> impl FnOnce(sqlx::Error) -> RegistryError {
    move |source| match &source {
        sqlx::Error::Database(d) if d.is_unique_violation() => RegistryError::Conflict(format!(
            "{context}: an entry with the same unique value is already registered ({})",
            d.message()
        )),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => RegistryError::Conflict(
            format!("{context}: it is still referenced ({})", d.message()),
        ),
        _ => RegistryError::Query { context, source },
    }
}

/// A registered database server. The administrator password is kept sealed.
#[derive(Debug, Clone, Serialize)]
pub struct DbServer {
    pub id: i64,
    pub name: String,
    pub kind: DbKind,
    pub host: String,
    pub port: u16,
    pub socket: Option<String>,
    pub admin_user: String,
    #[serde(skip)]
    pub admin_password_sealed: String,
    pub topology: String,
    /// Where reads go when the server is a cluster (its reader port behind the virtual IP):
    /// Moodle's `dboptions['readonly']`.
    pub reader_host: Option<String>,
    pub reader_port: Option<u16>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Fields of a new database server.
#[derive(Debug, Clone)]
pub struct NewDbServer {
    pub name: String,
    pub kind: DbKind,
    pub host: String,
    pub port: u16,
    pub socket: Option<String>,
    pub admin_user: String,
    pub admin_password_sealed: String,
}

/// A registered Moodle instance (or the master). The database password is kept sealed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Instance {
    pub id: i64,
    pub shortname: String,
    pub host: String,
    pub wwwroot: String,
    pub name: String,
    pub description: String,
    pub is_master: bool,
    pub enabled: bool,
    pub dbserver: String,
    #[serde(skip)]
    pub dbserver_id: i64,
    pub dbtype: String,
    pub dbname: String,
    pub dbuser: String,
    #[serde(skip)]
    pub dbpass_sealed: String,
    pub prefix: String,
    pub dbpersist: bool,
    pub dataroot: String,
    pub mnet: i64,
    pub template: Option<String>,
    /// Extra `$CFG` values for this instance, a JSON object.
    pub config: CfgExtras,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Extra `$CFG` values of an instance (name -> value), written into its host file.
pub type CfgExtras = std::collections::BTreeMap<String, String>;

/// Fields of a new instance, or of an instance being edited.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceFields {
    pub shortname: String,
    pub host: String,
    pub wwwroot: String,
    pub name: String,
    pub description: String,
    pub is_master: bool,
    pub enabled: bool,
    pub dbserver_id: i64,
    pub dbtype: String,
    pub dbname: String,
    pub dbuser: String,
    pub dbpass_sealed: String,
    pub prefix: String,
    pub dbpersist: bool,
    pub dataroot: String,
    pub mnet: i64,
    pub template: Option<String>,
    pub config: CfgExtras,
}

impl From<&Instance> for InstanceFields {
    fn from(i: &Instance) -> Self {
        Self {
            shortname: i.shortname.clone(),
            host: i.host.clone(),
            wwwroot: i.wwwroot.clone(),
            name: i.name.clone(),
            description: i.description.clone(),
            is_master: i.is_master,
            enabled: i.enabled,
            dbserver_id: i.dbserver_id,
            dbtype: i.dbtype.clone(),
            dbname: i.dbname.clone(),
            dbuser: i.dbuser.clone(),
            dbpass_sealed: i.dbpass_sealed.clone(),
            prefix: i.prefix.clone(),
            dbpersist: i.dbpersist,
            dataroot: i.dataroot.clone(),
            mnet: i.mnet,
            template: i.template.clone(),
            config: i.config.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The register.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: AnyPool,
    backend: Backend,
}

const INSTANCE_COLUMNS: &str = "i.id, i.shortname, i.host, i.wwwroot, i.name, i.description, \
    i.is_master, i.enabled, i.dbserver_id, s.name AS dbserver, i.dbtype, i.dbname, i.dbuser, \
    i.dbpass, i.prefix, i.dbpersist, i.dataroot, i.mnet, i.template, i.config, i.created_at, \
    i.updated_at";

impl Registry {
    /// Opens (creating if needed) the SQLite register file and brings its tables up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open_url(&url, Backend::Sqlite, &path.display().to_string()).await
    }

    /// Opens a register kept in PostgreSQL (`postgres://...`) and brings its tables up to date.
    pub async fn open_postgres(url: &str) -> Result<Self> {
        Self::open_url(url, Backend::Postgres, &redact_url(url)).await
    }

    async fn open_url(url: &str, backend: Backend, location: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let mut opts = AnyPoolOptions::new().max_connections(4);
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts
            .connect(url)
            .await
            .map_err(|source| RegistryError::Open {
                location: location.to_string(),
                source,
            })?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- database servers -------------------------------------------------------------------

    pub async fn add_dbserver(&self, s: &NewDbServer) -> Result<DbServer> {
        if self.find_dbserver(&s.name).await?.is_some() {
            return Err(RegistryError::Conflict(format!(
                "database server `{}` is already registered",
                s.name
            )));
        }
        let now = now_unix();
        sqlx::query(
            "INSERT INTO db_servers (name, kind, host, port, socket, admin_user, admin_password, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.name)
        .bind(s.kind.as_str())
        .bind(&s.host)
        .bind(i64::from(s.port))
        .bind(s.socket.clone())
        .bind(&s.admin_user)
        .bind(&s.admin_password_sealed)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(q("adding a database server"))?;
        self.dbserver(&s.name).await
    }

    pub async fn dbservers(&self) -> Result<Vec<DbServer>> {
        let rows = sqlx::query("SELECT * FROM db_servers ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing database servers"))?;
        rows.iter().map(dbserver_from_row).collect()
    }

    pub async fn find_dbserver(&self, name: &str) -> Result<Option<DbServer>> {
        let row = sqlx::query("SELECT * FROM db_servers WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a database server"))?;
        row.as_ref().map(dbserver_from_row).transpose()
    }

    pub async fn dbserver(&self, name: &str) -> Result<DbServer> {
        self.find_dbserver(name)
            .await?
            .ok_or_else(|| RegistryError::NotFound {
                what: "database server",
                name: name.into(),
                hint: "\nhint: `vmoodle dbserver list` shows the registered servers".into(),
            })
    }

    pub async fn dbserver_by_id(&self, id: i64) -> Result<DbServer> {
        let row = sqlx::query("SELECT * FROM db_servers WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(q("reading a database server"))?;
        dbserver_from_row(&row)
    }

    /// Removes a database server; refused while any instance uses it.
    pub async fn remove_dbserver(&self, name: &str) -> Result<()> {
        let s = self.dbserver(name).await?;
        let users: Vec<String> = sqlx::query(
            "SELECT shortname FROM instances WHERE dbserver_id = $1 ORDER BY shortname",
        )
        .bind(s.id)
        .fetch_all(&self.pool)
        .await
        .map_err(q("checking a database server's instances"))?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(q("checking a database server's instances"))?;
        if !users.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "database server `{name}` is used by {} instance(s): {}; move or delete them first",
                users.len(),
                abbreviate(&users, 10)
            )));
        }
        sqlx::query("DELETE FROM db_servers WHERE id = $1")
            .bind(s.id)
            .execute(&self.pool)
            .await
            .map_err(q("removing a database server"))?;
        Ok(())
    }

    /// Replaces the sealed administrator password of a server (re-sealing; no other change).
    pub async fn set_dbserver_admin_password(&self, id: i64, sealed: &str) -> Result<()> {
        sqlx::query("UPDATE db_servers SET admin_password = $1, updated_at = $2 WHERE id = $3")
            .bind(sealed)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("storing a database server's password"))?;
        Ok(())
    }

    // ---- instances ----------------------------------------------------------------------------

    pub async fn add_instance(&self, f: &InstanceFields) -> Result<Instance> {
        self.check_instance_unique(f, None).await?;
        let now = now_unix();
        let sql = format!(
            "INSERT INTO instances ({FIELD_COLUMNS}, is_master, created_at, updated_at) \
             VALUES ({FIELD_PLACEHOLDERS}, $18, $19, $19)"
        );
        bind_fields(sqlx::query(&sql), f)
            .bind(i64::from(f.is_master))
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(q("adding an instance"))?;
        self.instance(&f.shortname).await
    }

    /// Refuses a shortname, host, dataroot or database already taken by another instance, naming it.
    async fn check_instance_unique(&self, f: &InstanceFields, except: Option<i64>) -> Result<()> {
        let checks: [(&str, &str, &str); 3] = [
            ("shortname", "shortname", &f.shortname),
            ("host", "host", &f.host),
            ("dataroot", "dataroot", &f.dataroot),
        ];
        for (col, label, value) in checks {
            let sql = format!("SELECT i.shortname, i.is_master FROM instances i WHERE i.{col} = $1 AND i.id <> $2");
            if let Some(row) = sqlx::query(&sql)
                .bind(value)
                .bind(except.unwrap_or(-1))
                .fetch_optional(&self.pool)
                .await
                .map_err(q("checking an instance"))?
            {
                let other: String = row.try_get(0).map_err(q("checking an instance"))?;
                let is_master: i64 = row.try_get(1).map_err(q("checking an instance"))?;
                if !(f.is_master && is_master == 1) {
                    return Err(RegistryError::Conflict(format!(
                        "{label} `{value}` is already used by instance `{other}`"
                    )));
                }
            }
        }
        if let Some(row) = sqlx::query(
            "SELECT shortname, is_master FROM instances WHERE dbserver_id = $1 AND dbname = $2 AND prefix = $3 AND id <> $4",
        )
        .bind(f.dbserver_id)
        .bind(&f.dbname)
        .bind(&f.prefix)
        .bind(except.unwrap_or(-1))
        .fetch_optional(&self.pool)
        .await
        .map_err(q("checking an instance"))?
        {
            let other: String = row.try_get(0).map_err(q("checking an instance"))?;
            let is_master: i64 = row.try_get(1).map_err(q("checking an instance"))?;
            if !(f.is_master && is_master == 1) {
                return Err(RegistryError::Conflict(format!(
                    "database `{}` with prefix `{}` on that server is already used by instance `{other}`",
                    f.dbname, f.prefix
                )));
            }
        }
        Ok(())
    }

    pub async fn update_instance(&self, id: i64, f: &InstanceFields) -> Result<Instance> {
        self.check_instance_unique(f, Some(id)).await?;
        let sql = format!(
            "UPDATE instances SET ({FIELD_COLUMNS}, updated_at) = ({FIELD_PLACEHOLDERS}, $18) WHERE id = $19"
        );
        bind_fields(sqlx::query(&sql), f)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("updating an instance"))?;
        self.instance(&f.shortname).await
    }

    pub async fn set_enabled(&self, id: i64, enabled: bool) -> Result<()> {
        sqlx::query("UPDATE instances SET enabled = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(enabled))
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("enabling or disabling an instance"))?;
        Ok(())
    }

    pub async fn remove_instance(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("removing an instance"))?;
        Ok(())
    }

    /// All instances, the master first, then by shortname.
    pub async fn instances(&self) -> Result<Vec<Instance>> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances i JOIN db_servers s ON s.id = i.dbserver_id \
             ORDER BY i.is_master DESC, i.shortname"
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing instances"))?;
        rows.iter().map(instance_from_row).collect()
    }

    /// An instance by shortname, else by host (a wwwroot is accepted too).
    pub async fn find_instance(&self, key: &str) -> Result<Option<Instance>> {
        let host_key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key)
            .split('/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances i JOIN db_servers s ON s.id = i.dbserver_id \
             WHERE i.shortname = $1 OR i.host = $2 ORDER BY CASE WHEN i.shortname = $1 THEN 0 ELSE 1 END"
        );
        let rows = sqlx::query(&sql)
            .bind(key)
            .bind(host_key)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading an instance"))?;
        rows.first().map(instance_from_row).transpose()
    }

    pub async fn instance(&self, key: &str) -> Result<Instance> {
        self.find_instance(key).await?.ok_or_else(|| RegistryError::NotFound {
            what: "instance",
            name: key.into(),
            hint: "\nhint: name an instance by its shortname or host; `vmoodle instance list` shows them".into(),
        })
    }

    pub async fn master(&self) -> Result<Option<Instance>> {
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances i JOIN db_servers s ON s.id = i.dbserver_id WHERE i.is_master = 1"
        );
        let row = sqlx::query(&sql)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading the master"))?;
        row.as_ref().map(instance_from_row).transpose()
    }
}

/// The columns `InstanceFields` fills (bound by `bind_fields` as $1..$17, in this order).
const FIELD_COLUMNS: &str = "shortname, host, wwwroot, name, description, enabled, dbserver_id, \
    dbtype, dbname, dbuser, dbpass, prefix, dbpersist, dataroot, mnet, template, config";
const FIELD_PLACEHOLDERS: &str =
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_fields<'q>(q: AnyQuery<'q>, f: &'q InstanceFields) -> AnyQuery<'q> {
    q.bind(&f.shortname)
        .bind(&f.host)
        .bind(&f.wwwroot)
        .bind(&f.name)
        .bind(&f.description)
        .bind(i64::from(f.enabled))
        .bind(f.dbserver_id)
        .bind(&f.dbtype)
        .bind(&f.dbname)
        .bind(&f.dbuser)
        .bind(&f.dbpass_sealed)
        .bind(&f.prefix)
        .bind(i64::from(f.dbpersist))
        .bind(&f.dataroot)
        .bind(f.mnet)
        .bind(f.template.clone())
        .bind(config_json(&f.config))
}

/// A template in the register (its files live in the home's templates/NAME/).
#[derive(Debug, Clone, Serialize)]
pub struct Template {
    pub id: i64,
    pub name: String,
    pub source: String,
    pub path: String,
    /// The manifest, as JSON text.
    pub manifest: String,
    pub created_at: i64,
}

impl Registry {
    pub async fn add_template(
        &self,
        name: &str,
        source: &str,
        path: &str,
        manifest: &str,
    ) -> Result<Template> {
        sqlx::query("INSERT INTO templates (name, source, path, manifest, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(name)
            .bind(source)
            .bind(path)
            .bind(manifest)
            .bind(now_unix())
            .execute(&self.pool)
            .await
            .map_err(q("adding a template"))?;
        self.template(name).await
    }

    pub async fn templates(&self) -> Result<Vec<Template>> {
        let rows = sqlx::query(
            "SELECT id, name, source, path, manifest, created_at FROM templates ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing templates"))?;
        rows.iter().map(template_from_row).collect()
    }

    pub async fn find_template(&self, name: &str) -> Result<Option<Template>> {
        let row = sqlx::query(
            "SELECT id, name, source, path, manifest, created_at FROM templates WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(q("reading a template"))?;
        row.as_ref().map(template_from_row).transpose()
    }

    pub async fn template(&self, name: &str) -> Result<Template> {
        self.find_template(name).await?.ok_or_else(|| RegistryError::NotFound {
            what: "template",
            name: name.into(),
            hint: "\nhint: `vmoodle template list` shows the templates; `vmoodle snapshot SOURCE --template NAME` makes one".into(),
        })
    }

    pub async fn remove_template(&self, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM templates WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(q("removing a template"))?;
        Ok(())
    }

    /// Records the start of a job run by `owner` (node/pid/start time); returns its id.
    pub async fn start_job(&self, kind: &str, target: &str, owner: &str) -> Result<i64> {
        self.start_job_by(kind, target, owner, "", None).await
    }

    /// Records the start of a job: who started it (`cli:USER`, `web:ADMIN`...) and the bulk run
    /// it belongs to.
    pub async fn start_job_by(
        &self,
        kind: &str,
        target: &str,
        owner: &str,
        started_by: &str,
        parent: Option<i64>,
    ) -> Result<i64> {
        let now = now_unix();
        let row = sqlx::query(
            "INSERT INTO jobs (kind, target, state, started_at, owner, updated_at, started_by, parent) \
             VALUES ($1, $2, 'running', $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(kind)
        .bind(target)
        .bind(now)
        .bind(owner)
        .bind(now)
        .bind(started_by)
        .bind(parent)
        .fetch_one(&self.pool)
        .await
        .map_err(q("recording a job"))?;
        row.try_get(0).map_err(q("recording a job"))
    }

    /// Writes a job's whole journal: state, steps, undo records, forward plan, error, undone.
    pub async fn save_job(&self, id: i64, u: &JobUpdate<'_>) -> Result<()> {
        let finished = match u.state {
            "running" | "recovering" => None,
            _ => Some(now_unix()),
        };
        sqlx::query(
            "UPDATE jobs SET state = $1, journal = $2, undo = $3, forward = $4, error = $5, \
             undone = $6, finished_at = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(u.state)
        .bind(u.steps)
        .bind(u.undo)
        .bind(u.forward.map(str::to_string))
        .bind(u.error.map(str::to_string))
        .bind(u.undone)
        .bind(finished)
        .bind(now_unix())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(q("updating a job"))?;
        Ok(())
    }

    /// Takes over a job from its (dead) owner: succeeds for one caller only.
    pub async fn claim_job(&self, id: i64, old_owner: &str, new_owner: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET owner = $1, state = 'recovering', updated_at = $2 \
             WHERE id = $3 AND owner = $4 AND state IN ('running', 'recovering', 'incomplete', 'failed')",
        )
        .bind(new_owner)
        .bind(now_unix())
        .bind(id)
        .bind(old_owner)
        .execute(&self.pool)
        .await
        .map_err(q("claiming a job"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Jobs, newest first, optionally only those in some states, of one kind or one target.
    pub async fn jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {}", job_where(f));
        sql += " ORDER BY id DESC";
        if let Some(l) = f.limit {
            sql += &format!(" LIMIT {l}");
        }
        if let Some(o) = f.offset {
            sql += &format!(" OFFSET {o}");
        }
        let rows = bind_job_filter(sqlx::query(&sql), f)
            .fetch_all(&self.pool)
            .await
            .map_err(q("reading jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    /// How many jobs a filter selects (without its limit and offset).
    pub async fn count_jobs(&self, f: &JobFilter) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM jobs WHERE {}", job_where(f));
        let row = bind_job_filter(sqlx::query(&sql), f)
            .fetch_one(&self.pool)
            .await
            .map_err(q("counting jobs"))?;
        row.try_get::<i64, _>(0).map_err(q("counting jobs"))
    }

    pub async fn job(&self, id: i64) -> Result<Job> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a job"))?;
        match row {
            Some(r) => job_from_row(&r),
            None => Err(RegistryError::NotFound {
                what: "job",
                name: id.to_string(),
                hint: "\nhint: `vmoodle jobs list` shows the jobs".into(),
            }),
        }
    }

    /// Instances deployed from a template.
    pub async fn instances_of_template(&self, name: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT shortname FROM instances WHERE template = $1 ORDER BY shortname")
                .bind(name)
                .fetch_all(&self.pool)
                .await
                .map_err(q("reading a template's instances"))?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(q("reading a template's instances")))
            .collect()
    }
}

/// A peering between two instances that vmoodle made (a_id < b_id).
#[derive(Debug, Clone, Serialize)]
pub struct MnetLink {
    pub a_id: i64,
    pub b_id: i64,
    /// Whether vmoodle created the row for b in a's mnet_host (and may remove it).
    pub a_made: bool,
    pub b_made: bool,
}

impl Registry {
    pub async fn mnet_links(&self) -> Result<Vec<MnetLink>> {
        let rows =
            sqlx::query("SELECT a_id, b_id, a_made, b_made FROM mnet_links ORDER BY a_id, b_id")
                .fetch_all(&self.pool)
                .await
                .map_err(q("listing MNET peerings"))?;
        rows.iter()
            .map(|r| {
                let get = |e| RegistryError::Query {
                    context: "reading an MNET peering",
                    source: e,
                };
                Ok(MnetLink {
                    a_id: r.try_get(0).map_err(get)?,
                    b_id: r.try_get(1).map_err(get)?,
                    a_made: r.try_get::<i64, _>(2).map_err(get)? != 0,
                    b_made: r.try_get::<i64, _>(3).map_err(get)? != 0,
                })
            })
            .collect()
    }

    /// Records a peering (ids in any order); an existing one keeps its "made" marks.
    pub async fn add_mnet_link(&self, x: i64, y: i64, x_made: bool, y_made: bool) -> Result<()> {
        let (a, b, am, bm) = if x < y {
            (x, y, x_made, y_made)
        } else {
            (y, x, y_made, x_made)
        };
        sqlx::query(
            "INSERT INTO mnet_links (a_id, b_id, a_made, b_made, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (a_id, b_id) DO UPDATE SET a_made = CASE WHEN mnet_links.a_made = 1 THEN 1 ELSE excluded.a_made END, \
             b_made = CASE WHEN mnet_links.b_made = 1 THEN 1 ELSE excluded.b_made END",
        )
        .bind(a)
        .bind(b)
        .bind(i64::from(am))
        .bind(i64::from(bm))
        .bind(now_unix())
        .execute(&self.pool)
        .await
        .map_err(q("recording an MNET peering"))?;
        Ok(())
    }

    pub async fn remove_mnet_link(&self, x: i64, y: i64) -> Result<()> {
        let (a, b) = if x < y { (x, y) } else { (y, x) };
        sqlx::query("DELETE FROM mnet_links WHERE a_id = $1 AND b_id = $2")
            .bind(a)
            .bind(b)
            .execute(&self.pool)
            .await
            .map_err(q("removing an MNET peering"))?;
        Ok(())
    }

    /// Sets an instance's MNET mode (-1 none, 0 free, N subnetwork N).
    pub async fn set_mnet(&self, id: i64, mnet: i64) -> Result<()> {
        sqlx::query("UPDATE instances SET mnet = $1, updated_at = $2 WHERE id = $3")
            .bind(mnet)
            .bind(now_unix())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(q("setting an instance's MNET mode"))?;
        Ok(())
    }
}

fn template_from_row(r: &AnyRow) -> Result<Template> {
    let get = |e| RegistryError::Query {
        context: "reading a template row",
        source: e,
    };
    Ok(Template {
        id: r.try_get("id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        source: r.try_get("source").map_err(get)?,
        path: r.try_get("path").map_err(get)?,
        manifest: r.try_get("manifest").map_err(get)?,
        created_at: r.try_get("created_at").map_err(get)?,
    })
}

fn config_json(c: &CfgExtras) -> String {
    serde_json::to_string(c).expect("a map of strings serializes")
}

fn abbreviate(items: &[String], max: usize) -> String {
    if items.len() <= max {
        items.join(", ")
    } else {
        format!("{} and {} more", items[..max].join(", "), items.len() - max)
    }
}

/// A PostgreSQL URL with any password replaced by `****`, for messages.
pub fn redact_url(url: &str) -> String {
    vmoodle_core::settings::redact_url(url)
}

fn dbserver_from_row(r: &AnyRow) -> Result<DbServer> {
    let get = |e| RegistryError::Query {
        context: "reading a database server row",
        source: e,
    };
    let kind: String = r.try_get("kind").map_err(get)?;
    let port: i64 = r.try_get("port").map_err(get)?;
    Ok(DbServer {
        id: r.try_get("id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        kind: kind
            .parse()
            .map_err(|e: vmoodle_core::ValidationError| RegistryError::Conflict(e.to_string()))?,
        host: r.try_get("host").map_err(get)?,
        port: u16::try_from(port).unwrap_or(0),
        socket: r.try_get("socket").map_err(get)?,
        admin_user: r.try_get("admin_user").map_err(get)?,
        admin_password_sealed: r.try_get("admin_password").map_err(get)?,
        topology: r.try_get("topology").map_err(get)?,
        reader_host: r.try_get("reader_host").map_err(get)?,
        reader_port: r
            .try_get::<Option<i64>, _>("reader_port")
            .map_err(get)?
            .and_then(|p| u16::try_from(p).ok()),
        created_at: r.try_get("created_at").map_err(get)?,
        updated_at: r.try_get("updated_at").map_err(get)?,
    })
}

fn instance_from_row(r: &AnyRow) -> Result<Instance> {
    let get = |e| RegistryError::Query {
        context: "reading an instance row",
        source: e,
    };
    let config: String = r.try_get("config").map_err(get)?;
    Ok(Instance {
        id: r.try_get("id").map_err(get)?,
        shortname: r.try_get("shortname").map_err(get)?,
        host: r.try_get("host").map_err(get)?,
        wwwroot: r.try_get("wwwroot").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        description: r.try_get("description").map_err(get)?,
        is_master: r.try_get::<i64, _>("is_master").map_err(get)? != 0,
        enabled: r.try_get::<i64, _>("enabled").map_err(get)? != 0,
        dbserver: r.try_get("dbserver").map_err(get)?,
        dbserver_id: r.try_get("dbserver_id").map_err(get)?,
        dbtype: r.try_get("dbtype").map_err(get)?,
        dbname: r.try_get("dbname").map_err(get)?,
        dbuser: r.try_get("dbuser").map_err(get)?,
        dbpass_sealed: r.try_get("dbpass").map_err(get)?,
        prefix: r.try_get("prefix").map_err(get)?,
        dbpersist: r.try_get::<i64, _>("dbpersist").map_err(get)? != 0,
        dataroot: r.try_get("dataroot").map_err(get)?,
        mnet: r.try_get("mnet").map_err(get)?,
        template: r.try_get("template").map_err(get)?,
        config: parse_config(&config),
        created_at: r.try_get("created_at").map_err(get)?,
        updated_at: r.try_get("updated_at").map_err(get)?,
    })
}

fn parse_config(s: &str) -> CfgExtras {
    serde_json::from_str(s).unwrap_or_default()
}

const JOB_COLUMNS: &str = "id, kind, target, state, journal, undo, forward, error, undone, owner, \
     started_at, finished_at, updated_at, started_by, parent, params, cancel_requested, log";

/// A job as the register holds it; the JSON columns are kept as text for the job engine.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub target: String,
    /// running, recovering, done, rolled back, incomplete (to be finished forward), failed.
    pub state: String,
    pub steps: String,
    pub undo: String,
    pub forward: Option<String>,
    pub error: Option<String>,
    pub undone: String,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// Who started it: `cli:USER`, `web:ADMIN`, `api:TOKEN`, `scheduler`.
    pub started_by: String,
    /// The bulk run (a parent job) it belongs to.
    pub parent: Option<i64>,
    /// The request behind a job started by the daemon (JSON, never a password): what a retry
    /// runs again.
    pub params: Option<String>,
    /// Somebody asked it to stop (from any node); it stops at its next step boundary.
    pub cancel_requested: bool,
    /// Log lines, one per line.
    pub log: String,
}

/// What `save_job` writes.
#[derive(Debug)]
pub struct JobUpdate<'a> {
    pub state: &'a str,
    pub steps: &'a str,
    pub undo: &'a str,
    pub forward: Option<&'a str>,
    pub error: Option<&'a str>,
    pub undone: &'a str,
}

/// Which jobs `jobs` returns.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub states: Vec<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub limit: Option<usize>,
    /// Skip this many (pagination).
    pub offset: Option<usize>,
    /// Only jobs that belong to no bulk run (`Some(None)`), or to this one (`Some(Some(id))`).
    pub parent: Option<Option<i64>>,
    /// Only jobs started by this actor.
    pub started_by: Option<String>,
}

/// The WHERE clause of a job filter, with numbered placeholders bound by `bind_job_filter`.
fn job_where(f: &JobFilter) -> String {
    let mut sql = String::from("1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if !f.states.is_empty() {
        let marks: Vec<String> = f.states.iter().map(|_| next()).collect();
        sql += &format!(" AND state IN ({})", marks.join(", "));
    }
    if f.kind.is_some() {
        sql += &format!(" AND kind = {}", next());
    }
    if f.target.is_some() {
        sql += &format!(" AND target = {}", next());
    }
    match f.parent {
        Some(None) => sql += " AND parent IS NULL",
        Some(Some(_)) => sql += &format!(" AND parent = {}", next()),
        None => {}
    }
    if f.started_by.is_some() {
        sql += &format!(" AND started_by = {}", next());
    }
    sql
}

fn bind_job_filter<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    f: &'q JobFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for s in &f.states {
        query = query.bind(s.as_str());
    }
    if let Some(k) = &f.kind {
        query = query.bind(k.as_str());
    }
    if let Some(t) = &f.target {
        query = query.bind(t.as_str());
    }
    if let Some(Some(p)) = f.parent {
        query = query.bind(p);
    }
    if let Some(b) = &f.started_by {
        query = query.bind(b.as_str());
    }
    query
}

fn job_from_row(r: &AnyRow) -> Result<Job> {
    let e = q("reading a job");
    let g = |i: usize| r.try_get::<String, _>(i);
    let go = |i: usize| r.try_get::<Option<String>, _>(i);
    let gi = |i: usize| r.try_get::<i64, _>(i);
    Ok(Job {
        id: gi(0).map_err(q("reading a job"))?,
        kind: g(1).map_err(q("reading a job"))?,
        target: g(2).map_err(q("reading a job"))?,
        state: g(3).map_err(q("reading a job"))?,
        steps: g(4).map_err(q("reading a job"))?,
        undo: g(5).map_err(q("reading a job"))?,
        forward: go(6).map_err(q("reading a job"))?,
        error: go(7).map_err(q("reading a job"))?,
        undone: g(8).map_err(q("reading a job"))?,
        owner: g(9).map_err(q("reading a job"))?,
        started_at: gi(10).map_err(q("reading a job"))?,
        finished_at: r.try_get::<Option<i64>, _>(11).map_err(e)?,
        updated_at: gi(12).map_err(q("reading a job"))?,
        started_by: g(13).map_err(q("reading a job"))?,
        parent: r
            .try_get::<Option<i64>, _>(14)
            .map_err(q("reading a job"))?,
        params: go(15).map_err(q("reading a job"))?,
        cancel_requested: gi(16).map_err(q("reading a job"))? != 0,
        log: g(17).map_err(q("reading a job"))?,
    })
}
