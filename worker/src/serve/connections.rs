//! Accepting connections within limits: a cap on open connections, and a time limit on reading
//! each request's headers, which also closes connections left idle between requests. Without
//! them, clients that connect and send nothing (or half a request) hold the server's sockets
//! until it can accept no one, `/health` included.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

/// How long a client may take to send a request's headers, and how many connections may be
/// open at once.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Connections over the cap answered at once; more are closed without an answer.
const REFUSING_AT_ONCE: usize = 64;

/// What a connection over the cap gets before it is closed.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: application/json\r\ncontent-length: 77\r\nconnection: close\r\n\r\n\
{\"error\":{\"field\":\"body\",\"message\":\"too many open connections; retry later\"}}";

/// Serves `app` on `listener` until `stop` fires, then waits for the open connections to end.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    // Answering a refused connection holds its socket up to a second: a flood of them must not
    // hold the descriptors the cap keeps free.
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors among others: wait for some to close, not spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(
                %peer,
                max_connections = limits.max_connections,
                "too many open connections; refusing one"
            );
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(slot);
                });
            }
            continue;
        };
        // Token events are small writes: without TCP_NODELAY, Nagle's algorithm holds each one
        // until the client's delayed ACK, some 40 ms.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection closed");
            }
            drop(permit);
        });
    }
    // New connections are refused by the system from here, not left waiting while the open
    // streams end.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers a connection over the cap with a 503 and closes it. What the client sent is read
/// and dropped for up to a second first: closing a socket with unread data resets it, which
/// can destroy the answer before the client reads it.
async fn refuse(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(OVER_CAP).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}
