//! `GET /metrics`: the gauges the `publish-metrics` job last computed from the database, in
//! Prometheus' text format. Every api process serves the same figures.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use soma_core::store::Gauge;

use crate::{ApiContext, ApiError};

/// Prometheus' text exposition format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders gauges as Prometheus reads them.
pub fn render(gauges: &[Gauge]) -> String {
    let mut text = String::new();
    for gauge in gauges {
        text.push_str(&format!("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", gauge.name, gauge.help, gauge.name, gauge.name, gauge.value));
    }
    text
}

/// The gauges, as of the last `publish-metrics` run (every minute).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "The database is unavailable", body = soma_contract::api::ErrorBody),
    ))]
pub async fn metrics(State(ctx): State<ApiContext>) -> Result<impl IntoResponse, ApiError> {
    let gauges = ctx.store.gauges().await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&gauges)))
}
