//! Liveness (`/v1/health`: the process answers) and readiness (`/v1/ready`: Postgres and
//! Temporal answer too).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;

use crate::ApiContext;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: BTreeMap<&'static str, Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    /// `ok` or `failing`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    fn of(result: Result<(), String>) -> Check {
        match result {
            Ok(()) => Check { status: "ok", error: None },
            Err(error) => Check { status: "failing", error: Some(error) },
        }
    }
}

pub async fn health() -> Json<Health> {
    Json(Health { status: "ok", service: "soma-api", version: env!("CARGO_PKG_VERSION") })
}

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
    let checks = BTreeMap::from([("postgres", Check::of(postgres)), ("temporal", Check::of(temporal))]);
    let body = Readiness { status: if ready { "ready" } else { "not_ready" }, checks };
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
