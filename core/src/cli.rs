//! Command-line flags both binaries take, and the start-up they share.

use std::path::PathBuf;

use clap::Args;

use crate::config::{Config, LogFormat};
use crate::telemetry::{SharedSubscriber, init_telemetry};

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// TOML config file, layered over the defaults and under `SOMA_*` environment variables.
    #[arg(long, env = "SOMA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log one JSON object per line instead of human-readable lines.
    #[arg(long)]
    pub log_json: bool,
}

impl CommonArgs {
    /// Loads the config and starts logging. `None` means `--print-config` was handled.
    pub fn start(&self) -> anyhow::Result<Option<(Config, SharedSubscriber)>> {
        let mut config = Config::load(self.config.as_deref())?;
        if self.log_json {
            config.log_format = LogFormat::Json;
        }
        if self.print_config {
            print!("{}", config.to_masked_toml());
            return Ok(None);
        }
        let subscriber = init_telemetry(config.log_format, &config.log_filter);
        Ok(Some((config, subscriber)))
    }
}

/// Resolves on SIGINT or SIGTERM: both binaries drain and stop on either.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
