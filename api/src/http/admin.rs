//! Operators' routes (admin keys only): dead letters across tenants, listed, replayed under
//! their idempotency key, or discarded with a reason (every replay and discard is audited);
//! the tool catalog refreshed from the MCP servers; the audit log read by session, request,
//! actor or action.

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;
use uuid::Uuid;

use soma_contract::api::{
    AuditList, CatalogRefreshed, DeadLetter, DeadLetterList, Discard, ErrorBody, ReplayAll, Replayed, ReplayedLetter,
};
use soma_contract::{DeadLetterKind, DeadLetterStatus};
use soma_core::store::{AuditFilter, DeadLetterFilter};
use soma_workflows::{MemoryWriteInput, MemoryWriteWorkflow, ToolCatalogRefreshWorkflow};

use crate::auth::Admin;
use crate::extract::{AppJson, AppQuery};
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// A page's size: `limit` if given and in 1..=1000, else 100.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    Ok(limit)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    kind: Option<DeadLetterKind>,
    tenant_id: Option<String>,
    /// Only those filed at least this many seconds ago.
    #[param(minimum = 0)]
    older_than_secs: Option<u32>,
    /// `open` by default.
    status: Option<DeadLetterStatus>,
    /// 1 to 1000; 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Dead letters, oldest first (open ones unless `status` says otherwise).
#[utoipa::path(
    get, path = "/v1/admin/dead-letters", tag = "admin", params(DeadLetterQuery),
    responses(
        (status = 200, description = "The matching dead letters", body = DeadLetterList),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(
    State(ctx): State<ApiContext>,
    _admin: Admin,
    AppQuery(query): AppQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let filter = DeadLetterFilter {
        kind: query.kind,
        tenant_id: query.tenant_id,
        before: query.older_than_secs.map(|secs| Utc::now() - chrono::Duration::seconds(i64::from(secs))),
        status: query.status,
        limit,
    };
    let dead_letters = ctx.store.dead_letters(&filter).await?;
    Ok(Json(DeadLetterList { dead_letters }))
}

/// Replays one open dead letter: its work starts again under the same idempotency key, so
/// replaying something that was in fact delivered changes nothing.
#[utoipa::path(
    post, path = "/v1/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = Uuid, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "Replayed: its workflow runs", body = Replayed),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "`not_open`: already replayed or discarded", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable (a recorded replay is started by the worker's sweep)", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn replay(
    State(ctx): State<ApiContext>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    let letter = open_letter(&ctx, &id).await?;
    let replayed = replay_letter(&ctx, &admin, &ids, letter).await?.ok_or_else(not_open)?;
    Ok(Json(Replayed { replayed: vec![replayed] }))
}

/// Replays every open dead letter that matches (all of them without a filter).
#[utoipa::path(
    post, path = "/v1/admin/dead-letters/replay", tag = "admin", request_body = Option<ReplayAll>,
    responses(
        (status = 200, description = "What was replayed", body = Replayed),
        (status = 400, description = "Malformed JSON or a wrong field", body = ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn replay_all(
    State(ctx): State<ApiContext>,
    admin: Admin,
    ids: RequestIds,
    body: axum::body::Bytes,
) -> Result<Json<Replayed>, ApiError> {
    let filter: ReplayAll = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayAll::default()
    } else {
        serde_json::from_slice::<Option<ReplayAll>>(&body)
            .map(Option::unwrap_or_default)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))?
    };
    let mut replayed = Vec::new();
    loop {
        let page = DeadLetterFilter { kind: filter.kind, tenant_id: filter.tenant_id.clone(), limit: DEFAULT_PAGE, ..Default::default() };
        let letters = ctx.store.dead_letters(&page).await?;
        if letters.is_empty() {
            break;
        }
        for letter in letters {
            replayed.extend(replay_letter(&ctx, &admin, &ids, letter).await?);
        }
    }
    Ok(Json(Replayed { replayed }))
}

/// Gives up on an open dead letter, with a reason (audited).
#[utoipa::path(
    post, path = "/v1/admin/dead-letters/{id}/discard", tag = "admin",
    params(("id" = Uuid, Path, description = "The dead letter")), request_body = Discard,
    responses(
        (status = 200, description = "Discarded", body = DeadLetter),
        (status = 400, description = "Malformed JSON, `invalid_reason` (blank) or `invalid_text` (a NUL character)", body = ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
        (status = 409, description = "`not_open`: already replayed or discarded", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn discard(
    State(ctx): State<ApiContext>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<String>,
    AppJson(discard): AppJson<Discard>,
) -> Result<Json<DeadLetter>, ApiError> {
    let reason = discard.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::bad_request("invalid_reason", "say why the dead letter is discarded"));
    }
    crate::http::messages::storable("reason", reason)?;
    let letter = open_letter(&ctx, &id).await?;
    let request = (ids.request_id.as_str(), Some(ids.trace_id.as_str()));
    let details = json!({ "reason": reason });
    let by = &admin.subject;
    if !ctx.store.resolve_dead_letter(letter.id, DeadLetterStatus::Discarded, by, Some(reason), request, details).await? {
        return Err(not_open());
    }
    let letter = ctx.store.dead_letter(letter.id).await?.ok_or(ApiError::NotFound("dead letter"))?;
    Ok(Json(letter))
}

/// How long a refresh may take before the request gives up on waiting (it goes on).
const REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Refreshes the tool catalog now: the built-ins and every configured MCP server's tools
/// written, MCP tools no longer offered removed (a worker runs it, as each does when it
/// starts). A refresh already running is joined.
#[utoipa::path(
    post, path = "/v1/admin/tools/refresh", tag = "admin",
    responses(
        (status = 200, description = "Refreshed: how many tools, and how each MCP server answered", body = CatalogRefreshed),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 503, description = "Temporal is unavailable, or no worker finished the refresh within 60 s", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn refresh_tools(State(ctx): State<ApiContext>, _admin: Admin) -> Result<Json<CatalogRefreshed>, ApiError> {
    let options = ToolCatalogRefreshWorkflow::start_options(&ctx.config.task_queue);
    let handle = ctx
        .temporal
        .start_workflow(ToolCatalogRefreshWorkflow::run, (), options)
        .await
        .map_err(ApiError::workflow_service)?;
    let refreshed = tokio::time::timeout(REFRESH_WAIT, handle.get_result(Default::default()))
        .await
        .map_err(|_| ApiError::workflow_service(anyhow::anyhow!("no worker finished the catalog refresh within 60 s")))?
        .map_err(ApiError::workflow_service)?;
    Ok(Json(refreshed))
}

fn not_open() -> ApiError {
    ApiError::Conflict { code: "not_open", message: "the dead letter was already replayed or discarded".into() }
}

async fn open_letter(ctx: &ApiContext, id: &str) -> Result<DeadLetter, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound("dead letter"))?;
    let letter = ctx.store.dead_letter(id).await?.ok_or(ApiError::NotFound("dead letter"))?;
    if letter.status != DeadLetterStatus::Open {
        return Err(not_open());
    }
    Ok(letter)
}

/// Marks the letter replayed (its write owed again; audited) and starts its workflow. None if
/// someone else resolved it first. If Temporal is away the replay stays recorded, and the
/// worker's sweep starts the owed write.
async fn replay_letter(
    ctx: &ApiContext,
    admin: &Admin,
    ids: &RequestIds,
    letter: DeadLetter,
) -> Result<Option<ReplayedLetter>, ApiError> {
    let request = (ids.request_id.as_str(), Some(ids.trace_id.as_str()));
    let workflow_id = match letter.kind {
        DeadLetterKind::MemoryWrite => MemoryWriteWorkflow::workflow_id(&letter.key),
    };
    let details = json!({ "workflow_id": workflow_id });
    if !ctx.store.resolve_dead_letter(letter.id, DeadLetterStatus::Replayed, &admin.subject, None, request, details).await? {
        return Ok(None);
    }
    match letter.kind {
        DeadLetterKind::MemoryWrite => {
            let write = letter.memory_write(&ids.request_id, Some(&ids.trace_id));
            let options = MemoryWriteWorkflow::start_options(&ctx.config.task_queue, &write);
            let input = MemoryWriteInput { write, retry: ctx.config.memory_retry() };
            soma_core::temporal::start_once(&ctx.temporal, MemoryWriteWorkflow::run, input, options)
                .await
                .map_err(ApiError::workflow_service)?;
        }
    }
    Ok(Some(ReplayedLetter { id: letter.id, workflow_id }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    tenant_id: Option<String>,
    session_id: Option<Uuid>,
    /// The `X-Request-Id` of the request that caused the rows.
    request_id: Option<String>,
    /// `key:…`, `admin:…`, `worker`, `recovery`, or a maintenance job.
    actor: Option<String>,
    /// An action (`session.delete`), or a family of them (`schedule.*`).
    action: Option<String>,
    /// Rows after this id (the previous page's `next_after`).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// 1 to 1000; 100 by default.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The audit log, oldest first: everything about a session or a request, what an actor did,
/// one kind of action; across tenants. Page with `after`.
#[utoipa::path(
    get, path = "/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses(
        (status = 200, description = "The matching audit rows", body = AuditList),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn audit(
    State(ctx): State<ApiContext>,
    _admin: Admin,
    AppQuery(query): AppQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_after", "after must not be negative"));
    }
    let filter = AuditFilter {
        tenant_id: query.tenant_id,
        session_id: query.session_id,
        request_id: query.request_id,
        actor: query.actor,
        action: query.action,
        after,
        limit,
    };
    let records = ctx.store.audit_records(&filter).await?;
    let next_after = (records.len() as i64 == limit).then(|| records.last().map(|r| r.id)).flatten();
    Ok(Json(AuditList { records, next_after }))
}
