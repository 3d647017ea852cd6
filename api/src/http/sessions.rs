//! Sessions: the tenant's list, a session's history, cancelling its turn, and what happens to a
//! whole session: delete, reset, export, import.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{UntypedWorkflow, WorkflowCancelOptions};
use utoipa::IntoParams;
use uuid::Uuid;

use soma_contract::api::{
    CancelRequested, EXPORT_FORMAT, ErrorBody, ExportLine, ExportedMessage, ExportedSession, MessagePage,
    SessionDeletion, SessionImported, SessionList, SessionReset,
};
use soma_contract::events::ConversationReset;
use soma_contract::{MessageStatus, Role, SessionEvent, SessionRef};
use soma_core::store::{AuditEntry, ImportedMessage, ImportedTurn, Requester, SessionCursor};
use soma_workflows::SessionDeletionWorkflow;

use crate::auth::Principal;
use crate::extract::{AppQuery, OwnedSession};
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

/// The content type of session exports and imports: one JSON object per line.
const NDJSON: &str = "application/x-ndjson";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// 1 to 200; 50 by default.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_after` of the previous page.
    after: Option<Uuid>,
}

fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {MAX_PAGE}"))),
    }
}

fn requester<'a>(principal: &'a Principal, ids: &'a RequestIds) -> Requester<'a> {
    Requester { actor: &principal.subject, request_id: &ids.request_id, trace_id: Some(&ids.trace_id) }
}

/// The tenant's sessions, most recently active first.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions", params(SessionsQuery),
    responses(
        (status = 200, description = "A page of sessions", body = SessionList),
        (status = 400, description = "A bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(
    State(ctx): State<ApiContext>,
    principal: Principal,
    AppQuery(query): AppQuery<SessionsQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let limit = page_size(query.limit)?;
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let sessions = ctx.store.list_sessions(&principal.tenant_id, limit, cursor, None).await?;
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

/// The conversation, oldest first, with where to open the stream to follow it.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/messages", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session"), MessagesQuery),
    responses(
        (status = 200, description = "A page of messages", body = MessagePage),
        (status = 400, description = "A bad `limit` or `after`", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn messages(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    AppQuery(query): AppQuery<MessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let limit = page_size(query.limit)?;
    let tenant_id = &session.principal.tenant_id;
    // Read before the messages: a stream opened after it misses nothing they do not hold.
    let stream_after = ctx.store.stream_after_messages(tenant_id, session.session_id).await?;
    let messages = ctx.store.messages(tenant_id, session.session_id, query.after, None, Some(limit)).await?;
    let next_after = (messages.len() as i64 == limit).then(|| messages.last().map(|m| m.id)).flatten();
    Ok(Json(MessagePage { session_id: session.session_id, messages, next_after, stream_after }))
}

/// Asks Temporal to cancel a workflow; one that has already closed is fine.
pub(crate) async fn cancel_workflow(ctx: &ApiContext, workflow_id: &str, reason: String) -> Result<(), ApiError> {
    let handle = ctx.temporal.get_workflow_handle::<UntypedWorkflow>(workflow_id.to_string());
    match handle.cancel(WorkflowCancelOptions::builder().reason(reason).build()).await {
        Ok(()) | Err(WorkflowInteractionError::NotFound(_)) => Ok(()),
        Err(err) => Err(ApiError::workflow_service(err)),
    }
}

/// Cancels the session's running (or next queued) turn. The stream then shows `turn.cancelled`;
/// the partial reply is kept as `cancelled`.
#[utoipa::path(
    post, path = "/v1/session/{id}/cancel", tag = "chat",
    params(("id" = Uuid, Path, description = "The session")),
    responses(
        (status = 202, description = "The turn is being cancelled", body = CancelRequested),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 409, description = "`no_running_turn`: nothing to cancel", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn cancel_turn(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    ids: RequestIds,
) -> Result<(StatusCode, Json<CancelRequested>), ApiError> {
    let OwnedSession { principal, session_id } = session;
    let open = ctx.store.open_turns(&principal.tenant_id, session_id).await?;
    let turn = open.into_iter().next().ok_or_else(|| ApiError::Conflict {
        code: "no_running_turn",
        message: "the session has no running or queued turn".into(),
    })?;
    cancel_workflow(&ctx, &turn.workflow_id, format!("cancelled by request {}", ids.request_id)).await?;
    let details = json!({ "workflow_id": turn.workflow_id });
    let by = requester(&principal, &ids);
    ctx.store
        .audit(&AuditEntry {
            turn_id: Some(turn.turn_id),
            ..AuditEntry::for_session(&principal.tenant_id, session_id, by, "turn.cancel", "requested", details)
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelRequested {
            session_id,
            turn_id: turn.turn_id,
            workflow_id: turn.workflow_id,
            status: "cancelling".into(),
        }),
    ))
}

/// Deletes a session: at once it is gone for every request; its deletion workflow cancels its
/// turns, ends its open streams with `session.deleted`, then removes its data.
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session")),
    responses(
        (status = 202, description = "Deleting", body = SessionDeletion),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable; nothing was deleted", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    ids: RequestIds,
) -> Result<(StatusCode, Json<SessionDeletion>), ApiError> {
    let OwnedSession { principal, session_id } = session;
    let by = requester(&principal, &ids);
    ctx.store.mark_session_deleted(&principal.tenant_id, session_id, by).await?;
    let deletion = SessionRef {
        tenant_id: principal.tenant_id.clone(),
        session_id,
        request_id: ids.request_id.clone(),
        trace_id: Some(ids.trace_id.clone()),
        actor: principal.subject.clone(),
    };
    let options = SessionDeletionWorkflow::start_options(&ctx.config.task_queue, &deletion);
    let started = soma_core::temporal::start_once(&ctx.temporal, SessionDeletionWorkflow::run, deletion, options).await;
    if let Err(err) = started {
        if let Err(undo) = ctx.store.unmark_session_deleted(&principal.tenant_id, session_id, by).await {
            tracing::error!(error = %undo, %session_id, "could not take back a deletion that did not start");
        }
        return Err(ApiError::workflow_service(err));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(SessionDeletion {
            session_id,
            workflow_id: SessionDeletionWorkflow::workflow_id(session_id),
            status: "deleting".into(),
        }),
    ))
}

/// Clears the conversation and keeps the session; its stream gets `session.reset`.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/reset", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session")),
    responses(
        (status = 200, description = "The conversation is cleared", body = SessionReset),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 409, description = "`session_busy`: a turn is running; cancel it first", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn reset(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    ids: RequestIds,
) -> Result<Json<SessionReset>, ApiError> {
    let OwnedSession { principal, session_id } = session;
    let by = requester(&principal, &ids);
    let removed_messages = ctx.store.reset_session(&principal.tenant_id, session_id, by).await?;
    let scope = soma_contract::EventScope {
        tenant_id: &principal.tenant_id,
        session_id,
        turn_id: None,
        request_id: Some(&ids.request_id),
        trace_id: Some(&ids.trace_id),
    };
    let event = SessionEvent::SessionReset(ConversationReset { removed_messages });
    ctx.store.append_events(&scope, &[event]).await?;
    Ok(Json(SessionReset { session_id, removed_messages }))
}

/// The session as JSON lines: the session first, then every message in conversation order.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/export", tag = "sessions",
    params(("id" = Uuid, Path, description = "The session")),
    responses(
        (status = 200, description = "One `ExportLine` per line", content_type = "application/x-ndjson", body = String),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn export(State(ctx): State<ApiContext>, session: OwnedSession) -> Result<impl IntoResponse, ApiError> {
    let tenant_id = &session.principal.tenant_id;
    let summary = ctx.store.session(tenant_id, session.session_id).await?;
    let messages = ctx.store.messages(tenant_id, session.session_id, None, None, None).await?;
    let header = ExportLine::Session(ExportedSession {
        format: EXPORT_FORMAT.into(),
        session_id: summary.id,
        persona_id: summary.persona_id,
        created_at: summary.created_at,
    });
    let lines = std::iter::once(header).chain(messages.into_iter().map(|m| {
        ExportLine::Message(ExportedMessage {
            turn: m.turn_seq,
            role: m.role,
            content: m.content,
            status: m.status,
            created_at: m.created_at,
        })
    }));
    let mut body = String::new();
    for line in lines {
        body.push_str(&serde_json::to_string(&line).map_err(anyhow::Error::from)?);
        body.push('\n');
    }
    let filename = format!("attachment; filename=\"session-{}.jsonl\"", session.session_id);
    Ok(([(CONTENT_TYPE, NDJSON.to_string()), (CONTENT_DISPOSITION, filename)], body))
}

/// Imports an exported session as a new session of the caller's tenant.
#[utoipa::path(
    post, path = "/v1/sessions/import", tag = "sessions",
    request_body(content = String, content_type = "application/x-ndjson",
                 description = "An export: a `session` line, then `message` lines"),
    responses(
        (status = 201, description = "Imported as a new session", body = SessionImported),
        (status = 400, description = "Not an export this API can read; nothing was imported", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 415, description = "Not `application/x-ndjson`", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn import(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ids: RequestIds,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SessionImported>), ApiError> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.split(';').next().is_some_and(|mime| mime.trim().eq_ignore_ascii_case(NDJSON)) {
        return Err(ApiError::UnsupportedMediaType("JSON lines (Content-Type: application/x-ndjson)"));
    }
    let (header, turns) = parse_export(&body, ctx.config.max_message_bytes)?;
    let session_id = Uuid::now_v7();
    let by = requester(&principal, &ids);
    let messages =
        ctx.store.import_session(&principal.tenant_id, session_id, header.persona_id.as_deref(), &turns, by).await?;
    Ok((StatusCode::CREATED, Json(SessionImported { session_id, turns: turns.len() as i64, messages })))
}

/// Reads an export into its session line and its turns, refusing anything this API did not
/// write: the format, a turn with no user message first, a turn out of order, an empty or
/// oversized message.
fn parse_export(body: &[u8], max_message_bytes: usize) -> Result<(ExportedSession, Vec<ImportedTurn>), ApiError> {
    let invalid = |line: usize, why: String| ApiError::bad_request("invalid_export", format!("line {line}: {why}"));
    let text = std::str::from_utf8(body).map_err(|_| invalid(1, "not UTF-8".into()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(n, line)| {
        serde_json::from_str::<ExportLine>(line).map(|parsed| (n + 1, parsed)).map_err(|err| invalid(n + 1, err.to_string()))
    });
    let header = match lines.next().transpose()? {
        Some((_, ExportLine::Session(header)))
            if header.format == EXPORT_FORMAT && !header.persona_id.as_deref().unwrap_or_default().contains('\0') =>
        {
            header
        }
        Some((n, _)) => return Err(invalid(n, format!("the first line must be a session of format {EXPORT_FORMAT}"))),
        None => return Err(invalid(1, "empty".into())),
    };
    let mut turns: Vec<ImportedTurn> = Vec::new();
    for line in lines {
        let (n, line) = line?;
        let ExportLine::Message(message) = line else {
            return Err(invalid(n, "only the first line is a session".into()));
        };
        if message.content.len() > max_message_bytes {
            return Err(invalid(n, format!("a message over {max_message_bytes} bytes")));
        }
        crate::http::messages::storable("content", &message.content).map_err(|_| invalid(n, "a NUL character".into()))?;
        let imported =
            ImportedMessage { content: message.content, status: message.status, created_at: message.created_at };
        match message.role {
            Role::User if message.turn == turns.len() as i32 + 1 => {
                if imported.content.trim().is_empty() || imported.status != MessageStatus::Complete {
                    return Err(invalid(n, "a user message must be complete and not empty".into()));
                }
                turns.push(ImportedTurn { user: imported, assistant: None });
            }
            Role::Assistant if message.turn >= 1 && message.turn == turns.len() as i32 => {
                let turn = turns.last_mut().expect("turn numbers start at 1");
                if turn.assistant.replace(imported).is_some() {
                    return Err(invalid(n, format!("turn {} has two replies", message.turn)));
                }
            }
            _ => {
                return Err(invalid(
                    n,
                    format!("turn {} is out of order: each turn is a user message, then at most one reply", message.turn),
                ));
            }
        }
    }
    Ok((header, turns))
}
