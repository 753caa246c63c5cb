//! HTTPS with OpenSSL (the library the rest of vmoodle already uses): each accepted connection
//! is handshaked with `tokio-openssl` and served by hyper with the same router as plain HTTP.
//! A failed handshake (a scanner, a plain-HTTP client) ends that connection only.
//!
//! Slow or idle clients: the TLS handshake must end within `HANDSHAKE_TIMEOUT`, and each
//! request's headers must arrive within `HEADER_READ_TIMEOUT` of the server starting to wait
//! for them: right after the handshake, and after each response on a kept-alive connection (so
//! the timeout also caps an idle keep-alive). A client that connects and sends nothing, or
//! sends its headers a byte at a time, loses its connection then. Bodies (a backup stream) and
//! the time a step takes to answer are not limited here.
//!
//! HTTP/1.1 only (hyper's http1 server; the agent never offered HTTP/2 by ALPN and its clients,
//! HAProxy's checks and the control node's reqwest, speak HTTP/1.1): hyper-util's auto
//! builder first waits, with no time limit, for the bytes that tell HTTP/2 from HTTP/1, before
//! the header timeout starts.

use anyhow::{Context, Result};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tower_service::Service;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers, counted from the end of the
/// handshake or of the previous response. HAProxy's checks and the control node send theirs at
/// once. It also ends idle keep-alive connections: reqwest drops a pooled connection it has
/// seen closed, but a request sent just as the agent closes it fails, so the control node's
/// client should keep idle connections for less than this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An acceptor for a PEM certificate chain and key, with Mozilla's intermediate settings
/// (TLS 1.2 and 1.3).
pub fn acceptor(cert: &Path, key: &Path) -> Result<SslAcceptor> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    b.set_certificate_chain_file(cert).with_context(|| {
        format!(
            "the TLS certificate {} (its PEM certificate chain)",
            cert.display()
        )
    })?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .with_context(|| format!("the TLS key {} (its PEM private key)", key.display()))?;
    b.check_private_key()
        .with_context(|| format!("the key {} does not match the certificate", key.display()))?;
    Ok(b.build())
}

/// Serves `app` over TLS until `shutdown` completes; connections still open then are left to
/// end with the process.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: SslAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(listener, acceptor, app, shutdown, HEADER_READ_TIMEOUT).await
}

/// `serve` with another header timeout (tests).
async fn serve_with(
    listener: tokio::net::TcpListener,
    acceptor: SslAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: Duration,
) -> Result<()> {
    let acceptor = Arc::new(acceptor);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, peer, &acceptor, app, header_timeout).await {
                tracing::debug!("TLS connection from {peer}: {e:#}");
            }
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: &SslAcceptor,
    app: Router,
    header_timeout: Duration,
) -> Result<()> {
    let ssl = Ssl::new(acceptor.context())?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp)?;
    // A client that never finishes its handshake does not hold a connection for ever.
    tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "TLS handshake: no answer within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )
        })?
        .context("TLS handshake")?;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(req.map(axum::body::Body::new)).await }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{SslConnector, SslVerifyMode};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_millis(800);

    /// An agent-like server (a self-signed certificate, a router answering "hi" on /) with a
    /// short header timeout; its address and task.
    async fn server() -> (SocketAddr, tokio::task::JoinHandle<Result<()>>) {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = crate::identity::self_signed("agent", &["127.0.0.1".into()]).unwrap();
        let (c, k) = (d.path().join("cert.pem"), d.path().join("key.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let acceptor = acceptor(&c, &k).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let task = tokio::spawn(serve_with(
            listener,
            acceptor,
            app,
            std::future::pending(),
            TIMEOUT,
        ));
        (addr, task)
    }

    /// A client that has completed its TLS handshake.
    async fn client(addr: SocketAddr) -> tokio_openssl::SslStream<tokio::net::TcpStream> {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        let ssl = b.build().configure().unwrap().into_ssl("agent").unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut s).connect().await.unwrap();
        s
    }

    /// Reads until the server ends the connection (EOF or an error); what it sent and when.
    async fn until_closed(
        s: &mut tokio_openssl::SslStream<tokio::net::TcpStream>,
    ) -> (Vec<u8>, Instant) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the server kept the connection open");
        (got, Instant::now())
    }

    fn within_the_timeout(from: Instant, to: Instant) {
        let took = to - from;
        assert!(
            took >= TIMEOUT - Duration::from_millis(100) && took < TIMEOUT * 3,
            "closed after {took:?}, the header timeout is {TIMEOUT:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_disconnected() {
        let (addr, task) = server().await;
        let mut s = client(addr).await;
        let t = Instant::now();
        let (got, closed) = until_closed(&mut s).await;
        within_the_timeout(t, closed);
        // hyper answers nothing (or a bare 408) to a client that never sent a request.
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        task.abort();
    }

    #[tokio::test]
    async fn slow_headers_are_cut_off() {
        let (addr, task) = server().await;
        let mut s = client(addr).await;
        let t = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // A header line every 200 ms, never the blank line that ends them: each byte arriving
        // does not restart the timeout.
        let trickle = async {
            for i in 0.. {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if s.write_all(format!("X-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
                if s.flush().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), trickle).await;
        let closed = Instant::now();
        let (got, _) = until_closed(&mut s).await;
        within_the_timeout(t, closed);
        assert!(!got.starts_with(b"HTTP/1.1 200"));
        task.abort();
    }

    #[tokio::test]
    async fn requests_are_served_and_an_idle_keep_alive_is_closed() {
        let (addr, task) = server().await;
        let mut s = client(addr).await;
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"hi") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
            // Half the timeout idle between requests is fine.
            tokio::time::sleep(TIMEOUT / 2).await;
        }
        let t = Instant::now();
        let (_, closed) = until_closed(&mut s).await;
        // The idle time already spent (TIMEOUT / 2) counts.
        let took = closed - t;
        assert!(
            took < TIMEOUT * 2,
            "the idle connection was closed after {took:?}"
        );
        task.abort();
    }
}
