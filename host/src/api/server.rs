//! The API's listener, for plain HTTP and TLS alike: it accepts at most
//! `max-connections` connections at once (beyond that, new ones wait in the
//! kernel's backlog until one closes), gives each client `header-read-timeout`
//! to send a request's headers (a slow client cannot hold a connection open
//! for nothing), and when the host stops lets open requests finish for up to
//! 10 s. Long answers (event streams, `SubscribeToShard`) are not cut short.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish when the host stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one listener allows (`[api] max-connections`, `header-read-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// How long a client has to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 1024, header_read_timeout: Duration::from_secs(30) }
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    // Idle HTTP/2 connections (the KCL keeps one) are pinged, and dropped when the peer is gone.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    // Set once the listener stops: a connection still waiting for its first byte
    // closes then, instead of holding the drain up until its timeout.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait, as axum's serve does.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers (acknowledgements, pushed records) go out at once.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let (tls, router, builder, watcher) = (tls.clone(), router.clone(), builder.clone(), graceful.watcher());
        let first_byte = limits.header_read_timeout;
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // A client that connects and sends nothing holds a connection slot: it
            // gets as long as it would have for its headers to start.
            let mut byte = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(first_byte, tcp.peek(&mut byte)) => {
                    if !matches!(peeked, Ok(Ok(1..))) {
                        return tracing::debug!(%peer, "nothing sent: connection closed");
                    }
                }
                _ = stopping.wait_for(|stopped| *stopped) => {
                    return tracing::debug!(%peer, "stopping before its first request: connection closed");
                }
            }
            match tls {
                None => connection(&builder, watcher, tcp, router, peer).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => connection(&builder, watcher, stream, router, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    // No receiver left (no connection waiting for its first byte) is fine.
    stop.send_replace(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

/// Serves one connection's requests until it closes.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    stream: S,
    router: Router,
    peer: std::net::SocketAddr,
) {
    let service = TowerToHyperService::new(router);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
