//! The worker: registers the workflows and their activities on the task queue and runs them
//! until asked to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use temporalio_client::Client;
use temporalio_common::telemetry::TelemetryOptions;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use soma_activities::{ChatTurnActivities, EmptyStepActivities, LlmClient};
use soma_core::telemetry::SharedSubscriber;
use soma_core::{Config, SessionWakeups, Store};
use soma_workflows::{ChatTurnWorkflow, EmptyStepsWorkflow};

/// A Temporal runtime whose logs go to our subscriber (the SDK logs nothing otherwise).
pub fn temporal_runtime(subscriber: Option<SharedSubscriber>) -> anyhow::Result<Runtime> {
    let telemetry = TelemetryOptions::builder().maybe_subscriber_override(subscriber).build();
    let options =
        RuntimeOptions::builder().telemetry_options(telemetry).build().map_err(|e| anyhow::anyhow!(e))?;
    Ok(Runtime::from_current_tokio(options)?)
}

/// Everything the worker's activities hold.
pub async fn chat_activities(config: &Config, store: Store) -> anyhow::Result<ChatTurnActivities> {
    let wakeups = Arc::new(SessionWakeups::default());
    wakeups.start(&store).await?;
    if config.uses_dev_provider() {
        tracing::info!(base_url = %config.llm_base_url, model = %config.llm_model,
            "LLM: soma dev provider (keyless, deterministic replies; set SOMA_LLM_BASE_URL, SOMA_LLM_API_KEY and SOMA_LLM_MODEL for a real one)");
    } else {
        tracing::info!(base_url = %config.llm_base_url, model = %config.llm_model, "LLM: OpenAI-compatible provider");
    }
    let llm = LlmClient::new(&config.llm_base_url, config.llm_api_key.expose(), &config.llm_model);
    Ok(ChatTurnActivities::new(store, wakeups, llm, Duration::from_millis(config.delta_coalesce_ms)))
}

/// Runs a worker on `config.task_queue` until `shutdown` resolves, then drains gracefully.
/// The future is `!Send` (the SDK's worker is): run it on the main task or a `LocalSet`.
pub async fn run(
    runtime: &Runtime,
    config: &Config,
    client: Client,
    store: Store,
    shutdown: impl Future<Output = ()> + 'static,
) -> anyhow::Result<()> {
    let activities = chat_activities(config, store).await?;
    let options = WorkerOptions::new(config.task_queue.clone())
        .register_workflow::<ChatTurnWorkflow>()?
        .register_activities(activities)
        // The benchmark's baseline: the chat turn's number of steps, doing nothing.
        .register_workflow::<EmptyStepsWorkflow>()?
        .register_activities(EmptyStepActivities)
        // A dead worker's sticky queue is abandoned after this long.
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(3))
        .graceful_shutdown_period(Duration::from_secs(10))
        .build();
    let mut worker = Worker::new(runtime, client, options)?;
    let stop = worker.shutdown_handle();
    tokio::task::spawn_local(async move {
        shutdown.await;
        tracing::info!("worker draining");
        stop();
    });
    tracing::info!(task_queue = %config.task_queue, "worker running");
    worker.run().await?;
    Ok(())
}
