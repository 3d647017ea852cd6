//! The Temporal connection, made the same way by the api and the worker, the one way to
//! start a workflow whose ID policies make a second start a no-op, and the api's side of
//! eager turn starts (a worker's side is `soma_worker::eager`).

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
use crate::http::Refusal;

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

/// The route a worker takes eager turn starts on, at the config's `eager_start_addr`: a POST,
/// no body; the worker reads the turn from the database.
pub const EAGER_START_ROUTE: &str = "/v1/turns/{turn_id}/start";

/// Hands chat turns' starts to the worker at the config's `eager_start_addr`, which asks
/// Temporal for eager execution: the start response brings the turn's first workflow task
/// straight to that worker, saving the server's dispatch through the task queue.
#[derive(Clone)]
pub struct EagerStarts {
    http: reqwest::Client,
    base_url: String,
}

/// What became of a start handed to a worker.
#[derive(Debug)]
pub enum EagerStart {
    /// The workflow runs (started now, or before).
    Started,
    /// The worker asked Temporal, which failed (after the client's own retries): starting it
    /// again from elsewhere would fail the same way.
    TemporalFailed(String),
    /// No worker took it (none listening, one restarting or unable to read the turn); whether
    /// it started is unknown. Start it from elsewhere: a second start is a no-op.
    NotTaken(String),
}

impl EagerStarts {
    /// None when no address is configured (the api then starts every turn itself).
    pub fn from_config(config: &Config) -> anyhow::Result<Option<EagerStarts>> {
        let addr = config.eager_start_addr.trim();
        if addr.is_empty() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            // A worker on the same host or network answers a connection at once, or not at
            // all; its answer may wait out the Temporal client's retries (up to 10 s).
            .connect_timeout(Duration::from_millis(250))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Some(EagerStarts { http, base_url: format!("http://{addr}") }))
    }

    /// Asks the worker to start the turn.
    pub async fn start(&self, turn_id: uuid::Uuid) -> EagerStart {
        let url = format!("{}{}", self.base_url, EAGER_START_ROUTE.replace("{turn_id}", &turn_id.to_string()));
        let response = match self.http.post(&url).send().await {
            Ok(response) => response,
            Err(err) => return EagerStart::NotTaken(format!("{url}: {err:#}")),
        };
        if response.status().is_success() {
            return EagerStart::Started;
        }
        let refused = response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE;
        let message = format!("{url}: {}", Refusal::read(response, 300).await.message);
        if refused { EagerStart::TemporalFailed(message) } else { EagerStart::NotTaken(message) }
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
