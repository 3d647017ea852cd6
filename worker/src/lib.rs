//! The worker: registers the workflows and their activities on the task queue, runs them
//! until asked to stop, and sweeps for turns that need recovering ([`recovery`]).

pub mod recovery;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use temporalio_client::Client;
use temporalio_common::telemetry::TelemetryOptions;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use soma_activities::{LlmActivitiesImpl, LlmClient, SessionActivitiesImpl};
use soma_core::telemetry::SharedSubscriber;
use soma_core::{Config, SessionWakeups, Store};
use soma_workflows::{ChatTurnWorkflow, SessionDeletionWorkflow};

/// A Temporal runtime whose logs go to our subscriber (the SDK logs nothing otherwise).
pub fn temporal_runtime(subscriber: Option<SharedSubscriber>) -> anyhow::Result<Runtime> {
    let telemetry = TelemetryOptions::builder().maybe_subscriber_override(subscriber).build();
    let options =
        RuntimeOptions::builder().telemetry_options(telemetry).build().map_err(|e| anyhow::anyhow!(e))?;
    Ok(Runtime::from_current_tokio(options)?)
}

/// The worker's options: the workflows and activities it runs, on `config.task_queue`.
pub async fn worker_options(config: &Config, store: Store) -> anyhow::Result<WorkerOptions> {
    // Deltas of all the replies this worker streams are committed together, once per window.
    let coalesce = Duration::from_millis(config.delta_coalesce_ms);
    let store = store.with_event_window(coalesce);
    let (base_url, model) = config.llm_provider()?;
    tracing::info!(%base_url, %model, keyed = !config.llm_api_key.is_empty(), "LLM provider");
    let stall_timeout = Duration::from_millis(config.llm_stall_timeout_ms);
    let llm = LlmClient::new(base_url, config.llm_api_key.expose(), model, stall_timeout);
    let wakeups = Arc::new(SessionWakeups::default());
    wakeups.start(&store).await?;
    Ok(WorkerOptions::new(config.task_queue.clone())
        .register_workflow::<ChatTurnWorkflow>()?
        .register_workflow::<SessionDeletionWorkflow>()?
        .register_activities(SessionActivitiesImpl::new(store.clone(), wakeups))
        .register_activities(LlmActivitiesImpl::new(store, llm, coalesce))
        // A dead worker's sticky queue is abandoned after this long.
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(3))
        .graceful_shutdown_period(Duration::from_secs(10))
        .build())
}

/// Runs a worker until `shutdown` resolves, then drains gracefully; sweeps for stuck turns
/// meanwhile. The future is `!Send` (the SDK's worker is): run it on the main task or a
/// `LocalSet`.
pub async fn run(
    runtime: &Runtime,
    config: &Config,
    client: Client,
    store: Store,
    shutdown: impl Future<Output = ()> + 'static,
) -> anyhow::Result<()> {
    let options = worker_options(config, store.clone()).await?;
    let quiet_for = Duration::from_millis(config.turn_recovery_quiet_ms);
    let recovery = recovery::TurnRecovery::new(store, client.clone(), config.task_queue.clone(), quiet_for);
    let sweeping = tokio::spawn(recovery.run(Duration::from_millis(config.turn_recovery_interval_ms)));
    let mut worker = Worker::new(runtime, client, options)?;
    let stop = worker.shutdown_handle();
    tokio::task::spawn_local(async move {
        shutdown.await;
        tracing::info!("worker draining");
        stop();
    });
    tracing::info!(task_queue = %config.task_queue, "worker running");
    let result = worker.run().await;
    sweeping.abort();
    Ok(result?)
}
