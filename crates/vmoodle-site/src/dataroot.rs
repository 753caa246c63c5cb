//! Moodle dataroots: what to copy and how. `filedir/` holds files named by their content hash
//! that Moodle never rewrites, so they are hard-linked when source and target share a
//! filesystem; caches, temporary files, sessions, the trash and locks are left out, and so is
//! `muc/config.php`: the cache configuration names the source site's stores and cache
//! definitions, and Moodle writes a fresh one for the new site on first use.
//!
//! A dataroot belongs to a tenant whose code can write anything into it, and vmoodle copies it
//! as root. So the copy never follows a symbolic link: the root must not be one, every entry is
//! opened relative to its parent's descriptor with `O_NOFOLLOW`, and modes and owners are set on
//! the descriptors (fchmod, fchown). Symbolic links inside are skipped and reported: copied as
//! links they would point the next tenant's Moodle at whatever the link names (another tenant's
//! dataroot, the home). A file with several names may be a hard link to a file from outside
//! (/etc/shadow on a system without protected hardlinks): unless everyone may read it anyway,
//! or it belongs to the dataroot's owner (not root), it is skipped and reported too. The copy is built in a root-only (0700) staging directory
//! next to the destination and renamed into place when complete.
//!
//! Hard links: a file is linked instead of copied only when it is a regular file on the
//! destination's device, owned by the user running vmoodle and writable by nobody else (a file
//! of a template or archive that vmoodle made itself). A linked inode is shared, so its mode and
//! owner are left alone; a tenant's own files (the source of a snapshot) are always copied, so
//! a tenant can never write to a file another instance or a template shares.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;
use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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
    /// Entries left out, each `relative/path: why` (symbolic links, special files, hard links
    /// that may lead outside).
    pub skipped: Vec<String>,
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

fn errno_at(p: &Path, e: Errno) -> std::io::Error {
    io_at(p, std::io::Error::from(e))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens a dataroot directory without following a link at its last component; a symbolic link
/// is refused with an error that says so.
fn open_root(src: &Path) -> std::io::Result<OwnedFd> {
    let md = std::fs::symlink_metadata(src).map_err(|e| io_at(src, e))?;
    if md.file_type().is_symlink() {
        let to = std::fs::read_link(src)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "dataroot {} is a symbolic link (to {to}); vmoodle never follows links in a dataroot: point the instance at the real directory",
                src.display()
            ),
        ));
    }
    if !md.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("dataroot {} is not a directory", src.display()),
        ));
    }
    rustix::fs::openat(CWD, src, DIR_FLAGS, Mode::empty()).map_err(|e| errno_at(src, e))
}

/// Checks that `src` is a directory and not a symbolic link (the error says which).
pub fn check_root(src: &Path) -> std::io::Result<()> {
    open_root(src).map(drop)
}

/// Copies the dataroot `src` into `dst` (which must not exist), leaving out `excluded` entries,
/// hard-linking `filedir/` when `link_filedir` and safe (see the module's notes). Never
/// follows a symbolic link; what it left out is in `CopyStats::skipped`.
pub fn copy(
    src: &Path,
    dst: &Path,
    link_filedir: bool,
    modes: Modes,
) -> std::io::Result<CopyStats> {
    check_root(src)?;
    if std::fs::symlink_metadata(dst).is_ok() {
        return Err(io_at(
            dst,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
        ));
    }
    let staging = staging_path(dst).ok_or_else(|| {
        io_at(
            dst,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory path"),
        )
    })?;
    // Left by an interrupted copy (root's own; remove_dir_all never follows a link).
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&staging, e)),
        _ => {}
    }
    let stats = copy_into(src, &staging, link_filedir, modes)?;
    // Into place only if nothing took the name meanwhile.
    if let Err(e) =
        rustix::fs::renameat_with(CWD, &staging, CWD, dst, rustix::fs::RenameFlags::NOREPLACE)
    {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(errno_at(dst, e));
    }
    Ok(stats)
}

/// Like `copy`, but builds `dst` itself (which must not exist): created root-only (0700), given
/// its modes and owner only when complete, removed again on failure. For a caller that builds
/// in a staging directory of its own and renames it into place.
pub fn copy_into(
    src: &Path,
    dst: &Path,
    link_filedir: bool,
    modes: Modes,
) -> std::io::Result<CopyStats> {
    let src_dir = open_root(src)?;
    let root_st = rustix::fs::fstat(&src_dir).map_err(|e| errno_at(src, e))?;
    rustix::fs::mkdir(dst, Mode::from_raw_mode(0o700)).map_err(|e| errno_at(dst, e))?;
    let r = (|| {
        let out =
            rustix::fs::openat(CWD, dst, DIR_FLAGS, Mode::empty()).map_err(|e| errno_at(dst, e))?;
        let dst_st = rustix::fs::fstat(&out).map_err(|e| errno_at(dst, e))?;
        let mut w = Walk {
            src,
            root_uid: root_st.st_uid,
            dst_dev: dst_st.st_dev,
            me: nix::unistd::geteuid().as_raw(),
            target_uid: modes.owner.map(|(u, _)| u.as_raw()),
            link_filedir,
            modes,
            stats: CopyStats::default(),
        };
        w.dir(src_dir.as_fd(), out.as_fd(), Path::new(""))?;
        finish(out.as_fd(), modes.dir, modes.owner).map_err(|e| errno_at(dst, e))?;
        Ok(w.stats)
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dst);
    }
    r
}

/// Where `copy` builds `dst` before renaming it into place: `.NAME.vmoodle-staging` next to
/// it, a root-only (0700) directory. A job journal records it to remove it after a crash.
pub fn staging_path(dst: &Path) -> Option<PathBuf> {
    let (parent, name) = (dst.parent()?, dst.file_name()?);
    Some(parent.join(format!(".{}.vmoodle-staging", name.to_string_lossy())))
}

/// Owner first (a chown may clear set-id bits), then the mode, both on the descriptor.
fn finish(
    fd: BorrowedFd<'_>,
    mode: u32,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> rustix::io::Result<()> {
    if let Some((u, g)) = owner {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(u.as_raw())),
            Some(rustix::fs::Gid::from_raw(g.as_raw())),
        )?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
}

fn same(a: &Stat, b: &Stat) -> bool {
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

struct Walk<'a> {
    src: &'a Path,
    root_uid: u32,
    dst_dev: u64,
    me: u32,
    target_uid: Option<u32>,
    link_filedir: bool,
    modes: Modes,
    stats: CopyStats,
}

impl Walk<'_> {
    /// Whether a file with several names may be copied or linked. Its other names may lie
    /// outside the dataroot (a tenant's hard link to /etc/shadow), so it is taken only when
    /// that gives nobody anything new: everyone may read it, or it belongs (not being root's)
    /// to the dataroot's owner or to the copy's owner, who may read it anyway.
    fn may_share(&self, st: &Stat) -> bool {
        st.st_mode & 0o004 != 0
            || (st.st_uid != 0
                && (st.st_uid == self.root_uid || Some(st.st_uid) == self.target_uid))
    }

    fn skip(&mut self, rel: &Path, why: &str) {
        tracing::warn!(
            "dataroot copy of {}: left out {}: {why}",
            self.src.display(),
            rel.display()
        );
        self.stats.skipped.push(format!("{}: {why}", rel.display()));
    }

    fn dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path) -> std::io::Result<()> {
        let here = self.src.join(rel);
        let mut names: Vec<CString> = Vec::new();
        for e in rustix::fs::Dir::read_from(src).map_err(|e| errno_at(&here, e))? {
            let e = e.map_err(|e| errno_at(&here, e))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(e.file_name().to_owned());
            }
        }
        names.sort();
        for name in names {
            let child = rel.join(OsStr::from_bytes(name.to_bytes()));
            if excluded(&child) {
                continue;
            }
            let st = match rustix::fs::statat(src, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue, // removed meanwhile
                Err(e) => return Err(errno_at(&self.src.join(&child), e)),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => self.subdir(src, dst, &name, &st, &child)?,
                FileType::RegularFile => self.file(src, dst, &name, &st, &child)?,
                FileType::Symlink => self.skip(&child, "a symbolic link (never followed)"),
                _ => self.skip(&child, "not a regular file or directory"),
            }
        }
        Ok(())
    }

    fn subdir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> std::io::Result<()> {
        let at = self.src.join(rel);
        let d = match rustix::fs::openat(src, name, DIR_FLAGS, Mode::empty()) {
            Ok(d) => d,
            // Replaced by a link (or something else) since it was looked at.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                self.skip(rel, "changed into a symbolic link while being copied");
                return Ok(());
            }
            Err(e) => return Err(errno_at(&at, e)),
        };
        let now = rustix::fs::fstat(&d).map_err(|e| errno_at(&at, e))?;
        if !same(&now, st) {
            self.skip(rel, "changed while being copied");
            return Ok(());
        }
        rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700)).map_err(|e| errno_at(&at, e))?;
        let out = rustix::fs::openat(dst, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| errno_at(&at, e))?;
        self.dir(d.as_fd(), out.as_fd(), rel)?;
        finish(out.as_fd(), self.modes.dir, self.modes.owner).map_err(|e| errno_at(&at, e))
    }

    /// Leaves out a file with several names that may lead outside; true if it was.
    fn outside_link(&mut self, rel: &Path, st: &Stat) -> bool {
        if st.st_nlink > 1 && !self.may_share(st) {
            self.skip(
                rel,
                &format!(
                    "a hard link to a file of uid {} (mode {:o}) that only its owner may read; it may be a file from outside the dataroot",
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            );
            return true;
        }
        false
    }

    fn file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        rel: &Path,
    ) -> std::io::Result<()> {
        let at = self.src.join(rel);
        if self.outside_link(rel, st) {
            return Ok(());
        }
        let linkable = self.link_filedir
            && rel.starts_with("filedir")
            && st.st_dev == self.dst_dev
            && st.st_uid == self.me
            && st.st_mode & 0o022 == 0;
        if linkable {
            // linkat without AT_SYMLINK_FOLLOW never follows a link.
            match rustix::fs::linkat(src, name, dst, name, AtFlags::empty()) {
                Ok(()) => {
                    // The new name must be the very inode checked above (not one swapped in
                    // meanwhile; only its owner, vmoodle's user, could change its owner or
                    // mode); otherwise it goes again and the file is copied.
                    if rustix::fs::statat(dst, name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|n| same(&n, st))
                    {
                        self.stats.files += 1;
                        self.stats.bytes += st.st_size as u64;
                        self.stats.linked += 1;
                        return Ok(());
                    }
                    rustix::fs::unlinkat(dst, name, AtFlags::empty())
                        .map_err(|e| errno_at(&at, e))?;
                }
                Err(Errno::XDEV | Errno::PERM | Errno::MLINK) => {}
                Err(e) => return Err(errno_at(&at, e)),
            }
        }
        let fd = match rustix::fs::openat(
            src,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                self.skip(rel, "changed into a symbolic link while being copied");
                return Ok(());
            }
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(errno_at(&at, e)),
        };
        // What was opened, checked again: a regular file that may be copied.
        let st = rustix::fs::fstat(&fd).map_err(|e| errno_at(&at, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            self.skip(rel, "not a regular file");
            return Ok(());
        }
        if self.outside_link(rel, &st) {
            return Ok(());
        }
        let out = rustix::fs::openat(
            dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| errno_at(&at, e))?;
        let mut out = std::fs::File::from(out);
        let mut input = std::fs::File::from(fd);
        let n = std::io::copy(&mut input, &mut out).map_err(|e| io_at(&at, e))?;
        finish(out.as_fd(), self.modes.file, self.modes.owner).map_err(|e| errno_at(&at, e))?;
        self.stats.files += 1;
        self.stats.bytes += n;
        self.stats.copied += 1;
        Ok(())
    }
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
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const MODES: Modes = Modes {
        dir: 0o750,
        file: 0o640,
        owner: None,
    };

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

    #[test]
    fn a_symlinked_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let e = copy(&t.path().join("link"), &t.path().join("out"), true, MODES).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(!t.path().join("out").exists());
    }

    #[test]
    fn links_are_left_out_and_the_copy_appears_whole() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        std::fs::create_dir_all(src.join("filedir/ab")).unwrap();
        std::fs::create_dir_all(src.join("cache")).unwrap();
        std::fs::write(src.join("filedir/ab/f"), "data").unwrap();
        std::fs::write(src.join("cache/c"), "cached").unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("filedir/ab/l")).unwrap();
        std::os::unix::fs::symlink(t.path(), src.join("up")).unwrap();
        let s = copy(&src, &dst, false, MODES).unwrap();
        assert_eq!((s.files, s.copied, s.linked), (1, 1, 0));
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert_eq!(
            std::fs::read_to_string(dst.join("filedir/ab/f")).unwrap(),
            "data"
        );
        assert!(!dst.join("cache").exists() && !dst.join("up").exists());
        assert!(std::fs::symlink_metadata(dst.join("filedir/ab/l")).is_err());
        assert_eq!(std::fs::metadata(&outside).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dst).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(
            std::fs::metadata(dst.join("filedir/ab/f")).unwrap().mode() & 0o7777,
            0o640
        );
        // No staging directory is left; a second copy to the same place is refused.
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(copy(&src, &dst, false, MODES).is_err());
    }

    #[test]
    fn only_read_only_files_of_the_runner_are_hard_linked() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("filedir")).unwrap();
        std::fs::write(src.join("filedir/ro"), "a").unwrap();
        std::fs::set_permissions(
            src.join("filedir/ro"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(src.join("filedir/rw"), "b").unwrap();
        std::fs::set_permissions(
            src.join("filedir/rw"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let dst = t.path().join("dst");
        let s = copy(&src, &dst, true, MODES).unwrap();
        assert_eq!((s.linked, s.copied), (1, 1));
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dst.join("filedir/ro")), ino(&src.join("filedir/ro")));
        assert_ne!(ino(&dst.join("filedir/rw")), ino(&src.join("filedir/rw")));
        // The shared inode keeps its own mode.
        assert_eq!(
            std::fs::metadata(src.join("filedir/ro")).unwrap().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn hard_links_to_files_only_their_owner_reads_are_left_out() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("filedir")).unwrap();
        let shadow = t.path().join("shadow");
        std::fs::write(&shadow, "secret").unwrap();
        std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o640)).unwrap();
        let public = t.path().join("public");
        std::fs::write(&public, "anyone").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&shadow, src.join("filedir/s")).unwrap();
        std::fs::hard_link(&public, src.join("filedir/p")).unwrap();
        // A copy interrupted earlier left its staging directory.
        let dst = t.path().join("dst");
        std::fs::create_dir(staging_path(&dst).unwrap()).unwrap();
        let s = copy(&src, &dst, false, MODES).unwrap();
        assert_eq!(s.copied, 1);
        assert!(s.skipped[0].starts_with("filedir/s: "), "{:?}", s.skipped);
        assert!(!dst.join("filedir/s").exists() && dst.join("filedir/p").exists());
        assert!(!staging_path(&dst).unwrap().exists());
    }
}
