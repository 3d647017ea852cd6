//! Liveness (`/v1/health`: the process answers) and readiness (`/v1/ready`: Postgres and
//! Temporal answer too).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;

use soma_contract::api::{Check, Health, Readiness};

use crate::ApiContext;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn check(result: Result<(), String>) -> Check {
    match result {
        Ok(()) => Check { status: "ok".into(), error: None },
        Err(error) => Check { status: "failing".into(), error: Some(error) },
    }
}

/// The process answers.
#[utoipa::path(get, path = "/v1/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), service: "soma-api".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// The process can serve: Postgres and Temporal answer.
#[utoipa::path(get, path = "/v1/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the failing checks say why", body = Readiness),
    ))]
pub async fn ready(State(ctx): State<ApiContext>) -> (StatusCode, Json<Readiness>) {
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
    let checks = BTreeMap::from([("postgres".to_string(), check(postgres)), ("temporal".to_string(), check(temporal))]);
    let body = Readiness { status: if ready { "ready" } else { "not_ready" }.into(), checks };
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
