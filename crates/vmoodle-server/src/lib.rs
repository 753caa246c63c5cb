//! The daemon (`vmoodle serve`): the web admin, the JSON API with its OpenAPI description, the
//! scheduler, Prometheus metrics and the host-file sync of this node. It is a second front door
//! onto the jobs of vmoodle-ops: everything it changes runs as a journaled job, visible to the
//! CLI as the CLI's jobs are visible here.

pub mod api;
pub mod auth;
pub mod clusterwatch;
pub mod cron;
pub mod fleet;
pub mod metrics;
pub mod runner;
pub mod sched;
pub mod sync;
pub use vmoodle_agent::tls;
pub mod web;

use anyhow::{Context, Result};
use axum::Router;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use vmoodle_ops::Home;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The home.
    pub root: PathBuf,
    /// Mark cookies Secure (the daemon serves TLS, or sits behind a TLS proxy).
    pub secure_cookies: bool,
    /// Run the scheduler and the background loops (tests may turn them off).
    pub background: bool,
    /// What to show as this daemon's address in the register's node list.
    pub listen: String,
    /// TLS certificate chain and key (PEM files); None: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub cfg: Config,
    /// The home opened without its lock: reads go here; changes run as jobs that take the lock.
    pub home: Home,
    /// This daemon's identity as a job owner (node/pid/start time).
    pub owner: String,
    pub limiter: auth::RateLimiter,
    pub runner: runner::Runner,
    pub started: std::time::Instant,
    /// What the scheduler learnt for the metrics (MNET key expiry, warm spares).
    pub cache: metrics::Cache,
    /// Turns true when the daemon is asked to stop.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// The home as its settings are now (`fresh`): reopened when vmoodle.toml changed.
    fresh: tokio::sync::Mutex<Option<(std::time::SystemTime, Arc<Home>)>>,
}

/// How long one event stream lasts; the browser's EventSource then reconnects by itself.
pub const MAX_STREAM: std::time::Duration = std::time::Duration::from_secs(600);

impl Inner {
    /// Completes when an event stream should end: after `MAX_STREAM`, or when the daemon stops.
    pub fn stream_end(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let stopped = async move {
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(MAX_STREAM) => {}
                _ = stopped => {}
            }
        }
    }

    /// The home with its current settings: `home` keeps the settings it was opened with, while
    /// the settings page, `vmoodle settings set` or an editor may change vmoodle.toml. Checks
    /// and previews (what a token expands to, a deploy's plan) and the scheduler use this, so
    /// they agree with the jobs, which open the home afresh under its lock.
    pub async fn fresh(&self) -> Result<Arc<Home>> {
        let path = Home::settings_path(&self.cfg.root);
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading {}", path.display()))?;
        let mut cur = self.fresh.lock().await;
        if let Some((t, h)) = cur.as_ref() {
            if *t == mtime {
                return Ok(h.clone());
            }
        }
        let h = Arc::new(Home::open(&self.cfg.root).await?);
        *cur = Some((mtime, h.clone()));
        Ok(h)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("root", &self.cfg.root)
            .finish()
    }
}

impl AppState {
    pub async fn new(cfg: Config) -> Result<Self> {
        let home = Home::open(&cfg.root).await?;
        Ok(Self(Arc::new(Inner {
            home,
            owner: vmoodle_ops::journal::this_owner(),
            limiter: auth::RateLimiter::default(),
            runner: runner::Runner::default(),
            started: std::time::Instant::now(),
            cache: metrics::Cache::default(),
            fresh: tokio::sync::Mutex::new(None),
            stopping: tokio::sync::watch::channel(false).0,
            cfg,
        })))
    }
}

/// Runs a change on the home opened with its lock (waiting while the CLI or a job changes
/// it), on a thread of its own driven by the runtime's handle, as the runner runs jobs: the
/// operations' futures are not Send.
pub async fn with_lock<F, Fut, T>(state: &AppState, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Home) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let root = state.cfg.root.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        rt.block_on(async move {
            let home = Home::open_locked(&root).await?;
            f(home).await
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("the change stopped: {e}"))?
}

/// Every route: pages, API, metrics, health.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(web::routes())
        .nest("/api/v1", api::routes())
        .merge(metrics::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(web::security_headers))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` completes; the background loops (scheduler,
/// heartbeat, host-file sync, cancel requests) run alongside unless `cfg.background` is off.
pub async fn launch(
    listener: tokio::net::TcpListener,
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = AppState::new(cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let bg = if state.cfg.background {
        Some(tokio::spawn(sched::run(state.clone(), stop_rx.clone())))
    } else {
        None
    };
    let app = router(state.clone());
    // Long answers (event streams) end when the daemon is asked to stop, so a graceful shutdown
    // does not wait for browsers to go away.
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let served = match &state.cfg.tls {
        Some((cert, key)) => match tls::acceptor(cert, key) {
            Ok(acceptor) => tls::serve(listener, acceptor, app, shutdown).await,
            Err(e) => Err(e),
        },
        None => axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP"),
    };
    let _ = stop_tx.send(true);
    if let Some(bg) = bg {
        let _ = bg.await;
    }
    state.runner.wait_idle().await;
    let _ = state.home.registry.remove_node(&state.owner).await;
    served
}
