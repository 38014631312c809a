//! Serves an axum router on a free port of 127.0.0.1 from a thread of its own, for the tests
//! that stand in for a remote server (the hub, a package index).

use std::net::SocketAddr;

/// Starts serving `app` and returns its address once it listens; it serves until the test
/// process ends.
pub fn serve(app: axum::Router) -> SocketAddr {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    receiver.recv().unwrap()
}
