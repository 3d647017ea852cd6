//! The Temporal connection, made the same way by the api and the worker, and the one way to
//! start a workflow whose ID policies make a second start a no-op.

use std::time::Duration;

use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, WorkflowStartOptions};
use temporalio_common::HasWorkflowDefinition;

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

/// Starts a workflow unless its ID is taken: with the workflow's own start options (which
/// reuse a running workflow and reject a closed one's ID), a retried request or a recovery
/// sweep starts it at most once.
pub async fn start_once<W>(
    client: &Client,
    workflow: W,
    input: W::Input,
    options: WorkflowStartOptions,
) -> Result<(), WorkflowStartError>
where
    W: HasWorkflowDefinition,
    W::Input: Send,
{
    match client.start_workflow(workflow, input, options).await {
        Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}
