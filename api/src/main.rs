//! `soma-api`: config → telemetry → Postgres (migrations) → Temporal → serve until SIGTERM.

use std::time::Duration;

use clap::Parser;
use soma_core::cli::{CommonArgs, shutdown_signal};

#[derive(Parser)]
#[command(about = "Soma Orchestrator HTTP API")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Apply database migrations and exit.
    #[arg(long)]
    migrate_only: bool,
    /// Print the SHA-256 of an API key, in the form `api_keys` takes, and exit.
    #[arg(long, value_name = "KEY")]
    hash_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(key) = args.hash_key {
        println!("{}", soma_api::auth::hash_key(&key));
        return Ok(());
    }
    let Some((config, _)) = args.common.start()? else { return Ok(()) };
    let store =
        soma_core::Store::connect_lazy(config.database_url.expose(), config.database_max_connections)?;
    store.migrate().await?;
    if args.migrate_only {
        tracing::info!("migrations applied");
        return Ok(());
    }
    let temporal = soma_core::temporal::connect(&config, Duration::from_secs(30)).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let ctx = soma_api::ApiContext::new(config, store, temporal).await?;
    soma_api::serve(listener, ctx, shutdown_signal()).await?;
    Ok(())
}
