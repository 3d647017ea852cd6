//! Every request gets an id: the caller's `X-Request-Id` if it sent a sane one, else a new
//! UUID. It is returned in the `X-Request-Id` response header and in error bodies, and every
//! log line of the request carries it.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header::CONTENT_LENGTH};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::ErrorBody;

pub const HEADER: &str = "x-request-id";

/// The request id, as a request extension for handlers.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn propagate(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(),
                                   path = %request.uri().path(), session_id = tracing::field::Empty);
    let mut response = async move {
        let response = next.run(request).await;
        tracing::info!(status = response.status().as_u16(), "request done");
        response
    }
    .instrument(span)
    .await;
    if response.extensions().get::<ErrorBody>().is_some() {
        response = with_request_id_in_body(response, &id).await;
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

async fn with_request_id_in_body(response: Response, id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("request_id".into(), id.into());
    }
    let bytes = serde_json::to_vec(&value).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}
