//! `vmoodle report usage`: per instance, what its Moodle holds (users, active users, courses,
//! last login; read with the instance's own account), what it takes (its database's size, its
//! dataroot's size), its last cron run (the register) and its Moodle version (recorded in the
//! register's site facts). A few sites at a time; a site that cannot be read is reported.
//!
//! Dataroot sizes count every file once per instance (hard links to one file are one file),
//! symlinks are not followed. Files hard-linked from elsewhere (a deployment's filedir blobs
//! shared with its template and siblings) ARE counted in `dataroot_bytes`; `shared_bytes` says
//! how much of it is such shared files (link count above one), which the disk holds only once for
//! the whole fleet.

use anyhow::Result;
use futures::StreamExt;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use vmoodle_dbserver::Param;
use vmoodle_registry::{CronState, Instance};

use super::sitedb::SiteDb;
use super::{Selection, SiteStatus};
use crate::Home;

/// Users active within this many seconds count as active.
pub const ACTIVE_WINDOW: i64 = 30 * 86_400;

/// One instance's usage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub instance: String,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<SiteStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Not deleted, not the guest account.
    pub users: Option<i64>,
    /// Of those, with an access in the last 30 days.
    pub active_users: Option<i64>,
    /// Not the site course.
    pub courses: Option<i64>,
    pub db_bytes: Option<i64>,
    pub dataroot_bytes: Option<u64>,
    /// Files in the dataroot with other hard links (counted in dataroot_bytes).
    pub shared_bytes: Option<u64>,
    pub dataroot_files: Option<u64>,
    /// Unix time of the most recent login.
    pub last_login: Option<i64>,
    /// The last cron run: its start and status.
    pub last_cron: Option<i64>,
    pub last_cron_status: Option<String>,
    pub moodle_version: Option<String>,
    pub moodle_release: Option<String>,
}

/// Every instance's usage and the fleet's totals.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub generated_at: i64,
    pub sites: Vec<Usage>,
    pub totals: Usage,
    pub disabled_left_out: Vec<String>,
}

impl UsageReport {
    pub fn exit_code(&self) -> i32 {
        if self.sites.iter().any(|s| s.error.is_some()) {
            3
        } else {
            0
        }
    }
}

/// The usage of every selected instance, `parallel` at a time.
pub async fn usage(home: &Home, selection: &Selection, parallel: usize) -> Result<UsageReport> {
    let selected = selection.resolve(home).await?;
    let now = vmoodle_core::now_unix();
    let crons: HashMap<i64, CronState> = home
        .registry
        .cron_states()
        .await?
        .into_iter()
        .map(|c| (c.instance_id, c))
        .collect();
    let crons = &crons;
    let sites: Vec<Usage> = futures::stream::iter(selected.instances.iter())
        .map(|inst| async move {
            let mut u = Usage {
                instance: inst.shortname.clone(),
                host: inst.host.clone(),
                status: Some(SiteStatus::Ok),
                ..Default::default()
            };
            if let Some(c) = crons.get(&inst.id).and_then(|c| c.last.as_ref()) {
                u.last_cron = Some(c.started_at);
                u.last_cron_status = Some(c.status.clone());
            }
            if let Err(e) = read_db(home, inst, now, &mut u).await {
                u.status = Some(SiteStatus::Failed);
                u.error = Some(format!("{e:#}"));
            }
            let dir = inst.dataroot.clone();
            match tokio::task::spawn_blocking(move || dataroot_size(Path::new(&dir))).await {
                Ok(Ok(d)) => {
                    u.dataroot_bytes = Some(d.bytes);
                    u.shared_bytes = Some(d.shared_bytes);
                    u.dataroot_files = Some(d.files);
                }
                Ok(Err(e)) => {
                    u.status = Some(SiteStatus::Failed);
                    let e = format!("dataroot {}: {e:#}", inst.dataroot);
                    u.error = Some(match u.error.take() {
                        Some(prev) => format!("{prev}; {e}"),
                        None => e,
                    });
                }
                Err(e) => u.error = Some(format!("dataroot: {e}")),
            }
            u
        })
        .buffered(parallel.max(1))
        .collect()
        .await;
    let sum = |f: &dyn Fn(&Usage) -> Option<i64>| -> Option<i64> {
        Some(sites.iter().filter_map(f).sum())
    };
    let sumu = |f: &dyn Fn(&Usage) -> Option<u64>| -> Option<u64> {
        Some(sites.iter().filter_map(f).sum())
    };
    let totals = Usage {
        instance: "TOTAL".into(),
        users: sum(&|u| u.users),
        active_users: sum(&|u| u.active_users),
        courses: sum(&|u| u.courses),
        db_bytes: sum(&|u| u.db_bytes),
        dataroot_bytes: sumu(&|u| u.dataroot_bytes),
        shared_bytes: sumu(&|u| u.shared_bytes),
        dataroot_files: sumu(&|u| u.dataroot_files),
        last_login: sites.iter().filter_map(|u| u.last_login).max(),
        last_cron: sites.iter().filter_map(|u| u.last_cron).max(),
        ..Default::default()
    };
    Ok(UsageReport {
        generated_at: now,
        sites,
        totals,
        disabled_left_out: selected.disabled_left_out,
    })
}

async fn read_db(home: &Home, inst: &Instance, now: i64, u: &mut Usage) -> Result<()> {
    let db = SiteDb::new(home, inst).await?;
    let mut c = db.conn().await?;
    let r = async {
        let one = |rows: Vec<Vec<Option<String>>>| -> Option<i64> {
            rows.into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as i64)
        };
        let users = format!(
            "SELECT {}, {}, {} FROM {} WHERE deleted = 0 AND username <> 'guest'",
            db.cast("COUNT(*)"),
            db.cast("COALESCE(SUM(CASE WHEN lastaccess >= ? THEN 1 ELSE 0 END), 0)"),
            db.cast("COALESCE(MAX(currentlogin), 0)"),
            db.t("user")
        );
        let row = c
            .rows(&users, &[Param::I64(now - ACTIVE_WINDOW)])
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        let num = |i: usize| -> Option<i64> {
            row.get(i)
                .cloned()
                .flatten()
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        u.users = num(0);
        u.active_users = num(1);
        u.last_login = num(2).filter(|t| *t > 0);
        u.courses = one(c
            .rows(
                &format!(
                    "SELECT {} FROM {} WHERE category > 0",
                    db.cast("COUNT(*)"),
                    db.t("course")
                ),
                &[],
            )
            .await?);
        let size = if db.kind.is_mysql_family() {
            format!(
                "SELECT {} FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
                db.cast("COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0)")
            )
        } else {
            format!("SELECT {}", db.cast("pg_database_size(current_database())"))
        };
        u.db_bytes = one(c.rows(&size, &[]).await?);
        let v = db.version(&mut c).await?;
        home.registry
            .set_site_facts(inst.id, &v.version, &v.release, now)
            .await?;
        u.moodle_version = Some(v.version);
        u.moodle_release = Some(v.release);
        anyhow::Ok(())
    }
    .await;
    vmoodle_dbserver::close(c).await;
    r
}

/// A dataroot's size.
#[derive(Debug, Clone, Default)]
pub struct DirSize {
    pub bytes: u64,
    pub shared_bytes: u64,
    pub files: u64,
}

/// Walks `dir` without following symlinks; a file with several names counts once.
pub fn dataroot_size(dir: &Path) -> Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut out = DirSize::default();
    if !dir.is_dir() {
        anyhow::bail!("not a directory");
    }
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = match e {
            Ok(e) => e,
            // A file removed while walking (caches, sessions) is not an error.
            Err(err)
                if err.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(err) => return Err(err.into()),
        };
        if !e.file_type().is_file() {
            continue;
        }
        let m = match e.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        if !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        out.files += 1;
        out.bytes += m.len();
        if m.nlink() > 1 {
            out.shared_bytes += m.len();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once_and_symlinks_are_not_followed() {
        let base = std::env::temp_dir().join(format!("vmoodle-du-{}", std::process::id()));
        let (d, outside) = (base.join("d"), base.join("outside"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(d.join("a"), vec![0u8; 1000]).unwrap();
        std::fs::hard_link(d.join("a"), d.join("b")).unwrap();
        std::fs::write(d.join("c"), vec![0u8; 10]).unwrap();
        std::fs::write(outside.join("big"), vec![0u8; 5000]).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        let s = dataroot_size(&d).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!((s.bytes, s.files, s.shared_bytes), (1010, 2, 1000));
    }
}
