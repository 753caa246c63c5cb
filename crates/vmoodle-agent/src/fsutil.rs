//! Writing the agent's files: always through a new temporary file beside the target, synced and
//! renamed over it, so a reader sees the old file or the new one, and a symbolic link at the
//! target is replaced, never written through.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `path` atomically with `mode`, owned by whoever the agent runs as.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write(path, bytes, mode, None)
}

/// Writes `path` atomically, 0600, owned by `uid:gid` (a server's OS account).
pub fn write_owned(path: &Path, bytes: &[u8], uid: u32, gid: u32) -> Result<()> {
    write(path, bytes, 0o600, Some((uid, gid)))
}

fn write(path: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.vmoodle-tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("writing {}", path.display()))
}
