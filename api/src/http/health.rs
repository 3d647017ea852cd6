//! Liveness (`/v1/health`: the process answers) and readiness (`/v1/ready`: Postgres and
//! Temporal answer too).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;

use crate::ApiContext;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "service": "soma-api", "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn ready(State(ctx): State<ApiContext>) -> (StatusCode, Json<Value>) {
    let postgres = match tokio::time::timeout(CHECK_TIMEOUT, ctx.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    let mut service = ctx.temporal.connection().workflow_service();
    let temporal = match tokio::time::timeout(
        CHECK_TIMEOUT,
        service.get_system_info(GetSystemInfoRequest::default().into_request()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    let ready = postgres.is_ok() && temporal.is_ok();
    let show = |check: &Result<(), String>| match check {
        Ok(()) => json!({ "status": "ok" }),
        Err(error) => json!({ "status": "failing", "error": error }),
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": { "postgres": show(&postgres), "temporal": show(&temporal) },
    });
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
