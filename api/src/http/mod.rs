//! Routes, one module per resource.

mod events;
mod health;
mod messages;
mod sessions;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::ApiContext;

pub fn router(ctx: ApiContext) -> Router {
    // Room for the largest message plus JSON framing; beyond it the body is not read.
    let body_limit = ctx.config.max_message_bytes * 6 + 16 * 1024;
    Router::new()
        .route("/v1/session/message", post(messages::post_message))
        .route("/v1/session/{id}/events", get(events::stream))
        .route("/v1/session/{id}/cancel", post(sessions::cancel_turn))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{id}/messages", get(sessions::messages))
        .route("/v1/health", get(health::health))
        .route("/v1/ready", get(health::ready))
        .fallback(|| async { crate::ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(ctx)
}
