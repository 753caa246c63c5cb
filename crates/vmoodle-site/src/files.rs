//! Writing files that the web server reads: atomically (temporary file in the same directory,
//! fsync, rename, fsync of the directory), with the mode and group set before the rename so a
//! reader never sees a half-written or wrongly owned file.

use nix::unistd::{Gid, Group};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the web server group `{0}` does not exist on this machine\nhint: set the group that runs Moodle with `vmoodle settings set web.group NAME`")]
    NoGroup(String),
    #[error("cannot give {path} to group `{group}`: {source}\nhint: run vmoodle as root or as a member of that group")]
    Chown {
        path: String,
        group: String,
        source: nix::Error,
    },
}

/// Looks up a group id by name.
pub fn group_id(name: &str) -> Result<Gid, FileError> {
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        _ => Err(FileError::NoGroup(name.to_string())),
    }
}

/// Writes `content` to `path` atomically with `mode`, owned by group `gid` when given.
pub fn write_atomic(
    path: &Path,
    content: &[u8],
    mode: u32,
    gid: Option<(Gid, &str)>,
) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().expect("files are written inside a directory");
    let mut tmp = tempfile::Builder::new()
        .prefix(".vmoodle-")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(content).map_err(io)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    if let Some((gid, name)) = gid {
        let cur = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(tmp.as_file()))
            .map(|st| st.st_gid)
            .unwrap_or(u32::MAX);
        if cur != gid.as_raw() {
            nix::unistd::chown(tmp.path(), None, Some(gid)).map_err(|source| FileError::Chown {
                path: path.display().to_string(),
                group: name.to_string(),
                source,
            })?;
        }
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates a directory (and parents) if missing, then sets its mode and group.
pub fn ensure_dir(path: &Path, mode: u32, gid: Option<(Gid, &str)>) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    if let Some((gid, name)) = gid {
        nix::unistd::chown(path, None, Some(gid)).map_err(|source| FileError::Chown {
            path: path.display().to_string(),
            group: name.to_string(),
            source,
        })?;
    }
    Ok(())
}
