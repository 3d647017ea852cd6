//! `POST /v1/session/message`: accept a user message as a turn and start its workflow.
//! The response (202) is sent only once both the turn row and the workflow exist, so an
//! accepted message survives any single crash; the same Idempotency-Key returns the same turn.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use soma_core::store::{AcceptedTurn, NewTurn};
use soma_workflows::TurnRef;

use crate::auth::Tenant;
use crate::request_id::RequestId;
use crate::{ApiContext, ApiError};

const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    session_id: Option<Uuid>,
    message: String,
    persona_id: Option<String>,
    #[serde(default)]
    attachments: Vec<AttachmentRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentRef {
    // Parsed so a malformed attachment is reported as such; attachments are refused below.
    #[allow(dead_code)]
    id: Uuid,
}

pub async fn post_message(
    State(ctx): State<ApiContext>,
    Tenant(tenant_id): Tenant,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = parse(&body)?;
    let message = request.message.trim();
    if message.is_empty() {
        return Err(ApiError::bad_request("empty_message", "message must not be empty"));
    }
    if request.message.len() > ctx.config.max_message_bytes {
        return Err(ApiError::PayloadTooLarge {
            message: format!(
                "message is {} bytes; the limit is {}",
                request.message.len(),
                ctx.config.max_message_bytes
            ),
        });
    }
    if !request.attachments.is_empty() {
        return Err(ApiError::bad_request("attachments_unsupported", "attachments are not supported yet"));
    }
    let idempotency_key = idempotency_key(&headers)?;
    if let Some(session_id) = request.session_id {
        tracing::Span::current().record("session_id", tracing::field::display(session_id));
    }

    let accepted = ctx
        .store
        .accept_turn(&NewTurn {
            tenant_id: &tenant_id,
            session_id: request.session_id,
            idempotency_key,
            message: &request.message,
            persona_id: request.persona_id.as_deref(),
            request_id: &request_id,
        })
        .await?;
    tracing::Span::current().record("session_id", tracing::field::display(accepted.session_id));
    if let Err(err) = start_workflow(&ctx, &tenant_id, &accepted).await {
        if accepted.created {
            // Not accepted after all: take the turn back so it cannot block the session,
            // and so a retry with the same key starts afresh.
            if let Err(undo) = ctx.store.withdraw_turn(&tenant_id, accepted.turn_id, &request_id).await {
                tracing::error!(error = %undo, turn_id = %accepted.turn_id, "could not withdraw unstarted turn");
            }
        }
        return Err(err);
    }
    tracing::info!(turn_id = %accepted.turn_id, workflow_id = %accepted.workflow_id, new = accepted.created, "turn accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "session_id": accepted.session_id,
            "turn_id": accepted.turn_id,
            "workflow_id": accepted.workflow_id,
            "status": "queued",
        })),
    ))
}

fn parse(body: &[u8]) -> Result<PostMessage, ApiError> {
    serde_json::from_slice(body).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {err}"))
            }
            Category::Data => ApiError::bad_request("invalid_request", format!("invalid request: {err}")),
        }
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(key))
}

/// Starts the turn's workflow; starting one that exists already (a retried request) is fine.
async fn start_workflow(ctx: &ApiContext, tenant_id: &str, accepted: &AcceptedTurn) -> Result<(), ApiError> {
    let turn = TurnRef {
        tenant_id: tenant_id.to_string(),
        session_id: accepted.session_id,
        turn_id: accepted.turn_id,
        request_id: accepted.request_id.clone(),
    };
    soma_core::temporal::start_chat_turn(&ctx.temporal, &ctx.config.task_queue, &accepted.workflow_id, turn)
        .await
        .map_err(|err| ApiError::Unavailable { what: "the workflow service", cause: err.into() })
}
