//! The accept loop: client connections under a cap, with a header-read timeout (which is
//! also the idle keep-alive timeout), served by hyper (HTTP/1.1 and HTTP/2), drained on
//! shutdown. A connection over the cap is closed at once, logged and counted, so a flood of
//! slow connections cannot take the descriptors that normal requests need.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;

/// The connection metrics: open now, and refused at the cap.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge<i64, AtomicI64>,
    refused: Counter<u64, AtomicU64>,
}

impl ConnectionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "client_connections",
            "Client connections open",
            metrics.open.clone(),
        );
        registry.register(
            "client_connections_refused",
            "Client connections closed at once: server.max_connections reached",
            metrics.refused.clone(),
        );
        metrics
    }
}

/// The connection cap `max_connections` means (0: four fifths of the open-file limit).
pub fn connection_cap(config: &ServerConfig) -> usize {
    if config.max_connections > 0 {
        return config.max_connections;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let files = if ok && limit.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(limit.rlim_cur).unwrap_or(1024)
    } else {
        65_536
    };
    (files / 5 * 4).max(16)
}

/// Serves `app` on `listener` until `shutdown`, then waits for the open connections to finish
/// (each told to close once its current request is done).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    config: &ServerConfig,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let cap = connection_cap(config);
    let permits = Arc::new(Semaphore::new(cap));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_timeout_ms.max(1)));
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let mut tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was taken: a short
                // pause rather than a spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.inc();
            if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    max_connections = cap,
                    refused = metrics.refused.get(),
                    "connection cap reached: new connections are closed"
                );
            }
            drop(tcp);
            continue;
        };
        no_delay(&mut tcp);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Small SSE writes must leave at once: with Nagle's algorithm on, an event waits for the
/// client's delayed ACK (about 40 ms on Linux).
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}
