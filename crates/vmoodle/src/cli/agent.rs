//! `vmoodle agent init|serve|rotate-token`: what runs on a database or proxy node of a cluster.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use vmoodle_agent::config::{AgentConfig, AgentHome, DatabaseConfig, Engine, ProxyConfig};
use vmoodle_agent::{fsutil, identity};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Cmd {
    /// The agent's home: agent.toml, its certificate and key, its token's hash, its state.
    #[arg(
        long = "agent-home",
        global = true,
        env = "VMOODLE_AGENT_HOME",
        default_value = "/etc/vmoodle-agent",
        value_name = "DIR"
    )]
    agent_home: PathBuf,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Make the agent's home on this node: agent.toml with Debian's paths and systemd commands
    /// (edit it for anything else), a self-signed certificate for the listen address, and a
    /// token. Prints the token and the certificate's fingerprint once: give both to
    /// `vmoodle node add` on the control node.
    ///
    /// Example: vmoodle agent init --listen 10.0.0.11:8008 --database mariadb
    Init {
        /// The address and port to listen on (an address the control node and the proxies reach).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// The node's name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// This node runs a database server of this engine.
        #[arg(long, value_name = "mariadb|postgresql")]
        database: Option<EngineArg>,
        /// This node runs HAProxy and keepalived for a cluster.
        #[arg(long)]
        proxy: bool,
        /// Write the token to this file (0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Serve the agent (HTTPS) until stopped; run it under systemd (packaging/vmoodle-agent.service).
    Serve,
    /// Replace the agent's token (the old one stops working at once); prints the new one.
    RotateToken {
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Print the certificate's SHA-256 fingerprint (what `vmoodle node add --fingerprint` wants).
    Fingerprint,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Mariadb,
    Postgresql,
}

impl Cmd {
    pub async fn run(self) -> Result<u8> {
        let home = AgentHome::new(&self.agent_home);
        match self.verb {
            Verb::Init {
                listen,
                name,
                database,
                proxy,
                token_file,
            } => {
                if database.is_none() && !proxy {
                    bail!(
                        "say what this node runs: --database mariadb|postgresql, --proxy, or both"
                    );
                }
                if home.config().exists() {
                    bail!(
                        "{} exists: this node's agent is already set up (`vmoodle agent rotate-token` gives a new token)",
                        home.config().display()
                    );
                }
                make_dir(&home.dir, 0o700)?;
                make_dir(&home.state(), 0o700)?;
                let cfg = AgentConfig {
                    listen,
                    name: name.clone(),
                    database: match database {
                        Some(EngineArg::Mariadb) => Some(DatabaseConfig::debian(Engine::Mariadb)?),
                        Some(EngineArg::Postgresql) => {
                            Some(DatabaseConfig::debian(Engine::Postgresql)?)
                        }
                        None => None,
                    },
                    proxy: proxy.then(ProxyConfig::debian),
                };
                let node = cfg.node_name();
                let mut names = vec![listen.ip().to_string(), node.clone()];
                names.dedup();
                let (cert, key) = identity::self_signed(&node, &names)?;
                fsutil::write_atomic(&home.key(), &key, 0o600)?;
                fsutil::write_atomic(&home.cert(), &cert, 0o644)?;
                let text = format!(
                    "# vmoodle agent settings (see `vmoodle agent --help`); made by `vmoodle agent init`.\n{}",
                    toml::to_string_pretty(&cfg)?
                );
                fsutil::write_atomic(&home.config(), text.as_bytes(), 0o600)?;
                give_token(&home, token_file.as_deref())?;
                println!("fingerprint: {}", identity::fingerprint_pem(&cert)?);
                eprintln!(
                    "agent `{node}` set up in {}; review agent.toml, start it with `vmoodle agent serve`, then on the control node:\n  vmoodle node add {node} --address {} --port {} --token-stdin --fingerprint FINGERPRINT",
                    home.dir.display(),
                    listen.ip(),
                    listen.port()
                );
            }
            Verb::Serve => {
                let shutdown = async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                };
                vmoodle_agent::server::serve(home, shutdown).await?;
            }
            Verb::RotateToken { token_file } => {
                if !home.config().exists() {
                    bail!(
                        "{} does not exist: run `vmoodle agent init` first",
                        home.config().display()
                    );
                }
                give_token(&home, token_file.as_deref())?;
                eprintln!("the old token no longer works; on the control node, `vmoodle node remove NAME` and `vmoodle node add NAME ... --token-stdin` with the new one");
            }
            Verb::Fingerprint => {
                let pem = std::fs::read(home.cert())
                    .with_context(|| format!("reading {}", home.cert().display()))?;
                println!("{}", identity::fingerprint_pem(&pem)?);
            }
        }
        Ok(exit::OK)
    }
}

/// Makes a new token, keeps its hash, and hands the token to the operator once.
fn give_token(home: &AgentHome, file: Option<&Path>) -> Result<()> {
    let token = identity::new_token()?;
    fsutil::write_atomic(
        &home.token_hash(),
        identity::token_hash(&token).as_bytes(),
        0o600,
    )?;
    match file {
        Some(f) => {
            fsutil::write_atomic(f, format!("{token}\n").as_bytes(), 0o600)?;
            eprintln!("token written to {}", f.display());
        }
        None => println!("token: {token}"),
    }
    Ok(())
}

fn make_dir(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}
