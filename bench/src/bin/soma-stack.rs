//! `soma-stack`: the real stack (the api and worker binaries on a fresh database, the Temporal
//! dev server, an in-process dev provider) for a test program written in another language:
//! `soma-stack --bin-dir … -- COMMAND ARGS…` starts it, runs COMMAND with
//!
//! - `SOMA_API_URL`, `SOMA_API_KEY` (and `SOMA_OTHER_TENANT_KEY`, another tenant's key;
//!   `SOMA_ADMIN_KEY`, an admin key),
//! - `SOMA_STACK_CONTROL`: a URL taking `POST /api/kill`, `/api/start`, `/api/restart`, so the
//!   program can take the api away mid-stream,
//!
//! then stops everything and exits with COMMAND's status. Its worker makes one paused
//! schedule of its own (`stack-…-publish-metrics`) for the console's operations view. `ops/test` runs the browser tests
//! and schemathesis this way.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use soma_bench::{ADMIN_KEY, KEY, OTHER_TENANT_KEY, Stack, StackArgs};
use soma_devllm::DevProviderOptions;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Runs a command against a real Soma stack (used by ops/test)")]
struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// Milliseconds between the dev provider's tokens.
    #[arg(long, default_value_t = 40)]
    token_interval_ms: u64,
    /// The command to run, and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let provider = DevProviderOptions {
        time_to_first_token: Duration::from_millis(100),
        token_interval: Duration::from_millis(args.token_interval_ms),
        ..Default::default()
    };
    // One schedule of its own, paused, for the console's operations view.
    let schedule = format!(
        r#"[{{id="stack-{}-publish-metrics",job="publish_metrics",every_secs=3600,paused=true}}]"#,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let stack = Stack::start_with("stack", &args.stack, provider, vec![("SOMA_SCHEDULES", schedule)]).await?;
    let api_url = format!("http://{}", stack.api_addr);
    let stack = Arc::new(Mutex::new(stack));

    let control = Router::new().route("/api/{action}", post(api_action)).with_state(stack.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, control).await });

    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let status = tokio::process::Command::new(program)
        .args(rest)
        .env("SOMA_API_URL", &api_url)
        .env("SOMA_API_KEY", KEY)
        .env("SOMA_OTHER_TENANT_KEY", OTHER_TENANT_KEY)
        .env("SOMA_ADMIN_KEY", ADMIN_KEY)
        .env("SOMA_STACK_CONTROL", &control_url)
        .status()
        .await?;
    stack.lock().await.finish().await;
    Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// `POST /api/kill` SIGKILLs the api; `/api/start` starts it and waits until it is ready;
/// `/api/restart` does both.
async fn api_action(State(stack): State<Arc<Mutex<Stack>>>, Path(action): Path<String>) -> (StatusCode, String) {
    let mut stack = stack.lock().await;
    if matches!(action.as_str(), "kill" | "restart") {
        stack.kill_api();
    }
    if matches!(action.as_str(), "start" | "restart") {
        if let Err(err) = stack.start_api().await {
            return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
        }
    }
    match action.as_str() {
        "kill" | "start" | "restart" => (StatusCode::OK, "ok".into()),
        _ => (StatusCode::NOT_FOUND, format!("no action {action}")),
    }
}
