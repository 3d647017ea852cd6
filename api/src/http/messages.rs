//! `POST /v1/session/message`: accept a user message as a turn and start its workflow.
//! The response (202) is sent only once both the turn row and the workflow exist, so an
//! accepted message survives any single crash; the same Idempotency-Key returns the same turn.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use soma_core::store::{AcceptedTurn, NewTurn, TurnSession};
use soma_workflows::ChatTurnWorkflow;

use crate::auth::Principal;
use crate::extract::AppJson;
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
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

/// The 202 body: where the turn is and how to follow it.
#[derive(Debug, Serialize)]
pub struct MessageAccepted {
    pub session_id: Uuid,
    pub turn_id: Uuid,
    pub workflow_id: String,
    /// Always `queued`: the turn runs once the session's earlier turns have.
    pub status: &'static str,
}

pub async fn post_message(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ids: RequestIds,
    headers: HeaderMap,
    AppJson(request): AppJson<PostMessage>,
) -> Result<(StatusCode, Json<MessageAccepted>), ApiError> {
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
    let session = match request.session_id {
        Some(session_id) => {
            tracing::Span::current().record("session_id", tracing::field::display(session_id));
            TurnSession::Existing(session_id)
        }
        None => TurnSession::New(Uuid::now_v7()),
    };
    let turn_id = Uuid::now_v7();
    let workflow_id = ChatTurnWorkflow::workflow_id(session.id(), turn_id);
    let accepted = ctx
        .store
        .accept_turn(&NewTurn {
            tenant_id: &principal.tenant_id,
            session,
            turn_id,
            workflow_id: &workflow_id,
            idempotency_key,
            message: &request.message,
            persona_id: request.persona_id.as_deref(),
            request_id: &ids.request_id,
            trace_id: Some(&ids.trace_id),
            actor: &principal.subject,
        })
        .await?;
    let turn = &accepted.turn;
    tracing::Span::current().record("session_id", tracing::field::display(turn.session_id));
    if let Err(err) = start_workflow(&ctx, &accepted).await {
        if accepted.created {
            // Not accepted after all: take the turn back so it cannot block the session,
            // and so a retry with the same key starts afresh.
            if let Err(undo) = ctx.store.withdraw_turn(turn, &principal.subject).await {
                tracing::error!(error = %undo, turn_id = %turn.turn_id, "could not withdraw unstarted turn");
            }
        }
        return Err(err);
    }
    tracing::info!(turn_id = %turn.turn_id, workflow_id = %accepted.workflow_id, new = accepted.created, "turn accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(MessageAccepted {
            session_id: turn.session_id,
            turn_id: turn.turn_id,
            workflow_id: accepted.workflow_id,
            status: "queued",
        }),
    ))
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
async fn start_workflow(ctx: &ApiContext, accepted: &AcceptedTurn) -> Result<(), ApiError> {
    let options = ChatTurnWorkflow::start_options(&ctx.config.task_queue, &accepted.turn);
    soma_core::temporal::start_once(&ctx.temporal, ChatTurnWorkflow::run, accepted.turn.clone(), options)
        .await
        .map_err(|err| ApiError::Unavailable { what: "the workflow service", cause: err.into() })
}
