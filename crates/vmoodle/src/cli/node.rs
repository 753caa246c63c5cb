//! `vmoodle node add|list|show|check|remove`: the machines of database clusters, reached through
//! their agents.

use anyhow::{anyhow, Result};
use vmoodle_ops::nodes;
use vmoodle_ops::Home;

use super::{exit, output};

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Register a node whose agent runs (`vmoodle agent init` and `serve` on it). The token is
    /// read from a file or stdin and stored encrypted; the agent's certificate is pinned. Give
    /// the fingerprint `agent init` printed to be sure it is that node (else it is trusted on
    /// first use, and shown).
    ///
    /// Example: vmoodle node add db2 --address 10.0.0.12 --token-file db2.token --fingerprint AB:CD:...
    Add {
        /// A name for the node (letters, digits, `_ . -`).
        name: String,
        /// The address the control node and the other nodes reach it at.
        #[arg(long)]
        address: String,
        /// The agent's port.
        #[arg(long, default_value_t = vmoodle_agent::DEFAULT_PORT)]
        port: u16,
        /// Read the agent's token from the first line of this file.
        #[arg(long, value_name = "FILE", conflicts_with = "token_stdin")]
        token_file: Option<std::path::PathBuf>,
        /// Read the agent's token from standard input.
        #[arg(long)]
        token_stdin: bool,
        /// The SHA-256 fingerprint of the agent's certificate (`vmoodle agent fingerprint` on
        /// the node). Required unless --trust-on-first-use.
        #[arg(long, required_unless_present = "trust_on_first_use")]
        fingerprint: Option<String>,
        /// Pin whatever certificate the agent presents now (the token is sent to it): only on a
        /// network you trust.
        #[arg(long)]
        trust_on_first_use: bool,
    },
    /// List registered nodes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one node and what its agent says now.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Ask every node's agent (or the named ones) how it is; exit 3 when one does not answer.
    Check {
        names: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Unregister a node (the node itself is untouched).
    Remove { name: String },
}

impl Cmd {
    pub async fn run(self, root: &std::path::Path) -> Result<u8> {
        match self {
            Cmd::Add {
                name,
                address,
                port,
                token_file,
                token_stdin,
                fingerprint,
                trust_on_first_use: _,
            } => {
                let token = match (&token_file, token_stdin) {
                    (Some(f), _) => vmoodle_ops::read_password_file(f)?,
                    (None, true) => vmoodle_ops::read_password_stdin()?,
                    (None, false) => {
                        return Err(anyhow!(
                            "give the agent's token with --token-file FILE or --token-stdin"
                        ))
                    }
                };
                let home = super::open_locked(root).await?;
                let pinned = fingerprint.is_some();
                let (n, status) = nodes::add(
                    &home,
                    nodes::AddNode {
                        name,
                        address,
                        port,
                        token,
                        fingerprint,
                    },
                )
                .await?;
                eprintln!(
                    "registered node `{}` ({}:{}, agent `{}` {})",
                    n.name, n.address, n.agent_port, status.name, status.version
                );
                if !pinned {
                    eprintln!(
                        "warning: no --fingerprint given; pinned the certificate the agent presented now:\n  {}\ncompare it with `vmoodle agent fingerprint` on the node",
                        n.fingerprint
                    );
                }
            }
            Cmd::List { json } => {
                let home = Home::open(root).await?;
                let list = home.registry.cluster_nodes().await?;
                if json {
                    output::json(&list)?;
                } else {
                    output::table(
                        &["name", "agent", "fingerprint", "registered"],
                        list.iter()
                            .map(|n| {
                                vec![
                                    n.name.clone(),
                                    format!("{}:{}", n.address, n.agent_port),
                                    short_fp(&n.fingerprint),
                                    output::time(n.created_at),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Cmd::Show { name, json } => {
                let home = Home::open(root).await?;
                let n = home.registry.cluster_node(&name).await?;
                let r = nodes::check(&home, n).await;
                if json {
                    output::json(&r)?;
                } else {
                    print_report(&r);
                }
                if r.error.is_some() {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Check { names, json } => {
                let home = Home::open(root).await?;
                let list = if names.is_empty() {
                    home.registry.cluster_nodes().await?
                } else {
                    let mut v = Vec::new();
                    for n in &names {
                        v.push(home.registry.cluster_node(n).await?);
                    }
                    v
                };
                let reports =
                    futures::future::join_all(list.into_iter().map(|n| nodes::check(&home, n)))
                        .await;
                let bad = reports.iter().filter(|r| r.error.is_some()).count();
                if json {
                    output::json(&reports)?;
                } else {
                    output::table(
                        &["node", "agent", "role", "proxy", "state"],
                        reports
                            .iter()
                            .map(|r| {
                                vec![
                                    r.node.name.clone(),
                                    format!("{}:{}", r.node.address, r.node.agent_port),
                                    r.health
                                        .as_ref()
                                        .and_then(|h| h.role)
                                        .map_or("-".into(), |x| x.as_str().to_string()),
                                    r.health
                                        .as_ref()
                                        .map_or("-", |h| if h.proxy { "yes" } else { "no" })
                                        .to_string(),
                                    r.error.clone().unwrap_or_else(|| "ok".into()),
                                ]
                            })
                            .collect(),
                    );
                }
                if bad > 0 {
                    return Ok(exit::PARTIAL);
                }
            }
            Cmd::Remove { name } => {
                let home = super::open_locked(root).await?;
                home.registry.remove_cluster_node(&name).await?;
                eprintln!("removed node `{name}` from the register (the node and its agent are untouched)");
            }
        }
        Ok(exit::OK)
    }
}

fn short_fp(fp: &str) -> String {
    fp.get(..23).map_or(fp.to_string(), |s| format!("{s}…"))
}

fn print_report(r: &nodes::NodeReport) {
    let db = r.status.as_ref().and_then(|s| s.database.as_ref());
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    output::fields(&[
        ("name", r.node.name.clone()),
        (
            "agent",
            format!("https://{}:{}", r.node.address, r.node.agent_port),
        ),
        ("fingerprint", r.node.fingerprint.clone()),
        (
            "agent version",
            opt(r.status.as_ref().map(|s| s.version.clone())),
        ),
        (
            "role",
            opt(db.and_then(|d| d.role).map(|x| x.as_str().to_string())),
        ),
        (
            "read_only",
            opt(db.and_then(|d| d.read_only).map(|b| b.to_string())),
        ),
        (
            "replication io",
            opt(db.and_then(|d| d.io_running).map(|b| b.to_string())),
        ),
        (
            "replication sql",
            opt(db.and_then(|d| d.sql_running).map(|b| b.to_string())),
        ),
        (
            "lag (s)",
            opt(db.and_then(|d| d.lag_seconds).map(|l| format!("{l:.1}"))),
        ),
        ("position", opt(db.and_then(|d| d.position.clone()))),
        ("replicates from", opt(db.and_then(|d| d.source.clone()))),
        (
            "proxy",
            opt(r.status.as_ref().map(|s| s.proxy.is_some().to_string())),
        ),
        ("state", r.error.clone().unwrap_or_else(|| "ok".into())),
    ]);
}
