//! Accepting connections: HTTP/1.1 with a deadline on every request head, WebSocket upgrades, and
//! a graceful stop.
//!
//! `axum::serve` sets no timer, so a client that sends half a request head holds its connection
//! (and a task) for ever; hyper's `header_read_timeout` needs one. The deadline runs from the
//! moment a connection is accepted, and again for each request on a kept-alive connection, so an
//! idle or slow connection is closed after it. HTTP/2 is not served: its protocol detection runs
//! without any timer, and nothing of TaskForge needs it (WebSocket upgrades are HTTP/1.1).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Put in every request's extensions: cancelling it drops the request's connection at once.
///
/// A streamed response (an SSE stream) whose client stopped reading is never polled again, so it
/// cannot end itself; its owner cuts the connection with this instead.
#[derive(Debug, Clone)]
pub struct ConnectionAbort(pub CancellationToken);

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// A request head (the first, or the next on a kept-alive connection) must arrive within this.
    pub header_timeout: Duration,
    /// How long data written to a connection may stay unacknowledged before the kernel drops it
    /// (TCP_USER_TIMEOUT): a peer that vanished without closing (a dropped network) is found
    /// at the next heartbeat plus this, not after the kernel's ~15 minutes of retransmissions.
    /// An SSE stream has no other way to notice it; a socket also has its ping timeout.
    pub unacked_timeout: Option<Duration>,
}

/// Serves `router` on `listener` until `stop` is cancelled; then stops accepting, lets in-flight
/// requests finish and closes idle connections. Returns once every HTTP connection is done
/// (upgraded sockets are the realtime layer's to close). The caller bounds the wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine. Back off
                    // instead of spinning on the same error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle delay: a socket's frames are small writes, and one written while the previous
        // one waits for its (delayed) ACK would otherwise wait too.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        if let Some(t) = settings.unacked_timeout
            && let Err(e) = socket2::SockRef::from(&tcp).set_tcp_user_timeout(Some(t))
        {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
        let router = router.clone();
        let abort = CancellationToken::new();
        let abort_handle = abort.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // The peer address feeds the per-address limits (`limits::client_ip`).
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req.extensions_mut()
                .insert(ConnectionAbort(abort_handle.clone()));
            router.clone().oneshot(req.map(Body::new))
        });
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                // Dropping the connection closes the socket; its response body is dropped too.
                () = abort.cancelled() => return,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn.as_mut() => result,
                        () = abort.cancelled() => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
