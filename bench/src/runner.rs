//! Running the release vmoodle binary from a benchmark program (shared by the benchmarks).

use anyhow::{bail, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `VMOODLE_BIN`, else target/release/vmoodle.
pub fn bin() -> PathBuf {
    std::env::var_os("VMOODLE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/vmoodle"))
}

/// Runs `vmoodle ARGS` with the home, `input` on stdin; returns stdout or fails with stderr.
pub fn vmoodle(home: &Path, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(bin())
        .args(args)
        .env("VMOODLE_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "vmoodle {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
