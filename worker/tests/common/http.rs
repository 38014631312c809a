//! A small HTTP/1.1 client for the `serve` tests, so that malformed and cut-short requests are
//! sent exactly as written, and the real binary on a free port to talk to.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llm_worker_rbee::Request;
use serde_json::{json, Value};

use super::Fixture;

/// A bound on every wait, so that a hung server fails the test instead of blocking it.
pub const GUARD: Duration = Duration::from_secs(30);

pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The server's stderr: its JSON log lines.
    pub log: tempfile::NamedTempFile,
}

impl Server {
    pub fn start(model: &Path) -> Self {
        Self::start_with(model, &[])
    }

    /// Starts the server and waits until `/health` says the model is loaded.
    pub fn start_with(model: &Path, extra: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_llm-worker-rbee"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .env("RUST_BACKTRACE", "0")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("the binary runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on http://127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        let server = Self { child, port, log };
        let started = Instant::now();
        while server.get("/health").0 != 200 {
            assert!(started.elapsed() < GUARD, "the model did not load");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The JSON log lines written so far.
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
            .collect()
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        stream
    }

    /// Sends a request and reads the status line and headers.
    pub fn send(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let mut stream = self.connect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) before reading a large body: a failed write is fine.
        let _ = stream.write_all(body);
        Response::read(stream)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut response = self.send("GET", path, b"");
        (response.status, response.text())
    }

    pub fn execute(&self, body: &Value) -> Response {
        self.send("POST", "/execute", body.to_string().as_bytes())
    }

    /// The token ids and text of a successful `/execute`, and its `end` event.
    pub fn generate(&self, body: &Value) -> Output {
        let mut response = self.execute(body);
        if response.status != 200 {
            let status = response.status;
            panic!("{body}: {status} {}", response.text());
        }
        let mut output = Output::default();
        while let Some((name, data)) = response.event() {
            assert_eq!(data["type"], name.as_str());
            match name.as_str() {
                "started" => {
                    output.prompt_ids = serde_json::from_value(data["prompt_ids"].clone()).unwrap()
                }
                "token" => {
                    assert_eq!(data["i"], output.ids.len());
                    output.ids.push(data["id"].as_u64().unwrap() as u32);
                    output.text.push_str(data["t"].as_str().unwrap());
                }
                "end" => output.end = Some(data),
                other => panic!("unexpected event {other}: {data}"),
            }
        }
        output
    }

    pub fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        text
    }

    /// The `llm_worker_requests_total` counter of `outcome`; 0 before the first such request.
    pub fn requests(&self, outcome: &str) -> u64 {
        let prefix = format!("llm_worker_requests_total{{outcome=\"{outcome}\"}} ");
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Waits for the process to exit, at most `GUARD`.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < GUARD, "the server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Output {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    pub end: Option<Value>,
}

/// A response being read: chunked bodies are decoded as they come, so events can be read one
/// by one.
pub struct Response {
    pub status: u16,
    /// Header lines, lowercased, without their line end.
    pub headers: Vec<String>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    body: Vec<u8>,
    finished: bool,
}

impl Response {
    pub fn read(stream: TcpStream) -> Self {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            headers.push(line.trim_end().to_ascii_lowercase());
        }
        let chunked = headers.iter().any(|h| h == "transfer-encoding: chunked");
        Self {
            status,
            headers,
            reader,
            chunked,
            body: Vec::new(),
            finished: false,
        }
    }

    /// Reads more of the body; false at its end or when the connection closed.
    fn read_more(&mut self) -> bool {
        if self.finished {
            return false;
        }
        if !self.chunked {
            self.finished = true;
            return self.reader.read_to_end(&mut self.body).unwrap_or(0) > 0;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            self.finished = true;
            return false;
        }
        let size = usize::from_str_radix(line.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        if size == 0 || self.reader.read_exact(&mut chunk).is_err() {
            self.finished = true;
            return false;
        }
        self.body.extend_from_slice(&chunk[..size]);
        true
    }

    pub fn text(&mut self) -> String {
        while self.read_more() {}
        String::from_utf8(std::mem::take(&mut self.body)).unwrap()
    }

    /// The next server-sent event: its name and JSON data.
    pub fn event(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body.drain(..end + 2).collect()).unwrap();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_else(|| panic!("no {name} in {block:?}"))
                        .to_string()
                };
                let data = serde_json::from_str(&field("data: ")).unwrap();
                return Some((field("event: "), data));
            }
            if !self.read_more() {
                return None;
            }
        }
    }
}

/// The output of the library for the same request.
pub fn library(fixture: &Fixture, request: &Request) -> Output {
    let generation = super::run(&mut fixture.load(), request);
    Output {
        prompt_ids: generation.prompt_ids,
        ids: generation.token_ids,
        text: generation.text,
        end: None,
    }
}

pub fn without_end(mut output: Output) -> Output {
    output.end = None;
    output
}

/// Gives a fixture a context long enough for a generation that is still running when the test
/// acts (RoPE has no position weights, so only the JSON files change).
pub fn lengthen(fixture: Fixture) -> Fixture {
    fixture.edit_json("config.json", |c| {
        c.insert("max_position_embeddings".into(), json!(4096));
    });
    fixture.edit_json("tokenizer_config.json", |c| {
        c.insert("model_max_length".into(), json!(4096));
    });
    fixture
}

/// The llama fixture with a long context.
pub fn long_fixture() -> Fixture {
    lengthen(Fixture::new("llama"))
}
