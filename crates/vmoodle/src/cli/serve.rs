//! `vmoodle serve`: the daemon (web admin, JSON API, scheduler, metrics).

use anyhow::{Context, Result};
use std::path::Path;
use vmoodle_ops::Home;

const EXAMPLES: &str = "\
The daemon serves the web admin and the JSON API (/api/v1, described at /api/v1/openapi.json),
runs the scheduler (MNET key renewal, warm spares, recovery of interrupted jobs), keeps this
node's host files in step with the register, and answers /metrics (Prometheus), /healthz and
/readyz. Log in with an administrator made by `vmoodle admin add NAME --password-stdin`.

SIGTERM or Ctrl-C stops it: running jobs stop at their next step boundary and undo what they did.

Examples:
  vmoodle serve                                (listens on web.listen, 127.0.0.1:8700 by default)
  vmoodle serve --listen 0.0.0.0:8700          (put it behind nginx with TLS, or set web.tls_cert)";

/// Run the daemon: web admin, JSON API, scheduler, metrics.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Cmd {
    /// Address and port to listen on (default: the setting web.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// Mark session cookies Secure although this daemon serves plain HTTP (it sits behind a
    /// proxy that terminates TLS).
    #[arg(long)]
    behind_tls_proxy: bool,
}

impl Cmd {
    pub async fn run(self, root: &Path) -> Result<u8> {
        // Recover what an earlier run left, and bring the register up to date, under the lock.
        drop(super::open_locked(root).await?);
        let home = Home::open(root).await?;
        let listen = self
            .listen
            .clone()
            .unwrap_or_else(|| home.settings.web.listen.clone());
        let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "--listen `{listen}` is not an address and port; use e.g. 127.0.0.1:8700 or [::]:8700"
            )
        })?;
        let tls = (!home.settings.web.tls_cert.is_empty()).then(|| {
            (
                home.settings.web.tls_cert.clone(),
                home.settings.web.tls_key.clone(),
            )
        });
        drop(home);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        // The bound address (with --listen ADDR:0, the port the system chose).
        let addr = listener.local_addr().unwrap_or(addr);
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!(
            "vmoodle serving on {scheme}://{addr}/ (home {})",
            root.display()
        );
        let cfg = vmoodle_server::Config {
            root: root.to_path_buf(),
            secure_cookies: tls.is_some() || self.behind_tls_proxy,
            background: true,
            listen: format!("{scheme}://{addr}"),
            tls: tls.map(|(c, k)| (c.into(), k.into())),
        };
        vmoodle_server::launch(listener, cfg, shutdown()).await?;
        eprintln!("vmoodle stopped");
        Ok(super::exit::OK)
    }
}

/// Completes at SIGINT or SIGTERM (the CLI's signal watcher has already asked running jobs to
/// stop and undo).
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
