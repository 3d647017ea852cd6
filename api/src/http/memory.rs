//! Memory as a tenant sees it: recall (what the model would be given) and feedback on what was
//! recalled. Both go to the configured backend, always for the caller's tenant.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use soma_contract::api::{ErrorBody, FeedbackAccepted, MemoryFeedback, RecallResponse};

use crate::auth::Principal;
use crate::extract::{AppJson, AppQuery};
use crate::{ApiContext, ApiError};

const DEFAULT_TOP_K: u32 = 10;
const MAX_TOP_K: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecallQuery {
    /// What to look for (any of its words); empty: the latest memories (of `session_id`, if
    /// given). No NUL character.
    #[serde(default)]
    #[param(pattern = r"^[^\x00]*$")]
    q: String,
    /// Only this session's memories.
    session_id: Option<Uuid>,
    /// 1 to 100; 10 by default.
    #[param(minimum = 1, maximum = 100)]
    top_k: Option<u32>,
}

/// The tenant's memories most relevant to `q`, best first.
#[utoipa::path(
    get, path = "/v1/memory/recall", tag = "memory", params(RecallQuery),
    responses(
        (status = 200, description = "What recall found", body = RecallResponse),
        (status = 400, description = "`invalid_query`: a bad `top_k`, a NUL character in `q`", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 503, description = "The memory backend is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn recall(
    State(ctx): State<ApiContext>,
    principal: Principal,
    AppQuery(query): AppQuery<RecallQuery>,
) -> Result<Json<RecallResponse>, ApiError> {
    if query.q.contains('\0') {
        return Err(ApiError::bad_request("invalid_query", "q must not contain a NUL character"));
    }
    let top_k = query.top_k.unwrap_or(DEFAULT_TOP_K);
    if !(1..=MAX_TOP_K).contains(&top_k) {
        return Err(ApiError::bad_request("invalid_query", format!("top_k must be between 1 and {MAX_TOP_K}")));
    }
    let recalled = ctx.memory.recall(&principal.tenant_id, &query.q, query.session_id, top_k).await?;
    Ok(Json(RecallResponse { memories: recalled.hits, degraded: recalled.degraded, backend: ctx.memory.name().into() }))
}

/// Says how useful a recalled memory was; it ranks it up or down in later recalls.
#[utoipa::path(
    post, path = "/v1/memory/feedback", tag = "memory", request_body = MemoryFeedback,
    responses(
        (status = 200, description = "The backend took the feedback", body = FeedbackAccepted),
        (status = 400, description = "Malformed JSON, or `invalid_feedback` (utility outside -1..1)", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No memory of the tenant has this key", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The memory backend is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn feedback(
    State(ctx): State<ApiContext>,
    principal: Principal,
    AppJson(feedback): AppJson<MemoryFeedback>,
) -> Result<Json<FeedbackAccepted>, ApiError> {
    let in_range = |v: f64| v.is_finite() && (-1.0..=1.0).contains(&v);
    if !in_range(feedback.utility) || !feedback.reward.is_none_or(in_range) {
        return Err(ApiError::bad_request("invalid_feedback", "utility and reward must be numbers from -1 to 1"));
    }
    if feedback.key.contains('\0') {
        return Err(ApiError::bad_request("invalid_feedback", "key must not contain a NUL character"));
    }
    let reward = feedback.reward.unwrap_or(feedback.utility);
    if !ctx.memory.feedback(&principal.tenant_id, &feedback.key, feedback.utility, reward).await? {
        return Err(ApiError::NotFound("memory"));
    }
    Ok(Json(FeedbackAccepted { accepted: true }))
}
