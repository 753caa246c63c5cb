//! The pool page's query: search, filters, sort and one page of instances, done in SQL
//! (LIMIT/OFFSET with a COUNT of the same WHERE clause) so the page stays fast at 10,000
//! instances. Text search is a scan of one table with a join, which is cheap at that size, so no
//! extra index is needed.

use super::{instance_from_row, q, Instance, Registry, Result, INSTANCE_COLUMNS};
use sqlx::Row;

/// Which instances a pool page shows, in which order, which page.
#[derive(Debug, Clone, Default)]
pub struct PoolFilter {
    /// Matched case-insensitively inside shortname, host and name.
    pub search: Option<String>,
    /// Only enabled (`Some(true)`) or disabled (`Some(false)`) instances.
    pub enabled: Option<bool>,
    /// Database server name.
    pub dbserver: Option<String>,
    /// Template of origin.
    pub template: Option<String>,
    /// MNET subnetwork (-1 none, 0 free, N).
    pub mnet: Option<i64>,
    pub sort: PoolSort,
    pub descending: bool,
    pub limit: i64,
    pub offset: i64,
}

/// A column the pool sorts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoolSort {
    #[default]
    Name,
    Host,
    DbServer,
    State,
    Mnet,
    Template,
    /// The site's full name.
    Title,
    Created,
    Updated,
}

impl PoolSort {
    /// Parses the `sort` query value; unknown values are None (the caller says what is allowed).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "name" => Self::Name,
            "host" => Self::Host,
            "dbserver" => Self::DbServer,
            "state" => Self::State,
            "mnet" => Self::Mnet,
            "template" => Self::Template,
            "title" => Self::Title,
            "created" => Self::Created,
            "updated" => Self::Updated,
            _ => return None,
        })
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Host => "host",
            Self::DbServer => "dbserver",
            Self::State => "state",
            Self::Mnet => "mnet",
            Self::Template => "template",
            Self::Title => "title",
            Self::Created => "created",
            Self::Updated => "updated",
        }
    }

    /// The SQL column; a whitelist, never user text.
    fn column(self) -> &'static str {
        match self {
            Self::Name => "i.shortname",
            Self::Host => "i.host",
            Self::DbServer => "s.name",
            Self::State => "i.enabled",
            Self::Mnet => "i.mnet",
            Self::Template => "COALESCE(i.template, '')",
            Self::Title => "i.name",
            Self::Created => "i.created_at",
            Self::Updated => "i.updated_at",
        }
    }
}

/// A bound value of the WHERE clause.
enum Arg {
    Text(String),
    Int(i64),
}

/// The WHERE clause with numbered placeholders, and the values to bind in order.
fn pool_where(f: &PoolFilter) -> (String, Vec<Arg>) {
    let mut sql = String::from("1 = 1");
    let mut args = Vec::new();
    let next = |args: &mut Vec<Arg>, a: Arg| {
        args.push(a);
        format!("${}", args.len())
    };
    if let Some(s) = f.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let pat = format!(
            "%{}%",
            s.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let a = next(&mut args, Arg::Text(pat.clone()));
        let b = next(&mut args, Arg::Text(pat.clone()));
        let c = next(&mut args, Arg::Text(pat));
        sql += &format!(
            " AND (LOWER(i.shortname) LIKE {a} ESCAPE '\\' OR LOWER(i.host) LIKE {b} ESCAPE '\\' \
             OR LOWER(i.name) LIKE {c} ESCAPE '\\')"
        );
    }
    if let Some(e) = f.enabled {
        let p = next(&mut args, Arg::Int(i64::from(e)));
        sql += &format!(" AND i.enabled = {p}");
    }
    if let Some(d) = &f.dbserver {
        let p = next(&mut args, Arg::Text(d.clone()));
        sql += &format!(" AND s.name = {p}");
    }
    if let Some(t) = &f.template {
        let p = next(&mut args, Arg::Text(t.clone()));
        sql += &format!(" AND i.template = {p}");
    }
    if let Some(m) = f.mnet {
        let p = next(&mut args, Arg::Int(m));
        sql += &format!(" AND i.mnet = {p}");
    }
    (sql, args)
}

fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: Vec<Arg>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        query = match a {
            Arg::Text(s) => query.bind(s),
            Arg::Int(i) => query.bind(i),
        };
    }
    query
}

impl Registry {
    /// One page of the pool and how many instances match in all.
    pub async fn pool_page(&self, f: &PoolFilter) -> Result<(Vec<Instance>, i64)> {
        const FROM: &str = "FROM instances i JOIN db_servers s ON s.id = i.dbserver_id";
        let (w, args) = pool_where(f);
        let row = bind(
            sqlx::query(&format!("SELECT COUNT(*) {FROM} WHERE {w}")),
            args,
        )
        .fetch_one(&self.pool)
        .await
        .map_err(q("counting instances"))?;
        let total: i64 = row.try_get(0).map_err(q("counting instances"))?;
        let (w, args) = pool_where(f);
        let dir = if f.descending { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} {FROM} WHERE {w} ORDER BY {} {dir}, i.shortname {dir} \
             LIMIT {} OFFSET {}",
            f.sort.column(),
            f.limit.clamp(1, 1000),
            f.offset.max(0)
        );
        let rows = bind(sqlx::query(&sql), args)
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing a page of instances"))?;
        let list = rows.iter().map(instance_from_row).collect::<Result<_>>()?;
        Ok((list, total))
    }

    /// The distinct templates of origin and MNET subnetworks in use (the pool's filter choices).
    pub async fn pool_choices(&self) -> Result<(Vec<String>, Vec<i64>)> {
        let rows = sqlx::query(
            "SELECT DISTINCT template FROM instances WHERE template IS NOT NULL ORDER BY template",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(q("listing templates of origin"))?;
        let templates = rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(q("listing templates of origin"))?;
        let rows = sqlx::query("SELECT DISTINCT mnet FROM instances ORDER BY mnet")
            .fetch_all(&self.pool)
            .await
            .map_err(q("listing MNET subnetworks"))?;
        let nets = rows
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(q("listing MNET subnetworks"))?;
        Ok((templates, nets))
    }
}
