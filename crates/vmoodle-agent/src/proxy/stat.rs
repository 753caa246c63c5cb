//! HAProxy's admin socket: `show stat` read and parsed into `BackendState`s; `show servers
//! state` read for the server-state file a reload starts from.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::render::WRITER;
use crate::protocol::{Backend, BackendState};

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

/// `show servers state`, as `server-state-file` expects it (HAProxy 2.6: a format version line
/// "1", a "# be_id be_name ..." header, then a line per server).
pub async fn servers_state(socket: &Path) -> Result<String> {
    let text = command(socket, "show servers state").await?;
    check_servers_state(&text)?;
    Ok(text)
}

/// The lines of a server-state dump for the servers a new configuration keeps as they were:
/// same backend and name, same address (an IP address: for a host name, the saved address
/// would override a new resolution), port and check port (HAProxy 2.6 takes the saved ports
/// over the configuration's). `servers` are the new configuration's (`render::servers`).
/// Returns the dump and how many servers were left out.
pub fn keep_unchanged(dump: &str, servers: &[(&str, &Backend)]) -> (String, usize) {
    let (mut out, mut dropped) = (String::new(), 0);
    for (i, line) in dump.lines().enumerate() {
        if i == 0 || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        // be_id be_name srv_id srv_name srv_addr ... srv_port (18) ... srv_check_port (21)
        let f: Vec<&str> = line.split(' ').collect();
        let same_ip = |saved: &str, host: &str| {
            matches!(
                (saved.parse::<std::net::IpAddr>(), host.parse::<std::net::IpAddr>()),
                (Ok(x), Ok(y)) if x == y
            )
        };
        let same = f.len() > 21
            && servers.iter().any(|(be, b)| {
                f[1] == *be
                    && f[3] == b.name
                    && same_ip(f[4], &b.host)
                    && f[18] == b.port.to_string()
                    && f[21] == b.agent_port.to_string()
            });
        if same {
            out.push_str(line);
            out.push('\n');
        } else {
            dropped += 1;
        }
    }
    (out, dropped)
}

/// Whether an answer is a server-state dump (not an error message) that HAProxy can load.
pub fn check_servers_state(text: &str) -> Result<()> {
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default().trim();
    if version != "1" || !lines.next().is_some_and(|l| l.starts_with("# be_id ")) {
        let first = text.lines().next().unwrap_or_default();
        bail!("HAProxy's `show servers state` answered something else than a version 1 state dump: {first:?}");
    }
    Ok(())
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

    #[test]
    fn server_state_dumps_only() {
        // HAProxy 2.6.12's answer (a server DOWN after failed checks).
        let dump = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
2 writer 2 db2 10.253.1.1 0 0 1 1 4 11 2 0 6 0 0 0 - 9001 - 0 9001 - - 9001\n\n";
        check_servers_state(dump).unwrap();
        for bad in [
            "",
            "\n",
            "Unknown command: 'show servers state'\n",
            "1\nsomething\n",
        ] {
            assert!(check_servers_state(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_unchanged_servers_keep_their_state() {
        let header = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n";
        let line = |be: &str, name: &str, addr: &str, port: u16, check: u16| {
            format!("2 {be} 1 {name} {addr} 0 0 1 1 4 11 2 0 6 0 0 0 - {port} - 0 {check} - - {check}\n")
        };
        let b = |name: &str, host: &str, port: u16, agent_port: u16| Backend {
            name: name.into(),
            host: host.into(),
            port,
            agent_port,
            cert_pem: None,
        };
        let dump = [
            header.to_string(),
            line("writer", "db1", "10.0.0.11", 3306, 8008),
            line("writer", "db2", "10.0.0.12", 3306, 8008),
            line("writer", "db3", "10.0.0.13", 3306, 8008),
            line("writer", "db4", "10.0.0.14", 3306, 8008),
            line("writer", "db5", "10.0.0.15", 3306, 8008),
            line("reader_replicas", "db1", "10.0.0.11", 3306, 8008),
            line("writer", "db6", "fd00::16", 3306, 8008),
            line("writer", "db7", "10.0.0.17", 3306, 8008),
            "\n".to_string(),
        ]
        .concat();
        let new = [
            b("db1", "10.0.0.11", 3306, 8008),   // unchanged
            b("db2", "10.0.0.22", 3306, 8008),   // moved
            b("db3", "10.0.0.13", 3307, 8008),   // another port
            b("db4", "10.0.0.14", 3306, 8009),   // another agent port
            b("db6", "fd00:0::16", 3306, 8008),  // unchanged, written otherwise
            b("db7", "db7.example", 3306, 8008), // a host name
        ];
        let servers: Vec<(&str, &Backend)> = new.iter().map(|b| ("writer", b)).collect();
        let (kept, dropped) = keep_unchanged(&dump, &servers);
        check_servers_state(&kept).unwrap();
        let names: Vec<&str> = kept
            .lines()
            .skip(2)
            .map(|l| l.split(' ').nth(3).unwrap())
            .collect();
        // db5 is gone from the configuration; db1 left the reader's replicas.
        assert_eq!(names, ["db1", "db6"], "{kept}");
        assert_eq!(dropped, 6);
    }
}
