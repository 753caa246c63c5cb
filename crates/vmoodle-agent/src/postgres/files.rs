//! Files the seed touches: the record of what it replaced, data directories moved aside (never
//! deleted, never followed through symlinks), private files written atomically, the data's size
//! and the server log's tail.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::config::{AgentHome, DatabaseConfig};

/// What a seed replaced, kept in `state/seed-prev/postgres.json` until `undo_seed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prev {
    /// The data directory that was replaced.
    pub datadir: PathBuf,
    /// Where the previous data directory went (none when there was none).
    pub moved_to: Option<PathBuf>,
    /// Whether the server ran before the seed (undo then starts it again).
    pub was_running: bool,
    /// The managed configuration's previous text (none when the file did not exist).
    pub managed_config: Option<String>,
    /// Unix time of the seed.
    pub at: i64,
}

fn prev_dir(home: &AgentHome) -> PathBuf {
    home.state().join("seed-prev")
}

fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

impl Prev {
    pub fn path(home: &AgentHome) -> PathBuf {
        prev_dir(home).join("postgres.json")
    }
    pub fn load(home: &AgentHome) -> Result<Option<Prev>> {
        let p = Self::path(home);
        match read_opt(&p)? {
            None => Ok(None),
            Some(text) => {
                Ok(Some(serde_json::from_str(&text).with_context(|| {
                    format!("reading the seed's record {}", p.display())
                })?))
            }
        }
    }
    pub fn save(&self, home: &AgentHome) -> Result<()> {
        ensure_private_dir(&prev_dir(home))?;
        let text = serde_json::to_vec_pretty(self)?;
        write_private(&Self::path(home), &text, 0, 0)
    }
    pub fn clear(home: &AgentHome) -> Result<()> {
        remove_if_exists(&Self::path(home))
    }
}

/// Renames `path` (the directory, or the symlink itself: never what it points to) into the
/// agent's `state/seed-prev/`, or beside itself when the state is on another file system.
pub fn move_aside(home: &AgentHome, path: &Path, tag: &str) -> Result<PathBuf> {
    let dir = prev_dir(home);
    ensure_private_dir(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let stamp = vmoodle_core::now_unix();
    let unique = |base: PathBuf| {
        let mut n = 0;
        loop {
            let cand = if n == 0 {
                base.clone()
            } else {
                PathBuf::from(format!("{}.{n}", base.display()))
            };
            if std::fs::symlink_metadata(&cand).is_err() {
                return cand;
            }
            n += 1;
        }
    };
    let to = unique(dir.join(format!("{tag}-{name}-{stamp}")));
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(to),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let to = unique(path.with_file_name(format!(".{name}.vmoodle-{tag}-{stamp}")));
            std::fs::rename(path, &to)
                .with_context(|| format!("moving {} aside to {}", path.display(), to.display()))?;
            Ok(to)
        }
        Err(e) => {
            Err(e).with_context(|| format!("moving {} aside to {}", path.display(), to.display()))
        }
    }
}

/// Creates an empty data directory (0700) owned by the OS user.
pub fn make_datadir(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating the new data directory {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("giving {} to the server's OS user", path.display()))
}

pub use crate::fsutil::write_owned as write_private;

/// A text file's content, or None when it does not exist.
pub fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Bytes the files under `root` take, symlinks not followed.
pub fn tree_bytes(root: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Where the server logs: pg_ctl's `-l FILE` in database.start, the newest file of the data
/// directory's log/, or Debian's /var/log/postgresql/postgresql-VERSION-CLUSTER.log.
fn log_path(cfg: &DatabaseConfig) -> Option<PathBuf> {
    let argv = &cfg.start;
    for (i, a) in argv.iter().enumerate() {
        if a == "-l" || a == "--log" {
            return argv.get(i + 1).map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--log=") {
            return Some(PathBuf::from(p));
        }
    }
    let newest = std::fs::read_dir(cfg.datadir.join("log"))
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .max()
                .map(|(_, p)| p)
        });
    if newest.is_some() {
        return newest;
    }
    let cluster = cfg.datadir.file_name()?.to_str()?;
    let version = cfg.datadir.parent()?.file_name()?.to_str()?;
    let p = PathBuf::from(format!(
        "/var/log/postgresql/postgresql-{version}-{cluster}.log"
    ));
    p.exists().then_some(p)
}

/// The last lines of the server log, for error messages.
pub fn log_tail(cfg: &DatabaseConfig) -> String {
    let Some(path) = log_path(cfg) else {
        return "(no server log found: pg_ctl -l in database.start, log/ in the data directory, or /var/log/postgresql)".into();
    };
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            format!("The server log {} ends with:\n{tail}", path.display())
        }
        Err(e) => format!("(could not read the server log {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_do_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/a"), vec![0u8; 1000]).unwrap();
        std::fs::write(t.path().join("b"), vec![0u8; 24]).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![0u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("link")).unwrap();
        assert_eq!(tree_bytes(t.path()).unwrap(), 1024);
    }

    #[test]
    fn private_files_replace_symlinks_and_moves_keep_data() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = t.path().join("f");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        write_private(&link, b"new", me.0, me.1).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(&link)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let home = AgentHome::new(t.path().join("home"));
        let data = t.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("x"), "1").unwrap();
        let to = move_aside(&home, &data, "prev").unwrap();
        assert!(to.starts_with(home.state()) && !data.exists());
        assert_eq!(std::fs::read_to_string(to.join("x")).unwrap(), "1");
        std::fs::create_dir(&data).unwrap();
        let to2 = move_aside(&home, &data, "prev").unwrap();
        assert_ne!(to, to2);
    }
}
