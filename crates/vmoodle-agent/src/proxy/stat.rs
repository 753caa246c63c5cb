//! HAProxy's admin socket: `show stat` read and parsed into `BackendState`s.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::render::WRITER;
use crate::protocol::BackendState;

/// Sends one command to the admin socket and reads the answer.
pub async fn command(socket: &Path, cmd: &str) -> Result<String> {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        std::io::Result::Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))
        .and_then(|r| r.map_err(Into::into))
        .with_context(|| {
            format!(
                "HAProxy's admin socket {} ({cmd}); is HAProxy running with the agent's configuration?",
                socket.display()
            )
        })
}

/// The server rows of `show stat` CSV (FRONTEND and BACKEND rows skipped). Columns (0-based):
/// pxname 0, svname 1, scur 4, status 17, bck 20, check_status 36.
pub fn parse_show_stat(csv: &str) -> Vec<BackendState> {
    csv.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() < 37 || f[1] == "FRONTEND" || f[1] == "BACKEND" {
                return None;
            }
            let listener = if f[0] == WRITER { "writer" } else { "reader" };
            Some(BackendState {
                listener: listener.into(),
                server: f[1].into(),
                status: f[17].into(),
                // "* L4CON" while a check is running.
                check_status: f[36].trim_start_matches("* ").into(),
                backup: f[20] == "1",
                current_sessions: f[4].parse().unwrap_or(0),
            })
        })
        .collect()
}

pub async fn show_stat(socket: &Path) -> Result<Vec<BackendState>> {
    Ok(parse_show_stat(&command(socket, "show stat").await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_only() {
        // Abridged from HAProxy 2.6's real output (the 37th field is check_status).
        let row = |px: &str, sv: &str, scur: &str, status: &str, bck: &str, chk: &str| {
            let mut f = vec![""; 80];
            f[0] = px;
            f[1] = sv;
            f[4] = scur;
            f[17] = status;
            f[20] = bck;
            f[36] = chk;
            f.join(",")
        };
        let csv = [
            "# pxname,svname,qcur,qmax,scur,...".to_string(),
            row("writer", "FRONTEND", "0", "OPEN", "", ""),
            row("writer", "db1", "3", "UP", "0", "L7OK"),
            row("writer", "db2", "0", "DOWN", "0", "L7STS"),
            row("writer", "BACKEND", "3", "UP", "0", ""),
            row("reader_primary", "db1", "0", "UP 1/2", "1", "* INI"),
        ]
        .join("\n");
        let s = parse_show_stat(&csv);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            (
                s[0].listener.as_str(),
                s[0].server.as_str(),
                s[0].current_sessions
            ),
            ("writer", "db1", 3)
        );
        assert_eq!(s[1].check_status, "L7STS");
        assert_eq!(s[2].listener, "reader");
        assert!(s[2].backup);
        assert_eq!(s[2].check_status, "INI");
        assert_eq!(s[2].status, "UP 1/2");
    }
}
