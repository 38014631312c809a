//! `llm-worker-rbee serve`: the HTTP worker.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use llm_worker_rbee::serve::{ConnectionLimits, ServeOptions};

use super::args::{DeviceArgs, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Address to listen on; the loopback interface unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (see the `listening on` line).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// How many requests may wait while one generates; more get 503 with Retry-After.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub queue: usize,
    /// Seconds a client may take to send a request's headers; a connection left idle that long
    /// between requests is closed too.
    #[arg(long, default_value_t = 10.0, value_name = "S", value_parser = seconds)]
    pub header_timeout: f64,
    /// Seconds a client may take to send a request's body; slower ones get 408.
    #[arg(long, default_value_t = 30.0, value_name = "S", value_parser = seconds)]
    pub body_timeout: f64,
    /// Connections open at once; more are answered 503 (Retry-After) and closed. Keep it below
    /// the process's file descriptor limit (`ulimit -n`).
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// A positive, finite number of seconds.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(s),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

pub fn run(args: ServeArgs) -> Result<()> {
    llm_worker_rbee::serve::run(ServeOptions {
        model_dir: args.model.folder()?,
        model: args.model.model.display().to_string(),
        load: args.device.load_options(),
        host: args.host,
        port: args.port,
        queue: args.queue,
        connections: ConnectionLimits {
            header_timeout: Duration::from_secs_f64(args.header_timeout),
            max_connections: args.max_connections as usize,
        },
        body_timeout: Duration::from_secs_f64(args.body_timeout),
    })
}
