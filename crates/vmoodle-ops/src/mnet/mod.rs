//! Moodle Network across the fleet, done through each instance's database (no core patch, no
//! XML-RPC): key pairs in Moodle's own format, peers (each holding the other's `mnet_host` row
//! and, where the SSO services exist, `mnet_host2service` rows both ways), subnetworks, renewal
//! that updates every peer, and a status/repair pass that mends stale or missing peer rows.
//!
//! A peer row that a site's administrator deleted in Moodle (`mnet_host.deleted = 1`) stays
//! deleted: renewal and repair never revive it (only an explicit `peer`/`bind` does). Renewal,
//! status and repair work instance by instance: one unreachable database is reported and the rest
//! of the fleet is still renewed and mended. After a site's key changed, its Moodle caches are
//! invalidated through Moodle itself (crate::caches).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use vmoodle_core::{now_unix, DbKind};
use vmoodle_dbserver::{quote_ident, Conn, ConnSpec, Param};
use vmoodle_registry::Instance;
use vmoodle_site::fixups::set_setting;
use vmoodle_site::mnet::{self, CertInfo, HistoryEntry, Keypair};

use crate::caches::{self, CacheReport};
use crate::journal::{self, Journal};
use crate::{dbservers, Home};

mod keys;
mod network;
mod peers;

pub use keys::*;
pub use network::*;
pub use peers::*;

/// Something that failed for one instance while the others went on.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceError {
    pub instance: String,
    pub error: String,
}

impl InstanceError {
    fn new(instance: &str, e: &anyhow::Error) -> Self {
        Self {
            instance: instance.to_string(),
            error: format!("{e:#}"),
        }
    }
}

/// An instance's database, reached with its server's administrator account.
struct Site {
    inst: Instance,
    kind: DbKind,
    spec: ConnSpec,
}

impl Site {
    fn t(&self, table: &str) -> String {
        quote_ident(self.kind, &format!("{}{table}", self.inst.prefix))
    }
    fn cast(&self, col: &str) -> String {
        if self.kind.is_mysql_family() {
            format!("CAST({col} AS CHAR)")
        } else {
            format!("{col}::text")
        }
    }
    async fn conn(&self) -> Result<Conn> {
        Ok(vmoodle_dbserver::connect(&self.spec, Some(&self.inst.dbname)).await?)
    }
    async fn config(
        &self,
        c: &mut Conn,
        plugin: Option<&str>,
        name: &str,
    ) -> Result<Option<String>> {
        let v = self.cast("value");
        Ok(match plugin {
            None => {
                c.column(
                    &format!("SELECT {v} FROM {} WHERE name = ?", self.t("config")),
                    &[name.into()],
                )
                .await?
            }
            Some(p) => {
                c.column(
                    &format!(
                        "SELECT {v} FROM {} WHERE plugin = ? AND name = ?",
                        self.t("config_plugins")
                    ),
                    &[p.into(), name.into()],
                )
                .await?
            }
        }
        .into_iter()
        .next())
    }
    async fn local_id(&self, c: &mut Conn) -> Result<i64> {
        self.config(c, None, "mnet_localhost_id")
            .await?
            .and_then(|v| v.parse().ok())
            .with_context(|| {
                format!(
                    "`{}` has no mnet_localhost_id: is it a Moodle database?",
                    self.inst.shortname
                )
            })
    }
    async fn keypair(&self, c: &mut Conn) -> Result<Option<Keypair>> {
        Ok(self
            .config(c, Some("mnet"), "openssl")
            .await?
            .as_deref()
            .and_then(mnet::from_config))
    }
}

async fn site(home: &Home, inst: Instance) -> Result<Site> {
    let server = home.registry.dbserver_by_id(inst.dbserver_id).await?;
    Ok(Site {
        kind: server.kind,
        spec: dbservers::admin_spec(home, &server)?,
        inst,
    })
}

async fn site_by_key(home: &Home, key: &str) -> Result<Site> {
    let inst = home.registry.instance(key).await?;
    site(home, inst).await
}
