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
mod tests;
