//! The Temporal connection, made the same way by the api and the worker, and the one way to
//! start a workflow whose ID policies make a second start a no-op.

use std::time::Duration;

use temporalio_client::errors::WorkflowStartError;
use temporalio_client::tonic::{Code, Request};
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions, WorkflowStartOptions};
use temporalio_common::HasWorkflowDefinition;
use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_common::protos::temporal::api::operatorservice::v1::{
    AddSearchAttributesRequest, ListSearchAttributesRequest,
};

use soma_contract::refs::search_attributes;

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

/// Registers the search attributes every workflow carries in the client's namespace, those it
/// lacks only (a second process finding them there, or adding them at the same moment, is
/// fine). A workflow started with an unregistered attribute is refused, so the api and the
/// worker both do this before they start anything.
pub async fn ensure_search_attributes(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let mut operator = client.connection().operator_service();
    let listed = operator
        .list_search_attributes(Request::new(ListSearchAttributesRequest { namespace: namespace.to_string() }))
        .await?
        .into_inner();
    let missing: std::collections::HashMap<String, i32> = search_attributes::ALL
        .iter()
        .filter(|name| !listed.custom_attributes.contains_key(**name) && !listed.system_attributes.contains_key(**name))
        .map(|name| (name.to_string(), IndexedValueType::Keyword as i32))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let request = AddSearchAttributesRequest { search_attributes: missing.clone(), namespace: namespace.to_string() };
    match operator.add_search_attributes(Request::new(request)).await {
        Ok(_) => {
            tracing::info!(attributes = ?missing.keys().collect::<Vec<_>>(), %namespace, "search attributes registered");
            Ok(())
        }
        Err(status) if status.code() == Code::AlreadyExists => Ok(()),
        Err(status) => anyhow::bail!("cannot register the search attributes in {namespace}: {}", status.message()),
    }
}
