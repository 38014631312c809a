//! The server's connection limits: clients that connect and send nothing, half a request's
//! headers or half its body are closed after the timeouts (the last with a 408), a connection
//! left idle between requests too, and connections over the cap are answered 503 at once;
//! through all of it `/health` and a generation still answer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::Server;
use common::Fixture;
use serde_json::json;

/// What each kind of slow client sends before going quiet.
const IDLE: &str = "";
const HALF_HEADER: &str = "POST /execute HTTP/1.1\r\nHost: test\r\nContent-Le";
const HALF_BODY: &str =
    "POST /execute HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n\
                         content-length: 100\r\n\r\n{\"prompt\": \"hel";

fn start(extra: &[&str]) -> (Fixture, Server) {
    let fixture = Fixture::new("llama");
    let server = Server::start_with(fixture.path(), extra);
    (fixture, server)
}

fn slow_client(server: &Server, sends: &str) -> TcpStream {
    let mut stream = server.connect();
    stream.write_all(sends.as_bytes()).unwrap();
    stream
}

/// Everything the server sends until it closes the connection, and how long that took; fails
/// if the server keeps it open for `limit`.
fn until_closed(mut stream: TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("still open after {limit:?} ({e}); received {received:?}"),
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

fn generates(server: &Server) {
    let output = server.generate(&json!({"prompt": "hello", "max_tokens": 4}));
    assert_eq!(output.ids.len(), 4, "{output:?}");
}

#[test]
fn slow_clients_are_closed_after_the_timeouts_while_health_and_generation_answer() {
    let (_fixture, server) = start(&["--header-timeout", "1", "--body-timeout", "1"]);
    let kinds = [IDLE, HALF_HEADER, HALF_BODY];
    let clients: Vec<(&str, TcpStream)> = (0..60)
        .map(|i| kinds[i % 3])
        .map(|sends| (sends, slow_client(&server, sends)))
        .collect();
    // While all of them are open.
    assert_eq!(server.get("/health").0, 200);
    generates(&server);
    for (sends, stream) in clients {
        let (received, took) = until_closed(stream, Duration::from_secs(5));
        assert!(
            took < Duration::from_millis(2500),
            "{sends:?}: open {took:?}"
        );
        if sends == HALF_BODY {
            assert!(received.starts_with("HTTP/1.1 408"), "{received}");
            assert!(received.contains("not received within 1 s"), "{received}");
        } else {
            assert!(
                !received.starts_with("HTTP/1.1 200"),
                "{sends:?}: {received}"
            );
        }
    }
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn a_connection_idle_between_requests_is_closed_after_the_header_timeout() {
    let (_fixture, server) = start(&["--header-timeout", "1"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let (_, took) = until_closed(stream, Duration::from_secs(5));
    assert!(took < Duration::from_millis(2500), "open {took:?}");
}

#[test]
fn connections_over_the_cap_get_503_at_once_and_the_server_recovers() {
    let (_fixture, server) = start(&["--header-timeout", "1", "--max-connections", "4"]);
    let idle: Vec<TcpStream> = (0..4).map(|_| slow_client(&server, IDLE)).collect();
    // Give the server time to accept them all.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut response = server.send("GET", "/health", b"");
    assert_eq!(response.status, 503);
    assert!(response.headers.iter().any(|h| h == "retry-after: 1"));
    assert!(response.text().contains("too many open connections"));
    assert!(started.elapsed() < Duration::from_millis(500));
    // The idle ones time out and free their places.
    for stream in idle {
        until_closed(stream, Duration::from_secs(5));
    }
    assert_eq!(server.get("/health").0, 200);
    generates(&server);
}

#[test]
fn the_limits_refuse_what_is_not_a_duration_or_a_count() {
    let fixture = Fixture::new("llama");
    for (flag, value) in [
        ("--header-timeout", "0"),
        ("--body-timeout", "-1"),
        ("--header-timeout", "NaN"),
        ("--max-connections", "0"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
            .args(["serve", "--model", fixture.path().to_str().unwrap()])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
