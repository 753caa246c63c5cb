//! vmoodle's operations, used alike by the CLI and (later) the daemon: opening and creating the
//! home, changing settings, registering database servers and instances, importing VMoodle's
//! register, and publishing the config hook's files. Each operation validates all of its input
//! before it changes anything, and every register change that touches an instance's host is
//! followed by rewriting that host's file.

pub mod archive;
pub mod caches;
pub mod cancel;
pub mod cluster;
pub mod dbservers;
pub mod deploy;
pub mod doctor;
pub mod fleet;
pub mod home;
pub mod import;
pub mod instances;
pub mod jobs;
pub mod journal;
pub mod mnet;
pub mod nodes;
pub mod publish;
pub mod sealing;
pub mod spares;
pub mod templates;

pub use home::Home;

/// Reads a password given on standard input (one line; a final newline is not part of it).
pub fn read_password_stdin() -> std::io::Result<vmoodle_core::Secret> {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(vmoodle_core::Secret::new(strip_newline(s)))
}

/// Reads a password from a file (its first line).
pub fn read_password_file(path: &std::path::Path) -> anyhow::Result<vmoodle_core::Secret> {
    let s = fs_err::read_to_string(path)?;
    Ok(vmoodle_core::Secret::new(strip_newline(
        s.lines().next().unwrap_or("").to_string(),
    )))
}

fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}
