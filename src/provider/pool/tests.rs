//! Unit tests of the upstream connection pool against raw TCP listeners.

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
