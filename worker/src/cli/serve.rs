//! `llm-worker-rbee serve`: the HTTP worker.

use std::net::IpAddr;

use anyhow::Result;
use clap::Args;
use llm_worker_rbee::serve::ServeOptions;

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
}

pub fn run(args: ServeArgs) -> Result<()> {
    llm_worker_rbee::serve::run(ServeOptions {
        model_dir: args.model.folder()?,
        model: args.model.model.display().to_string(),
        load: args.device.load_options(),
        host: args.host,
        port: args.port,
        queue: args.queue,
    })
}
