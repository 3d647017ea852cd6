//! Eager turn starts: the api hands a chat turn's start to this worker, which asks Temporal to
//! start it eagerly. The start response then carries the turn's first workflow task to this
//! worker (the client it shares with the worker knows the worker is there), so the server's
//! dispatch through the task queue is skipped: on the dev server that is most of a turn's
//! time before its LLM call. The turn's later tasks and its activities go through the task
//! queue as always.
//!
//! The api names only the turn; what is started is read from the database, so a request to
//! this address can start nothing but a stored turn's own workflow, which the api or the
//! recovery sweep would start anyway.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use temporalio_client::Client;
use uuid::Uuid;

use soma_contract::TurnStatus;
use soma_core::temporal::{EAGER_START_ROUTE, start_once};
use soma_core::{Config, Store};
use soma_workflows::ChatTurnWorkflow;

struct Starter {
    client: Client,
    store: Store,
    task_queue: String,
}

/// Takes eager starts at the config's `eager_start_addr`, with `client` (the worker's own),
/// until the returned task is aborted. None when no address is configured, or when another
/// process on the host holds it (that worker takes them; the api starts turns itself when
/// none answers).
pub async fn listen(config: &Config, client: Client, store: Store) -> Option<tokio::task::JoinHandle<()>> {
    let addr = config.eager_start_addr.trim();
    if addr.is_empty() {
        return None;
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(%addr, error = %err, "not taking eager turn starts: cannot listen");
            return None;
        }
    };
    tracing::info!(%addr, "taking eager turn starts");
    let starter = Arc::new(Starter { client, store, task_queue: config.task_queue.clone() });
    let app = Router::new().route(EAGER_START_ROUTE, post(start_turn)).with_state(starter);
    Some(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(error = %err, "stopped taking eager turn starts");
        }
    }))
}

/// Starts a queued turn's workflow, eagerly (one that exists already, the api retrying, is
/// fine); a turn past `queued` has its workflow already: nothing to do. 404 for no such turn
/// and 500 when the database fails (the api then starts the turn itself); 503 when Temporal
/// fails (the api's own start would too).
async fn start_turn(State(starter): State<Arc<Starter>>, Path(turn_id): Path<Uuid>) -> (StatusCode, String) {
    let found = match starter.store.turn_to_start(turn_id).await {
        Ok(found) => found,
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    let Some(found) = found else { return (StatusCode::NOT_FOUND, format!("no turn {turn_id}")) };
    if found.status != TurnStatus::Queued {
        return (StatusCode::NO_CONTENT, String::new());
    }
    let mut options = ChatTurnWorkflow::start_options(&starter.task_queue, &found.turn, &found.message);
    options.enable_eager_workflow_start = true;
    match start_once(&starter.client, ChatTurnWorkflow::run, found.turn, options).await {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
    }
}
