//! Database servers: register one (checking it first), list, show, check and remove.

use anyhow::{bail, Context, Result};
use vmoodle_core::{validate, DbKind, Secret};
use vmoodle_dbserver::{CheckReport, ConnSpec};
use vmoodle_registry::{DbServer, NewDbServer};

use crate::Home;

/// What `dbserver add` was given.
#[derive(Debug, Clone)]
pub struct AddDbServer {
    pub name: String,
    pub kind: DbKind,
    pub host: String,
    pub port: Option<u16>,
    pub socket: Option<String>,
    pub user: String,
    pub password: Secret,
    /// Connect and check before registering.
    pub check: bool,
}

pub async fn add(home: &Home, a: AddDbServer) -> Result<(DbServer, Option<CheckReport>)> {
    validate::object_name("database server name", &a.name)?;
    validate::db_host(&a.host)?;
    let socket = match &a.socket {
        Some(s) => Some(validate::abs_path("socket", s)?.display().to_string()),
        None => None,
    };
    validate::db_user(&a.user)?;
    if home.registry.find_dbserver(&a.name).await?.is_some() {
        bail!(
            "database server `{}` is already registered\nhint: `vmoodle dbserver show {}`",
            a.name,
            a.name
        );
    }
    let new = NewDbServer {
        name: a.name.clone(),
        kind: a.kind,
        host: a.host.clone(),
        port: a.port.unwrap_or(a.kind.default_port()),
        socket,
        admin_user: a.user.clone(),
        admin_password_sealed: home
            .secrets
            .seal(&a.password, &vmoodle_core::Binding::dbserver_admin(&a.name))?,
    };
    let report = if a.check {
        let spec = ConnSpec {
            server: new.name.clone(),
            kind: new.kind,
            host: new.host.clone(),
            port: new.port,
            socket: new.socket.clone(),
            user: new.admin_user.clone(),
            password: a.password.clone(),
        };
        let r = vmoodle_dbserver::check(&spec)
            .await
            .context("the server was not registered (give --no-check to register it while it is unreachable)")?;
        Some(r)
    } else {
        None
    };
    let s = home.registry.add_dbserver(&new).await?;
    Ok((s, report))
}

/// The connection spec of a registered server with its administrator account.
pub fn admin_spec(home: &Home, s: &DbServer) -> Result<ConnSpec> {
    Ok(ConnSpec {
        server: s.name.clone(),
        kind: s.kind,
        host: s.host.clone(),
        port: s.port,
        socket: s.socket.clone(),
        user: s.admin_user.clone(),
        password: home
            .secrets
            .open(
                &s.admin_password_sealed,
                &vmoodle_core::Binding::dbserver_admin(&s.name),
            )
            .with_context(|| {
                format!("the administrator password of database server `{}`", s.name)
            })?,
    })
}

pub async fn check(home: &Home, name: &str) -> Result<CheckReport> {
    let s = home.registry.dbserver(name).await?;
    Ok(vmoodle_dbserver::check(&admin_spec(home, &s)?).await?)
}

/// Finds the registered server a Moodle's dbtype/dbhost/port points at.
pub async fn find_matching(
    home: &Home,
    kind: DbKind,
    host: &str,
    port: Option<u16>,
) -> Result<Option<DbServer>> {
    let port = port.unwrap_or(kind.default_port());
    let all = home.registry.dbservers().await?;
    Ok(all.into_iter().find(|s| {
        s.kind.is_mysql_family() == kind.is_mysql_family()
            && validate::same_db_host(&s.host, host)
            && s.port == port
    }))
}

/// Refuses to give an instance a database account that is the server's registered
/// administrator or that holds server-wide powers: its password would sit in a host file the web
/// server reads, so one compromised site would own every database on the server. `force`
/// (`--force-admin-account`) accepts it anyway, with a warning. The server is asked with the
/// administrator account; if it cannot be asked, the account is refused too.
pub async fn refuse_privileged_account(
    home: &Home,
    server: &DbServer,
    user: &str,
    force: bool,
) -> Result<()> {
    let why = if user == server.admin_user {
        Some(format!(
            "it is the administrator account registered for database server `{}`",
            server.name
        ))
    } else {
        let spec = admin_spec(home, server)?;
        match vmoodle_dbserver::admin::account_powers(&spec, user).await {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(format!(
                "it holds server-wide powers on `{}`: {}",
                server.name,
                p.join(", ")
            )),
            Err(e) if force => {
                tracing::warn!("could not check the powers of database account `{user}`: {e}");
                None
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "could not check that database account `{user}` has no server-wide powers\nhint: start the server, or give --force-admin-account to skip the check"
                )))
            }
        }
    };
    match why {
        None => Ok(()),
        Some(why) if force => {
            tracing::warn!("database account `{user}` is used by an instance although {why} (--force-admin-account)");
            Ok(())
        }
        Some(why) => bail!(
            "database account `{user}` must not be an instance's: {why}, and its password would be written into a host file that the web server reads (any PHP code of that site could then read or drop every database on the server)\nhint: give the instance its own account with rights on its database only, e.g. MariaDB `CREATE USER 'u'@'%' ...; GRANT ALL ON `db`.* TO 'u'@'%'`, PostgreSQL `CREATE ROLE u LOGIN ...; ALTER DATABASE db OWNER TO u`; or give --force-admin-account if you accept the risk"
        ),
    }
}
