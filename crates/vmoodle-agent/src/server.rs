//! The agent's HTTPS server (filled in next).

/// A byte stream produced by a child process (a backup): its stdout and the child to wait on.
#[derive(Debug)]
pub struct Streaming {
    pub stdout: tokio::process::ChildStdout,
    pub child: tokio::process::Child,
    /// What the child writes to stderr goes here (a log in the agent's state directory).
    pub log: std::path::PathBuf,
}
