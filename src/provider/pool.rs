//! Upstream HTTP/1.1 connections, kept alive between calls and driven by the task that reads
//! them.
//!
//! hyper's pooled client runs every connection in a task of its own and hands a response body
//! over a channel that holds one chunk. A burst of SSE events then crosses tasks one event at a
//! time, the client-facing body is empty between events, and the server writes each event with a
//! syscall of its own (24 `writev` per 20-event stream in the profile), and every reply costs
//! two cross-task wake-ups. Here the task that waits for a reply also drives its connection:
//! whatever the socket holds is decoded in one go and leaves in one write.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::http::{self, HeaderValue, Uri, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

/// A chat call's response; its body streams from the upstream's connection.
pub type UpstreamResponse = http::Response<PooledBody>;

type Driver = http1::Connection<MaybeHttpsStream<TokioIo<TcpStream>>, Full<Bytes>>;

/// Idle connections kept per upstream; more than this many at once are closed after use.
const MAX_IDLE: usize = 512;

/// Why a call got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, unresolvable, TLS failed).
    #[error("connect: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// Connected, but the connection failed or closed before a response head came.
    #[error("exchange: {0}")]
    Exchange(#[from] hyper::Error),
}

/// The connections to one upstream.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority`, what a new connection is made to.
    target: Uri,
    host: HeaderValue,
    idle_timeout: Duration,
    /// Most recently used last: a call takes the warmest connection, the oldest expire first.
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    closed: bool,
}

impl Conn {
    /// Lets the connection write and read what it can; true once it has closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && Pin::new(&mut self.driver).poll(cx).is_ready() {
            self.closed = true;
        }
        self.closed
    }

    /// Whether an idle connection can take a request: it notices a close by the upstream only
    /// when driven, so it is driven once here, with nobody to wake.
    fn reusable(&mut self) -> bool {
        !self.drive(&mut Context::from_waker(Waker::noop())) && self.send.is_ready()
    }
}

impl Pool {
    /// A pool for `origin` (`scheme://host[:port]`), trusting the system's roots for TLS.
    pub fn new(
        origin: &Uri,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let authority = origin
            .authority()
            .ok_or_else(|| format!("{origin}: no host"))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{origin}: host is not a valid header value"))?;
        let target = Uri::builder()
            .scheme(origin.scheme_str().unwrap_or("http"))
            .authority(authority.as_str())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("{origin}: {e}"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("TLS set-up: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            connector,
            target,
            host,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// Sends `request` (its URI in origin form, `/path?query`) on an idle connection, or on a
    /// new one if none is left or the idle one closed before the request went out.
    pub async fn send(
        self: &Arc<Self>,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<UpstreamResponse, SendError> {
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        if let Some(conn) = self.checkout() {
            match exchange(conn, request).await {
                Ok((head, conn)) => return Ok(self.wrap(head, conn)),
                Err(mut failed) => match failed.take_message() {
                    // Never written: safe to send again, on a fresh connection.
                    Some(unsent) => request = unsent,
                    None => return Err(failed.into_error().into()),
                },
            }
        }
        let conn = self.connect().await?;
        match exchange(conn, request).await {
            Ok((head, conn)) => Ok(self.wrap(head, conn)),
            Err(failed) => Err(failed.into_error().into()),
        }
    }

    /// Boxed, so that a response carries a pointer and a connection moves to and from the pool
    /// without copying.
    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(SendError::Connect)?;
        let (send, driver) = http1::Builder::new().handshake(io).await?;
        Ok(Box::new(Conn {
            send,
            driver,
            closed: false,
        }))
    }

    fn wrap(self: &Arc<Self>, head: http::Response<Incoming>, conn: Box<Conn>) -> UpstreamResponse {
        head.map(|body| PooledBody {
            body,
            conn: Some(conn),
            pool: self.clone(),
        })
    }

    fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let Idle { mut conn, since } = self.idle.lock().ok()?.pop_back()?;
            if since.elapsed() > self.idle_timeout {
                // The rest are older still.
                self.idle.lock().ok()?.clear();
                return None;
            }
            if conn.reusable() {
                return Some(conn);
            }
        }
    }

    fn checkin(&self, mut conn: Box<Conn>) {
        if !conn.reusable() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        while idle
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() > self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

type Failed = hyper::client::conn::TrySendError<http::Request<Full<Bytes>>>;

/// Writes the request and waits for the response head, driving the connection meanwhile.
async fn exchange(
    mut conn: Box<Conn>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::Response<Incoming>, Box<Conn>), Failed> {
    let mut response = std::pin::pin!(conn.send.try_send_request(request));
    let head = std::future::poll_fn(|cx| {
        conn.drive(cx);
        response.as_mut().poll(cx)
    })
    .await?;
    Ok((head, conn))
}

/// A response body that drives its connection as it is read, and hands the connection back to
/// the pool once read to the end. Dropped early (the client hung up), it closes the
/// connection, which cancels the upstream call.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
}

/// Frames a dropped body may still read to reach its end without waiting.
const DRAIN_FRAMES: usize = 4;

impl Drop for PooledBody {
    /// A reader stops at the stream's last event (`[DONE]`), which is usually in the same
    /// read as the body's end: when the end is already there, the connection is kept.
    /// Otherwise it closes, and the upstream stops.
    fn drop(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..DRAIN_FRAMES {
            match Pin::new(&mut *self).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                // `poll_frame` checked the connection in at the end.
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) | Poll::Pending => return,
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut drove = false;
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some(conn) = this.conn.take() {
                        this.pool.checkin(conn);
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(frame) => return Poll::Ready(frame),
                Poll::Pending if drove => return Poll::Pending,
                Poll::Pending => {}
            }
            // The body waits on the connection, which only this task drives.
            match this.conn.as_mut() {
                Some(conn) => {
                    conn.drive(cx);
                    drove = true;
                }
                None => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A pool for a listener on loopback.
    async fn pool_and_listener() -> (Arc<Pool>, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let pool = Pool::new(&origin, Duration::from_secs(5), Duration::from_secs(90)).unwrap();
        (Arc::new(pool), listener)
    }

    fn post() -> http::Request<Full<Bytes>> {
        let mut request = http::Request::new(Full::new(Bytes::from_static(b"{}")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = Uri::from_static("/v1/x");
        request
    }

    /// Reads one request head and body (`{}`), or None at the end of the connection.
    async fn read_request(stream: &mut TcpStream) -> Option<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.ends_with(b"\r\n\r\n{}") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&seen).into_owned())
    }

    async fn body_of(response: UpstreamResponse) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    /// Answers every request on every connection with `reply`; counts the connections.
    fn serve_each(listener: TcpListener, reply: &'static [u8]) -> Arc<AtomicUsize> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while let Some(head) = read_request(&mut stream).await {
                        assert!(head.starts_with("POST /v1/x HTTP/1.1\r\n"), "{head}");
                        let host = head.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:");
                        assert!(host, "{head}");
                        stream.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        accepted
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_serves_the_next_call() {
        let (pool, listener) = pool_and_listener().await;
        let accepted = serve_each(listener, OK);
        for _ in 0..3 {
            let response = pool.send(post()).await.unwrap();
            assert_eq!(body_of(response).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (pool, listener) = pool_and_listener().await;
        let (pooled_tx, pooled_rx) = tokio::sync::oneshot::channel();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            read_request(&mut first).await.unwrap();
            first.write_all(OK).await.unwrap();
            // Closed while the pool holds it, as an upstream's keep-alive timeout does.
            pooled_rx.await.unwrap();
            drop(first);
            closed_tx.send(()).unwrap();
            let (mut second, _) = listener.accept().await.unwrap();
            read_request(&mut second).await.unwrap();
            second.write_all(OK).await.unwrap();
            read_request(&mut second).await;
        });
        let response = pool.send(post()).await.unwrap();
        assert_eq!(body_of(response).await, "ok");
        assert_eq!(pool.idle_count(), 1);
        pooled_tx.send(()).unwrap();
        closed_rx.await.unwrap();
        let response = pool.send(post()).await.unwrap();
        assert_eq!(body_of(response).await, "ok");
    }

    #[tokio::test]
    async fn a_body_dropped_early_closes_its_connection() {
        let (pool, listener) = pool_and_listener().await;
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
            stream.write_all(head.as_bytes()).await.unwrap();
            // The gateway hanging up is the end of this connection.
            read_request(&mut stream).await
        });
        let mut body = pool.send(post()).await.unwrap().into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        drop(body);
        assert_eq!(server.await.unwrap(), None);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_at_its_last_event_keeps_its_connection() {
        let (pool, listener) = pool_and_listener().await;
        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                      e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
        let accepted = serve_each(listener, reply);
        for _ in 0..2 {
            let mut body = pool.send(post()).await.unwrap().into_body();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "data: [DONE]\n\n");
            // The reader stops here, as the relay does at `[DONE]`.
            drop(body);
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn events_already_received_are_read_without_waiting() {
        let (pool, listener) = pool_and_listener().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream).await.unwrap();
            let mut reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for i in 0..20 {
                let event = format!("data: {i:02}\n\n");
                reply.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
            }
            reply.extend_from_slice(b"0\r\n\r\n");
            stream.write_all(&reply).await.unwrap();
            read_request(&mut stream).await;
        });
        let mut body = pool.send(post()).await.unwrap().into_body();
        let mut events = Vec::new();
        // Once the burst is in, the rest must not need another wake-up of this task: with the
        // connection in a task of its own each event would cross tasks.
        let first = body.frame().await.unwrap().unwrap();
        events.push(first.into_data().unwrap());
        while let Some(frame) = body.frame().now_or_never() {
            match frame {
                Some(frame) => events.push(frame.unwrap().into_data().unwrap()),
                None => break,
            }
        }
        assert_eq!(events.len(), 20, "{events:?}");
        assert_eq!(events[19], "data: 19\n\n");
        assert_eq!(pool.idle_count(), 1);
    }
}
