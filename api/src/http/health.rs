//! Liveness (`/v1/health`: the process answers) and readiness (`/v1/ready`: Postgres and
//! Temporal answer too; clamd and S3 are reported, a failure there degrades, not blocks).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;

use soma_contract::api::{Check, Health, Readiness};
use soma_core::clamav::Clamd;

use crate::ApiContext;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs one check within [`CHECK_TIMEOUT`].
async fn probe<E: std::fmt::Display>(check: impl Future<Output = Result<(), E>>) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

fn required(result: Result<(), String>) -> Check {
    match result {
        Ok(()) => Check { status: "ok".into(), error: None },
        Err(error) => Check { status: "failing".into(), error: Some(error) },
    }
}

/// A part the process serves without: its failure says what waits meanwhile.
fn optional(result: Result<(), String>, meanwhile: &str) -> Check {
    match result {
        Ok(()) => Check { status: "ok".into(), error: None },
        Err(error) => Check { status: "degraded".into(), error: Some(format!("{error}; {meanwhile}")) },
    }
}

/// The process answers.
#[utoipa::path(get, path = "/v1/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok".into(), service: "soma-api".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// The process can serve: Postgres and Temporal answer (clamd and S3 are reported too).
#[utoipa::path(get, path = "/v1/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready (a `degraded` check names what waits)", body = Readiness),
        (status = 503, description = "Not ready: the failing checks say why", body = Readiness),
    ))]
pub async fn ready(State(ctx): State<ApiContext>) -> (StatusCode, Json<Readiness>) {
    let mut service = ctx.temporal.connection().workflow_service();
    let temporal = async {
        service.get_system_info(GetSystemInfoRequest::default().into_request()).await.map(drop).map_err(|s| s.message().to_string())
    };
    let clamd = Clamd::new(ctx.config.clamd_address.clone());
    let (postgres, temporal, clamd, s3) =
        tokio::join!(probe(ctx.store.ping()), probe(temporal), probe(clamd.ping()), probe(ctx.blobs.check()));
    let ready = postgres.is_ok() && temporal.is_ok();
    let checks = BTreeMap::from([
        ("postgres".to_string(), required(postgres)),
        ("temporal".to_string(), required(temporal)),
        ("clamd".to_string(), optional(clamd, "uploads stay pending until it answers")),
        ("s3".to_string(), optional(s3, "large attachments can be neither stored nor read")),
    ]);
    let body = Readiness { status: if ready { "ready" } else { "not_ready" }.into(), checks };
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
