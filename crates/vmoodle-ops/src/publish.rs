//! Publishing the config hook's files from the register: hook.php (with the master's host) and
//! one host file per instance under hosts/, each written atomically, 0640, group = the web
//! server's. Host files of hosts no longer registered are removed; nothing else in hosts/ is.

use anyhow::{Context, Result};
use serde::Serialize;
use vmoodle_registry::Instance;
use vmoodle_site::files;
use vmoodle_site::hook::{self, HookParams};
use vmoodle_site::hostfile::{self, HostFile};

use crate::Home;

#[derive(Debug, Default, Serialize)]
pub struct PublishReport {
    pub hook: String,
    pub written: Vec<String>,
    pub removed: Vec<String>,
}

/// Rewrites hook.php and every host file; removes host files of unregistered hosts.
pub async fn publish_all(home: &Home) -> Result<PublishReport> {
    let gid = home.web_gid()?;
    let group = home.settings.web.group.as_str();
    let hosts = home.hosts_dir();
    files::ensure_dir(&hosts, 0o750, Some((gid, group)))?;
    let instances = home.registry.instances().await?;
    write_hook(home, &instances)?;
    let mut report = PublishReport {
        hook: home.hook_path().display().to_string(),
        ..Default::default()
    };
    let mut keep = std::collections::HashSet::new();
    for i in instances.iter().filter(|i| !i.is_master) {
        write_host_file(home, i).await?;
        keep.insert(hostfile::file_name(&i.host));
        report.written.push(i.host.clone());
    }
    for entry in fs_err::read_dir(&hosts)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if hostfile::is_host_file_name(&name) && !keep.contains(&name) {
            fs_err::remove_file(entry.path())?;
            report.removed.push(name);
        }
    }
    Ok(report)
}

/// Rewrites hook.php (it names the master's host, so it changes with the master).
pub fn write_hook(home: &Home, instances: &[Instance]) -> Result<()> {
    let gid = home.web_gid()?;
    let params = HookParams {
        hosts_dir: home.hosts_dir(),
        master_hosts: instances
            .iter()
            .filter(|i| i.is_master)
            .map(|i| i.host.clone())
            .collect(),
        retry_after: home.settings.web.retry_after,
    };
    files::write_atomic(
        &home.hook_path(),
        hook::render_hook(&params).as_bytes(),
        0o640,
        Some((gid, &home.settings.web.group)),
    )?;
    Ok(())
}

/// Writes one instance's host file (the master has none: its config.php stands).
pub async fn write_host_file(home: &Home, i: &Instance) -> Result<()> {
    if i.is_master {
        return Ok(());
    }
    let server = home.registry.dbserver_by_id(i.dbserver_id).await?;
    let master_config = home
        .registry
        .master()
        .await?
        .map(|m| m.config)
        .unwrap_or_default();
    let text = render_host_file(home, i, &server, &master_config)?;
    write_host_text(home, &i.host, &text)
}

/// The text of an instance's host file, given its database server and the master's config
/// (the daemon's sync renders many with one read of each, and writes only those that differ).
pub fn render_host_file(
    home: &Home,
    i: &Instance,
    server: &vmoodle_registry::DbServer,
    master_config: &vmoodle_registry::CfgExtras,
) -> Result<String> {
    let dbpass = home
        .secrets
        .open(
            &i.dbpass_sealed,
            &vmoodle_core::Binding::instance_dbpass(&i.shortname),
        )
        .with_context(|| format!("the database password of instance `{}`", i.shortname))?;
    let hf = HostFile {
        shortname: i.shortname.clone(),
        host: i.host.clone(),
        enabled: i.enabled,
        wwwroot: i.wwwroot.clone(),
        dbtype: i.dbtype.clone(),
        dbhost: server.host.clone(),
        dbport: server.port,
        dbsocket: server.socket.clone(),
        dbname: i.dbname.clone(),
        dbuser: i.dbuser.clone(),
        dbpass,
        prefix: i.prefix.clone(),
        dbpersist: i.dbpersist,
        readonly: server.reader_host.clone().zip(server.reader_port),
        dataroot: i.dataroot.clone(),
        layout: hostfile::instance_layout(&i.dataroot, &i.shortname, master_config),
        extras: i.config.clone(),
    };
    Ok(hf.render())
}

/// Writes a host file's text atomically, 0640, group = the web server's.
pub fn write_host_text(home: &Home, host: &str, text: &str) -> Result<()> {
    let gid = home.web_gid()?;
    let hosts = home.hosts_dir();
    files::ensure_dir(&hosts, 0o750, Some((gid, &home.settings.web.group)))?;
    files::write_atomic(
        &hosts.join(hostfile::file_name(host)),
        text.as_bytes(),
        0o640,
        Some((gid, &home.settings.web.group)),
    )?;
    Ok(())
}

/// Removes the host file of a host (after it left the register or changed host).
pub fn remove_host_file(home: &Home, host: &str) -> Result<()> {
    let p = home.hosts_dir().join(hostfile::file_name(host));
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
    }
}
