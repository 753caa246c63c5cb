//! The agent's HTTPS server: the unauthenticated health checks HAProxy uses, answered from the
//! last probe of the local server (one probe a second, however often HAProxy asks), and the
//! authenticated local steps the control node asks for, one at a time.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, RwLock};

use crate::config::{AgentConfig, AgentHome, Engine};
use crate::protocol::{
    CatchUp, DbState, ErrorBody, Fenced, FollowPlan, Health, NodeStatus, Promotion, ProxySpec,
    ReplicaPlan, Role, SeedTicket,
};
use crate::{mariadb, postgres, proxy, tls};

/// A byte stream produced by a child process (a backup): its stdout and the child to wait on.
#[derive(Debug)]
pub struct Streaming {
    pub stdout: tokio::process::ChildStdout,
    pub child: tokio::process::Child,
    /// What the child writes to stderr goes here (a log in the agent's state directory).
    pub log: std::path::PathBuf,
}

/// How often the local server is probed, and how old a probe may be before the health checks
/// answer as if the server were down.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_STALE_SECS: i64 = 4;

struct Agent {
    cfg: AgentConfig,
    home: AgentHome,
    db: RwLock<Option<DbState>>,
    /// Replica plans waiting for their backup stream, by ticket (see `keep_ticket`).
    seeds: Mutex<Seeds>,
    /// One local step at a time.
    step: Mutex<()>,
}

type Shared = Arc<Agent>;

/// Serves the agent of `home` until `shutdown` completes.
pub async fn serve(
    home: AgentHome,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cfg = AgentConfig::load(&home.dir)?;
    std::fs::read_to_string(home.token_hash()).with_context(|| {
        format!(
            "reading {}: run `vmoodle agent init` first",
            home.token_hash().display()
        )
    })?;
    let acceptor = tls::acceptor(&home.cert(), &home.key())?;
    std::fs::create_dir_all(home.state())?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {} (listen in agent.toml)", cfg.listen))?;
    let agent = Arc::new(Agent {
        cfg,
        home,
        db: RwLock::new(None),
        seeds: Mutex::new(HashMap::new()),
        step: Mutex::new(()),
    });
    if agent.cfg.database.is_some() {
        let a = agent.clone();
        tokio::spawn(async move {
            loop {
                probe_now(&a).await;
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
    }
    tracing::info!(
        "vmoodle agent `{}` listening on https://{}",
        agent.cfg.node_name(),
        agent.cfg.listen
    );
    tls::serve(listener, acceptor, router(agent), shutdown).await
}

fn router(agent: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/primary", get(primary))
        .route("/replica", get(replica))
        .route("/read-only", get(read_only))
        .route("/v1/status", get(status))
        .route("/v1/db/facts", get(facts))
        .route("/v1/db/backup", get(backup))
        .route("/v1/db/replica", post(replica_plan))
        .route("/v1/db/replica/undo", post(replica_undo))
        .route("/v1/db/replica/{ticket}/stream", post(replica_stream))
        .route("/v1/db/fence", post(fence))
        .route("/v1/db/unfence", post(unfence))
        .route("/v1/db/catch-up", post(catch_up))
        .route("/v1/db/promote", post(promote))
        .route("/v1/db/follow", post(follow))
        .route("/v1/proxy", put(proxy_apply).delete(proxy_remove))
        .route("/v1/proxy/status", get(proxy_status))
        .with_state(agent)
}

async fn probe_now(a: &Agent) {
    if let Some(d) = &a.cfg.database {
        let s = match d.engine {
            Engine::Mariadb => mariadb::probe(d).await,
            Engine::Postgresql => postgres::probe(d).await,
        };
        *a.db.write().await = Some(s);
    }
}

/// The last probe, or `None` when there is none or it is too old to vouch for the server.
async fn fresh_state(a: &Agent) -> Option<DbState> {
    let s = a.db.read().await.clone()?;
    (now() - s.probed_at <= PROBE_STALE_SECS).then_some(s)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn check_answer(ok: bool, why: String) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, why).into_response()
}

async fn health(State(a): State<Shared>) -> Json<Health> {
    Json(Health {
        name: a.cfg.node_name(),
        version: env!("CARGO_PKG_VERSION").into(),
        role: fresh_state(&a).await.and_then(|s| s.role).or(a
            .cfg
            .database
            .as_ref()
            .map(|_| Role::Down)),
        proxy: a.cfg.proxy.is_some(),
    })
}

async fn primary(State(a): State<Shared>) -> Response {
    match fresh_state(&a).await {
        Some(s) if s.role == Some(Role::Primary) => check_answer(true, "primary\n".into()),
        Some(s) => check_answer(
            false,
            format!("not a writable primary: {}\n", role_name(&s)),
        ),
        None => check_answer(false, "no recent probe of the server\n".into()),
    }
}

#[derive(Deserialize)]
struct LagQuery {
    max_lag: Option<f64>,
}

async fn replica(State(a): State<Shared>, Query(q): Query<LagQuery>) -> Response {
    let Some(s) = fresh_state(&a).await else {
        return check_answer(false, "no recent probe of the server\n".into());
    };
    let (ok, why) = replica_verdict(&s, q.max_lag);
    check_answer(ok, why)
}

/// Whether a probed server is a healthy replica within `max_lag` seconds, and why not.
pub fn replica_verdict(s: &DbState, max_lag: Option<f64>) -> (bool, String) {
    if s.role != Some(Role::Replica) {
        return (false, format!("not a replica: {}\n", role_name(s)));
    }
    if s.io_running != Some(true) || s.sql_running != Some(true) {
        return (
            false,
            format!(
                "replication is not running (io {}, sql {})\n",
                yes_no(s.io_running),
                yes_no(s.sql_running)
            ),
        );
    }
    match (s.lag_seconds, max_lag) {
        (None, _) => (false, "the lag is unknown\n".into()),
        (Some(lag), Some(max)) if lag > max => (
            false,
            format!("lagging {lag:.1} s behind (max_lag {max})\n"),
        ),
        (Some(lag), _) => (true, format!("replica, {lag:.1} s behind\n")),
    }
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn role_name(s: &DbState) -> &'static str {
    s.role.map_or("unknown", Role::as_str)
}

async fn read_only(State(a): State<Shared>) -> Response {
    match fresh_state(&a).await {
        Some(s) if matches!(s.role, Some(Role::Primary | Role::Replica | Role::Readonly)) => {
            check_answer(true, format!("{}\n", role_name(&s)))
        }
        Some(s) => check_answer(false, format!("{}\n", role_name(&s))),
        None => check_answer(false, "no recent probe of the server\n".into()),
    }
}

// ---- authenticated ------------------------------------------------------------------------

/// An error answer for the control node.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

fn authorise(a: &Agent, h: &HeaderMap) -> Result<(), Failure> {
    let presented = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Read at each request, so `vmoodle agent rotate-token` takes effect at once.
    let stored = std::fs::read_to_string(a.home.token_hash()).unwrap_or_default();
    match presented {
        Some(t) if !stored.trim().is_empty() && crate::identity::token_matches(&stored, t) => {
            Ok(())
        }
        _ => Err(Failure(
            StatusCode::UNAUTHORIZED,
            "a valid agent token is needed (Authorization: Bearer TOKEN)".into(),
        )),
    }
}

fn database(a: &Agent) -> Result<&crate::config::DatabaseConfig, Failure> {
    a.cfg.database.as_ref().ok_or_else(|| {
        Failure(
            StatusCode::CONFLICT,
            format!(
                "node `{}` has no [database] in its agent.toml",
                a.cfg.node_name()
            ),
        )
    })
}

fn proxy_cfg(a: &Agent) -> Result<&crate::config::ProxyConfig, Failure> {
    a.cfg.proxy.as_ref().ok_or_else(|| {
        Failure(
            StatusCode::CONFLICT,
            format!(
                "node `{}` has no [proxy] in its agent.toml",
                a.cfg.node_name()
            ),
        )
    })
}

async fn node_status(a: &Agent) -> NodeStatus {
    let proxy = match &a.cfg.proxy {
        Some(p) => proxy::status(p, &a.home).await.ok(),
        None => None,
    };
    NodeStatus {
        name: a.cfg.node_name(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: a.db.read().await.clone(),
        proxy,
    }
}

async fn status(State(a): State<Shared>, h: HeaderMap) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    Ok(Json(node_status(&a).await))
}

async fn facts(
    State(a): State<Shared>,
    h: HeaderMap,
) -> Result<Json<crate::protocol::ServerFacts>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let f = match d.engine {
        Engine::Mariadb => mariadb::facts(d).await?,
        Engine::Postgresql => postgres::facts(d).await?,
    };
    Ok(Json(f))
}

async fn backup(State(a): State<Shared>, h: HeaderMap) -> Result<Response, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    if d.engine != Engine::Mariadb {
        return Err(Failure(
            StatusCode::CONFLICT,
            "a PostgreSQL replica pulls its base backup itself (pg_basebackup)".into(),
        ));
    }
    let Streaming {
        stdout,
        mut child,
        log,
    } = mariadb::backup(d, &a.home).await?;
    // The stream ends with an error (the response is cut, never ended cleanly) when mariabackup
    // fails, so the receiving side never takes a partial backup for a whole one.
    let body = tokio_util::io::ReaderStream::new(stdout).map(|r| r.map_err(std::io::Error::other));
    let tail = futures::stream::once(async move {
        match child.wait().await {
            Ok(st) if st.success() => None,
            Ok(st) => Some(Err(std::io::Error::other(format!(
                "mariabackup ended with {st}; see {}",
                log.display()
            )))),
            Err(e) => Some(Err(e)),
        }
    })
    .filter_map(|x| async move { x });
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(body.chain(tail)))
        .map_err(|e| anyhow::anyhow!(e))?)
}

/// How long a replica ticket waits for its backup stream (the control node sends it at once).
const TICKET_TTL: Duration = Duration::from_secs(600);

/// Replica plans waiting for their backup stream, by ticket, with when each ticket was made.
type Seeds = HashMap<String, (std::time::Instant, ReplicaPlan)>;

fn drop_stale_tickets(seeds: &mut Seeds, now: std::time::Instant) {
    seeds.retain(|_, (made, _)| now.saturating_duration_since(*made) <= TICKET_TTL);
}

/// Keeps a new ticket's plan (and drops the tickets older than `TICKET_TTL`).
fn keep_ticket(seeds: &mut Seeds, ticket: String, plan: ReplicaPlan, now: std::time::Instant) {
    drop_stale_tickets(seeds, now);
    seeds.insert(ticket, (now, plan));
}

/// Takes a ticket's plan; a ticket older than `TICKET_TTL` is refused (and dropped).
fn take_ticket(
    seeds: &mut Seeds,
    ticket: &str,
    now: std::time::Instant,
) -> Result<ReplicaPlan, Failure> {
    let taken = seeds.remove(ticket);
    drop_stale_tickets(seeds, now);
    match taken {
        Some((made, plan)) if now.saturating_duration_since(made) <= TICKET_TTL => Ok(plan),
        Some(_) => Err(Failure(
            StatusCode::GONE,
            format!(
                "this replica ticket expired ({} min after it was made): POST /v1/db/replica again",
                TICKET_TTL.as_secs() / 60
            ),
        )),
        None => Err(Failure(
            StatusCode::NOT_FOUND,
            "no replica plan with this ticket (POST /v1/db/replica first)".into(),
        )),
    }
}

#[cfg(test)]
mod ticket_tests {
    use super::*;
    use std::time::Instant;

    fn plan() -> ReplicaPlan {
        ReplicaPlan {
            primary_host: "10.0.0.11".into(),
            primary_port: 3306,
            repl_user: "repl".into(),
            repl_password: vmoodle_core::Secret::new("pw".to_string()),
            server_id: Some(2),
            slot: None,
            application_name: "db2".into(),
        }
    }

    #[test]
    fn tickets_expire() {
        let t0 = Instant::now();
        let mut seeds = Seeds::new();
        keep_ticket(&mut seeds, "a".into(), plan(), t0);
        keep_ticket(&mut seeds, "b".into(), plan(), t0);
        let later = t0 + TICKET_TTL;
        assert_eq!(
            take_ticket(&mut seeds, "a", later)
                .ok()
                .unwrap()
                .application_name,
            "db2"
        );
        // Taken once only.
        assert_eq!(
            take_ticket(&mut seeds, "a", later).err().unwrap().0,
            StatusCode::NOT_FOUND
        );
        // Too old: refused, and gone.
        let too_late = t0 + TICKET_TTL + Duration::from_secs(1);
        let e = take_ticket(&mut seeds, "b", too_late).err().unwrap();
        assert_eq!(e.0, StatusCode::GONE, "{}", e.1);
        assert!(seeds.is_empty());
        // A new ticket drops the stale ones nobody came for.
        keep_ticket(&mut seeds, "c".into(), plan(), t0);
        keep_ticket(&mut seeds, "d".into(), plan(), too_late);
        assert_eq!(seeds.keys().collect::<Vec<_>>(), vec!["d"]);
    }
}

async fn replica_plan(
    State(a): State<Shared>,
    h: HeaderMap,
    Json(plan): Json<ReplicaPlan>,
) -> Result<Json<SeedTicket>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    plan.check()
        .map_err(|e| Failure(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    match d.engine {
        Engine::Mariadb => {
            let ticket = crate::identity::new_token()?;
            keep_ticket(
                &mut *a.seeds.lock().await,
                ticket.clone(),
                plan,
                std::time::Instant::now(),
            );
            Ok(Json(SeedTicket {
                ticket,
                status: None,
            }))
        }
        Engine::Postgresql => {
            let _one = a.step.lock().await;
            postgres::seed(d, &a.home, &plan).await?;
            probe_now(&a).await;
            Ok(Json(SeedTicket {
                ticket: "done".into(),
                status: Some(node_status(&a).await),
            }))
        }
    }
}

async fn replica_stream(
    State(a): State<Shared>,
    UrlPath(ticket): UrlPath<String>,
    h: HeaderMap,
    body: Body,
) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let plan = take_ticket(
        &mut *a.seeds.lock().await,
        &ticket,
        std::time::Instant::now(),
    )?;
    let _one = a.step.lock().await;
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    mariadb::seed(d, &a.home, &plan, reader).await?;
    probe_now(&a).await;
    Ok(Json(node_status(&a).await))
}

async fn replica_undo(State(a): State<Shared>, h: HeaderMap) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let _one = a.step.lock().await;
    match d.engine {
        Engine::Mariadb => mariadb::undo_seed(d, &a.home).await?,
        Engine::Postgresql => postgres::undo_seed(d, &a.home).await?,
    }
    probe_now(&a).await;
    Ok(Json(node_status(&a).await))
}

/// Whether the agent seeded this node (engine by engine).
fn seeded(a: &Agent, d: &crate::config::DatabaseConfig) -> Result<bool> {
    match d.engine {
        Engine::Mariadb => mariadb::is_seeded(&a.home),
        Engine::Postgresql => postgres::is_seeded(&a.home),
    }
}

async fn fence(State(a): State<Shared>, h: HeaderMap) -> Result<Json<Fenced>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let _one = a.step.lock().await;
    let position = match d.engine {
        Engine::Mariadb => mariadb::switch::fence(d).await,
        Engine::Postgresql => postgres::switch::fence(d).await,
    };
    probe_now(&a).await;
    Ok(Json(Fenced {
        position: position?,
    }))
}

async fn unfence(State(a): State<Shared>, h: HeaderMap) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let _one = a.step.lock().await;
    let r = match d.engine {
        Engine::Mariadb => mariadb::switch::unfence(d).await,
        Engine::Postgresql => postgres::switch::unfence(d).await,
    };
    probe_now(&a).await;
    r?;
    Ok(Json(node_status(&a).await))
}

async fn catch_up(
    State(a): State<Shared>,
    h: HeaderMap,
    Json(c): Json<CatchUp>,
) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let timeout = c.timeout_secs.clamp(1, 3600);
    match d.engine {
        Engine::Mariadb => mariadb::switch::catch_up(d, &c.position, timeout).await?,
        Engine::Postgresql => postgres::switch::catch_up(d, &c.position, timeout).await?,
    }
    probe_now(&a).await;
    Ok(Json(node_status(&a).await))
}

async fn promote(
    State(a): State<Shared>,
    h: HeaderMap,
    Json(p): Json<Promotion>,
) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    let _one = a.step.lock().await;
    let seeded = seeded(&a, d)?;
    let r = match d.engine {
        Engine::Mariadb => mariadb::switch::promote(d, &a.home, seeded).await,
        Engine::Postgresql => postgres::switch::promote(d, &a.home, seeded, &p.slots).await,
    };
    // HAProxy's checks see the new role at once, not at the next probe.
    probe_now(&a).await;
    r?;
    Ok(Json(node_status(&a).await))
}

async fn follow(
    State(a): State<Shared>,
    h: HeaderMap,
    Json(f): Json<FollowPlan>,
) -> Result<Json<NodeStatus>, Failure> {
    authorise(&a, &h)?;
    let d = database(&a)?;
    f.plan
        .check()
        .map_err(|e| Failure(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let _one = a.step.lock().await;
    let seeded = seeded(&a, d)?;
    let r = match d.engine {
        Engine::Mariadb => mariadb::switch::follow(d, &a.home, seeded, &f).await,
        Engine::Postgresql => postgres::switch::follow(d, &a.home, seeded, &f).await,
    };
    probe_now(&a).await;
    r?;
    Ok(Json(node_status(&a).await))
}

async fn proxy_apply(
    State(a): State<Shared>,
    h: HeaderMap,
    Json(spec): Json<ProxySpec>,
) -> Result<Json<crate::protocol::ProxyStatus>, Failure> {
    authorise(&a, &h)?;
    let p = proxy_cfg(&a)?;
    let _one = a.step.lock().await;
    Ok(Json(proxy::apply(p, &a.home, &spec).await?))
}

async fn proxy_remove(State(a): State<Shared>, h: HeaderMap) -> Result<StatusCode, Failure> {
    authorise(&a, &h)?;
    let p = proxy_cfg(&a)?;
    let _one = a.step.lock().await;
    proxy::remove(p, &a.home).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn proxy_status(
    State(a): State<Shared>,
    h: HeaderMap,
) -> Result<Json<crate::protocol::ProxyStatus>, Failure> {
    authorise(&a, &h)?;
    let p = proxy_cfg(&a)?;
    Ok(Json(proxy::status(p, &a.home).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica_state(io: bool, sql: bool, lag: Option<f64>) -> DbState {
        DbState {
            role: Some(Role::Replica),
            read_only: Some(true),
            io_running: Some(io),
            sql_running: Some(sql),
            lag_seconds: lag,
            ..DbState::default()
        }
    }

    #[test]
    fn a_replica_is_healthy_only_when_both_threads_run_within_the_lag_bound() {
        assert!(replica_verdict(&replica_state(true, true, Some(0.0)), Some(5.0)).0);
        assert!(replica_verdict(&replica_state(true, true, Some(3.0)), None).0);
        let (ok, why) = replica_verdict(&replica_state(true, true, Some(12.0)), Some(5.0));
        assert!(!ok && why.contains("12.0"), "{why}");
        let (ok, why) = replica_verdict(&replica_state(true, false, Some(0.0)), Some(5.0));
        assert!(!ok && why.contains("sql no"), "{why}");
        assert!(!replica_verdict(&replica_state(true, true, None), Some(5.0)).0);
        let primary = DbState {
            role: Some(Role::Primary),
            ..DbState::default()
        };
        assert!(!replica_verdict(&primary, None).0);
    }
}
