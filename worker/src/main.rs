//! `soma-worker`: config → telemetry → connect → register → run until SIGINT/SIGTERM.

use std::time::Duration;

use clap::Parser;
use soma_core::cli::{CommonArgs, shutdown_signal};

#[derive(Parser)]
#[command(about = "Soma Orchestrator worker: runs chat workflows and their activities")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some((config, subscriber)) = args.common.start()? else { return Ok(()) };
    let store =
        soma_core::Store::connect_lazy(config.database_url.expose(), config.database_max_connections)?;
    store.migrate().await?;
    let runtime = soma_worker::temporal_runtime(Some(subscriber))?;
    let client = soma_core::temporal::connect(&config, Duration::from_secs(30)).await?;
    let local = tokio::task::LocalSet::new();
    local.run_until(soma_worker::run(&runtime, &config, client, store, shutdown_signal())).await
}
