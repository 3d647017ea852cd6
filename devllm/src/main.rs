//! `soma-devllm`: runs the keyless dev provider (see the library docs).

use clap::Parser;

#[derive(Parser)]
#[command(about = "Soma dev provider: a keyless, deterministic OpenAI-compatible LLM stand-in")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SOMA_DEVLLM_LISTEN", default_value = soma_devllm::DEFAULT_LISTEN)]
    listen: String,
    /// Provider time-to-first-token, in milliseconds.
    #[arg(long, default_value_t = 150)]
    ttft_ms: u64,
    /// Delay between tokens, in milliseconds.
    #[arg(long, default_value_t = 40)]
    token_interval_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("soma dev provider (keyless, deterministic replies) on http://{}/v1", listener.local_addr()?);
    let options = soma_devllm::DevProviderOptions {
        time_to_first_token: std::time::Duration::from_millis(args.ttft_ms),
        token_interval: std::time::Duration::from_millis(args.token_interval_ms),
        ..Default::default()
    };
    soma_devllm::serve(listener, options).await?;
    Ok(())
}
