//! The control node's client of an agent: HTTPS to the node's address, trusting only the
//! certificate pinned when the node was registered (no certificate authority, no name check: the
//! pinned certificate is the identity), with the node's token as a bearer token.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use vmoodle_core::Secret;

use crate::protocol::{
    CatchUp, ErrorBody, Fenced, FollowPlan, Health, NodeStatus, Promotion, ProxySpec, ProxyStatus,
    ReplicaPlan, SeedTicket, ServerFacts,
};

/// How to reach one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    /// The node's name in the register (for messages).
    pub node: String,
    base: String,
    token: Secret,
    http: reqwest::Client,
}

/// Local steps (a seed, a proxy start) may take a while; a health call must not.
const STEP_TIMEOUT: Duration = Duration::from_secs(3600);
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);

impl AgentClient {
    /// A client for the agent at `address:port` whose certificate is `cert_pem`.
    pub fn new(
        node: &str,
        address: &str,
        port: u16,
        cert_pem: &str,
        token: Secret,
    ) -> Result<Self> {
        let cert = reqwest::Certificate::from_pem(cert_pem.as_bytes())
            .with_context(|| format!("the pinned certificate of node `{node}`"))?;
        let http = reqwest::Client::builder()
            .tls_certs_only([cert])
            .tls_danger_accept_invalid_hostnames(true)
            .connect_timeout(Duration::from_secs(5))
            // The agent closes a connection idle for 10 s: never reuse one that old.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .context("building the agent client")?;
        Ok(AgentClient {
            node: node.into(),
            base: base_url(address, port),
            token,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn answer<T: DeserializeOwned>(&self, what: &str, r: reqwest::Response) -> Result<T> {
        let status = r.status();
        if status.is_success() {
            return r
                .json::<T>()
                .await
                .with_context(|| format!("reading node `{}`'s answer to {what}", self.node));
        }
        let text = r.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        bail!("node `{}` refused {what} ({status}): {msg}", self.node)
    }

    async fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T> {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(self.token.expose())
            .timeout(QUICK_TIMEOUT)
            .send()
            .await
            .with_context(|| self.unreachable(what))?;
        self.answer(what, r).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.token.expose())
            .timeout(STEP_TIMEOUT)
            .json(body)
            .send()
            .await
            .with_context(|| self.unreachable(what))?;
        self.answer(what, r).await
    }

    fn unreachable(&self, what: &str) -> String {
        format!(
            "reaching the agent of node `{}` at {} for {what} (is `vmoodle agent serve` running there, and is this its certificate?)",
            self.node, self.base
        )
    }

    /// The unauthenticated health answer.
    pub async fn health(&self) -> Result<Health> {
        let r = self
            .http
            .get(self.url("/health"))
            .timeout(QUICK_TIMEOUT)
            .send()
            .await
            .with_context(|| self.unreachable("its health"))?;
        self.answer("its health", r).await
    }

    /// The status code of a health check path (`/primary`, `/replica?max_lag=5`, `/read-only`).
    pub async fn check(&self, path: &str) -> Result<u16> {
        let r = self
            .http
            .get(self.url(path))
            .timeout(QUICK_TIMEOUT)
            .send()
            .await
            .with_context(|| self.unreachable(path))?;
        Ok(r.status().as_u16())
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        self.get("its status", "/v1/status").await
    }

    pub async fn facts(&self) -> Result<ServerFacts> {
        self.get("the facts of its database server", "/v1/db/facts")
            .await
    }

    /// Seeds `self` as a replica. MariaDB: the hot backup streams from `source`'s agent through
    /// this process to this node's agent; PostgreSQL: the node runs pg_basebackup itself.
    pub async fn seed_replica(
        &self,
        plan: &ReplicaPlan,
        source: &AgentClient,
    ) -> Result<NodeStatus> {
        let t: SeedTicket = self
            .send(
                "a replica plan",
                reqwest::Method::POST,
                "/v1/db/replica",
                plan,
            )
            .await?;
        if let Some(s) = t.status {
            return Ok(s);
        }
        let backup = source
            .http
            .get(source.url("/v1/db/backup"))
            .bearer_auth(source.token.expose())
            .timeout(STEP_TIMEOUT)
            .send()
            .await
            .with_context(|| source.unreachable("a hot backup"))?;
        if !backup.status().is_success() {
            return source.answer("a hot backup", backup).await;
        }
        let r = self
            .http
            .post(self.url(&format!("/v1/db/replica/{}/stream", t.ticket)))
            .bearer_auth(self.token.expose())
            .timeout(STEP_TIMEOUT)
            .body(reqwest::Body::wrap_stream(backup.bytes_stream()))
            .send()
            .await
            .with_context(|| self.unreachable("the backup stream"))?;
        self.answer("seeding from the backup stream", r).await
    }

    pub async fn undo_replica(&self) -> Result<NodeStatus> {
        self.send(
            "undoing its replica seed",
            reqwest::Method::POST,
            "/v1/db/replica/undo",
            &(),
        )
        .await
    }

    /// The old primary of a switchover stops taking writes (MariaDB read_only and its client
    /// sessions closed; PostgreSQL a clean shutdown); answers the position replicas must reach.
    pub async fn fence(&self) -> Result<Fenced> {
        self.send(
            "fencing its server",
            reqwest::Method::POST,
            "/v1/db/fence",
            &(),
        )
        .await
    }

    /// Takes writes again after a `fence` (a switchover that did not happen).
    pub async fn unfence(&self) -> Result<NodeStatus> {
        self.send(
            "lifting its fence",
            reqwest::Method::POST,
            "/v1/db/unfence",
            &(),
        )
        .await
    }

    /// Waits until this replica has applied `position`.
    pub async fn catch_up(&self, position: &str, timeout_secs: u32) -> Result<NodeStatus> {
        self.send(
            "catching up",
            reqwest::Method::POST,
            "/v1/db/catch-up",
            &CatchUp {
                position: position.to_string(),
                timeout_secs,
            },
        )
        .await
    }

    pub async fn promote(&self, p: &Promotion) -> Result<NodeStatus> {
        self.send(
            "promoting it to primary",
            reqwest::Method::POST,
            "/v1/db/promote",
            p,
        )
        .await
    }

    pub async fn follow(&self, p: &FollowPlan) -> Result<NodeStatus> {
        self.send(
            "following the new primary",
            reqwest::Method::POST,
            "/v1/db/follow",
            p,
        )
        .await
    }

    pub async fn apply_proxy(&self, spec: &ProxySpec) -> Result<ProxyStatus> {
        self.send(
            "a proxy configuration",
            reqwest::Method::PUT,
            "/v1/proxy",
            spec,
        )
        .await
    }

    pub async fn remove_proxy(&self) -> Result<()> {
        let r = self
            .http
            .delete(self.url("/v1/proxy"))
            .bearer_auth(self.token.expose())
            .timeout(STEP_TIMEOUT)
            .send()
            .await
            .with_context(|| self.unreachable("removing its proxy"))?;
        if r.status().is_success() {
            return Ok(());
        }
        self.answer::<serde_json::Value>("removing its proxy", r)
            .await
            .map(|_| ())
    }

    pub async fn proxy_status(&self) -> Result<ProxyStatus> {
        self.get("its proxy status", "/v1/proxy/status").await
    }
}

fn base_url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("https://[{address}]:{port}")
    } else {
        format!("https://{address}:{port}")
    }
}

/// The certificate an agent presents (PEM), fetched without trusting it, so the operator can
/// compare its fingerprint with the one `vmoodle agent init` printed on the node.
pub fn fetch_certificate(address: &str, port: u16) -> Result<String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::net::ToSocketAddrs;
    let target = format!("{address}:{port}");
    let addr = (address, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {target}"))?
        .next()
        .with_context(|| format!("{target} resolves to no address"))?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the agent at {target}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let c = b.build().configure()?.verify_hostname(false);
    let s = c
        .connect(address, tcp)
        .map_err(|e| anyhow::anyhow!("TLS handshake with {target}: {e}"))?;
    let cert = s
        .ssl()
        .peer_certificate()
        .with_context(|| format!("{target} presented no certificate"))?;
    Ok(String::from_utf8(cert.to_pem()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_bracketed() {
        assert_eq!(base_url("10.0.0.1", 8008), "https://10.0.0.1:8008");
        assert_eq!(base_url("fd00::1", 8008), "https://[fd00::1]:8008");
        assert_eq!(base_url("db1.example", 8008), "https://db1.example:8008");
    }
}
