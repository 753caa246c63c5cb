//! What a switchover asks of a database node: the old primary is fenced (it takes no more
//! writes), the candidate catches up and is promoted, every other server follows the new
//! primary. The engine-specific steps are in `mariadb::switch` and `postgres::switch`.
//!
//! A node that was not seeded by the agent (the cluster's first primary) keeps its own managed
//! configuration; the first time it is made to follow another server, that file (or the fact
//! that there was none) is kept in `STATE/role-prev/`, and it is put back when the node is
//! promoted again, so the node returns to exactly what it was.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use crate::config::AgentHome;

fn dir(home: &AgentHome) -> PathBuf {
    home.state().join("role-prev")
}

/// Keeps the managed configuration as it is now, the first time only.
pub fn keep_managed(home: &AgentHome, managed: &Path) -> Result<()> {
    let d = dir(home);
    let copy = d.join("managed_config");
    let absent = d.join("managed_config.absent");
    if copy.exists() || absent.exists() {
        return Ok(());
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    match std::fs::read(managed) {
        Ok(bytes) => crate::fsutil::write_atomic(&copy, &bytes, 0o600),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::fsutil::write_atomic(&absent, b"", 0o600)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", managed.display())),
    }
}

/// Puts back what `keep_managed` kept (the file's text with `mode`, or no file), and forgets
/// it. Returns whether there was anything to put back.
pub fn restore_managed(
    home: &AgentHome,
    managed: &Path,
    write: impl Fn(&[u8]) -> Result<()>,
) -> Result<bool> {
    let d = dir(home);
    let copy = d.join("managed_config");
    let absent = d.join("managed_config.absent");
    if copy.exists() {
        let bytes = std::fs::read(&copy).with_context(|| format!("reading {}", copy.display()))?;
        write(&bytes)?;
        std::fs::remove_file(&copy)?;
    } else if absent.exists() {
        match std::fs::remove_file(managed) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", managed.display()))
            }
            _ => {}
        }
        std::fs::remove_file(&absent)?;
    } else {
        return Ok(false);
    }
    let _ = std::fs::remove_dir(&d);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_managed_file_is_kept_and_put_back() {
        let d = tempfile::tempdir().unwrap();
        let home = AgentHome::new(d.path());
        let managed = d.path().join("managed.cnf");
        // No file at first: kept as absent, and removed again on restore.
        keep_managed(&home, &managed).unwrap();
        std::fs::write(&managed, "replica").unwrap();
        keep_managed(&home, &managed).unwrap();
        let w = |b: &[u8]| Ok(std::fs::write(&managed, b)?);
        assert!(restore_managed(&home, &managed, w).unwrap());
        assert!(!managed.exists());
        assert!(!restore_managed(&home, &managed, w).unwrap());
        // A file: its text comes back.
        std::fs::write(&managed, "own").unwrap();
        keep_managed(&home, &managed).unwrap();
        std::fs::write(&managed, "replica").unwrap();
        assert!(restore_managed(&home, &managed, w).unwrap());
        assert_eq!(std::fs::read_to_string(&managed).unwrap(), "own");
    }
}
