//! The HTTP API: accepts chat messages and starts their workflows, streams session events
//! over resumable SSE, and serves history, health and readiness. `main.rs` only wires.

pub mod auth;
pub mod error;
pub mod extract;
pub mod feed;
pub mod http;
pub mod openapi;
pub mod request_ids;
pub mod stream_token;

use std::sync::Arc;

use axum::Router;
use temporalio_client::Client;

use soma_core::blobs::BlobStore;
use soma_core::temporal::EagerStarts;
use soma_core::{Config, MemoryBackend, SessionWakeups, Store};

pub use auth::ApiKeys;
pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub temporal: Client,
    /// The worker chat turns are started through, eagerly, when one is configured.
    pub eager_starts: Option<EagerStarts>,
    pub feeds: Arc<feed::Feeds>,
    pub keys: Arc<ApiKeys>,
    pub stream_tokens: Arc<stream_token::StreamTokens>,
    /// The memory backend recall and feedback go to.
    pub memory: MemoryBackend,
    /// The bucket large clean attachments are served from.
    pub blobs: BlobStore,
    /// Flips to true when the server shuts down, so open event streams end (graceful
    /// shutdown waits for every connection, and an SSE stream never ends by itself).
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl ApiContext {
    /// Builds the context and starts listening for session events.
    pub async fn new(config: Config, store: Store, temporal: Client) -> anyhow::Result<Self> {
        let keys = Arc::new(ApiKeys::from_config(&config)?);
        if keys.is_empty() {
            tracing::warn!("no API keys configured (SOMA_API_KEYS): every request will get 401");
        }
        let wakeups = Arc::new(SessionWakeups::default());
        wakeups.start(&store).await?;
        // Workflows are started with them; the worker registers them too (whichever is first).
        if let Err(err) = soma_core::temporal::ensure_search_attributes(&temporal, &config.temporal_namespace).await {
            tracing::warn!(error = %err, "could not register the search attributes; workflow starts may be refused");
        }
        let closing = tokio::sync::watch::Sender::new(false);
        let feeds = Arc::new(feed::Feeds::new(store.clone(), wakeups));
        let stream_tokens = Arc::new(stream_token::StreamTokens::from_config(&config));
        let memory = MemoryBackend::from_config(&config, store.clone());
        let blobs = BlobStore::from_config(&config);
        let eager_starts = EagerStarts::from_config(&config)?;
        Ok(Self {
            config: Arc::new(config),
            store,
            temporal,
            eager_starts,
            feeds,
            keys,
            stream_tokens,
            memory,
            blobs,
            closing,
        })
    }
}

/// The whole router, ready to serve.
pub fn app(ctx: ApiContext) -> Router {
    let (router, _) = http::router(ctx);
    router.layer(axum::middleware::from_fn(request_ids::propagate))
}

/// The OpenAPI document the api serves at `/openapi.json`.
pub fn openapi_document(ctx: ApiContext) -> utoipa::openapi::OpenApi {
    http::router(ctx).1
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests finish and ends
/// event streams (their clients reconnect elsewhere with `Last-Event-ID`).
///
/// HTTP/1.1 only, on hyper directly rather than `axum::serve`: its auto-detecting connection
/// also carries HTTP/2 state, which made every idle SSE connection cost ~10 KiB more.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = ctx.closing.clone();
    let app = app(ctx);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                // Out of file descriptors, most likely: wait for some to be freed.
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Deltas are small writes that must leave at once.
        let _ = socket.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    tracing::info!("api shutting down; closing event streams");
    closing.send_replace(true);
    connections.shutdown().await;
    Ok(())
}
