//! Tools: the catalog as the caller's tenant sees it, a direct call, a call's result, and a
//! person's decision on a call that waits for approval (sent to its workflow as a signal).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use uuid::Uuid;

use soma_contract::api::{
    ErrorBody, ToolCallView, ToolDecisionAccepted, ToolDecisionRequest, ToolInfo, ToolList, ToolRequest,
    ToolRequestAccepted,
};
use soma_contract::{ApprovalDecision, ToolCallRef, ToolCallStatus};
use soma_core::store::{AuditEntry, DecisionError};
use soma_core::tool_inputs;
use soma_workflows::{ToolDecision, ToolExecutionWorkflow};

use crate::auth::Principal;
use crate::http::messages::{storable, storable_json};
use crate::extract::AppJson;
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

/// The tools the caller's tenant may use.
#[utoipa::path(
    get, path = "/v1/tools", tag = "tools",
    responses(
        (status = 200, description = "The tenant's enabled tools, by name", body = ToolList),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(State(ctx): State<ApiContext>, principal: Principal) -> Result<Json<ToolList>, ApiError> {
    let tools = ctx
        .store
        .tenant_tools(&principal.tenant_id)
        .await?
        .into_iter()
        .filter(|tool| tool.enabled)
        .map(|tool| ToolInfo {
            requires_approval: tool.requires_approval || ctx.config.requires_approval(&tool.name),
            name: tool.name,
            description: tool.description,
            input_schema: tool.input_schema,
            kind: tool.kind,
            timeout_ms: tool.timeout_ms,
        })
        .collect();
    Ok(Json(ToolList { tools }))
}

/// Runs one tool directly, in a session (its result comes as `tool.result` on the session's
/// stream). Checked first: an unknown or disabled tool, or inputs that do not fit its schema,
/// are refused and nothing runs.
#[utoipa::path(
    post, path = "/v1/tool/request", tag = "tools", request_body = ToolRequest,
    responses(
        (status = 202, description = "Accepted: the call's workflow runs it", body = ToolRequestAccepted),
        (status = 400, description = "Malformed JSON, a wrong field, `unknown_tool`, `tool_disabled`, `invalid_inputs` or `invalid_text` (a NUL character)", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 413, description = "The body is over the transport limit", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable; nothing runs", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn request(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ids: RequestIds,
    AppJson(request): AppJson<ToolRequest>,
) -> Result<(StatusCode, Json<ToolRequestAccepted>), ApiError> {
    storable_json("inputs", &request.inputs)?;
    if !ctx.store.session_exists(&principal.tenant_id, request.session_id).await? {
        return Err(ApiError::NotFound("session"));
    }
    let Some(tool) = ctx.store.tenant_tool(&principal.tenant_id, &request.tool_id).await? else {
        return Err(ApiError::bad_request("unknown_tool", format!("there is no tool called {:?}", request.tool_id)));
    };
    if !tool.enabled {
        return Err(ApiError::bad_request("tool_disabled", format!("the tool {} is disabled for this tenant", tool.name)));
    }
    tool_inputs::validate(&tool.input_schema, &request.inputs)
        .map_err(|message| ApiError::bad_request("invalid_inputs", message))?;
    let call = ToolCallRef {
        tenant_id: principal.tenant_id.clone(),
        session_id: request.session_id,
        tool_call_id: Uuid::now_v7(),
        turn_id: None,
        request_id: ids.request_id.clone(),
        trace_id: Some(ids.trace_id.clone()),
    };
    let workflow_id = ToolExecutionWorkflow::workflow_id(call.session_id, call.tool_call_id);
    ctx.store.insert_direct_call(&call, &workflow_id, &tool.name, &request.inputs.to_string()).await?;
    let options = ToolExecutionWorkflow::start_options(&ctx.config.task_queue, &call, &tool.name);
    let started = soma_core::temporal::start_once(&ctx.temporal, ToolExecutionWorkflow::run, call.clone(), options).await;
    if let Err(err) = started {
        if let Err(undo) = ctx.store.withdraw_direct_call(&call.tenant_id, call.tool_call_id).await {
            tracing::error!(error = %undo, tool_call_id = %call.tool_call_id, "could not withdraw a call that did not start");
        }
        return Err(ApiError::workflow_service(err));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(ToolRequestAccepted {
            tool_call_id: call.tool_call_id,
            session_id: call.session_id,
            workflow_id,
            status: ToolCallStatus::Requested,
        }),
    ))
}

/// A tool call with its whole output.
#[utoipa::path(
    get, path = "/v1/tool/{id}", tag = "tools",
    params(("id" = Uuid, Path, description = "The tool call")),
    responses(
        (status = 200, description = "The call", body = ToolCallView),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's tool calls", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn show(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ToolCallView>, ApiError> {
    let id = call_id(&id)?;
    let view = ctx.store.tool_call_view(&principal.tenant_id, id).await?.ok_or(ApiError::NotFound("tool call"))?;
    Ok(Json(view))
}

/// Approves a call that waits for approval: it runs.
#[utoipa::path(
    post, path = "/v1/tool/{id}/approve", tag = "tools",
    params(("id" = Uuid, Path, description = "The tool call")), request_body = Option<ToolDecisionRequest>,
    responses(
        (status = 200, description = "The approval reached the call", body = ToolDecisionAccepted),
        (status = 400, description = "A body that is not `{reason}`, or `invalid_text` (a NUL character in it)", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's tool calls", body = ErrorBody),
        (status = 409, description = "`not_awaiting_approval` or `already_decided`", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable; nothing was decided", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn approve(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ids: RequestIds,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ToolDecisionAccepted>, ApiError> {
    decide(ctx, principal, ids, &id, ApprovalDecision::Approved, decision_body(&body)?).await
}

/// Denies a call that waits for approval: it does not run, and the model hears why.
#[utoipa::path(
    post, path = "/v1/tool/{id}/deny", tag = "tools",
    params(("id" = Uuid, Path, description = "The tool call")), request_body = Option<ToolDecisionRequest>,
    responses(
        (status = 200, description = "The denial reached the call", body = ToolDecisionAccepted),
        (status = 400, description = "A body that is not `{reason}`, or `invalid_text` (a NUL character in it)", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's tool calls", body = ErrorBody),
        (status = 409, description = "`not_awaiting_approval` or `already_decided`", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable; nothing was decided", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn deny(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ids: RequestIds,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ToolDecisionAccepted>, ApiError> {
    decide(ctx, principal, ids, &id, ApprovalDecision::Denied, decision_body(&body)?).await
}

/// The optional body of a decision: none, `null`, or `{reason}`.
fn decision_body(body: &[u8]) -> Result<ToolDecisionRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ToolDecisionRequest::default());
    }
    let body = serde_json::from_slice::<Option<ToolDecisionRequest>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))?;
    if let Some(reason) = &body.reason {
        storable("reason", reason)?;
    }
    Ok(body)
}

fn call_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("tool call"))
}

/// Records the decision (once: a second one is a conflict), then signals the call's workflow;
/// a decision that cannot be delivered is taken back, so it can be sent again.
async fn decide(
    ctx: ApiContext,
    principal: Principal,
    ids: RequestIds,
    id: &str,
    decision: ApprovalDecision,
    body: ToolDecisionRequest,
) -> Result<Json<ToolDecisionAccepted>, ApiError> {
    let id = call_id(id)?;
    let tenant = &principal.tenant_id;
    let reason = body.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    let row = match ctx.store.decide_tool_call(tenant, id, decision, &principal.subject, reason).await {
        Ok(row) => row,
        Err(DecisionError::NotFound) => return Err(ApiError::NotFound("tool call")),
        Err(err @ DecisionError::NotWaiting(_)) => {
            return Err(ApiError::Conflict { code: "not_awaiting_approval", message: err.to_string() });
        }
        Err(err @ DecisionError::AlreadyDecided(_)) => {
            return Err(ApiError::Conflict { code: "already_decided", message: err.to_string() });
        }
        Err(DecisionError::Store(err)) => return Err(err.into()),
    };
    let signal = ToolDecision { decision, decided_by: principal.subject.clone(), reason: reason.map(str::to_string) };
    if let Err(err) = ToolExecutionWorkflow::send_decision(&ctx.temporal, row.workflow_id.clone(), signal).await {
        if let Err(undo) = ctx.store.undo_decision(tenant, id).await {
            tracing::error!(error = %undo, tool_call_id = %id, "could not take back an undelivered decision");
        }
        return Err(ApiError::workflow_service(err));
    }
    let details = serde_json::json!({ "tool_call_id": id, "tool": row.tool_name, "reason": reason });
    let entry = AuditEntry {
        tenant_id: tenant,
        request_id: Some(&ids.request_id),
        trace_id: Some(&ids.trace_id),
        session_id: Some(row.session_id),
        turn_id: row.turn_id,
        actor: &principal.subject,
        action: "tool.approval",
        outcome: decision.as_str(),
        details,
        dedupe_key: None,
    };
    ctx.store.audit(&entry).await?;
    Ok(Json(ToolDecisionAccepted { tool_call_id: id, decision }))
}
