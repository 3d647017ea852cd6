//! The worker: registers the workflows and their activities on the task queue, runs them
//! until asked to stop, takes the api's chat turn starts and starts them eagerly ([`eager`]),
//! and sweeps for turns that need recovering ([`recovery`]).

pub mod eager;
pub mod recovery;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use temporalio_client::Client;
use temporalio_client::schedules::ScheduleAction;
use temporalio_common::telemetry::TelemetryOptions;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use soma_activities::{
    LlmActivitiesImpl, LlmClient, MaintenanceActivitiesImpl, MaintenanceSettings, MemoryActivitiesImpl, MemorySettings, Policy, SessionActivitiesImpl, SessionPurger,
    ToolActivitiesImpl, ToolSettings, UploadActivitiesImpl, UploadSettings,
};
use soma_core::blobs::BlobStore;
use soma_core::clamav::Clamd;
use soma_core::telemetry::SharedSubscriber;
use soma_core::store::SessionMemories;
use soma_core::{Config, MemoryBackend, SessionWakeups, Store};
use soma_workflows::MaintenanceWorkflow;

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
    let policy = Arc::new(policy(config)?);
    let backend = MemoryBackend::from_config(config, store.clone());
    tracing::info!(backend = backend.name(), namespace = %config.memory_namespace, "memory backend");
    let tools =
        ToolActivitiesImpl::new(store.clone(), policy.clone(), tool_settings(config)?, backend.clone(), memory_settings(config));
    match tools.refresh().await {
        Ok(refreshed) => tracing::info!(tools = refreshed.tools, retired = refreshed.retired, "tool catalog refreshed"),
        Err(err) => tracing::warn!(error = %err, "could not refresh the tool catalog; using what it holds"),
    }
    let memory = MemoryActivitiesImpl::new(store.clone(), backend, policy.clone(), memory_settings(config));
    tracing::info!(clamd = %config.clamd_address, bucket = %config.s3_bucket, "uploads: scanner and bucket");
    let blobs = BlobStore::from_config(config);
    let memories =
        if config.forget_memories_with_session { SessionMemories::Forget } else { SessionMemories::Keep };
    let purger = SessionPurger::new(store.clone(), blobs.clone(), memories);
    let maintenance = MaintenanceActivitiesImpl::new(store.clone(), purger.clone(), maintenance_settings(config));
    let uploads = UploadActivitiesImpl::new(
        store.clone(),
        Clamd::new(config.clamd_address.clone()),
        blobs.clone(),
        UploadSettings {
            inline_max_bytes: config.attachment_inline_max_bytes,
            stream_max_bytes: config.clamd_stream_max_bytes,
            text_max_bytes: config.attachment_text_max_bytes,
            follow_patience: Duration::from_millis(config.upload_follow_patience_ms),
        },
    );
    let mut options = WorkerOptions::new(config.task_queue.clone())
        .register_activities(memory)
        .register_activities(uploads)
        .register_activities(maintenance)
        .register_activities(SessionActivitiesImpl::new(store.clone(), wakeups, policy, purger))
        .register_activities(tools)
        .register_activities(LlmActivitiesImpl::new(store, llm, coalesce, config.max_tool_rounds))
        // A dead worker's sticky queue is abandoned after this long.
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(3))
        .graceful_shutdown_period(Duration::from_secs(10))
        .build();
    soma_workflows::register_all(&mut options)?;
    Ok(options)
}

/// The policy gate the config names: an OPA server, or the Rego files of `policy_dir`.
pub fn policy(config: &Config) -> anyhow::Result<Policy> {
    if config.policy_opa_url.trim().is_empty() {
        let policy = Policy::from_dir(std::path::Path::new(&config.policy_dir))?;
        tracing::info!(dir = %config.policy_dir, "policies evaluated in-process");
        Ok(policy)
    } else {
        tracing::info!(url = %config.policy_opa_url, "policies evaluated by OPA");
        Ok(Policy::opa(config.policy_opa_url.trim()))
    }
}

/// What memory needs from the config.
pub fn memory_settings(config: &Config) -> MemorySettings {
    MemorySettings {
        namespace: config.memory_namespace.clone(),
        recall_top_k: config.memory_recall_top_k,
        recall_token_budget: config.memory_recall_token_budget,
        recall_timeout: Duration::from_millis(config.memory_recall_timeout_ms),
        retry: config.memory_retry(),
        remember_attachments: config.memory_remember_attachments,
    }
}

/// What the periodic jobs need from the config.
pub fn maintenance_settings(config: &Config) -> MaintenanceSettings {
    MaintenanceSettings {
        session_retention: Duration::from_secs(config.session_retention_secs),
        compact_deltas_after: Duration::from_secs(config.compact_deltas_after_secs),
        batch_size: config.maintenance_batch_size,
    }
}

/// Registers the search attributes and makes the configured schedules exist (idempotent: any
/// number of workers may do it at once).
pub async fn prepare_temporal(config: &Config, client: &Client) -> anyhow::Result<()> {
    soma_core::temporal::ensure_search_attributes(client, &config.temporal_namespace).await?;
    let task_queue = config.task_queue.clone();
    soma_core::schedules::ensure_schedules(client, &config.schedules, |schedule| {
        ScheduleAction::start_workflow(MaintenanceWorkflow::run, schedule.job, task_queue.clone(), schedule.id.clone())
    })
    .await
    .map_err(|err| anyhow::anyhow!("cannot create or update the schedules: {err}"))?;
    if !config.schedules.is_empty() {
        tracing::info!(schedules = config.schedules.len(), "schedules in place");
    }
    Ok(())
}

/// What the tools need from the config.
pub fn tool_settings(config: &Config) -> anyhow::Result<ToolSettings> {
    Ok(ToolSettings {
        fetch_allowlist: config.fetch_allowlist(),
        hmac_secret: config.tool_hmac_secret.expose().to_string(),
        mcp_servers: config.mcp_server_entries()?.into_iter().collect(),
        approval_required: config.approval_required_tool_names(),
    })
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
    prepare_temporal(config, &client).await?;
    let options = worker_options(config, store.clone()).await?;
    let quiet_for = Duration::from_millis(config.turn_recovery_quiet_ms);
    let recovery =
        recovery::TurnRecovery::new(store.clone(), client.clone(), config.task_queue.clone(), quiet_for, config.memory_retry());
    let sweeping = tokio::spawn(recovery.run(Duration::from_millis(config.turn_recovery_interval_ms)));
    // The worker registers itself with the client it is given; eager starts need that client.
    let mut worker = Worker::new(runtime, client.clone(), options)?;
    let eager = eager::listen(config, client, store).await.map(|task| task.abort_handle());
    let stop_eager = eager.clone();
    let stop = worker.shutdown_handle();
    tokio::task::spawn_local(async move {
        shutdown.await;
        tracing::info!("worker draining");
        // A draining worker takes no new turns; the api starts them through the task queue.
        if let Some(eager) = stop_eager {
            eager.abort();
        }
        stop();
    });
    tracing::info!(task_queue = %config.task_queue, "worker running");
    let result = worker.run().await;
    sweeping.abort();
    if let Some(eager) = eager {
        eager.abort();
    }
    Ok(result?)
}
