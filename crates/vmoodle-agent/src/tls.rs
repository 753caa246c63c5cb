//! HTTPS with OpenSSL (the library the rest of vmoodle already uses): each accepted connection
//! is handshaked with `tokio-openssl` and served by hyper with the same router as plain HTTP.
//! A failed handshake (a scanner, a plain-HTTP client) ends that connection only.

use anyhow::{Context, Result};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tower_service::Service;

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
            if let Err(e) = connection(tcp, peer, &acceptor, app).await {
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
) -> Result<()> {
    let ssl = Ssl::new(acceptor.context())?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp)?;
    // A client that never finishes its handshake does not hold a connection for ever.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Pin::new(&mut stream).accept(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("TLS handshake: no answer within 10 s"))?
    .context("TLS handshake")?;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { app.call(req.map(axum::body::Body::new)).await }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}
