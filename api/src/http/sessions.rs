//! Sessions: the tenant's list, a session's message history, and cancelling its turn.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use temporalio_client::UntypedWorkflow;
use temporalio_client::WorkflowCancelOptions;
use uuid::Uuid;

use soma_core::store::{AuditEntry, SessionCursor};

use crate::auth::Tenant;
use crate::error::AppQuery;
use crate::request_id::RequestId;
use crate::{ApiContext, ApiError};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    cursor: Option<String>,
    after: Option<Uuid>,
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
    Tenant(tenant_id): Tenant,
    AppQuery(page): AppQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_size(page.limit)?;
    let cursor = page.cursor.as_deref().map(decode_cursor).transpose()?;
    let sessions = ctx.store.list_sessions(&tenant_id, limit, cursor).await?;
    let next_cursor = (sessions.len() as i64 == limit)
        .then(|| sessions.last().map(|s| encode_cursor(s.updated_at, s.id)))
        .flatten();
    Ok(Json(json!({ "sessions": sessions, "next_cursor": next_cursor })))
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
    Tenant(tenant_id): Tenant,
    Path(id): Path<String>,
    AppQuery(page): AppQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let session_id = super::session_id(&id)?;
    let limit = page_size(page.limit)?;
    if !ctx.store.session_exists(&tenant_id, session_id).await? {
        return Err(ApiError::NotFound("session"));
    }
    let messages = ctx.store.session_messages(&tenant_id, session_id, page.after, limit).await?;
    let next_after = (messages.len() as i64 == limit).then(|| messages.last().map(|m| m.id)).flatten();
    Ok(Json(json!({ "session_id": session_id, "messages": messages, "next_after": next_after })))
}

/// `POST /v1/session/{id}/cancel`: cancels the session's running (or next queued) turn. The
/// stream then shows `turn.cancelled`; the partial reply is kept as `cancelled`.
pub async fn cancel_turn(
    State(ctx): State<ApiContext>,
    Tenant(tenant_id): Tenant,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let session_id = super::session_id(&id)?;
    if !ctx.store.session_exists(&tenant_id, session_id).await? {
        return Err(ApiError::NotFound("session"));
    }
    let turn =
        ctx.store.oldest_open_turn(&tenant_id, session_id).await?.ok_or_else(|| ApiError::Conflict {
            code: "no_running_turn",
            message: "the session has no running or queued turn".into(),
        })?;
    let handle = ctx.temporal.get_workflow_handle::<UntypedWorkflow>(turn.workflow_id.clone());
    handle
        .cancel(WorkflowCancelOptions::builder().reason(format!("cancelled by request {request_id}")).build())
        .await
        .map_err(|err| ApiError::Unavailable { what: "the workflow service", cause: err.into() })?;
    ctx.store
        .audit(&AuditEntry {
            tenant_id: &tenant_id,
            request_id: Some(&request_id),
            session_id: Some(session_id),
            turn_id: Some(turn.turn_id),
            actor: "api",
            action: "turn.cancel",
            outcome: "requested",
            details: json!({ "workflow_id": turn.workflow_id }),
            dedupe_key: None,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "session_id": session_id, "turn_id": turn.turn_id, "workflow_id": turn.workflow_id, "status": "cancelling" }),
        ),
    ))
}
