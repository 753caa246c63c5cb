//! Moodle dataroots: what to copy and how. `filedir/` holds files named by their content hash
//! that Moodle never rewrites, so they are hard-linked when source and target share a
//! filesystem; caches, temporary files, sessions, the trash and locks are left out, and so is
//! `muc/config.php`: the cache configuration names the source site's stores and cache
//! definitions, and Moodle writes a fresh one for the new site on first use.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Top-level dataroot entries never copied.
pub const EXCLUDED: &[&str] = &[
    "cache",
    "localcache",
    "temp",
    "sessions",
    "trashdir",
    "lock",
];

/// Files (relative to the dataroot) never copied.
pub const EXCLUDED_FILES: &[&str] = &["muc/config.php"];

/// Whether the entry at `rel` (relative to the dataroot) is left out of a copy.
pub fn excluded(rel: &Path) -> bool {
    let mut parts = rel.components();
    let first_excluded = parts
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .is_some_and(|n| EXCLUDED.contains(&n));
    first_excluded || EXCLUDED_FILES.iter().any(|f| rel == Path::new(f))
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyStats {
    pub files: u64,
    pub linked: u64,
    pub copied: u64,
    pub bytes: u64,
}

/// Ownership and modes for what a copy creates.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
    pub owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

fn io_at(p: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// Copies the dataroot `src` into `dst` (which must not exist), leaving out `EXCLUDED`,
/// hard-linking `filedir/` when `link_filedir` and possible.
pub fn copy(
    src: &Path,
    dst: &Path,
    link_filedir: bool,
    modes: Modes,
) -> std::io::Result<CopyStats> {
    let mut stats = CopyStats::default();
    std::fs::create_dir(dst).map_err(|e| io_at(dst, e))?;
    set_modes(dst, modes.dir, modes.owner)?;
    let walker = walkdir::WalkDir::new(src)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !excluded(e.path().strip_prefix(src).unwrap_or(e.path())));
    for entry in walker {
        let entry = entry.map_err(|e| std::io::Error::other(e.to_string()))?;
        let rel = entry.path().strip_prefix(src).expect("inside src");
        let target = dst.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&target).map_err(|e| io_at(&target, e))?;
            set_modes(&target, modes.dir, modes.owner)?;
        } else if ft.is_file() {
            stats.files += 1;
            stats.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            let in_filedir = rel.starts_with("filedir");
            if link_filedir && in_filedir && std::fs::hard_link(entry.path(), &target).is_ok() {
                stats.linked += 1;
                // Shared inode: the owner becomes the web server's for both copies, which is
                // harmless as Moodle never rewrites filedir files.
                set_modes(&target, modes.file, modes.owner)?;
            } else {
                std::fs::copy(entry.path(), &target).map_err(|e| io_at(&target, e))?;
                stats.copied += 1;
                set_modes(&target, modes.file, modes.owner)?;
            }
        }
        // Symbolic links and special files are not part of a Moodle dataroot; they are skipped.
    }
    Ok(stats)
}

fn set_modes(
    p: &Path,
    mode: u32,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> std::io::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| io_at(p, e))?;
    if let Some((u, g)) = owner {
        nix::unistd::chown(p, Some(u), Some(g)).map_err(|e| io_at(p, std::io::Error::from(e)))?;
    }
    Ok(())
}

/// sha256 of a file, in hex.
pub fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p).map_err(|e| io_at(p, e))?;
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finish()))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&openssl::sha::sha256(b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One line per regular file under `root`: `sha256  size  relative/path`, sorted by path.
pub fn checksum_list(root: &Path) -> std::io::Result<String> {
    let mut entries: Vec<(PathBuf, u64)> = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.map_err(|e| std::io::Error::other(e.to_string()))?;
        if e.file_type().is_file() {
            entries.push((
                e.path().strip_prefix(root).expect("inside").to_path_buf(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            ));
        }
    }
    entries.sort();
    let mut out = String::new();
    for (rel, size) in entries {
        out.push_str(&format!(
            "{}  {size}  {}\n",
            sha256_file(&root.join(&rel))?,
            rel.display()
        ));
    }
    Ok(out)
}

/// Checks `root` against a list made by `checksum_list`; `deep` re-hashes every file, else only
/// presence and sizes are checked. Returns the problems found.
pub fn check_list(root: &Path, list: &str, deep: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for line in list.lines() {
        let mut parts = line.splitn(3, "  ");
        let (Some(hash), Some(size), Some(rel)) = (parts.next(), parts.next(), parts.next()) else {
            problems.push(format!("malformed checksum line `{line}`"));
            continue;
        };
        let p = root.join(rel);
        match std::fs::metadata(&p) {
            Err(_) => problems.push(format!("{rel} is missing")),
            Ok(m) if m.len().to_string() != size => {
                problems.push(format!("{rel} has {} bytes, expected {size}", m.len()))
            }
            Ok(_) if deep => match sha256_file(&p) {
                Ok(h) if h == hash => {}
                Ok(_) => problems.push(format!("{rel} does not match its checksum")),
                Err(e) => problems.push(format!("{rel}: {e}")),
            },
            Ok(_) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn muc_config_is_left_out() {
        let dir = std::env::temp_dir().join(format!("vmoodle-dr-{}", std::process::id()));
        let src = dir.join("src");
        for d in ["muc", "cache/x", "filedir/ab", "lang"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        for f in [
            "muc/config.php",
            "muc/other.txt",
            "cache/x/y",
            "filedir/ab/cd",
            "lang/config.php",
        ] {
            std::fs::write(src.join(f), f).unwrap();
        }
        let dst = dir.join("dst");
        let modes = Modes {
            dir: 0o755,
            file: 0o644,
            owner: None,
        };
        let stats = copy(&src, &dst, true, modes).unwrap();
        assert!(!dst.join("muc/config.php").exists());
        assert!(!dst.join("cache").exists());
        assert!(dst.join("muc/other.txt").is_file());
        assert!(dst.join("lang/config.php").is_file());
        assert!(dst.join("filedir/ab/cd").is_file());
        assert_eq!(stats.files, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
