//! `GET /v1/runtime-config`: what a UI may show about this deployment. Never a secret.

use axum::Json;
use axum::extract::State;

use soma_contract::api::{ErrorBody, Features, RuntimeConfig};

use crate::ApiContext;
use crate::auth::Principal;

/// Limits, the model, enabled features and where the Temporal UI is.
#[utoipa::path(get, path = "/v1/runtime-config", tag = "operations",
    responses(
        (status = 200, description = "What a UI may show", body = RuntimeConfig),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = [])))]
pub async fn runtime_config(State(ctx): State<ApiContext>, _caller: Principal) -> Json<RuntimeConfig> {
    let config = &ctx.config;
    let non_empty = |value: &str| Some(value.trim().to_string()).filter(|v| !v.is_empty());
    Json(RuntimeConfig {
        version: env!("CARGO_PKG_VERSION").into(),
        model: non_empty(&config.llm_model),
        max_message_bytes: config.max_message_bytes,
        stream_token_ttl_secs: config.stream_token_ttl_secs,
        temporal_ui_url: non_empty(&config.temporal_ui_url),
        temporal_namespace: config.temporal_namespace.clone(),
        features: Features { tools: false, uploads: false, memory: false },
    })
}
