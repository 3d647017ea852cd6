//! `soma-bench-worker`: runs the benchmark's baseline workflow (see `soma_bench::baseline`) on
//! the chat task queue's `-baseline` sibling, as a process of its own like the chat worker.

use std::time::Duration;

use clap::Parser;
use soma_core::cli::{CommonArgs, shutdown_signal};

#[derive(Parser)]
#[command(about = "The benchmark's baseline worker (run by ops/bench)")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some((config, subscriber)) = args.common.start()? else { return Ok(()) };
    let runtime = soma_worker::temporal_runtime(Some(subscriber))?;
    let client = soma_core::temporal::connect(&config, Duration::from_secs(30)).await?;
    let mut worker = soma_bench::baseline::worker(&runtime, client, soma_bench::baseline::task_queue(&config.task_queue))?;
    let stop = worker.shutdown_handle();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            tokio::task::spawn_local(async move {
                shutdown_signal().await;
                stop();
            });
            worker.run().await
        })
        .await?;
    Ok(())
}
