//! Operators' routes for the periodic jobs (admin keys only): the schedules as Temporal runs
//! them, and trigger, pause, unpause (each audited). The same as the Temporal UI's schedule
//! page or `temporal schedule …`, for people who have an admin key but no Temporal access.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use soma_contract::api::{ErrorBody, ScheduleList, ScheduleNote, ScheduleView};
use soma_core::schedules::{self, SteerError};
use soma_core::store::AuditEntry;

use crate::auth::Admin;
use crate::extract::AppJson;
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

/// The tenant of audit rows about the deployment itself rather than a tenant's data.
const SYSTEM_TENANT: &str = "_system";

impl From<SteerError> for ApiError {
    fn from(err: SteerError) -> Self {
        match err {
            SteerError::NotFound => ApiError::NotFound("schedule"),
            SteerError::Temporal(err) => ApiError::workflow_service(err),
        }
    }
}

/// The configured schedules with their next and latest runs.
#[utoipa::path(
    get, path = "/v1/admin/schedules", tag = "admin",
    responses(
        (status = 200, description = "The schedules", body = ScheduleList),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 503, description = "Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(State(ctx): State<ApiContext>, _admin: Admin) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = schedules::schedule_views(&ctx.temporal, &ctx.config.schedules).await.map_err(ApiError::workflow_service)?;
    Ok(Json(ScheduleList { schedules }))
}

async fn view(ctx: &ApiContext, id: &str) -> Result<ScheduleView, ApiError> {
    Ok(schedules::describe(&ctx.temporal, &ctx.config.schedules, id).await?)
}

async fn audit(ctx: &ApiContext, admin: &Admin, ids: &RequestIds, id: &str, action: &str, note: Option<&str>) -> Result<(), ApiError> {
    let entry = AuditEntry {
        tenant_id: SYSTEM_TENANT,
        request_id: Some(&ids.request_id),
        trace_id: Some(&ids.trace_id),
        session_id: None,
        turn_id: None,
        actor: &admin.subject,
        action,
        outcome: "completed",
        details: json!({ "schedule_id": id, "note": note }),
        dedupe_key: None,
    };
    Ok(ctx.store.audit(&entry).await?)
}

/// Pauses or unpauses with the operator's note (or one naming them), audited.
async fn set_paused(
    ctx: &ApiContext,
    admin: &Admin,
    ids: &RequestIds,
    id: &str,
    body: Option<AppJson<ScheduleNote>>,
    paused: bool,
) -> Result<Json<ScheduleView>, ApiError> {
    let (verb, action) = if paused { ("paused", "schedule.pause") } else { ("unpaused", "schedule.unpause") };
    let note = body
        .and_then(|AppJson(body)| body.note)
        .map(|note| note.trim().to_string())
        .filter(|note| !note.is_empty())
        .unwrap_or_else(|| format!("{verb} by {}", admin.subject));
    crate::http::messages::storable("note", &note)?;
    schedules::set_paused(&ctx.temporal, &ctx.config.schedules, id, paused, note.clone()).await?;
    audit(ctx, admin, ids, id, action, Some(&note)).await?;
    Ok(Json(view(ctx, id).await?))
}

/// Runs the job now, once (also while paused); the schedule's clock is unchanged.
#[utoipa::path(
    post, path = "/v1/admin/schedules/{id}/trigger", tag = "admin",
    params(("id" = String, Path, description = "The schedule, e.g. `cleanup-sessions`")),
    responses(
        (status = 202, description = "A run was started", body = ScheduleView),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 503, description = "Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn trigger(
    State(ctx): State<ApiContext>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    schedules::trigger(&ctx.temporal, &ctx.config.schedules, &id).await?;
    audit(&ctx, &admin, &ids, &id, "schedule.trigger", None).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&ctx, &id).await?)))
}

/// Stops the schedule's ticks until it is unpaused; the note says why (the Temporal UI shows it).
#[utoipa::path(
    post, path = "/v1/admin/schedules/{id}/pause", tag = "admin",
    params(("id" = String, Path, description = "The schedule")), request_body = Option<ScheduleNote>,
    responses(
        (status = 200, description = "Paused", body = ScheduleView),
        (status = 400, description = "Malformed JSON, a wrong field, or `invalid_text` (a NUL character in the note)", body = ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn pause(
    State(ctx): State<ApiContext>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<String>,
    body: Option<AppJson<ScheduleNote>>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(&ctx, &admin, &ids, &id, body, true).await
}

/// Starts the schedule's ticks again.
#[utoipa::path(
    post, path = "/v1/admin/schedules/{id}/unpause", tag = "admin",
    params(("id" = String, Path, description = "The schedule")), request_body = Option<ScheduleNote>,
    responses(
        (status = 200, description = "Unpaused", body = ScheduleView),
        (status = 400, description = "Malformed JSON, a wrong field, or `invalid_text` (a NUL character in the note)", body = ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 503, description = "Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn unpause(
    State(ctx): State<ApiContext>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<String>,
    body: Option<AppJson<ScheduleNote>>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(&ctx, &admin, &ids, &id, body, false).await
}
