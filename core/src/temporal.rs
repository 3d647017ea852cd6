//! The Temporal connection, made the same way by the api and the worker.

use std::time::Duration;

use soma_workflows::{ChatTurnWorkflow, TurnRef};
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowStartOptions,
};

use crate::config::Config;

/// Connects to the configured Temporal frontend and namespace, retrying for `wait` so that
/// processes started together with the dev server do not race it.
pub async fn connect(config: &Config, wait: Duration) -> anyhow::Result<Client> {
    let url = url::Url::parse(&format!("http://{}", config.temporal_address))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let options =
            ConnectionOptions::new(url.clone()).identity(format!("soma@{}", std::process::id())).build();
        match Connection::connect(options).await {
            Ok(connection) => {
                let options = ClientOptions::new(config.temporal_namespace.clone()).build();
                return Ok(Client::new(connection, options)?);
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(address = %config.temporal_address, error = %err, "Temporal not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                anyhow::bail!("cannot reach Temporal at {}: {err}", config.temporal_address)
            }
        }
    }
}

/// Starts a turn's `ChatTurnWorkflow` unless it exists already: a running one is reused and a
/// finished one is never run again, so calling this twice (a retried request, a recovery
/// sweep) starts at most one workflow.
pub async fn start_chat_turn(
    client: &Client,
    task_queue: &str,
    workflow_id: &str,
    turn: TurnRef,
) -> Result<(), WorkflowStartError> {
    let options = WorkflowStartOptions::new(task_queue.to_string(), workflow_id.to_string())
        .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .build();
    match client.start_workflow(ChatTurnWorkflow::run, turn, options).await {
        Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}
