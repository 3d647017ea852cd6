//! `POST /v1/session/message`: accept a user message as a turn and start its workflow.
//! The response (202) is sent only once both the turn row and the workflow exist, so an
//! accepted message survives any single crash; the same Idempotency-Key returns the same turn.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use uuid::Uuid;

use soma_contract::api::{AttachmentRef, ErrorBody, IfBusy, MessageAccepted, PostMessage};
use soma_contract::TurnStatus;
use soma_core::store::{AcceptedTurn, AuditEntry, NewTurn, Requester, TurnSession};
use soma_core::temporal::EagerStart;
use soma_workflows::ChatTurnWorkflow;

use crate::auth::Principal;
use crate::extract::AppJson;
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Send a message: it becomes a turn of its session, answered in the order accepted.
#[utoipa::path(
    post, path = "/v1/session/message", tag = "chat",
    request_body = PostMessage,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r"^[!-~]([ -~]*[!-~])?$",
            description = "1 to 255 visible ASCII characters; the same key returns the same turn")),
    responses(
        (status = 202, description = "Accepted: the turn is stored and its workflow started", body = MessageAccepted),
        (status = 400, description = "Malformed JSON, a wrong field, an empty message, a NUL character, a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "`session_id` is not one of the tenant's sessions, or an attachment not one of its files", body = ErrorBody),
        (status = 409, description = "`if_busy: reject` and a turn of the session is running", body = ErrorBody),
        (status = 413, description = "The message is over `max_message_bytes`", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable; nothing was accepted", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
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
    storable("message", &request.message)?;
    if let Some(persona) = &request.persona_id {
        storable("persona_id", persona)?;
    }
    let attachments = known_attachments(&ctx, &principal.tenant_id, &request.attachments).await?;
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
    let by = Requester { actor: &principal.subject, request_id: &ids.request_id, trace_id: Some(&ids.trace_id) };
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
            attachments: &attachments,
            refuse_if_busy: request.if_busy == IfBusy::Reject,
            by,
        })
        .await?;
    let turn = &accepted.turn;
    tracing::Span::current().record("session_id", tracing::field::display(turn.session_id));
    if let Err(err) = start_workflow(&ctx, &accepted, &request.message).await {
        if accepted.created {
            // Not accepted after all: take the turn back so it cannot block the session,
            // and so a retry with the same key starts afresh.
            if let Err(undo) = ctx.store.withdraw_turn(turn, &principal.subject).await {
                tracing::error!(error = %undo, turn_id = %turn.turn_id, "could not withdraw unstarted turn");
            }
        }
        return Err(err);
    }
    if request.if_busy == IfBusy::Interrupt && accepted.created {
        interrupt_earlier_turns(&ctx, &accepted, by).await?;
    }
    tracing::info!(turn_id = %turn.turn_id, workflow_id = %accepted.workflow_id, new = accepted.created, "turn accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(MessageAccepted {
            session_id: turn.session_id,
            turn_id: turn.turn_id,
            workflow_id: accepted.workflow_id,
            status: TurnStatus::Queued,
            stream_after: accepted.stream_after,
        }),
    ))
}

/// Text is stored in Postgres, which cannot hold a NUL character: say so, rather than fail
/// as if the database were down.
pub(crate) fn storable(field: &str, text: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::bad_request("invalid_text", format!("{field} must not contain a NUL character")));
    }
    Ok(())
}

/// [`storable`] for every string (and key) of a JSON value: `jsonb` cannot hold a NUL either.
pub(crate) fn storable_json(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    use serde_json::Value;
    match value {
        Value::String(text) => storable(field, text),
        Value::Array(items) => items.iter().try_for_each(|item| storable_json(field, item)),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            storable(field, key)?;
            storable_json(field, item)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
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

/// The most files one message may carry.
const MAX_ATTACHMENTS: usize = 20;

/// The ids of the files a message carries, each once, in order: every one must be the
/// tenant's (404 otherwise). Their scans need not be done: the turn waits for them.
async fn known_attachments(ctx: &ApiContext, tenant_id: &str, refs: &[AttachmentRef]) -> Result<Vec<Uuid>, ApiError> {
    let mut ids: Vec<Uuid> = Vec::new();
    for reference in refs {
        if !ids.contains(&reference.id) {
            ids.push(reference.id);
        }
    }
    if ids.len() > MAX_ATTACHMENTS {
        return Err(ApiError::bad_request("too_many_attachments", format!("a message carries at most {MAX_ATTACHMENTS} files")));
    }
    for &id in &ids {
        if ctx.store.attachment(tenant_id, id).await?.is_none() {
            return Err(ApiError::NotFound("attachment"));
        }
    }
    Ok(ids)
}

/// Starts the turn's workflow: through the configured worker (eagerly) when it takes it, else
/// here. Starting one that exists already (a retried request, or one a worker started before
/// it failed to say so) is fine.
async fn start_workflow(ctx: &ApiContext, accepted: &AcceptedTurn, message: &str) -> Result<(), ApiError> {
    if let Some(eager) = &ctx.eager_starts {
        match eager.start(accepted.turn.turn_id).await {
            EagerStart::Started => return Ok(()),
            EagerStart::TemporalFailed(cause) => return Err(ApiError::workflow_service(anyhow::anyhow!(cause))),
            EagerStart::NotTaken(why) => {
                tracing::warn!(why, workflow_id = %accepted.workflow_id, "no worker took the eager start; starting the turn here")
            }
        }
    }
    let options = ChatTurnWorkflow::start_options(&ctx.config.task_queue, &accepted.turn, message);
    soma_core::temporal::start_once(&ctx.temporal, ChatTurnWorkflow::run, accepted.turn.clone(), options)
        .await
        .map_err(ApiError::workflow_service)
}

/// `if_busy: interrupt`: cancels the session's turns accepted before this one (their partial
/// replies are kept as `cancelled`), so this one is answered next. Each cancel is audited.
async fn interrupt_earlier_turns(ctx: &ApiContext, accepted: &AcceptedTurn, by: Requester<'_>) -> Result<(), ApiError> {
    let turn = &accepted.turn;
    let earlier = ctx.store.open_turns(&turn.tenant_id, turn.session_id).await?;
    for open in earlier.iter().filter(|open| open.turn_id != turn.turn_id) {
        let reason = format!("interrupted by turn {} (request {})", turn.turn_id, by.request_id);
        crate::http::sessions::cancel_workflow(ctx, &open.workflow_id, reason).await?;
        let details = json!({ "workflow_id": open.workflow_id, "interrupted_by": turn.turn_id });
        ctx.store
            .audit(&AuditEntry {
                turn_id: Some(open.turn_id),
                ..AuditEntry::for_session(&turn.tenant_id, turn.session_id, by, "turn.cancel", "interrupted", details)
            })
            .await?;
    }
    Ok(())
}
