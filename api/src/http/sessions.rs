//! Sessions: the tenant's list, a session's message history, and cancelling its turn.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use temporalio_client::{UntypedWorkflow, WorkflowCancelOptions};
use uuid::Uuid;

use soma_core::store::{AuditEntry, Message, SessionCursor, SessionSummary};

use crate::auth::Principal;
use crate::extract::{AppQuery, OwnedSession};
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

#[derive(Debug, Deserialize)]
pub struct SessionsQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    limit: Option<i64>,
    after: Option<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    /// Pass as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MessagePage {
    pub session_id: Uuid,
    pub messages: Vec<Message>,
    /// Pass as `after` for the next page; null on the last one.
    pub next_after: Option<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct CancelRequested {
    pub session_id: Uuid,
    pub turn_id: Uuid,
    pub workflow_id: String,
    /// Always `cancelling`: the stream shows `turn.cancelled` once the turn has stopped.
    pub status: &'static str,
}

fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

/// `GET /v1/sessions?limit=&cursor=`: most recently active first; `next_cursor` pages on.
pub async fn list(
    State(ctx): State<ApiContext>,
    principal: Principal,
    AppQuery(query): AppQuery<SessionsQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let limit = page_size(query.limit)?;
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let sessions = ctx.store.list_sessions(&principal.tenant_id, limit, cursor).await?;
    let next_cursor = (sessions.len() as i64 == limit)
        .then(|| sessions.last().map(|s| encode_cursor(s.updated_at, s.id)))
        .flatten();
    Ok(Json(SessionList { sessions, next_cursor }))
}

fn encode_cursor(updated_at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{id}", updated_at.timestamp_micros())
}

fn decode_cursor(raw: &str) -> Result<SessionCursor, ApiError> {
    let invalid = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
    let (micros, id) = raw.split_once('_').ok_or_else(invalid)?;
    let updated_at =
        DateTime::from_timestamp_micros(micros.parse().map_err(|_| invalid())?).ok_or_else(invalid)?;
    Ok(SessionCursor { updated_at, id: id.parse().map_err(|_| invalid())? })
}

/// `GET /v1/sessions/{id}/messages?limit=&after=`: the conversation, oldest first.
pub async fn messages(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    AppQuery(query): AppQuery<MessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let limit = page_size(query.limit)?;
    let tenant_id = &session.principal.tenant_id;
    let messages = ctx.store.messages(tenant_id, session.session_id, query.after, None, Some(limit)).await?;
    let next_after = (messages.len() as i64 == limit).then(|| messages.last().map(|m| m.id)).flatten();
    Ok(Json(MessagePage { session_id: session.session_id, messages, next_after }))
}

/// `POST /v1/session/{id}/cancel`: cancels the session's running (or next queued) turn. The
/// stream then shows `turn.cancelled`; the partial reply is kept as `cancelled`.
pub async fn cancel_turn(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    ids: RequestIds,
) -> Result<(StatusCode, Json<CancelRequested>), ApiError> {
    let OwnedSession { principal, session_id } = session;
    let turn = ctx.store.oldest_open_turn(&principal.tenant_id, session_id).await?.ok_or_else(|| {
        ApiError::Conflict { code: "no_running_turn", message: "the session has no running or queued turn".into() }
    })?;
    let handle = ctx.temporal.get_workflow_handle::<UntypedWorkflow>(turn.workflow_id.clone());
    handle
        .cancel(WorkflowCancelOptions::builder().reason(format!("cancelled by request {}", ids.request_id)).build())
        .await
        .map_err(|err| ApiError::Unavailable { what: "the workflow service", cause: err.into() })?;
    ctx.store
        .audit(&AuditEntry {
            tenant_id: &principal.tenant_id,
            request_id: Some(&ids.request_id),
            trace_id: Some(&ids.trace_id),
            session_id: Some(session_id),
            turn_id: Some(turn.turn_id),
            actor: &principal.subject,
            action: "turn.cancel",
            outcome: "requested",
            details: json!({ "workflow_id": turn.workflow_id }),
            dedupe_key: None,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelRequested {
            session_id,
            turn_id: turn.turn_id,
            workflow_id: turn.workflow_id,
            status: "cancelling",
        }),
    ))
}
